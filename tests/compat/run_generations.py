"""Run the project's whole test suite (or another command) on the Orthanc generations the host does not have.

Each generation is a Debian release whose packages users run: Debian 12 (Orthanc 1.10.1, Python plugin 4.0),
Debian 13 (1.12.7, 5.0) and Debian unstable (1.13.0, 7.1, as in the ``orthancteam/orthanc`` image). For every
generation other than the host's, a root filesystem is built once with ``debootstrap`` from the mirror of the
host's own apt sources, with the Debian packages the Makefile installs, and cached outside the checkout. Each
run mounts an overlay of its own over that root (the cached root itself is never written to, so runs at the
same time, or one killed half-way, do not disturb each other), copies the checkout and ``../shared`` in and
runs ``make test`` there in a chroot, with a clean environment, the host's CA certificates, and its own /proc,
/sys, /dev, /dev/pts and /dev/shm, all unmounted on every exit path.

Usage (as root; ``make test-compat`` is the usual way)::

    python3 tests/compat/run_generations.py                      # every other generation, make test
    python3 tests/compat/run_generations.py --only trixie -- make test PYTEST_ARGS="-x tests/unit"
    python3 tests/compat/run_generations.py -- make bench        # the benchmarks on each generation

Settings (environment): ``ORTHANC_AI_COMPAT_CACHE`` (where roots live, default
/var/cache/orthanc-ai-compat), ``ORTHANC_AI_COMPAT_MIRROR`` (Debian mirror; default: the host's).

Uses only the standard library of the host's Python, so that it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared"
CACHE = Path(os.environ.get("ORTHANC_AI_COMPAT_CACHE", "/var/cache/orthanc-ai-compat"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Changing how a root is built must rebuild the cached roots: bump this with any change to build_root().
ROOT_RECIPE = "3"
READY_MARKER = ".orthanc-ai-compat-ready"
# Inside the chroot: nothing from the host's shell, pip or locale settings.
CLEAN_ENVIRONMENT = {
    "HOME": "/root",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
# What make test itself needs besides the Makefile's package lists (the chroot is minbase).
BUILD_TOOLS = ["make", "ca-certificates", "procps"]
DEFAULT_COMMAND = ["make", "test", "PYTEST_ARGS=-ra"]


@dataclass(frozen=True)
class Generation:
    suite: str
    title: str
    # A generation whose root may fail to build for reasons outside the project (an archive mid-transition):
    # that failure is reported and the generation skipped; any other build failure fails the run.
    may_be_unbuildable: bool = False
    # apt.conf lines for the root (Debian unstable's Release file is served past its Valid-Until date).
    apt_configuration: str = ""


GENERATIONS = [
    Generation("bookworm", "Debian 12"),
    Generation("trixie", "Debian 13"),
    Generation("sid", "Debian unstable (as the orthancteam/orthanc image)", may_be_unbuildable=True,
               apt_configuration='Acquire::Check-Valid-Until "false";\n'),
]


class RootBuildError(RuntimeError):
    pass


@dataclass
class Outcome:
    generation: Generation
    versions: str = ""
    summary: str = ""
    returncode: int | None = None
    skipped_because: str = ""
    seconds: float = 0.0
    log: Path = field(default_factory=Path)


def main() -> int:
    arguments = _parse_arguments()
    if os.geteuid() != 0:
        sys.exit("run_generations.py needs root (debootstrap, chroot, mount)")
    host = host_suite()
    chosen = [g for g in GENERATIONS if g.suite != host and (not arguments.only or g.suite in arguments.only)]
    command = arguments.command or DEFAULT_COMMAND
    mirror = os.environ.get("ORTHANC_AI_COMPAT_MIRROR") or host_mirror()
    packages = BUILD_TOOLS + makefile_packages()
    _say(f"host: {host or 'unknown'} ({generation_versions(None)}, tested by make test)")
    _say(f"generations: {', '.join(g.suite for g in chosen)}; mirror: {mirror}")
    _say(f"packages: {' '.join(packages)}")
    _say(f"command: {shlex.join(command)}")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # so that finally blocks unmount

    outcomes = []
    for generation in chosen:
        started = time.monotonic()
        # One log per run: runs at the same time must not write into each other's.
        outcome = Outcome(generation, log=CACHE / "logs" / f"{generation.suite}-{time.strftime('%Y%m%d-%H%M%S')}"
                                                            f"-{os.getpid()}.log")
        try:
            root = ensure_root(generation, mirror, packages)
            with _shared_lock(_lock_path(generation)), run_overlay(generation, root) as merged:
                outcome.versions, outcome.summary, outcome.returncode = run_in_root(
                    generation, merged, command, outcome.log)
        except RootBuildError as error:
            if not generation.may_be_unbuildable:
                raise
            outcome.skipped_because = f"root filesystem could not be built: {error}"
            _say(f"!!! {generation.suite}: SKIPPED, {outcome.skipped_because}")
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)

    _say("")
    _say("generation | versions | result | minutes")
    for outcome in outcomes:
        result = outcome.skipped_because or f"{outcome.summary or 'no pytest summary'} (exit {outcome.returncode})"
        _say(f"{outcome.generation.suite} ({outcome.generation.title}) | {outcome.versions} | {result} "
             f"| {outcome.seconds / 60:.1f}")
    counts = {word: sum(_count(o.summary, word) for o in outcomes) for word in ("passed", "failed", "skipped")}
    counts["failed"] += sum(_count(o.summary, "error") + _count(o.summary, "errors") for o in outcomes)
    _say(f"{len(outcomes)} generation(s), {sum(bool(o.skipped_because) for o in outcomes)} not built")
    ran = [o for o in outcomes if not o.skipped_because]
    if command == DEFAULT_COMMAND:
        # One closing line for all generations, in the form CI reads.
        print(f"compat: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    return 0 if all(o.returncode == 0 for o in ran) else 1


def _count(summary: str, word: str) -> int:
    match = re.search(rf"(\d+) {word}\b", summary)
    return int(match.group(1)) if match else 0


def _parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=[g.suite for g in GENERATIONS],
                        help="run this generation only (repeatable)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to run in the project (after --)")
    arguments = parser.parse_args()
    if arguments.command[:1] == ["--"]:
        arguments.command = arguments.command[1:]
    return arguments


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _say(message: str) -> None:
    print(f"[compat] {message}" if message else "", flush=True)


# --- what the host has ----------------------------------------------------------------------------------

def host_suite() -> str:
    fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    return fields.get("VERSION_CODENAME", "").strip('"')


def host_mirror() -> str:
    """The Debian archive URI of the host's apt sources (deb822 or one-line format)."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.MULTILINE)
            if uris and suites and not any(s.endswith("-security") for s in suites.group(1).split()):
                return uris.group(1).rstrip("/")
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", text, re.MULTILINE):
            if not match.group(2).endswith("-security"):
                return match.group(1).rstrip("/")
    return DEFAULT_MIRROR


