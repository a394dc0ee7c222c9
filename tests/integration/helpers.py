from __future__ import annotations

from modelport.accounts.service import Principal
from modelport.catalog.service import JobView, UploadRequest
from modelport.services import Services


def run_all_jobs(services: Services) -> int:
    worker = services.worker("test")
    ran = 0
    while worker.run_once():
        ran += 1
    return ran


def upload(services: Services, who: Principal, name: str, source: str, **kwargs: str) -> JobView:
    submitted = services.catalog.submit_upload(who, UploadRequest(model_name=name, model_source=source, **kwargs))
    run_all_jobs(services)
    return services.catalog.get_job(who, submitted.job_id)


def stored_blobs(services: Services) -> set[str]:
    return {sha for sha, _ in services.blobs.iter_blobs()}
