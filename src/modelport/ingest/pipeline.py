"""One ingest, start to finish: fetch, extract, validate, store blobs, register the model.

Nothing is visible until ``_register`` commits: the model row, its file rows and the job's
``Complete`` land in one transaction. Any failure before that leaves the staging tree (deleted
here) and blobs that nothing references (removed by ``cleanup.collect_garbage``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from modelport.accounts import quotas
from modelport.errors import ArchiveRejected, IngestError, SourceUnavailable
from modelport.ingest import archive, checker
from modelport.ingest.safetensors_header import SafetensorsError, TensorInfo, parse_header
from modelport.ingest.sources import SourceKind, SourceSpec, parse_source
from modelport.ingest.sources import http as http_source
from modelport.ingest.sources import huggingface as hf_source
from modelport.ingest.sources.budget import DownloadBudget
from modelport.ingest.sources.guard import FetchPolicy
from modelport.ingest.staging import StagedFile
from modelport.ingest.validate import MAX_CONFIG_BYTES
from modelport.ingest.zipstream import NeedsRandomAccess
from modelport.jobs.states import JobStatus, JobType, ModelStatus
from modelport.jobs.store import JobLost, JobStore, add_update
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database, scrub_after_commit
from modelport.storage.db.tables import Account, Job, JobSecret, Model, ModelFile, utcnow

log = logging.getLogger(__name__)


@dataclass
class JobInput:
    job: Job
    model: Model
    source: SourceSpec
    hf_token: str | None


class JobProgress:
    """Reports stages and byte counts to the job row, at most every ``interval`` seconds for bytes."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        worker_id: str,
        *,
        interval: float = 0.5,
        stage_delay_s: float = 0.0,
    ) -> None:
        self.store, self.job_id, self.worker_id, self.interval = store, job_id, worker_id, interval
        self.stage_delay_s = stage_delay_s
        self.current = "running"
        self._last = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def stage(self, status: str, message: str) -> None:
        self.current = status
        self._started = time.monotonic()
        self.store.stage(self.job_id, self.worker_id, status, message)
        if self.stage_delay_s:
            time.sleep(self.stage_delay_s)

    def bytes(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:  # zip members are extracted on several threads
            if now - self._last < self.interval and done != total:
                return
            self._last = now
        elapsed = max(now - self._started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if total and rate > 0 else None
        self.store.heartbeat(
            self.job_id,
            self.worker_id,
            {
                "stage": self.current,
                "bytes_done": done,
                "bytes_total": total,
                "bytes_per_second": round(rate),
                "eta_seconds": None if eta is None else round(eta, 1),
            },
        )


class Pipeline:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore, store: JobStore) -> None:
        self.settings, self.db, self.blobs, self.store = settings, db, blobs, store
        self.policy = FetchPolicy.from_settings(settings)

    def run(self, job_id: str, worker_id: str) -> None:
        staging = self.settings.staging_dir / job_id
        shutil.rmtree(staging, ignore_errors=True)  # a resumed job starts from a clean tree
        staging.mkdir(parents=True)
        try:
            inp = self._load(job_id)
            progress = JobProgress(self.store, job_id, worker_id, stage_delay_s=self.settings.stage_delay_s)
            files, not_fetched = self._fetch(inp, staging, progress)
            manifest, base = self._check(inp, files, not_fetched, staging, progress)
            with self.db.read() as s:  # before the upload to the blob store; again at registration
                quotas.check_storage(
                    s, self.settings, inp.model.account_id, manifest["total_bytes"], model_id=inp.model.id
                )
            self._store(files, progress)
            progress.stage("registering", f"registering {inp.model.name}")
            self._register(inp, worker_id, manifest, base)
        except JobLost:
            log.warning("job %s: lost ownership; stopping without touching it", job_id)
        except IngestError as e:
            log.info("job %s failed: %s", job_id, e.code)
            self.store.finish_failed(job_id, worker_id, e.code, e.message, e.problems)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _load(self, job_id: str) -> JobInput:
        with self.db.read() as s:
            job = s.get(Job, job_id)
            secret = s.get(JobSecret, job_id)
            model = s.get(Model, job.model_id) if job and job.model_id else None
        if job is None or secret is None or model is None:
            raise IngestError("the job's inputs are gone (was the model deleted?)")
        return JobInput(job, model, parse_source(secret.source, self.settings, submission=False), secret.hf_token)

    def _fetch(self, inp: JobInput, staging: Path, progress: JobProgress) -> tuple[list[StagedFile], list[str]]:
        if inp.source.kind == SourceKind.UPLOAD:
            return self._fetch_upload(inp.source, staging, progress), []
        # One budget for the job's whole download: a rate floor and a deadline (``sources/budget.py``).
        budget = DownloadBudget.from_settings(self.settings, inp.source.display)
        if inp.source.kind == SourceKind.HUGGINGFACE:
            return hf_source.fetch(
                inp.source, inp.hf_token, self.settings.hf_endpoint, staging / "tree", progress, self.policy, budget
            )
        return self._fetch_archive(inp.source, staging, progress, budget), []

    def _fetch_upload(self, source: SourceSpec, staging: Path, progress: JobProgress) -> list[StagedFile]:
        """An archive already on this machine: unpack it with the same checks as a downloaded one."""
        path = self.settings.uploads_dir / source.url / "archive"
        if not path.is_file():
            raise SourceUnavailable(f"the uploaded file {source.url} is gone (deleted or expired)")
        s = self.settings
        limits = archive.Limits(s.max_archive_members, s.max_artifact_bytes, s.max_compression_ratio, s.extract_threads)
        progress.stage("extracting", f"unpacking {source.url} ({path.stat().st_size} bytes)")
        extracted = archive.extract_file(path, staging / "tree", limits)
        progress.stage("extracting", _extraction_summary(extracted))
        return extracted.files

    def _fetch_archive(
        self, source: SourceSpec, staging: Path, progress: JobProgress, budget: DownloadBudget
    ) -> list[StagedFile]:
        """Download, inflate, parse, hash and write in one pass; no copy of the archive is kept."""
        s = self.settings
        counter = _Downloaded(progress, s.max_archive_bytes)
        opts: dict[str, Any] = {
            "policy": self.policy,
            "timeout_s": s.fetch_timeout_s,
            "retries": s.fetch_retries,
            "budget": budget,
            "on_bytes": counter.add,
        }
        limits = archive.Limits(s.max_archive_members, s.max_artifact_bytes, s.max_compression_ratio, s.extract_threads)
        tree = staging / "tree"
        stream = http_source.ResumableStream(source, **opts)
        try:
            info = counter.expect(stream.info)
            fmt = archive.detect_format(stream.peek(512))
            progress.stage("downloading", _download_summary(fmt, info, source))
            extracted = self._extract(http_source.Prefetched(stream), fmt, tree, limits)
        except NeedsRandomAccess:
            if not (info.ranges and info.size is not None):
                raise ArchiveRejected(
                    "this zip stores an uncompressed entry with a data descriptor, which can only be read "
                    "directory-first, and the server does not support range requests; re-create it with "
                    "`zip -r` or upload a .tar.gz"
                ) from None
            shutil.rmtree(tree, ignore_errors=True)
            extracted = archive.extract_zip(lambda: http_source.RangeFile(source, info, **opts), tree, limits)  # type: ignore[arg-type,return-value]
        finally:
            stream.close()
        progress.stage("extracting", _extraction_summary(extracted))
        return extracted.files

    @staticmethod
    def _extract(reader: http_source.Prefetched, fmt: str, tree: Path, limits: archive.Limits) -> archive.Extracted:
        with contextlib.closing(reader):
            if fmt == "zip":
                return archive.extract_zip_stream(reader, tree, limits)
            return archive.extract_tar(reader, fmt == "tar.gz", tree, limits)

    def _check(
        self, inp: JobInput, files: list[StagedFile], not_fetched: list[str], staging: Path, progress: JobProgress
    ) -> tuple[dict[str, Any], Model | None]:
        """Validate and admit in a child process (see ``checker``); returns the manifest and the base."""
        progress.stage("validating", f"checking {len(files)} files")
        base_name, base_row, base_spec = None, None, None
        if inp.model.kind == "adapter":
            base_name = inp.job.args.get("baseModel") or _adapter_base_hint(files)
            base_row = self._find_base(inp.job.account_id, base_name)
            base_spec = self._base_spec(base_row, staging / "base") if base_row else None
        request = checker.request_for(
            files, not_fetched, inp.model.kind, base_name, base_spec, self.settings.admission_max_bytes
        )
        manifest = checker.run_checks(request, progress.stage, timeout_s=self.settings.check_timeout_s)
        progress.stage("admitting", _admission_summary(manifest["admission"]))
        return manifest, base_row

    def _base_spec(self, base: Model, dest: Path) -> checker.BaseSpec:
        """The base's configs always, its weights only if a forward pass will need them."""
        manifest = base.manifest or {}
        with_weights = manifest.get("total_bytes", 0) <= self.settings.admission_max_bytes
        for entry in manifest.get("files", []):
            if with_weights or not entry["path"].endswith(".safetensors"):
                self.blobs.materialize(entry["sha256"], dest / entry["path"])
        tensors = checker.encode_tensors(self._base_tensors(base))
        return checker.BaseSpec(base.name, manifest, str(dest), tensors)

    def _find_base(self, account_id: str, name: str | None) -> Model | None:
        if not name:
            return None
        with self.db.session() as s:
            account = s.get(Account, account_id)
            # Bases are looked up in the caller's own namespace only: "base" means "<account>/base".
            candidates = [name] if account is None or "/" in name else [f"{account.name}/{name}"]
            return s.scalars(
                select(Model).where(
                    Model.account_id == account_id,
                    Model.name.in_(candidates),
                    Model.status == ModelStatus.READY,
                    Model.kind == "model",
                )
            ).first()

    def _base_tensors(self, base: Model) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for entry in (base.manifest or {}).get("files", []):
            if not entry["path"].endswith(".safetensors"):
                continue
            read = functools.partial(self.blobs.read_range, entry["sha256"])
            try:
                header = parse_header(read, entry["size"])
            except SafetensorsError as e:
                raise IngestError(f"the base model's weights could not be read: {e}") from None
            tensors.update(header.tensors)
        return tensors

    def _store(self, files: list[StagedFile], progress: JobProgress) -> None:
        total = sum(f.size for f in files)
        progress.stage("storing", f"storing {len(files)} files ({total} bytes) in {self.blobs.describe()}")
        done = 0
        for f in files:
            self.blobs.put(f.local, f.sha256)
            done += f.size
            progress.bytes(done, total)

    def _register(self, inp: JobInput, worker_id: str, manifest: dict[str, Any], base: Model | None) -> None:
        with self.db.session() as s:
            job = s.get(Job, inp.job.id, with_for_update=True)
            if job is None or job.status != JobStatus.RUNNING or job.worker_id != worker_id:
                raise JobLost(inp.job.id)
            model = s.get(Model, inp.model.id)
            if model is None:
                raise IngestError("the model was deleted while it was uploading")
            quotas.lock_account(s, model.account_id)
            quotas.check_storage(s, self.settings, model.account_id, manifest["total_bytes"], model_id=model.id)
            for entry in manifest["files"]:
                s.add(ModelFile(model_id=model.id, path=entry["path"], size=entry["size"], sha256=entry["sha256"]))
            model.status, model.manifest = ModelStatus.READY, manifest
            model.type = manifest.get("type")
            model.total_bytes = manifest["total_bytes"]
            model.base_model_id = base.id if base else None
            job.status, job.progress, job.updated_at = JobStatus.COMPLETE, None, utcnow()
            add_update(s, job.id, JobStatus.COMPLETE, f"{model.name} is ready ({manifest['total_bytes']} bytes)")
            s.delete(s.get(JobSecret, job.id))
            scrub_after_commit(s)  # the token and signature leave the database files too


def _admission_summary(report: dict[str, Any]) -> str:
    if report["checked"] == "meta":
        return f"structure verified; {report['reason']}"
    if "changed_modules" in report:
        return (
            f"adapter applied to its base: it changes {report['changed_modules']} of {report['target_modules']} "
            f"target modules ({report['ms']} ms)"
        )
    return f"forward pass ok on {report['tokens']} tokens, outputs finite ({report['ms']} ms)"


def _download_summary(fmt: str, info: http_source.SourceInfo, source: SourceSpec) -> str:
    size = "unknown size" if info.size is None else f"{info.size} bytes"
    return f"streaming a .{fmt} archive ({size}) from {source.display}: download, extraction and hashing in one pass"


def _extraction_summary(extracted: archive.Extracted) -> str:
    total = sum(f.size for f in extracted.files)
    summary = f"extracted {len(extracted.files)} files ({total} bytes)"
    if extracted.flattened_from:
        summary += f"; the files sat inside one folder, {extracted.flattened_from!r}/, flattened to the root"
    return summary


class _Downloaded:
    """Counts source bytes from any thread, reports progress, and enforces the archive size limit."""

    def __init__(self, progress: JobProgress, limit: int) -> None:
        self.progress, self.limit = progress, limit
        self.total: int | None = None
        self.done = 0
        self._lock = threading.Lock()

    def expect(self, info: http_source.SourceInfo) -> http_source.SourceInfo:
        """Learn the announced size; refuse an archive over the limit before reading it."""
        if info.size is not None and info.size > self.limit:
            raise SourceUnavailable(f"the archive is {info.size} bytes; the limit is {self.limit} bytes")
        self.total = info.size
        return info

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        if done > self.limit:
            raise SourceUnavailable(f"the archive exceeds the limit of {self.limit} bytes")
        self.progress.bytes(done, self.total)


def _adapter_base_hint(files: list[StagedFile]) -> str | None:
    for f in files:
        if f.path == "adapter_config.json" and f.size < MAX_CONFIG_BYTES:
            try:
                value = json.loads(f.local.read_bytes()).get("base_model_name_or_path")
            except (ValueError, AttributeError):
                return None
            return value if isinstance(value, str) else None
    return None


def job_type(kind: str) -> JobType:
    return JobType.ADAPTER_UPLOAD if kind == "adapter" else JobType.MODEL_UPLOAD
