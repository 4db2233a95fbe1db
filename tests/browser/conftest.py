"""Browser tests of the Orthanc Explorer extension: Playwright driving Debian's Chromium, headless.

No browser is downloaded: Playwright launches /usr/bin/chromium (``make test`` installs Debian's
``chromium``). Without it, or without the ``playwright`` package, these tests skip and say why.
"""
from __future__ import annotations

import base64
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_MODELS
from tests.support.onnx_models import build_model
from tests.support.orthanc_process import PROJECT, OrthancProcess

CHROMIUM = Path(os.environ.get("ORTHANC_AI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ARTIFACTS = PROJECT / "test-artifacts"
# A model whose class names are markup: what it writes into the tags must show as text, never run.
XSS_MODEL = "test-mr-xss"
XSS_CLASSES = ['<img src=x id="ai-xss-img" onerror="window.__xss=1">', '<script>window.__xss=2</script>']



def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not CHROMIUM.exists():
        return (f"browser tests need Chromium at {CHROMIUM} (Debian: apt-get install chromium; "
                "'make test' installs it)")
    if importlib.util.find_spec("playwright") is None:
        return "browser tests need the playwright package (requirements-dev.txt; 'make test' installs it)"
    return None


class ExplorerOrthanc(OrthancProcess):
    """An Orthanc whose HTTP calls from the tests carry credentials when authentication is on."""

    credentials: tuple[str, str] | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
        headers = dict(headers or {})
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            headers.setdefault("Authorization", f"Basic {token}")
        return super().request(method, path, body, headers, timeout)


@pytest.fixture(scope="session")
def browser_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser-models")
    for seed, (name, (classes, applies_to, window)) in enumerate(TEST_MODELS.items()):
        build_model(folder, name, classes, applies_to, seed=seed, ct_window=window)
    build_model(folder, XSS_MODEL, XSS_CLASSES, {"Modality": ["MR"]}, seed=7)
    return folder


def start_explorer_orthanc(workdir: Path, models: Path, credentials: tuple[str, str] | None = None,
                           **overrides: Any) -> ExplorerOrthanc:
    # Automatic prediction off: the tests predict through the Explorer's button and upload.
    server = ExplorerOrthanc(workdir, models, overrides, {"AutoPredict": False})
    server.credentials = credentials
    server.start()
    return server


@pytest.fixture(scope="module")
def explorer_orthanc(tmp_path_factory: pytest.TempPathFactory, browser_models: Path) -> Iterator[ExplorerOrthanc]:
    server = start_explorer_orthanc(tmp_path_factory.mktemp("orthanc-explorer"), browser_models)
    yield server
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


class PageWatch:
    """A page, and what it did that it should not: dialogs opened, script errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def watched_page(browser: Any) -> Iterator[PageWatch]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    watch = PageWatch(context.new_page())
    yield watch
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
