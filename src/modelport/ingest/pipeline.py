"""One ingest, start to finish: fetch, extract, validate, store blobs, register the model.

The pipeline knows neither where bytes come from (a ``Source`` per kind, ``sources/registry.py``)
nor how jobs are stored: it reports through a ``Reporter`` (``staging.py``) and raises
``IngestError``, which the job's worker records. Nothing is visible until ``_register`` commits: the
model row, its file rows and the job's ``Complete`` land in one transaction. Any failure before that
leaves the staging tree (deleted here) and blobs that nothing references (removed by
``cleanup.collect_garbage``).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from modelport import revisions
from modelport.accounts import quotas
from modelport.errors import IngestError
from modelport.ingest import checker, etags
from modelport.ingest.safetensors_header import SafetensorsError, TensorInfo, parse_header
from modelport.ingest.sources import SourceKind, SourceSpec, parse_source
from modelport.ingest.sources.base import Fetched, Source
from modelport.ingest.staging import Progress, Reporter, StagedFile
from modelport.ingest.validate import MAX_CONFIG_BYTES
from modelport.manifest import AdmissionReport, Manifest, ModelKind
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Job, JobSecret, Model, ModelRevision, RevisionFile
from modelport.tokenizer_files import TEMPLATE_FILES, chat_template_of
from modelport.tool_formats import detect_format

log = logging.getLogger(__name__)


@dataclass
class JobInput:
    job: Job
    model: Model
    revision: ModelRevision
    source: SourceSpec
    hf_token: str | None


# A ready full model of the account, by the catalog's naming rule (``Catalog.find_base``).
FindBase = Callable[[str, str], Model | None]


class Pipeline:
    """Runs one upload job; its failures are ``IngestError``s, which the job's worker records."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        blobs: BlobStore,
        sources: Mapping[SourceKind, Source],
        find_base: FindBase,
    ) -> None:
        self.settings, self.db, self.blobs, self.sources, self.find_base = settings, db, blobs, sources, find_base

    def run(self, job_id: str, progress: Reporter) -> None:
        staging = self.settings.staging_dir / job_id
        shutil.rmtree(staging, ignore_errors=True)  # a resumed job starts from a clean tree
        staging.mkdir(parents=True)
        fetched: Fetched | None = None
        try:
            inp = self._load(job_id)
            fetched = self.sources[inp.source.kind].fetch(inp.source, staging, progress, token=inp.hf_token)
            files, not_fetched = fetched.files, fetched.not_fetched
            with ThreadPoolExecutor(1, thread_name_prefix="etags") as hashing:
                # The files' multipart ETags (what Together v2 names content by), read while the checks
                # run in their child process: the second core is otherwise idle then.
                known = fetched.etags
                pending = hashing.submit(lambda: {f.path: known.get(f.path) or etags.of_file(f.local) for f in files})
                checked, base = self._check(inp, files, not_fetched, staging, progress)
                # It lists the derived files too, stored here like uploaded ones.
                manifest = _with_tool_format(checked.manifest, inp.job.args.get("toolCallParser"), files)
                with self.db.read() as s:  # before the upload to the blob store; again at registration
                    quotas.check_storage(
                        s, self.settings, inp.model.account_id, manifest.total_bytes, revision_id=inp.revision.id
                    )
                self._store(files + checked.derived, progress)
                computed = pending.result()
            computed.update({f.path: etags.of_file(f.local) for f in checked.derived})
            progress.stage("registering", f"registering {_what(inp)}")
            self._register(inp, progress, manifest, base, computed)
        except IngestError:
            if fetched is not None and fetched.release is not None:
                fetched.release()  # refused for good: its parts can go
            raise
        else:
            if fetched.release is not None:
                fetched.release()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _load(self, job_id: str) -> JobInput:
        with self.db.read() as s:
            job = s.get(Job, job_id)
            secret = s.get(JobSecret, job_id)
            model = s.get(Model, job.model_id) if job and job.model_id else None
            revision = s.get(ModelRevision, job.args.get("revisionId")) if job else None
        if job is None or secret is None or model is None or revision is None:
            raise IngestError("the job's inputs are gone (was the model deleted?)")
        source = parse_source(secret.source, self.settings, submission=False)
        return JobInput(job, model, revision, source, secret.hf_token)

    def _check(
        self, inp: JobInput, files: list[StagedFile], not_fetched: list[str], staging: Path, progress: Progress
    ) -> tuple[checker.Checked, Model | None]:
        """Validate and admit in a child process (see ``checker``); returns what it found and the base."""
        progress.stage("validating", f"checking {len(files)} files")
        base_name, base_row, base_spec = None, None, None
        if inp.model.kind == ModelKind.ADAPTER:
            base_name = inp.job.args.get("baseModel") or _adapter_base_hint(files)
            base_row = self.find_base(inp.job.account_id, base_name) if base_name else None
            base_spec = self._base_spec(base_row, staging / "base") if base_row else None
        request = checker.request_for(
            files, not_fetched, inp.model.kind, base_name, base_spec, self.settings.admission_max_bytes
        )
        checked = checker.run_checks(request, progress.stage, timeout_s=self.settings.check_timeout_s)
        if checked.manifest.admission is not None:
            progress.stage("admitting", _admission_summary(checked.manifest.admission))
        return checked, base_row

    def _base_spec(self, base: Model, dest: Path) -> checker.BaseSpec:
        """The base's configs always, its weights only if a forward pass will need them."""
        manifest = base.manifest or Manifest(kind=ModelKind.MODEL)
        with_weights = manifest.total_bytes <= self.settings.admission_max_bytes
        for entry in manifest.files:
            if with_weights or not entry.path.endswith(".safetensors"):
                self.blobs.materialize(entry.sha256, dest / entry.path)
        tensors = checker.encode_tensors(self._base_tensors(base))
        return checker.BaseSpec(base.name, manifest, str(dest), tensors)

    def _base_tensors(self, base: Model) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for entry in base.manifest.files if base.manifest else []:
            if not entry.path.endswith(".safetensors"):
                continue
            read = functools.partial(self.blobs.read_range, entry.sha256)
            try:
                header = parse_header(read, entry.size)
            except SafetensorsError as e:
                raise IngestError(f"the base model's weights could not be read: {e}") from None
            tensors.update(header.tensors)
        return tensors

    def _store(self, files: list[StagedFile], progress: Progress) -> None:
        total = sum(f.size for f in files)
        progress.stage("storing", f"storing {len(files)} files ({total} bytes) in {self.blobs.describe()}")
        done = 0
        for f in files:
            self.blobs.put(f.local, f.sha256)
            done += f.size
            progress.bytes(done, total)

    def _register(
        self, inp: JobInput, progress: Reporter, manifest: Manifest, base: Model | None, etags: dict[str, str]
    ) -> None:
        """The revision's files, the revision ready, the model's head moved to it (if it is the newest
        ready one) and the job complete: one transaction."""
        with self.db.session() as s:
            # First, as before any other lock: the job row (``JobLost`` if another worker took it).
            progress.complete(s, f"{_what(inp)} is ready ({manifest.total_bytes} bytes)")
            model = revisions.lock(s, inp.model.id)
            revision = s.get(ModelRevision, inp.revision.id)
            if model is None or revision is None:
                raise IngestError("the model was deleted while it was uploading")
            quotas.lock_account(s, model.account_id)
            quotas.check_storage(s, self.settings, model.account_id, manifest.total_bytes, revision_id=revision.id)
            for entry in manifest.files:
                s.add(
                    RevisionFile(
                        revision_id=revision.id,
                        path=entry.path,
                        size=entry.size,
                        sha256=entry.sha256,
                        etag=etags.get(entry.path),
                    )
                )
            revision.manifest = manifest
            revision.base_revision_id = base.revision_id if base else None  # what it was checked against
            revisions.mark_ready(revision, manifest.total_bytes)
            s.flush()
            if model.base_model_id is None and base is not None:
                model.base_model_id = base.id
            revisions.move_head(s, model)


