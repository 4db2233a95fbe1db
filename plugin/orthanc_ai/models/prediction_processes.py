"""Prediction processes: the CPU-bound Python of each prediction, off the plugin's GIL.

All of the plugin's Python runs in Orthanc's one embedded interpreter, so its worker threads take turns
on one GIL, and a node used about one of two cores while it caught up with a burst (docs/benchmarks.md,
"Prediction processes"). Each prediction process is a child Python that loads the models once and
answers file_prediction requests over a pair of pipes: a worker thread sends the file, waits for the
answer without holding the GIL, and gets the results and the tagged file back; reading the file and
storing the tagged copy stay in Orthanc. Only Orthanc's process can call Orthanc, so a frame that needs
Orthanc's own decoder comes back as NeedsOrthancDecoding and is predicted in the thread.

A process that dies (a decoder crashing on a damaged file) fails that one instance and is started
again; Orthanc is not touched. The processes end when the plugin stops (their request pipe closes) or
when Orthanc dies (the same).
"""
from __future__ import annotations

import fcntl
import logging
import os
import pickle
import queue
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from ..config import PluginConfig
from ..dicom.decoding import NeedsOrthancDecoding
from .file_prediction import FilePrediction, FileRequest, predict_file
from .registry import ModelRegistry

log = logging.getLogger(__name__)

# The child's whole program: the plugin's modules come from the parent's sys.path (PYTHONPATH).
CHILD_PROGRAM = "import sys; from orthanc_ai.models.prediction_processes import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
_LENGTH = struct.Struct("!Q")
STOP_SECONDS = 5.0


class PredictionProcessDied(RuntimeError):
    """The process predicting the instance ended before answering."""


class PredictionProcesses:
    """A fixed set of prediction processes; each request takes an idle one and waits for its answer."""

    def __init__(self, config: PluginConfig, count: int, python: str) -> None:
        self.config, self.python = config, python
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._stopped = False
        for _ in range(count):
            self._add(_Child(python, config))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._children)

    def wait_ready(self) -> None:
        """Wait until every process has loaded its models; raises PredictionProcessDied if one could not."""
        for child in list(self._children):
            child.wait_ready()
        log.info("%d prediction processes ready (%s)", len(self._children), self.python)

    def predict(self, original: bytes, request: FileRequest) -> FilePrediction:
        """The file's prediction, computed in an idle process; raises what predict_file raises there.

        A process that dies is replaced and the request given once more, to the replacement: a process
        killed from outside (the kernel's OOM killer) costs no image; a file that kills two fails.
        """
        try:
            return self._predict_once(original, request)
        except PredictionProcessDied as death:
            log.warning("%s; predicting in its replacement", death)
            return self._predict_once(original, request)

    def _predict_once(self, original: bytes, request: FileRequest) -> FilePrediction:
        child = self._idle.get()
        try:
            return child.predict(original, request)
        except PredictionProcessDied:
            child = self._replace(child)
            raise
        finally:
            self._idle.put(child)

    def stop(self) -> None:
        """Close every process's requests (it then exits), wait a little, then kill those still running."""
        with self._lock:
            self._stopped = True
            children = list(self._children)
        for child in children:
            child.close()
        for child in children:
            child.wait_or_kill(STOP_SECONDS)

    def _add(self, child: _Child) -> None:
        with self._lock:
            self._children.append(child)
        self._idle.put(child)

    def _replace(self, dead: _Child) -> _Child:
        with self._lock:
            if dead not in self._children or self._stopped:
                return dead
            self._children.remove(dead)
            child = _Child(self.python, self.config)
            self._children.append(child)
        log.warning("Prediction process %d ended (%s); process %d started instead",
                    dead.pid, dead.exit_description(), child.pid)
        return child


def start_prediction_processes(config: PluginConfig, count: int) -> PredictionProcesses | None:
    """``count`` processes with their models loaded, or None (logged) where they cannot start: the worker
    threads then predict, as with none configured."""
    python = _child_python()
    if python is None:
        log.error("PredictionProcesses: no python%d.%d program found beside the Python Orthanc embeds; "
                  "predicting in the worker threads", *sys.version_info[:2])
        return None
    processes = PredictionProcesses(config, count, python)
    try:
        processes.wait_ready()
    except PredictionProcessDied as error:
        log.error("PredictionProcesses: %s (its own error went to Orthanc's standard error); predicting in the "
                  "worker threads", error)
        processes.stop()
        return None
    return processes