def makefile_packages() -> list[str]:
    """The Debian packages ``make run`` and ``make test`` install: one list, in the Makefile."""
    printed = subprocess.run(["make", "-s", "-C", str(PROJECT), "debian-packages"], check=True,
                             capture_output=True, text=True).stdout
    return printed.split()


# --- the cached roots -----------------------------------------------------------------------------------

def root_key(generation: Generation, mirror: str, packages: list[str]) -> str:
    recipe = "\n".join([ROOT_RECIPE, generation.suite, mirror, *sorted(packages)])
    return hashlib.sha256(recipe.encode()).hexdigest()


def ensure_root(generation: Generation, mirror: str, packages: list[str]) -> Path:
    """The generation's root, built if it is absent, half-built or built from another package list."""
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / generation.suite
    key = root_key(generation, mirror, packages)
    # Exclusive: no run uses the root while it is (re)built; runs hold the lock shared.
    with _exclusive_lock(_lock_path(generation)):
        marker = root / READY_MARKER
        if marker.is_file() and marker.read_text().strip() == key:
            _say(f"{generation.suite}: reusing {root}")
            return root
        _say(f"{generation.suite}: building {root} (none cached for this package list)")
        remove_root(root)
        started = time.monotonic()
        try:
            build_root(generation, root, mirror, packages)
        except (subprocess.CalledProcessError, OSError) as error:
            raise RootBuildError(f"{error}; see {CACHE / (generation.suite + '-build.log')}") from error
        marker.write_text(key + "\n")  # only a complete root gets its marker
        _say(f"{generation.suite}: built in {(time.monotonic() - started) / 60:.1f} min")
        return root