def _what(inp: JobInput) -> str:
    number = inp.revision.number
    return inp.model.name if number == 1 else f"revision {number} of {inp.model.name}"


def _admission_summary(report: AdmissionReport) -> str:
    if report.checked == "meta":
        return f"structure verified; {report.reason}"
    if report.changed_modules is not None:
        return (
            f"adapter applied to its base: it changes {report.changed_modules} of {report.target_modules} "
            f"target modules ({report.ms} ms)"
        )
    return f"forward pass ok on {report.tokens} tokens, outputs finite ({report.ms} ms)"


def _adapter_base_hint(files: list[StagedFile]) -> str | None:
    for f in files:
        if f.path == "adapter_config.json" and f.size < MAX_CONFIG_BYTES:
            try:
                value = json.loads(f.local.read_bytes()).get("base_model_name_or_path")
            except (ValueError, AttributeError):
                return None
            return value if isinstance(value, str) else None
    return None


def _with_tool_format(manifest: Manifest, given: str | None, files: list[StagedFile]) -> Manifest:
    """The manifest with how the model writes tool calls: as the upload said, or as its chat template
    shows (``toolcalls.detect_format``). Adapters answer in their base's format."""
    if manifest.kind != ModelKind.MODEL:
        return manifest
    if given is None:
        given = detect_format(chat_template_of({f.path: f.local for f in files if f.path in TEMPLATE_FILES}))
    return manifest.model_copy(update={"tool_call_parser": given}) if given else manifest
