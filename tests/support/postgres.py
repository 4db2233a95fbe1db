"""A throw-away PostgreSQL server on loopback for the multi-node tests (Debian's postgresql package)."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.orthanc_process import free_port


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    def __init__(self) -> None:
        binaries = postgres_bin()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL server binaries not found (Debian package postgresql)")
        self.bin = binaries
        self.port = free_port()
        # Outside pytest's private tmp folders: the server runs as the 'postgres' user when we are root.
        self.directory = Path(tempfile.mkdtemp(prefix="orthanc-ai-pg-"))
        os.chmod(self.directory, 0o755)
        self.data = self.directory / "data"
        self.as_root = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if self.as_root:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1", "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "orthanc")
        return self

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def orthanc_settings(self) -> dict:
        """Orthanc configuration for the PostgreSQL index and storage plugins on this server."""
        return {
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so",
                        "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so",
                        "/usr/share/orthanc/plugins/libOrthancPostgreSQLStorage.so"],
            "PostgreSQL": {"EnableIndex": True, "EnableStorage": True, "Host": "127.0.0.1", "Port": self.port,
                           "Database": "orthanc", "Username": "postgres", "Password": "", "Lock": False,
                           "EnableSsl": False},
        }
