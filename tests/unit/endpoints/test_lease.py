"""The controller lease: one holder at a time, renewed, taken over once it runs out or is released."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modelport.endpoints.lease import Lease
from modelport.storage.db.engine import Database, migrate


def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'lease.db'}")
    migrate(db.engine)
    return db


def test_one_holder_at_a_time_until_it_releases(tmp_path: Path) -> None:
    db = database(tmp_path)
    a, b = Lease(db, "controller", 30, holder="a"), Lease(db, "controller", 30, holder="b")
    assert a.held() and not b.held()
    assert a.held() and a.holding and not b.holding  # renewed, still a's
    a.release()
    assert b.held() and not a.held()


def test_an_expired_lease_is_taken_over(tmp_path: Path) -> None:
    db = database(tmp_path)
    a, b = Lease(db, "controller", 0.2, holder="a"), Lease(db, "controller", 0.2, holder="b")
    assert a.held() and not b.held()
    import time

    time.sleep(0.3)  # a stopped renewing (it crashed): b may take it
    assert b.held()


def test_a_holder_that_was_a_dead_process_of_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    import socket

    db = database(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = Lease(db, "controller", 60, holder=f"{socket.gethostname()}:{dead.stdout.strip()}:abc123")
    assert gone.held()
    assert Lease(db, "controller", 60).held()  # no minute's wait: its holder cannot renew
    alive = Lease(db, "other", 60)  # a live holder of this host (this process) keeps it
    assert alive.held() and not Lease(db, "other", 60).held()
