"""REST calls into Orthanc: a transaction the database could not serialize among concurrent ones (several
nodes on one PostgreSQL index under load) is tried again; nothing else is. No real Orthanc produces that
error on demand, so the glue runs with the ``orthanc`` module mocked."""
from __future__ import annotations

import pytest


class _OrthancError(Exception):
    """Stands for orthanc.OrthancException: its args carry Orthanc's error code."""


@pytest.fixture
def calls(glue, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    glue.orthanc.OrthancException = _OrthancError
    glue.orthanc.ErrorCode.UNKNOWN_RESOURCE = 17
    glue.orthanc.ErrorCode.DATABASE_CANNOT_SERIALIZE = 42
    glue.orthanc.ErrorCode.REVISION = 43
    monkeypatch.setattr(glue, "SERIALIZATION_PAUSE_SECONDS", 0)
    return []


def failing(calls: list[str], code: int, times: int):
    def call(uri: str) -> bytes:
        calls.append(uri)
        if len(calls) <= times:
            raise _OrthancError(code, "what Orthanc said")
        return b"done"
    return call


def test_a_call_the_database_could_not_serialize_is_tried_again(glue, calls):
    assert glue._call(failing(calls, 42, times=2), "/instances") == b"done"
    assert calls == ["/instances"] * 3


def test_it_gives_up_after_a_few_retries(glue, calls):
    with pytest.raises(_OrthancError):
        glue._call(failing(calls, 42, times=100), "/instances")
    assert len(calls) == glue.SERIALIZATION_RETRIES + 1


def test_other_errors_are_not_tried_again(glue, calls):
    with pytest.raises(_OrthancError):
        glue._call(failing(calls, 8, times=1), "/instances")
    with pytest.raises(glue.MetadataConflict):
        glue._call(failing(calls, 43, times=2), "/instances/x/metadata/AIClaim")
    assert len(calls) == 2
