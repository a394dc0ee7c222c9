"""Fetch a model repo through the real ``huggingface_hub`` client, taking only what a model needs.

Its HTTP client is the SSRF guard's (``guard.py``), which asks for ``identity`` and refuses encoded
responses: the hub client decodes whatever arrives. A response hook meters every body's raw chunks as
they come off the socket against the running job's ``DownloadBudget`` (the hub client's own progress
callback fires only every 10 MiB), so a slow hub or CDN fails the job like a slow archive URL.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
from huggingface_hub import HfApi, hf_hub_download, set_client_factory
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils._http import hf_request_event_hook

from modelport.errors import SourceUnavailable
from modelport.ingest.layout import FileRole, file_role
from modelport.ingest.sources.base import Fetched
from modelport.ingest.sources.budget import DownloadBudget
from modelport.ingest.sources.guard import FetchPolicy, guarded_client
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress, StagedFile, stage_existing
from modelport.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FetchPlan:
    fetch: list[RepoFile] = field(default_factory=list)
    not_fetched: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.fetch)


def plan(files: list[RepoFile]) -> FetchPlan:
    """Fetch what serving needs (``ingest/layout.py``); list refused formats so validation names them."""
    result = FetchPlan()
    for f in files:
        role = file_role(f.path)
        if role == FileRole.KEEP:
            result.fetch.append(f)
        elif role == FileRole.REPORT:
            result.not_fetched.append(f.path)
    return result


_policy_lock = threading.Lock()
_installed_policy: tuple[FetchPolicy, float] | None = None


def _guard_hub_client(policy: FetchPolicy, timeout_s: float) -> None:
    """Route every request of ``huggingface_hub`` (the hub and the CDN it redirects to) through the
    SSRF guard, with ``timeout_s`` (``MODELPORT_FETCH_TIMEOUT_S``) on connecting and between any two
    reads: a hub that accepts and never answers fails the job instead of holding its worker forever
    (the download budget only starts counting once bytes flow). Its HTTP client is one per process, so
    it is replaced only when these change (in practice once: settings are per process, except in tests)."""
    global _installed_policy
    # The client's telemetry (agent detection for its User-Agent) calls the public hub whatever the
    # endpoint; a self-hosted fetcher pointed at a private hub must not reach out anywhere else.
    hf_constants.HF_HUB_DISABLE_TELEMETRY = True
    # Xet transfers run in a native library with its own HTTP stack, out of the guard's reach; plain
    # HTTP downloads of the same files are served by every hub.
    hf_constants.HF_HUB_DISABLE_XET = True
    with _policy_lock:
        if _installed_policy == (policy, timeout_s):
            return
        set_client_factory(
            lambda: guarded_client(
                policy,
                flavor=httpx2,
                event_hooks={"request": [hf_request_event_hook], "response": [_meter]},
                follow_redirects=True,
                timeout=timeout_s,
                max_timeout_s=timeout_s,
            )
        )
        _installed_policy = (policy, timeout_s)


class HuggingFaceSource:
    """A model repo on a Hugging Face hub (``Settings.hf_endpoint``), through the real hub client."""

    def __init__(self, settings: Settings, policy: FetchPolicy) -> None:
        self.settings, self.policy = settings, policy

    def fetch(self, spec: SourceSpec, staging: Path, progress: Progress, *, token: str | None = None) -> Fetched:
        """Download the planned files into the staging tree; the names left on the hub are reported."""
        assert spec.repo_id is not None
        _guard_hub_client(self.policy, self.settings.fetch_timeout_s)
        # One budget for the job's whole download: a rate floor and a deadline (``budget.py``).
        with _metered(DownloadBudget.from_settings(self.settings, spec.display)):
            files, not_fetched = _fetch(spec, token, self.settings.hf_endpoint, staging / "tree", progress)
        return Fetched(files, not_fetched)


def _fetch(
    spec: SourceSpec, token: str | None, endpoint: str, dest: Path, progress: Progress
) -> tuple[list[StagedFile], list[str]]:
    assert spec.repo_id is not None
    api = HfApi(endpoint=endpoint, token=token or False)
    with _hub_errors(spec):
        revision = api.model_info(spec.repo_id, revision=spec.revision).sha or spec.revision
        files = [
            f for f in api.list_repo_tree(spec.repo_id, revision=revision, recursive=True) if isinstance(f, RepoFile)
        ]
    todo = plan(files)
    progress.stage(
        "downloading",
        f"downloading {len(todo.fetch)} files ({todo.total_bytes} bytes) from {spec.display} at {str(revision)[:12]}",
    )
    done = 0
    staged = []
    for f in todo.fetch:
        with _hub_errors(spec):
            hf_hub_download(
                spec.repo_id,
                f.path,
                revision=revision,
                local_dir=dest,
                token=token or False,
                endpoint=endpoint,
                tqdm_class=_quiet_tqdm(),
            )
        done += f.size
        progress.bytes(done, todo.total_bytes)
        staged.append(stage_existing(dest, f.path))
    return staged, todo.not_fetched


class _hub_errors:
    """Turn the hub client's exceptions into one typed job error, with nothing secret in it."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        name = self.spec.display
        if isinstance(exc, GatedRepoError):
            raise SourceUnavailable(
                f"{name} is gated: accept its terms on the hub and pass an hf_token from an account that has access"
            ) from None
        if isinstance(exc, RepositoryNotFoundError):
            raise SourceUnavailable(
                f"Hugging Face repo {name} was not found, or it is private and the "
                "hf_token is missing or lacks read access"
            ) from None
        if isinstance(exc, RevisionNotFoundError):
            raise SourceUnavailable(f"revision {self.spec.revision!r} of {name} does not exist") from None
        if isinstance(exc, EntryNotFoundError):
            raise SourceUnavailable(f"a file listed in {name} could not be downloaded") from None
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else "?"
            raise SourceUnavailable(f"the Hugging Face hub answered HTTP {status} for {name}") from None
        if isinstance(exc, OSError | httpx.HTTPError | httpx2.HTTPError):
            raise SourceUnavailable(f"could not reach the Hugging Face hub for {name}: {type(exc).__name__}") from None


def _quiet_tqdm() -> Any:
    from tqdm.auto import tqdm

    class Quiet(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


# The hub client is shared by the process; the budget is the job's, and the job runs on this thread.
_current_budget: ContextVar[DownloadBudget | None] = ContextVar("modelport_hub_budget", default=None)


@contextlib.contextmanager
def _metered(budget: DownloadBudget) -> Iterator[None]:
    token = _current_budget.set(budget)
    try:
        yield
    finally:
        _current_budget.reset(token)


def _meter(response: httpx2.Response) -> None:
    """Response hook: the body's raw chunks go through the current job's budget as they arrive."""
    if (budget := _current_budget.get()) is not None:
        response.stream = _Metered(response.stream, budget)


class _Metered(httpx2.SyncByteStream):
    def __init__(self, inner: Any, budget: DownloadBudget) -> None:
        self.inner, self.budget = inner, budget

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.inner)
        while chunk := self.budget.timed(lambda: next(chunks, b"")):  # raises through the hub client
            yield chunk

    def close(self) -> None:
        self.inner.close()
