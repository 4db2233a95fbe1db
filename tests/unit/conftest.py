"""The glue imported with the ``orthanc`` module mocked, for the tests of what no real Orthanc can show."""
from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from types import ModuleType
from unittest.mock import MagicMock

import pytest

GLUE = "orthanc_ai.orthanc.orthanc_glue"


@pytest.fixture
def glue(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setitem(sys.modules, "orthanc", MagicMock())
    monkeypatch.setitem(sys.modules, GLUE, None)  # so that teardown removes the module imported below
    monkeypatch.delitem(sys.modules, GLUE)
    module = importlib.import_module(GLUE)
    yield module
    module._REST_THREADS.shutdown(wait=True)
