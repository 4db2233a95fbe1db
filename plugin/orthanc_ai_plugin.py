"""Entry point named by Orthanc's "PythonScript" option.

The Python plugin embeds the system's Python; the plugin's dependencies
(numpy, pydicom, onnxruntime, pylibjpeg) live in a virtual environment made
from that same interpreter, whose site-packages is put on sys.path here.
Where they are installed system-wide (the Docker image), no virtual
environment is needed.
"""
import json
import os
import sys
from pathlib import Path

import orthanc

# Before numpy is first imported: one BLAS/OpenMP thread per worker. Otherwise OpenBLAS starts a
# thread per core for the resampling's matrix products, and on a small machine those threads fight
# the other workers and Orthanc's own ingest (docs/benchmarks.md: 2.4x throughput on 2 cores).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

PLUGIN_DIRECTORY = Path(__file__).resolve().parent


def _virtual_environment() -> Path:
    configured = json.loads(orthanc.GetConfiguration()).get("OrthancAI", {}).get("VirtualEnv")
    if configured:
        path = Path(configured)
        if not path.is_absolute():
            config_path = Path(orthanc.GetConfigurationPath())
            path = (config_path if config_path.is_dir() else config_path.parent) / path
        return path
    return Path(os.environ.get("ORTHANC_AI_VENV", PLUGIN_DIRECTORY.parent / ".venv"))


def _add_site_packages() -> None:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = _virtual_environment() / "lib" / version / "site-packages"
    if site_packages.is_dir():
        sys.path.insert(0, str(site_packages))
    sys.path.insert(0, str(PLUGIN_DIRECTORY))


_add_site_packages()
try:
    from orthanc_ai.orthanc import orthanc_glue
except ImportError as error:
    orthanc.LogError(
        f"OrthancAI: cannot import its dependencies ({error}). Run 'make install', or install "
        f"numpy, pydicom and onnxruntime for Python {sys.version.split()[0]}, or set OrthancAI.VirtualEnv."
    )
    raise

orthanc_glue.register()
