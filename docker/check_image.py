#!/usr/bin/env python3
"""Build-time check of the image.

    python3 check_image.py [HOME] [CONFIGURATION]   (defaults: /opt/orthanc-ai, /etc/orthanc/orthanc-ai.json)

* the plugin's dependencies import with the image's Python (the one the Python plugin embeds);
* the configuration file passes the plugin's own checks (OverwriteInstances, every user metadata the
  plugin needs, the "OrthancAI" section), so a setting the plugin gained and this file lacks fails the
  build instead of Orthanc's start-up;
* every model in the models directory loads (card valid, ONNX Runtime accepts it, shapes match).
"""
import importlib
import json
import sys
from pathlib import Path

HOME = Path(sys.argv[1] if len(sys.argv) > 1 else "/opt/orthanc-ai")
CONFIGURATION = Path(sys.argv[2] if len(sys.argv) > 2 else "/etc/orthanc/orthanc-ai.json")
sys.path.insert(0, str(HOME / "plugin"))

import highdicom  # noqa: E402
import numpy  # noqa: E402
import onnxruntime  # noqa: E402
import pydicom  # noqa: E402

from orthanc_ai.config import check_orthanc_settings, parse_config  # noqa: E402
from orthanc_ai.models.registry import ModelRegistry  # noqa: E402

for decoder in ("pylibjpeg", "libjpeg", "openjpeg", "rle"):  # pydicom's decoders of compressed syntaxes
    importlib.import_module(decoder)
print(f"Python {sys.version.split()[0]}, numpy {numpy.__version__}, pydicom {pydicom.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, highdicom {highdicom.__version__}")
configuration = json.loads(CONFIGURATION.read_text())
problems = check_orthanc_settings(configuration)
if problems:
    sys.exit(f"{CONFIGURATION}: " + "; ".join(problems))
config = parse_config(configuration, CONFIGURATION.parent)
if not Path(configuration.get("PythonScript", "")).is_file():
    sys.exit(f"{CONFIGURATION}: PythonScript {configuration.get('PythonScript')!r} is not a file")
print(f"{CONFIGURATION}: accepted (models directory {config.models_directory}, {config.workers} workers)")
registry = ModelRegistry.load(config)
for name, model in registry.models.items():
    print(f"model {name} {model.card.version}: loads")
if registry.load_errors:
    sys.exit(f"models that do not load: {registry.load_errors}")
if not registry.models:
    sys.exit(f"no model found in {config.models_directory}")
