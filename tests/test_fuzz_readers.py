"""atheris on the plugin's pure readers for a fixed time budget (tests/fuzz/fuzz_readers.py): no exception
but the documented skip escapes. ORTHANC_AI_ATHERIS_SECONDS sets the budget (CI: the default)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.support.dicom_files import DATA, secondary_capture, synthetic_ct
from tests.support.orthanc_process import PROJECT

SECONDS = int(os.environ.get("ORTHANC_AI_ATHERIS_SECONDS", "60"))
MAX_SEED_BYTES = 100_000  # libFuzzer's mutations are cheap on small inputs


def seed_corpus(folder: Path) -> int:
    """The small real-world files where ../shared/data is present, and synthetic ones always."""
    folder.mkdir()
    files = [synthetic_ct(seed=1), secondary_capture(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))]
    robustness = DATA / "dicom-robustness"
    if robustness.is_dir():
        files += [p.read_bytes() for p in sorted(robustness.rglob("*")) if p.is_file()
                  and p.stat().st_size <= MAX_SEED_BYTES and "Nested" not in p.name]
    for number, dicom in enumerate(files):
        (folder / f"seed-{number}.dcm").write_bytes(dicom)
    return len(files)


def test_atheris_finds_no_exception_but_the_skip(tmp_path: Path):
    seeds = seed_corpus(tmp_path / "corpus")
    artifacts = PROJECT / "test-artifacts" / "atheris"
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-W", "ignore", str(PROJECT / "tests" / "fuzz" / "fuzz_readers.py"),
               str(tmp_path / "corpus"), f"-max_total_time={SECONDS}", "-seed=20261202", "-rss_limit_mb=3000",
               f"-artifact_prefix={artifacts}/"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 300)
    output = result.stdout + result.stderr
    done = re.search(r"DONE\s+cov: (\d+) ft: (\d+)", output)
    runs = re.search(r"Done (\d+) runs in (\d+) second", output)
    print(f"\natheris: {seeds} seeds, {runs.group(1) if runs else '?'} executions in "
          f"{runs.group(2) if runs else '?'} s, coverage {done.group(1) if done else '?'} edges, "
          f"{done.group(2) if done else '?'} features")
    assert result.returncode == 0, output[-5000:]
    assert runs and int(runs.group(1)) > 1000, output[-2000:]
