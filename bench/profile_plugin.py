"""Where the plugin spends its time inside Orthanc: py-spy samples of the plugin's Python threads.

    python3 -m venv /tmp/spy && /tmp/spy/bin/pip install py-spy
    .venv/bin/python bench/profile_plugin.py --py-spy /tmp/spy/bin/py-spy [--instances 150] [--workers 2]
                                             [--gil] [--env OPENBLAS_NUM_THREADS=1]

Starts an Orthanc with the plugin and the models in models/ (tests/support/orthanc_process.py), attaches
py-spy (sampling, non-blocking) to it, sends N synthetic 512x512 CT slices by C-STORE, waits until all
are tagged, and prints the share of the sampled time per pipeline function (inclusive), and per leaf.
With --gil only samples of the thread holding the GIL are kept: their total bounds the throughput of
the Python part whatever the number of workers.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.dicom_files import synthetic_ct  # noqa: E402
from tests.support.orthanc_process import OrthancProcess  # noqa: E402

# Frames worth showing (inclusive share), in pipeline order.
INTERESTING = re.compile(
    r"PredictionPipeline\.(process|_predict|_store_back)|OrthancRestApi\.\w+|_call \(orthanc_ai|"
    r"read_header|decode_analysed_frame|LoadedModel\.(predict|run)|frame_to_unit_grey|unit_grey_to_tensor|"
    r"resize_antialiased|add_results|set_instance_metadata|instance_metadata|instance_file|store_instance"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="path of the py-spy binary")
    parser.add_argument("--instances", type=int, default=150)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--prediction-processes", type=int, default=0,
                        help="OrthancAI.PredictionProcesses (default 0: the workers predict, so py-spy sees it all "
                             "in Orthanc's threads; more: the processes are sampled too)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of Orthanc")
    args = parser.parse_args()
    for assignment in args.env:
        name, _, value = assignment.partition("=")
        os.environ[name] = value

    workdir = Path(tempfile.mkdtemp(prefix="orthanc-ai-profile-"))
    files = []
    for index in range(args.instances):
        path = workdir / f"ct-{index:05d}.dcm"
        path.write_bytes(synthetic_ct(seed=50_000 + index, rows=512, columns=512))
        files.append(path)
    overrides: dict[str, int] = {"Workers": args.workers} if args.workers else {}
    overrides["PredictionProcesses"] = args.prediction_processes
    server = OrthancProcess(workdir / "orthanc", REPO / "models", plugin_overrides=overrides).start()
    assert server.process is not None  # started
    raw = workdir / "py-spy.txt"
    try:
        command = [args.py_spy, "record", "--pid", str(server.process.pid), "--format", "raw", "--output", str(raw),
                   "--rate", str(args.rate), "--threads", "--nonblocking"] + (["--gil"] if args.gil else []) \
            + (["--subprocesses"] if args.prediction_processes else [])
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)  # py-spy attached
        started = time.monotonic()
        done = server.store_cstore(files)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-500:])
        server.wait_idle(args.instances, timeout=600)
        elapsed = time.monotonic() - started
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    finally:
        server.stop()

    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # e.g. a line cut when py-spy was interrupted
            continue
        samples = int(count)
        total += samples
        frames = [re.sub(r":\d+\)", ")", frame) for frame in stack.split(";")]
        leaf[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    seconds = total / args.rate
    print(f"{args.instances} instances tagged in {elapsed:.1f} s ({args.instances / elapsed:.1f}/s); environment: "
          f"{' '.join(args.env) or '(unchanged)'}; workers: {args.workers or 'orthanc.json default'}")
    print(f"{total} samples{' holding the GIL' if args.gil else ' of busy Python threads'} = {seconds:.1f} s, "
          f"{seconds / args.instances * 1000:.1f} ms per instance")
    print("\ninclusive share, pipeline functions:")
    for frame, samples in inclusive.most_common():
        if INTERESTING.search(frame):
            print(f"  {100 * samples / total:5.1f}%  {samples / args.rate / args.instances * 1000:6.1f} ms/instance  "
                  f"{frame[:110]}")
    print("\nleaf functions (self time):")
    for frame, samples in leaf.most_common(12):
        print(f"  {100 * samples / total:5.1f}%  {frame[:120]}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
