"""schemathesis against a real Orthanc with the plugin, from docs/openapi.yaml: no 500, no crash, every
error a JSON {"error": …} with a 4xx status and the route's documented status codes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.dicom_files import synthetic_ct
from tests.support.orthanc_process import PROJECT

SCHEMA = PROJECT / "docs" / "openapi.yaml"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def schema_with_examples(path: Path, examples: dict[str, str]) -> Path:
    """docs/openapi.yaml with real resources as the path parameter's examples, so that bodies and queries
    are fuzzed against resources that exist, not only answered 404."""
    schema = yaml.safe_load(SCHEMA.read_text())
    for route, operations in schema["paths"].items():
        level = route.split("/")[2]
        if level in examples:
            for operation in operations.values():
                # The path's id gets the example; query parameters (the heatmap's model, class …) stay.
                operation["parameters"] = [
                    dict(schema["components"]["parameters"]["Id"], example=examples[level])
                    if parameter == {"$ref": "#/components/parameters/Id"} else parameter
                    for parameter in operation.get("parameters", [])]
    path.write_text(yaml.safe_dump(schema, sort_keys=False))
    return path


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_every_error_is_json(orthanc, tmp_path: Path):
    stored = orthanc.store_http(synthetic_ct(seed=61))
    orthanc.wait_idle(1)
    schema = schema_with_examples(tmp_path / "openapi.yaml", {
        "instances": stored["ID"], "series": stored["ParentSeries"], "studies": stored["ParentStudy"]})
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", str(schema), "--url", orthanc.url,
               "--checks", CHECKS, "--max-examples", "40", "--workers", "1", "--seed", "20261202",
               "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
               "--request-timeout", "60"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1500,
                            env=dict(os.environ, NO_COLOR="1", SCHEMATHESIS_TELEMETRY="false"))
    output = result.stdout + result.stderr
    summary = [line for line in output.splitlines() if re.search(r"passed|failed|error", line, re.I)][-8:]
    print("\n" + "\n".join(summary))
    assert orthanc.alive, f"Orthanc died:\n{orthanc.log_tail()}"
    assert result.returncode == 0, output[-6000:]
    assert "A bad revision number" not in orthanc.log_text()