def remove_root(root: Path) -> None:
    if not root.exists():
        return
    unmount_everything_under(root)
    if any(root.resolve() == mount or root.resolve() in mount.parents for mount in _mount_points()):
        raise RootBuildError(f"{root} still has file systems mounted; not removing it")
    shutil.rmtree(root)


def build_root(generation: Generation, root: Path, mirror: str, packages: list[str]) -> None:
    log_path = CACHE / f"{generation.suite}-build.log"
    with open(log_path, "w") as log:
        def run(command: list[str]) -> None:
            log.write(f"$ {shlex.join(command)}\n")
            log.flush()
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=CLEAN_ENVIRONMENT)

        run(["debootstrap", "--variant=minbase", f"--include={','.join(BUILD_TOOLS)}", generation.suite,
             str(root), mirror])
        (root / "etc/apt/sources.list").write_text(f"deb {mirror} {generation.suite} main\n")
        if generation.apt_configuration:
            (root / "etc/apt/apt.conf.d/90orthanc-ai-compat").write_text(generation.apt_configuration)
        # Debian's package scripts must not start services in the root (Orthanc, PostgreSQL).
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        with mounted_system(root):
            run(["chroot", str(root), "apt-get", "update", "-qq"])
            run(["chroot", str(root), "apt-get", "install", "-y", "-qq", *packages])
            run(["chroot", str(root), "apt-get", "clean"])


def _lock_path(generation: Generation) -> Path:
    return CACHE / f"{generation.suite}.lock"


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with _flock(path, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def _shared_lock(path: Path) -> Iterator[None]:
    with _flock(path, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, operation | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another run that holds {path}")
            fcntl.flock(handle, operation)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- one run's own view of a root -----------------------------------------------------------------------

@contextlib.contextmanager
def run_overlay(generation: Generation, root: Path) -> Iterator[Path]:
    """An overlay over the cached root, private to this run: what the run writes lands in its own upper layer."""
    runs = CACHE / "runs"
    runs.mkdir(exist_ok=True)
    here = runs / f"{generation.suite}-{os.getpid()}-{time.time_ns()}"
    # Held while the run lives: a run directory whose lock is free was left by a run that was killed.
    with _exclusive_lock(here.with_suffix(".lock")):
        remove_abandoned_runs(runs)
        upper, work, merged = here / "upper", here / "work", here / "root"
        for directory in (upper, work, merged):
            directory.mkdir(parents=True)
        try:
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={root},upperdir={upper},workdir={work}", str(merged)], check=True)
            yield merged
        finally:
            remove_run_directory(here)
            here.with_suffix(".lock").unlink(missing_ok=True)


def remove_abandoned_runs(runs: Path) -> None:
    """Overlays left by runs that were killed: nobody holds their lock any more."""
    for directory in runs.iterdir():
        if not directory.is_dir():
            continue
        lock = directory.with_suffix(".lock")
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a run in progress
            _say(f"removing {directory}, left by a run that was stopped")
            remove_run_directory(directory)
        lock.unlink(missing_ok=True)


def remove_run_directory(directory: Path) -> None:
    unmount_everything_under(directory)
    if any(directory.resolve() in mount.parents for mount in _mount_points()):
        _say(f"{directory} still has file systems mounted; leaving it")
        return
    shutil.rmtree(directory)


# --- mounts ---------------------------------------------------------------------------------------------

def _mount_points() -> list[Path]:
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        # /proc/self/mounts escapes spaces and other characters in octal.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
        points.append(Path(point))
    return points


def unmount_everything_under(root: Path) -> None:
    resolved = root.resolve()
    inside = [p for p in _mount_points() if p == resolved or resolved in p.parents]
    for point in sorted(inside, key=lambda p: len(p.parts), reverse=True):
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True)


@contextlib.contextmanager
def mounted_system(root: Path) -> Iterator[None]:
    """/proc, /sys, /dev, /dev/pts and /dev/shm of the root's own, unmounted whatever happens."""
    mounts = [
        (["-t", "proc", "proc"], "proc"),
        (["-t", "sysfs", "sysfs"], "sys"),
        (["--bind", "/dev"], "dev"),
        (["-t", "devpts", "-o", "newinstance,ptmxmode=0666", "devpts"], "dev/pts"),
        # The bind of /dev does not bring the host's /dev/shm; Chromium and PostgreSQL need one.
        (["-t", "tmpfs", "-o", "size=2g,mode=1777", "tmpfs"], "dev/shm"),
    ]
    try:
        for options, target in mounts:
            (root / target).mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *options, str(root / target)], check=True)
        yield
    finally:
        unmount_everything_under(root)


