"""Static guards on the Orthanc Explorer extension: untrusted text never goes through an HTML parser."""
from __future__ import annotations

import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "plugin" / "orthanc_ai" / "web" / "explorer" / "explorer.js"


def code_lines() -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", SCRIPT.read_text(encoding="utf-8"), flags=re.S)
    return [line.split("//")[0] for line in text.splitlines()]


def test_no_html_parsing_of_data():
    for number, line in enumerate(code_lines(), start=1):
        for pattern in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", ".html(", "$('<", '$("<',
                        ".append('<", ".prepend('<", ".before('<", ".after('<", "eval(", "new Function"):
            assert pattern not in line, f"explorer.js:{number} uses {pattern}: build the DOM with textContent"


def test_stylesheet_and_hooks():
    text = SCRIPT.read_text(encoding="utf-8")
    assert "ORTHANC_AI_CSS" in text  # the glue puts explorer.css before the script as a JSON string
    for page in ("#instance", "#series", "#study", "#upload"):
        assert f"$('{page}').live('pagebeforeshow'" in text
