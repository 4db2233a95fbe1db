"""A real Orthanc process for the tests: own temporary storage, free loopback ports, the project's plugin."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[2]
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def project_configuration() -> dict[str, Any]:
    return json.loads((PROJECT / "orthanc.json").read_text())


def stop_all(servers: Iterable[OrthancProcess]) -> None:
    """SIGTERM every server still running, then fail if one did not exit 0: a crash at shutdown is a bug."""
    servers = list(servers)
    for server in servers:
        server.stop()
    crashed = {server.workdir.name: f"exit {server.exit_code_after_sigterm}:\n{server.log_tail(20)}"
               for server in servers if server.exit_code_after_sigterm not in (None, 0)}
    assert not crashed, crashed


class OrthancProcess:
    def __init__(self, workdir: Path, models_directory: Path, overrides: dict[str, Any] | None = None,
                 plugin_overrides: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.aet = "ORTHANC"
        self.log_path = workdir / "orthanc.log"
        config = project_configuration()
        config.update(
            {
                "Name": f"test-{workdir.name}",
                "StorageDirectory": str(workdir / "storage"),
                "IndexDirectory": str(workdir / "index"),
                "HttpPort": self.http_port,
                "DicomPort": self.dicom_port,
                "PythonScript": str(PROJECT / "plugin" / "orthanc_ai_plugin.py"),
                # No series becomes stable (and gets its Structured Reports) within a test unless the test
                # says so (test_structured_reports: 2 s), so other tests count only the images they stored.
                "StableAge": 3600,
            }
        )
        config["OrthancAI"] = dict(config["OrthancAI"], ModelsDirectory=str(models_directory), VirtualEnv=sys.prefix)
        config["OrthancAI"].update(plugin_overrides or {})
        config.update(overrides or {})
        self.config = config
        self.config_path = workdir / "orthanc.json"
        self.process: subprocess.Popen | None = None
        # Exit code of the last stop() that had to send SIGTERM; anything but 0 is a crash at shutdown.
        self.exit_code_after_sigterm: int | None = None

    def start(self, timeout: float = 60.0, expect_failure: bool = False) -> OrthancProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.exit_code_after_sigterm = None
        self.config_path.write_text(json.dumps(self.config, indent=2))
        env = dict(os.environ, TCP_NODELAY="1")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([ORTHANC, "--verbose", str(self.config_path)], cwd=self.workdir,
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if expect_failure:
                    return self
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system")
                if expect_failure:
                    raise RuntimeError("Orthanc started although a failure was expected")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"Orthanc did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0, settle: bool = True) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            if settle:
                self._wait_for_stable_events()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise RuntimeError(f"Orthanc did not stop within {timeout} s of SIGTERM:\n{self.log_tail()}") from None
            self.exit_code_after_sigterm = self.process.returncode
        self._log.close()
        return self.process.returncode

    def python_plugin_version(self) -> tuple[int, ...]:
        """The running Orthanc's Python plugin version, as numbers: (4, 0), (5, 0), (7, 1)."""
        return tuple(int(part) for part in str(self.get("/plugins/python")["Version"]).split(".")[:2])

    def _wait_for_stable_events(self) -> None:
        """With Python plugin 7.1 and a short StableAge, wait until Orthanc has reported everything stable.

        That plugin frees twice any change that reaches it while Orthanc stops (a series reported stable then,
        StableAge after its last instance), and Orthanc dies at exit: its own bug, seen with a five-line plugin
        (test_upstream_shutdown_crash.py). Tests that shorten StableAge would otherwise stop Orthanc in that
        window by chance; on the other generations they stop it at once, and it must exit 0 all the same.
        """
        stable_age = int(self.config.get("StableAge", 60))
        try:
            if stable_age > 10 or self.python_plugin_version() < (7, 1):
                return
            last, quiet_since = None, time.monotonic()
            deadline = quiet_since + 60
            while time.monotonic() < deadline:
                current = self.get("/changes?last")["Last"]
                if current != last:
                    last, quiet_since = current, time.monotonic()
                elif time.monotonic() - quiet_since > stable_age + 2:
                    return
                time.sleep(0.25)
        except (urllib.error.URLError, ConnectionError, OSError):
            return  # Orthanc no longer answers: SIGTERM it all the same, and let its exit code speak

    def kill(self) -> None:
        """SIGKILL, as a power loss or the OOM killer would: no shutdown code runs."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self._log.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory_mib(self) -> tuple[float, float]:
        """Resident memory now and the peaks so far (VmRSS, VmHWM) in MiB, of the Orthanc process and its
        children (the plugin's prediction processes), summed."""
        assert self.process is not None
        fields = {"VmRSS": 0.0, "VmHWM": 0.0}
        for pid in [self.process.pid, *child_pids(self.process.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # ended meanwhile
            for line in status.splitlines():
                key, _, value = line.partition(":")
                if key in fields:
                    fields[key] += int(value.split()[0]) / 1024
        return fields["VmRSS"], fields["VmHWM"]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- HTTP -------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise urllib.error.URLError(f"GET {path} → {status}: {body[:300]!r}")
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def get_bytes(self, path: str) -> bytes:
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path} → {status}"
        return body

    def post_json(self, path: str, payload: Any = None) -> tuple[int, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        status, answer = self.request("POST", path, body)
        try:
            return status, json.loads(answer)
        except ValueError:
            return status, answer

    def store_http(self, dicom: bytes) -> dict[str, Any]:
        status, answer = self.request("POST", "/instances", dicom)
        assert status == 200, f"POST /instances → {status}: {answer[:300]!r}"
        return json.loads(answer)

    def store_cstore(self, files: Sequence[Path], calling_aet: str = "MODALITY",
                     storescu_options: Sequence[str] = ()) -> subprocess.CompletedProcess:
        """C-STORE with DCMTK's storescu, as a modality would.

        storescu proposes only uncompressed transfer syntaxes unless told otherwise: pass e.g. ``("-xy",)``
        to also propose JPEG baseline, as a modality sending JPEG files does.
        """
        command = ["storescu", "-aet", calling_aet, "-aec", self.aet, "-R", *storescu_options,
                   "127.0.0.1", str(self.dicom_port), *map(str, files)]
        return subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, TCP_NODELAY="1"))

    def status(self) -> dict[str, Any]:
        return self.get("/ai/status")

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}; status: {self.status()}")

    def wait_idle(self, expected_outcomes: int, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the plugin has an outcome for `expected_outcomes` instances and nothing is queued."""
        def done() -> bool:
            s = self.status()
            total = s["predicted"] + s["unchanged"] + s["skipped"] + s["failed"] + s["gone"]
            return total >= expected_outcomes and s["queueLength"] == 0 and s["inProgress"] == 0
        self.wait_until(done, timeout, f"{expected_outcomes} outcomes")
        return self.status()


def proc_stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, …, utime, stime at 11 and 12);
    raises OSError once the process is gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_pids(parent: int) -> list[int]:
    """The running processes whose parent is ``parent``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = proc_stat_fields(int(stat.parent.name))
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(stat.parent.name))
    return children