# --- one run --------------------------------------------------------------------------------------------

def run_in_root(generation: Generation, root: Path, command: list[str], log_path: Path) -> tuple[str, str, int]:
    """Copy the project in, run ``command`` there; answer the versions, pytest's summary and the exit code."""
    copy_project(root)
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")
    with mounted_system(root):
        install_host_certificates(root)
        versions = generation_versions(root)
        _say(f"{generation.suite}: {versions}")
        _say(f"{generation.suite}: running {shlex.join(command)} (log: {log_path})")
        started = time.monotonic()
        log_path.parent.mkdir(exist_ok=True)
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                ["chroot", str(root), "/bin/sh", "-c", f"cd /work/main && exec {shlex.join(command)}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(CLEAN_ENVIRONMENT, CI="true"),
                text=True, errors="replace",
            )
            assert process.stdout is not None
            summary = ""
            try:
                for line in process.stdout:
                    log.write(line)
                    if _is_pytest_summary(line):
                        summary = line.strip(" =\n")
                    if _worth_echoing(line):
                        print(f"[{generation.suite}] {line}", end="", flush=True)
                returncode = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    _say(f"{generation.suite}: exit {returncode} after {(time.monotonic() - started) / 60:.1f} min: {summary}")
    return versions, summary, returncode


def copy_project(root: Path) -> None:
    """A fresh copy of the checkout (tracked and new files, not ignored ones) and of ../shared."""
    work = root / "work"
    if work.exists():
        shutil.rmtree(work)
    target = work / "main"
    listed = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for relative in filter(None, listed.decode().split("\0")):
        source = PROJECT / relative
        if source.is_file():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    if SHARED.is_dir():
        shutil.copytree(SHARED, work / "shared", symlinks=True)


def install_host_certificates(root: Path) -> None:
    """The host's own CA certificates, so that pip works behind a TLS-intercepting proxy."""
    local = Path("/usr/local/share/ca-certificates")
    if local.is_dir():
        shutil.copytree(local, root / local.relative_to("/"), dirs_exist_ok=True)
    subprocess.run(["chroot", str(root), "update-ca-certificates"], check=True, capture_output=True,
                   env=CLEAN_ENVIRONMENT)


def generation_versions(root: Path | None) -> str:
    """Orthanc, Python plugin and Python versions installed in ``root`` (None: on the host)."""
    def inside(script: str) -> str:
        chroot = ["chroot", str(root)] if root is not None else []
        return subprocess.run([*chroot, "/bin/sh", "-c", script], capture_output=True, text=True,
                              env=CLEAN_ENVIRONMENT).stdout.strip()

    orthanc = inside("dpkg-query -W -f '${Version}' orthanc")
    plugin = inside("dpkg-query -W -f '${Version}' orthanc-python")
    python = inside("/usr/bin/python3 --version")
    return f"Orthanc {orthanc}, orthanc-python {plugin}, {python}"


def _is_pytest_summary(line: str) -> bool:
    """pytest's closing line, with or without its ``=`` rule (``-q``)."""
    return bool(re.match(r"^=*\s*(\d+ \w+(, )?)+.* in [\d.]+s", line)) or "no tests ran" in line


def _worth_echoing(line: str) -> bool:
    """Progress without the noise: pytest's own lines and make's commands, not pip's chatter."""
    return bool(re.match(r"^(=|_|FAILED|ERROR|SKIPPED|PASSED|tests/|\S+\.py |\.venv/bin/|make|\[)", line))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as interrupted:
        sys.exit(f"[compat] interrupted ({interrupted}); every mount under {CACHE} was undone")
    except RootBuildError as error:
        sys.exit(f"[compat] FAILED to build a root: {error}")
