"""End-to-end benchmark of the plugin inside real Orthanc processes.

    .venv/bin/python bench/bench_pipeline.py [--rounds 4] [--batch 100] [--latency-samples 40]
                                             [--sustained 300] [--skip-models] [--json results.json]

Starts, side by side and with the project's orthanc.json (tests/support/orthanc_process.py):

  * "plain":  Orthanc without any plugin ("Plugins": []), the baseline;
  * "plugin": Orthanc with the Python plugin and every model in models/ that loads;
  * with --idle-plugin, "plugin-idle": the same with "AutoPredict": false (the plugin's hooks without
    the prediction work), in the ingest rounds only;
  * with --eager-plugin, "plugin-eager": the plugin with ingest first off ("IngestFirstAbovePerSecond": 0,
    the behaviour before it existed: workers predict while ingest goes on), in the ingest rounds and the
    sustained phase, so its effect is measured side by side.

and prints, in one run:

  1. ingest rate over HTTP (POST /instances, one keep-alive connection) and over C-STORE (DCMTK storescu,
     one association, TCP_NODELAY=1) of synthetic 512x512 CT slices, plugin vs plain, interleaved in
     rounds (order alternating each round) so that the load of other jobs on the machine hits both alike;
     the plugin's store-back work runs concurrently with ingest, as in production; between rounds the
     plugin is let finish its backlog, so each round starts from idle;
  2. store-to-tags latency p50/p95: one instance at a time, wall time from the end of the store (HTTP
     answer) until its AIStatus metadata (written after the tagged copy is stored) is readable, and the
     plugin's own pipeline time from /ai/status;
  3. sustained processed instances per second: N instances sent by C-STORE at once, time until
     /ai/status has an outcome for all of them;
  4. per-model inference ms/image: bench/bench_models.py (the models' own benchmark), run as a child;
  5. resident memory the plugin adds: VmRSS of the plugin Orthanc minus that of the plain Orthanc, after
     the same warm-up, from /proc/<pid>/status;
  6. a stage profile of one 512x512 CT outside Orthanc (parse, decode, preprocess+inference per model,
     writing the block) and the HTTP GET/POST of the file against the plain server, to see what dominates.

Ratios (plugin / plain) are the figures to compare across machines; absolute rates depend on the
machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "plugin"))

from tests.support.dicom_files import synthetic_ct  # noqa: E402
from tests.support.orthanc_process import ORTHANC, OrthancProcess, child_pids, proc_stat_fields  # noqa: E402

TARGETS = {
    "ingest_ratio": 0.9,  # plugin / plain
    "latency_p50_ms": 100.0,
    "sustained_per_s": 60.0,
    "added_rss_mb": 400.0,
}


# --------------------------------------------------------------------------- helpers
class Client:
    """One keep-alive HTTP connection to an Orthanc."""

    def __init__(self, server: OrthancProcess) -> None:
        self.server = server
        self.connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body,
                                        headers={"Content-Type": "application/dicom"} if body else {})
                answer = self.connection.getresponse()
                return answer.status, answer.read()
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=120)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def store(self, dicom: bytes) -> str:
        status, body = self.request("POST", "/instances", dicom)
        if status != 200:
            raise RuntimeError(f"POST /instances → {status}: {body[:200]!r}")
        return json.loads(body)["ID"]

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} → {status}: {body[:200]!r}")
        return json.loads(body)


def pid_of(server: OrthancProcess) -> int:
    """Process id of a started Orthanc."""
    if server.process is None:
        raise RuntimeError("Orthanc is not started")
    return server.process.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and of its running children (the plugin's
    prediction processes)."""
    total = 0
    for each in [pid, *child_pids(pid)]:
        try:
            parts = proc_stat_fields(each)
        except OSError:
            continue  # a child that ended meanwhile
        total += int(parts[11]) + int(parts[12])
    return total / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / ticks, sum(fields) / ticks


def outcomes(status: dict) -> int:
    return status["predicted"] + status["unchanged"] + status["skipped"] + status["failed"] + status["gone"]


