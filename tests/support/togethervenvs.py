"""The official ``together`` clients, each in a venv of its own, built once per checkout.

Building one takes about 25 s of pip, mostly waiting on downloads and unpacking. ``prebuild`` starts them
at the beginning of a run, one after another on a background thread, so the first test that drives a
client seldom waits; ``venv`` waits for its own.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENVS = Path(os.environ.get("MODELPORT_TEST_VENVS", REPO / ".venvs"))
LOCKS = REPO / "requirements"
VERSIONS = ("1.5.35", "2.42.0", "3.1.1")

# One at a time: a background build must not take both cores from the tests running meanwhile.
_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="together-venv")
_builds: dict[str, Future[Path]] = {}
_lock = threading.Lock()


def prebuild(versions: tuple[str, ...] = VERSIONS) -> None:
    for version in versions:
        _build(version)


def venv(version: str) -> Path:
    """That version's venv, built first if need be."""
    return _build(version).result()


def _build(version: str) -> Future[Path]:
    with _lock:
        if version not in _builds:
            _builds[version] = _pool.submit(_create, version)
        return _builds[version]


def lock_args(version: str) -> list[str]:
    """pip arguments that hold the client's dependencies to their locked versions (none when refreshing)."""
    lock = LOCKS / f"together-{version}.txt"
    if os.environ.get("MODELPORT_TEST_UNLOCKED") or not lock.exists():
        return []
    return ["-c", str(lock)]


def _create(version: str) -> Path:
    venv = VENVS / f"together-{version}"
    marker = venv / ".installed"
    if marker.exists():
        return venv
    # Test processes running side by side (pytest -n) build each venv once: the first holds the lock.
    VENVS.mkdir(parents=True, exist_ok=True)
    with open(VENVS / f".together-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _install(venv, version)
    return venv


def _install(venv: Path, version: str) -> None:
    marker = venv / ".installed"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
    install = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"together=={version}"]
    pip = subprocess.run(
        [*install, *lock_args(version)],
        capture_output=True,
        text=True,
    )
    if pip.returncode != 0:
        raise RuntimeError(f"could not install together=={version}:\n{pip.stderr[-3000:]}")
    marker.write_text(version)