def _child_python() -> str | None:
    """The Python to run prediction processes with: the interpreter Orthanc embeds, as a program."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidate = Path(sys.base_prefix) / "bin" / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


class _Child:
    """One prediction process and its two pipes."""

    def __init__(self, python: str, config: PluginConfig) -> None:
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        for pipe in (requests_write, answers_write):
            _enlarge(pipe)
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            # Its own session: a Ctrl-C meant for Orthanc does not kill it mid-answer; it ends when Orthanc
            # closes its requests (or dies).
            self.process = subprocess.Popen(
                [python, "-c", CHILD_PROGRAM, str(requests_read), str(answers_write)],
                pass_fds=(requests_read, answers_write), env=environment, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(requests_read)
            os.close(answers_write)
        self.pid = self.process.pid
        self.requests: IO[bytes] = os.fdopen(requests_write, "wb")
        self.answers: IO[bytes] = os.fdopen(answers_read, "rb")
        self._ready = False
        try:
            self._send(config)
        except PredictionProcessDied:
            pass  # it ended at once (it cannot start): wait_ready or the first request says so, with its status

    def wait_ready(self) -> None:
        if not self._ready:
            self._receive()  # the models are loaded
            self._ready = True

    def predict(self, original: bytes, request: FileRequest) -> FilePrediction:
        self.wait_ready()
        self._send((original, request))
        kind, value = self._receive()
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        for pipe in (self.requests, self.answers):
            try:
                pipe.close()
            except OSError:
                pass

    def wait_or_kill(self, seconds: float) -> None:
        self.close()
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            log.warning("Prediction process %d did not stop within %.0f s: killed", self.pid, seconds)
            self.process.kill()
            self.process.wait()

    def exit_description(self) -> str:
        code = self.process.poll()
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by signal {signal.Signals(-code).name}"
        return f"exit status {code}"

    def _send(self, message: Any) -> None:
        try:
            _write_message(self.requests, message)
        except (BrokenPipeError, ValueError) as error:  # ValueError: the pipe was closed by stop()
            self.wait_or_kill(STOP_SECONDS)
            raise PredictionProcessDied(
                f"prediction process {self.pid} is gone ({self.exit_description()}; {error})") from None

    def _receive(self) -> Any:
        try:
            return _read_message(self.answers)
        except (EOFError, ValueError, OSError) as error:
            self.wait_or_kill(STOP_SECONDS)  # its pipe closes a moment before it has ended
            raise PredictionProcessDied(
                f"prediction process {self.pid} ended before answering ({self.exit_description()})") from error


def serve(requests_fd: int, answers_fd: int) -> None:
    """The prediction process's main loop: the configuration, then one answer per request until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"OrthancAI prediction process {os.getpid()}: %(levelname)s %(name)s: %(message)s")
    requests, answers = os.fdopen(requests_fd, "rb"), os.fdopen(answers_fd, "wb")
    try:
        _serve(requests, answers)
    except (EOFError, BrokenPipeError):
        return  # the plugin stopped, or Orthanc ended


def _serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    config: PluginConfig = _read_message(requests)
    if config.worker_niceness > 0:
        os.nice(config.worker_niceness)  # as the worker threads: ingest goes first
    registry = ModelRegistry.load(config)
    _write_message(answers, sorted(registry.models))
    while True:
        original, request = _read_message(requests)
        try:
            answer: tuple[str, Any] = ("ok", predict_file(original, request, registry, _orthanc_decoder_needed))
        except Exception as error:
            answer = ("error", _picklable(error))
        except BaseException as error:  # a Rust extension's panic (decoding.is_extension_panic)
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            answer = ("error", RuntimeError(f"{error.__class__.__name__}: {error}"))
        _write_message(answers, answer)


def _enlarge(pipe: int) -> None:
    """A pipe as large as Linux lets a user make it (1 MiB by default, not 64 KiB): a whole image passes in one
    write instead of a writer and a reader waking each other for every 64 KiB."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, limit)
    except (OSError, ValueError, AttributeError):
        pass  # not Linux, or not allowed: the default size works, a little more slowly


def _orthanc_decoder_needed(frame_index: int) -> Any:
    raise NeedsOrthancDecoding(f"frame {frame_index + 1} needs Orthanc's decoder")


def _picklable(error: Exception) -> Exception:
    """The error itself where it survives pickling (InstanceSkipped, ValueError...), else its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{error.__class__.__name__}: {error}")


def _write_message(pipe: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LENGTH.pack(len(data)))
    pipe.write(data)
    pipe.flush()


def _read_message(pipe: IO[bytes]) -> Any:
    header = pipe.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("pipe closed")
    (length,) = _LENGTH.unpack(header)
    data = pipe.read(length)
    if len(data) < length:
        raise EOFError("pipe closed mid-message")
    return pickle.loads(data)