def wait_processed(client: Client, expected: int, timeout: float = 600.0, poll: float = 0.02) -> float:
    """Wait until /ai/status has `expected` outcomes and nothing queued; returns the monotonic time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_json("/ai/status")
        if outcomes(status) >= expected and status["queueLength"] == 0 and status["inProgress"] == 0:
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"plugin did not reach {expected} outcomes within {timeout} s: {client.get_json('/ai/status')}")


def _busy(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Fraction of the machine's CPU time that was busy between two machine_cpu_seconds() readings."""
    return (after[0] - before[0]) / max(after[1] - before[1], 1e-9)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine_description() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    orthanc_version = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout.splitlines()
    try:
        plugin_version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "orthanc-python"],
                                        capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        plugin_version = "?"
    storescu = subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout.splitlines()
    import numpy
    import onnxruntime
    import pydicom
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "orthanc": orthanc_version[0] if orthanc_version else "?",
        "orthanc-python (Debian package)": plugin_version or "?",
        "python": platform.python_version(),
        "numpy / pydicom / onnxruntime": f"{numpy.__version__} / {pydicom.__version__} / {onnxruntime.__version__}",
        "storescu": storescu[0] if storescu else "?",
    }


# --------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="orthanc-ai-bench-"))
        self.files_dir = self.workdir / "files"
        self.files_dir.mkdir()
        self.results: dict[str, Any] = {}
        self._next_file = 0
        self.files: list[Path] = []
        self.processed: dict[str, int] = {}  # outcomes expected by each predicting server so far

    # -- data
    def make_files(self, count: int) -> None:
        started = time.monotonic()
        for seed in range(count):
            path = self.files_dir / f"ct-{seed:05d}.dcm"
            path.write_bytes(synthetic_ct(seed=seed, rows=512, columns=512))
            self.files.append(path)
        size = self.files[0].stat().st_size
        print(f"made {count} synthetic 512x512 CT files ({size / 1e6:.2f} MB each) "
              f"in {time.monotonic() - started:.1f} s")

    def take(self, count: int) -> list[Path]:
        """The next `count` files, never used before by either server in this run."""
        chosen = self.files[self._next_file:self._next_file + count]
        if len(chosen) < count:
            raise RuntimeError("not enough files made")
        self._next_file += count
        return chosen

    # -- servers
    def start_servers(self) -> None:
        self.plain = OrthancProcess(self.workdir / "plain", REPO / "models", overrides={"Plugins": []}).start()
        plugin_overrides: dict[str, Any] = {"Workers": self.args.workers} if self.args.workers else {}
        if self.args.prediction_processes is not None:
            plugin_overrides["PredictionProcesses"] = self.args.prediction_processes
        self.plugin = OrthancProcess(self.workdir / "plugin", Path(self.args.models),
                                     plugin_overrides=plugin_overrides).start()
        self.plain_client, self.plugin_client = Client(self.plain), Client(self.plugin)
        self.servers = {"plain": (self.plain, self.plain_client), "plugin": (self.plugin, self.plugin_client)}
        if self.args.idle_plugin:
            # The plugin loaded with its models but not predicting: the cost of its ingest hooks alone.
            idle_overrides = dict(plugin_overrides or {}, AutoPredict=False)
            self.idle = OrthancProcess(self.workdir / "idle", Path(self.args.models),
                                       plugin_overrides=idle_overrides).start()
            self.servers["plugin-idle"] = (self.idle, Client(self.idle))
        if self.args.eager_plugin:
            eager_overrides = dict(plugin_overrides or {}, IngestFirstAbovePerSecond=0)
            self.eager = OrthancProcess(self.workdir / "eager", Path(self.args.models),
                                        plugin_overrides=eager_overrides).start()
            self.servers["plugin-eager"] = (self.eager, Client(self.eager))
        models = self.plugin_client.get_json("/ai/models")
        self.loaded_models = [f"{m['name']} {m['version']}" for m in models["models"]]
        print(f"plain Orthanc pid {pid_of(self.plain)}, plugin Orthanc pid {pid_of(self.plugin)}")
        print(f"models loaded by the plugin: {', '.join(self.loaded_models) or 'NONE'}"
              + (f"; failed to load: {models['failedToLoad']}" if models["failedToLoad"] else ""))
        self.results["models_loaded"] = self.loaded_models
        self.results["models_failed"] = models["failedToLoad"]

    def stop_servers(self) -> None:
        for server in (getattr(self, "plain", None), getattr(self, "plugin", None), getattr(self, "idle", None),
                       getattr(self, "eager", None)):
            if server is not None:
                server.stop()

    # -- phases
    def warm_up(self) -> None:
        files = self.take(self.args.warmup)
        predicting = [which for which in ("plugin", "plugin-eager") if which in self.servers]
        for path in files:
            data = path.read_bytes()
            self.plain_client.store(data)
            for which in predicting:
                self.servers[which][1].store(data)
        self.processed = {which: len(files) for which in predicting}
        for which in predicting:
            wait_processed(self.servers[which][1], len(files))
        plain_rss, plain_hwm = self.plain.memory_mib()
        plugin_rss, plugin_hwm = self.plugin.memory_mib()
        self.results["rss_after_warmup"] = {"plain_mb": plain_rss, "plugin_mb": plugin_rss,
                                            "added_mb": plugin_rss - plain_rss,
                                            "plain_hwm_mb": plain_hwm, "plugin_hwm_mb": plugin_hwm}
        print(f"warm-up: {len(files)} instances stored in each; RSS plain {plain_rss:.0f} MiB, plugin {plugin_rss:.0f} "
              f"MiB → added {plugin_rss - plain_rss:.0f} MiB")

    def ingest_once(self, which: str, protocol: str, files: list[Path]) -> tuple[float, float]:
        """Store `files` into one server; returns (instances/s, Orthanc CPU seconds per instance)."""
        server, client = self.servers[which]
        payloads = [p.read_bytes() for p in files] if protocol == "http" else []
        cpu_before = cpu_seconds(pid_of(server))
        started = time.monotonic()
        if protocol == "http":
            for data in payloads:
                client.store(data)
        else:
            done = server.store_cstore(files)
            if done.returncode != 0:
                raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-500:]}")
        elapsed = time.monotonic() - started
        if which in self.processed:
            # Let the plugin finish its backlog so the next measurement starts from idle; the CPU it
            # spends after ingest is counted, the time is not.
            self.processed[which] += len(files)
            wait_processed(client, self.processed[which])
        cpu = cpu_seconds(pid_of(server)) - cpu_before
        return len(files) / elapsed, cpu / len(files)

    def ingest(self) -> None:
        rows: list[dict[str, Any]] = []
        for round_index in range(self.args.rounds):
            for protocol in ("http", "cstore"):
                files = self.take(self.args.batch)  # same files into both servers (separate databases)
                names = list(self.servers)
                shift = round_index % len(names)
                order = names[shift:] + names[:shift]
                if round_index % 2:
                    order.reverse()
                measured = {which: self.ingest_once(which, protocol, files) for which in order}
                ratio = measured["plugin"][0] / measured["plain"][0]
                row = {"round": round_index + 1, "protocol": protocol, "order": "/".join(order),
                       "plain_per_s": measured["plain"][0], "plugin_per_s": measured["plugin"][0], "ratio": ratio,
                       "plain_cpu_ms": measured["plain"][1] * 1000, "plugin_cpu_ms": measured["plugin"][1] * 1000}
                idle = ""
                if "plugin-idle" in measured:
                    row["idle_per_s"] = measured["plugin-idle"][0]
                    row["idle_ratio"] = measured["plugin-idle"][0] / measured["plain"][0]
                    idle = f", plugin-idle {row['idle_per_s']:7.1f}/s (ratio {row['idle_ratio']:.3f})"
                if "plugin-eager" in measured:
                    row["eager_per_s"] = measured["plugin-eager"][0]
                    row["eager_ratio"] = measured["plugin-eager"][0] / measured["plain"][0]
                    row["eager_cpu_ms"] = measured["plugin-eager"][1] * 1000
                    idle += f", plugin-eager {row['eager_per_s']:7.1f}/s (ratio {row['eager_ratio']:.3f})"
                rows.append(row)
                print(f"  round {round_index + 1} {protocol:6s} (order {'/'.join(order)}): plain "
                      f"{measured['plain'][0]:7.1f}/s, plugin {measured['plugin'][0]:7.1f}/s, ratio {ratio:.3f}{idle}; "
                      f"Orthanc CPU ms/instance plain {measured['plain'][1] * 1000:.1f}, plugin "
                      f"{measured['plugin'][1] * 1000:.1f} (incl. its tagging work)")
        summary = {}
        for protocol in ("http", "cstore"):
            mine = [r for r in rows if r["protocol"] == protocol]
            summary[protocol] = {
                "plain_median_per_s": statistics.median(r["plain_per_s"] for r in mine),
                "plugin_median_per_s": statistics.median(r["plugin_per_s"] for r in mine),
                "ratio_median": statistics.median(r["ratio"] for r in mine),
                "ratio_min": min(r["ratio"] for r in mine),
                "ratio_max": max(r["ratio"] for r in mine),
                "plain_cpu_ms_median": statistics.median(r["plain_cpu_ms"] for r in mine),
                "plugin_cpu_ms_median": statistics.median(r["plugin_cpu_ms"] for r in mine),
            }
            if self.args.idle_plugin:
                summary[protocol]["idle_median_per_s"] = statistics.median(r["idle_per_s"] for r in mine)
                summary[protocol]["idle_ratio_median"] = statistics.median(r["idle_ratio"] for r in mine)
            if self.args.eager_plugin:
                summary[protocol]["eager_median_per_s"] = statistics.median(r["eager_per_s"] for r in mine)
                summary[protocol]["eager_ratio_median"] = statistics.median(r["eager_ratio"] for r in mine)
                summary[protocol]["eager_ratio_min"] = min(r["eager_ratio"] for r in mine)
                summary[protocol]["eager_ratio_max"] = max(r["eager_ratio"] for r in mine)
                summary[protocol]["eager_cpu_ms_median"] = statistics.median(r["eager_cpu_ms"] for r in mine)
        self.results["ingest_rounds"] = rows
        self.results["ingest"] = summary

    def latency(self) -> None:
        before = self.plugin_client.get_json("/ai/status")["latencySeconds"]
        walls, with_upload = [], []
        for path in self.take(self.args.latency_samples):
            data = path.read_bytes()
            time.sleep(0.05)  # idle between samples: latency, not throughput
            started = time.monotonic()
            instance_id = self.plugin_client.store(data)
            stored = time.monotonic()
            while True:
                status, _ = self.plugin_client.request("GET", f"/instances/{instance_id}/metadata/AIStatus")
                if status == 200:
                    break
                if time.monotonic() - stored > 60:
                    raise TimeoutError(f"no AIStatus for {instance_id} after 60 s")
                time.sleep(0.002)
            done = time.monotonic()
            walls.append((done - stored) * 1000)
            with_upload.append((done - started) * 1000)
        self.processed["plugin"] += len(walls)
        wait_processed(self.plugin_client, self.processed["plugin"])
        predictions = self.plugin_client.get_json(f"/ai/instances/{instance_id}/predictions")
        after = self.plugin_client.get_json("/ai/status")["latencySeconds"]
        self.results["latency"] = {
            "samples": len(walls),
            "wall_p50_ms": quantile(walls, 0.5), "wall_p95_ms": quantile(walls, 0.95),
            "with_upload_p50_ms": quantile(with_upload, 0.5), "with_upload_p95_ms": quantile(with_upload, 0.95),
            "plugin_reported_p50_ms": (after["p50"] or 0) * 1000, "plugin_reported_p95_ms": (after["p95"] or 0) * 1000,
            "plugin_reported_window": after["count"],
            "last_instance_predictions": [(p.get("model"), p.get("topClass"))
                                          for p in predictions.get("predictions", [])],
        }
        print(f"  wall store→AIStatus readable: p50 {quantile(walls, 0.5):.1f} ms, p95 {quantile(walls, 0.95):.1f} ms "
              f"(incl. upload: p50 {quantile(with_upload, 0.5):.1f} ms); plugin /ai/status latencySeconds over its "
              f"last {after['count']} (all phases so far): p50 {(after['p50'] or 0) * 1000:.1f} ms, p95 "
              f"{(after['p95'] or 0) * 1000:.1f} ms")
        del before

    def sustained(self) -> None:
        files = self.take(self.args.sustained)  # the same files into each predicting server, one after the other
        self.results["sustained"] = {}
        for which in self.processed:
            server, client = self.servers[which]
            # CPU of Orthanc and of the whole machine (the sender included), during the C-STORE and after it:
            # how many of the cores the processing used, and how many were left idle.
            cpu_before, machine_before = cpu_seconds(pid_of(server)), machine_cpu_seconds()
            started = time.monotonic()
            done = server.store_cstore(files)
            ingested = time.monotonic()
            cpu_ingested, machine_ingested = cpu_seconds(pid_of(server)), machine_cpu_seconds()
            if done.returncode != 0:
                raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-500:]}")
            self.processed[which] += len(files)
            finished = wait_processed(client, self.processed[which])
            cpu_after, machine_after = cpu_seconds(pid_of(server)), machine_cpu_seconds()
            cpu = cpu_after - cpu_before
            rate = len(files) / (finished - started)
            cores = {
                "orthanc_cores_during_ingest": (cpu_ingested - cpu_before) / (ingested - started),
                "orthanc_cores_after_ingest": (cpu_after - cpu_ingested) / (finished - ingested),
                "machine_busy_during_ingest": _busy(machine_before, machine_ingested),
                "machine_busy_after_ingest": _busy(machine_ingested, machine_after),
            }
            self.results["sustained"][which] = {
                "instances": len(files), "ingest_s": ingested - started, "total_s": finished - started,
                "processed_per_s": rate, "cpu_ms_per_instance": cpu / len(files) * 1000, **cores}
            print(f"  {which}: {len(files)} instances by C-STORE: ingest {ingested - started:.1f} s, all tagged "
                  f"after {finished - started:.1f} s → {rate:.1f} processed instances/s; Orthanc+plugin CPU "
                  f"{cpu / len(files) * 1000:.1f} ms/instance")
            print(f"    cores used by Orthanc during / after the C-STORE: {cores['orthanc_cores_during_ingest']:.2f} / "
                  f"{cores['orthanc_cores_after_ingest']:.2f} of {os.cpu_count()}; the machine busy "
                  f"{cores['machine_busy_during_ingest']:.0%} / {cores['machine_busy_after_ingest']:.0%}")

    def memory_at_end(self) -> None:
        plain_rss, plain_hwm = self.plain.memory_mib()
        plugin_rss, plugin_hwm = self.plugin.memory_mib()
        self.results["rss_at_end"] = {"plain_mb": plain_rss, "plugin_mb": plugin_rss,
                                      "added_mb": plugin_rss - plain_rss,
                                      "plain_hwm_mb": plain_hwm, "plugin_hwm_mb": plugin_hwm}

    def stage_profile(self) -> None:
        """One 512x512 CT through the pipeline's stages outside Orthanc, and the file's REST round trip."""
        from orthanc_ai.config import parse_config
        from orthanc_ai.dicom.decoding import decode_analysed_frame, read_header
        from orthanc_ai.dicom.tagging import add_results
        from orthanc_ai.models.file_prediction import SOFTWARE
        from orthanc_ai.models.preprocessing import InputTensors
        from orthanc_ai.models.registry import ModelRegistry

        config = parse_config({"OrthancAI": {"ModelsDirectory": str(Path(self.args.models).resolve())}}, REPO)
        registry = ModelRegistry.load(config)
        data = self.files[0].read_bytes()
        runs = self.args.profile_runs
        timings: dict[str, list[float]] = {}

        def timed(name: str, function: Callable[[], Any]) -> Any:
            started = time.perf_counter()
            value = function()
            timings.setdefault(name, []).append((time.perf_counter() - started) * 1000)
            return value

        instance_id = self.plain_client.store(data)
        for _ in range(runs):
            timed("HTTP GET /instances/{id}/file (plain server)",
                  lambda: self.plain_client.request("GET", f"/instances/{instance_id}/file"))
            instance = timed("parse header (pydicom)", lambda: read_header(data, config.max_frame_pixels))
            frame = timed("decode pixels", functools.partial(decode_analysed_frame, instance))
            chosen, _ = registry.applicable(instance.header)
            results = []
            inputs = InputTensors(frame, instance.pixels)  # shared: one preprocessing per specification
            for model in chosen:
                results.append(timed(f"preprocess (first of its specification) + inference {model.card.name}",
                                     functools.partial(model.predict, inputs, frame_number=1,
                                                       source_file_size=len(data))))
            tagged = timed("write private block (pydicom)",
                           functools.partial(add_results, data, config.private_creator, SOFTWARE, results))
            timed("HTTP POST /instances tagged copy (plain server, overwrite)",
                  functools.partial(self.plain_client.request, "POST", "/instances", tagged))
        self.results["stage_profile_ms"] = {name: statistics.median(values) for name, values in timings.items()}
        for name, value in self.results["stage_profile_ms"].items():
            print(f"  {name:62s} {value:7.2f} ms (median of {runs})")

    def model_benchmark(self) -> None:
        script = REPO / "bench" / "bench_models.py"
        if not script.exists():
            print("  bench/bench_models.py not present: skipped")
            return
        folders = [str(p.parent) for p in sorted(Path(self.args.models).glob("*/model.onnx"))]
        done = subprocess.run([sys.executable, str(script), "--runs", "200", *folders], capture_output=True, text=True,
                              timeout=900)
        output = (done.stdout + done.stderr).strip()
        self.results["bench_models_output"] = output
        print("\n".join("  " + line for line in output.splitlines()))

    # -- report
    def report(self) -> None:
        r = self.results
        ingest = r["ingest"]
        print("\n=== summary (targets in brackets) ===")
        print(f"{'measure':58s} {'plain':>10s} {'plugin':>10s} {'ratio/value':>12s}")
        for protocol, label in (("http", "ingest HTTP POST /instances, instances/s"),
                                ("cstore", "ingest C-STORE (storescu), instances/s")):
            s = ingest[protocol]
            print(f"{label:58s} {s['plain_median_per_s']:10.1f} {s['plugin_median_per_s']:10.1f} "
                  f"{s['ratio_median']:12.3f}  [≥ {TARGETS['ingest_ratio']}] (rounds "
                  f"{s['ratio_min']:.3f}–{s['ratio_max']:.3f})")
            print(f"{'  Orthanc CPU ms/instance (plugin: incl. tagging)':58s} {s['plain_cpu_ms_median']:10.1f} "
                  f"{s['plugin_cpu_ms_median']:10.1f}")
            if "idle_ratio_median" in s:
                print(f"{'  plugin loaded, AutoPredict false: instances/s, ratio':58s} {'':>10s} "
                      f"{s['idle_median_per_s']:10.1f} {s['idle_ratio_median']:12.3f}")
            if "eager_ratio_median" in s:
                print(f"{'  plugin with ingest first off: instances/s, ratio':58s} {'':>10s} "
                      f"{s['eager_median_per_s']:10.1f} {s['eager_ratio_median']:12.3f}  (rounds "
                      f"{s['eager_ratio_min']:.3f}–{s['eager_ratio_max']:.3f}; CPU ms/instance "
                      f"{s['eager_cpu_ms_median']:.1f})")
        lat = r["latency"]
        print(f"{'store→tags wall p50 / p95, ms (512x512 CT)':58s} {'':>10s} "
              f"{lat['wall_p50_ms']:5.1f}/{lat['wall_p95_ms']:<5.1f}{'':>11s}[p50 ≤ {TARGETS['latency_p50_ms']:.0f}]")
        print(f"{'plugin pipeline time p50 / p95, ms (/ai/status)':58s} {'':>10s} "
              f"{lat['plugin_reported_p50_ms']:5.1f}/{lat['plugin_reported_p95_ms']:<5.1f}")
        for which, sus in r["sustained"].items():
            label = "sustained processed instances/s" + (" (ingest first off)" if which == "plugin-eager" else "")
            print(f"{label:58s} {'':>10s} {sus['processed_per_s']:10.1f} {'':>12s}  "
                  f"[≥ {TARGETS['sustained_per_s']:.0f}]")
        for key, label in (("rss_after_warmup", "RSS after warm-up, MiB"), ("rss_at_end", "RSS at the end, MiB")):
            m = r[key]
            print(f"{label:58s} {m['plain_mb']:10.0f} {m['plugin_mb']:10.0f} {m['added_mb']:+12.0f}  "
                  f"[added ≤ {TARGETS['added_rss_mb']:.0f}]")
        print(f"models: {', '.join(r['models_loaded'])}")
        print(f"load average at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")

    def run(self) -> None:
        machine = machine_description()
        machine["environment of both Orthancs"] = " ".join(self.args.env) or "(unchanged)"
        self.results["machine"] = machine
        print("=== machine ===")
        for key, value in machine.items():
            print(f"  {key}: {value}")
        needed = (self.args.warmup + self.args.rounds * 2 * self.args.batch + self.args.latency_samples
                  + self.args.sustained)
        self.make_files(needed)
        try:
            self.start_servers()
            print("\n=== warm-up ===")
            self.warm_up()
            print(f"\n=== ingest: {self.args.rounds} rounds x {self.args.batch} instances per protocol, plain vs "
                  "plugin interleaved ===")
            self.ingest()
            print(f"\n=== store-to-tags latency, {self.args.latency_samples} instances one at a time ===")
            self.latency()
            print("\n=== sustained throughput ===")
            self.sustained()
            self.memory_at_end()
            print("\n=== stage profile of one 512x512 CT (outside Orthanc) ===")
            self.stage_profile()
            if not self.args.skip_models:
                print("\n=== per-model inference (bench/bench_models.py) ===")
                self.model_benchmark()
            self.report()
        finally:
            self.stop_servers()
            if self.args.keep:
                print(f"work directory kept: {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.results, indent=2, default=str))
            print(f"results written to {self.args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved ingest rounds per protocol")
    parser.add_argument("--batch", type=int, default=100, help="instances per ingest round")
    parser.add_argument("--latency-samples", type=int, default=40)
    parser.add_argument("--sustained", type=int, default=300, help="instances for the sustained-throughput phase")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=None, help="OrthancAI.Workers (default: orthanc.json's)")
    parser.add_argument("--prediction-processes", type=int, default=None,
                        help="OrthancAI.PredictionProcesses (default: orthanc.json's)")
    parser.add_argument("--models", default=str(REPO / "models"), help="models directory (default: models/)")
    parser.add_argument("--idle-plugin", action="store_true",
                        help="also interleave an Orthanc with the plugin loaded but AutoPredict false")
    parser.add_argument("--eager-plugin", action="store_true",
                        help="also interleave an Orthanc with the plugin predicting and ingest first off")
    parser.add_argument("--skip-models", action="store_true", help="do not run bench/bench_models.py")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory (logs, storage)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for both Orthanc processes, e.g. OPENBLAS_NUM_THREADS=1 "
                             "(repeatable)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    for assignment in args.env:
        name, _, value = assignment.partition("=")
        os.environ[name] = value  # read by OrthancProcess.start (the children), after numpy was imported here
    Bench(args).run()


if __name__ == "__main__":
    main()
