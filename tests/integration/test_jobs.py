"""Job claiming and recovery with several workers sharing one database."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from sqlalchemy import update

from modelport.accounts.service import Principal
from modelport.catalog.service import UploadRequest
from modelport.jobs.store import JobLost, JobStore
from modelport.services import Services
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Job, utcnow


def submit(services: Services, who: Principal, n: int) -> list[str]:
    return [services.catalog.submit_upload(who, UploadRequest(f"m{i}", "org/repo")).job_id for i in range(n)]


def test_each_job_is_claimed_exactly_once(services: Services, alice: Principal) -> None:
    ids = submit(services, alice, 30)
    # Separate engines stand in for separate processes.
    stores = [JobStore(Database(services.settings.database_url)) for _ in range(6)]
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(store: JobStore, worker: str) -> None:
        while (c := store.claim(worker)) is not None:
            with lock:
                claimed.append(c.job_id)

    threads = [threading.Thread(target=drain, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)
    for s in stores:
        s.db.dispose()


def _age_heartbeat(services: Services, job_id: str) -> None:
    with services.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))


def test_a_silent_worker_loses_its_job_which_is_resumed_then_failed(services: Services, alice: Principal) -> None:
    [job_id] = submit(services, alice, 1)
    store = JobStore(services.db)
    lease = timedelta(seconds=30)
    for attempt in (1, 2):
        claimed = store.claim(f"dead-{attempt}")
        assert claimed is not None and claimed.attempt == attempt
        assert store.reap_stale(lease, max_attempts=2) == []  # heartbeat is fresh
        _age_heartbeat(services, job_id)
        assert store.reap_stale(lease, max_attempts=2) == [job_id]
        try:
            store.heartbeat(job_id, f"dead-{attempt}")
            raise AssertionError("a worker that lost its lease must not keep writing")
        except JobLost:
            pass
    view = services.catalog.get_job(alice, job_id)
    assert view.job.status == "Failed" and view.job.error_code == "worker_lost"
    assert "resumed" in " ".join(u.message for u in view.updates)
    # The failed job released its name and its secrets.
    assert services.catalog.submit_upload(alice, UploadRequest("m0", "org/repo"))
    from modelport.storage.db.tables import JobSecret

    with services.db.session() as s:
        assert s.get(JobSecret, job_id) is None


def test_heartbeats_keep_a_long_job_alive(services: Services, alice: Principal) -> None:
    [job_id] = submit(services, alice, 1)
    store = JobStore(services.db)
    assert store.claim("w") is not None
    time.sleep(0.2)
    store.heartbeat(job_id, "w", {"stage": "downloading", "bytes_done": 1})
    assert store.reap_stale(timedelta(seconds=0.15), max_attempts=3) == []
    assert services.catalog.get_job(alice, job_id).job.progress == {"stage": "downloading", "bytes_done": 1}
