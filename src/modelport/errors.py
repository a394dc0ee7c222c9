"""The domain error tree. Services raise these; each wire dialect renders them in its own envelope
(``api/errors.py`` picks the dialect by request path). An error carries its HTTP status, a machine
``code``, the ``param`` at fault and, where waiting helps, ``retry_after``; wire vocabularies such as
OpenAI's ``type`` belong to the dialect, not here.

    ModelportError                  500 internal_error
    ├── AuthenticationError         401 invalid_api_key
    ├── PermissionDenied            403 permission_denied    (an account acting beyond its own resources)
    ├── NotFound                    404 not_found            (also for other accounts' resources)
    ├── RequestTooLarge             413 request_too_large    (a body over its route's cap: api/gate.py, before
    │   │                                                      parsing; unauthenticated bodies have the smallest)
    │   └── UploadTooLarge          413 upload_too_large     (cut off as soon as the body crosses the limit)
    ├── QuotaExceeded               429 quota_exceeded       (an account's models, storage, active jobs, open
    │   │                                                      uploads or share of the endpoint hardware)
    │   └── RateLimited             429 rate_limit_exceeded  (inference requests per minute; Retry-After)
    ├── DatabaseUnavailable         503 database_unavailable (a lost connection, raised for it by api/errors.py)
    ├── BlobUnavailable             503 blob_store_unavailable (the blob store lost a blob or stopped answering)
    ├── EngineOverloaded            503 engine_overloaded    (too much queued work or no memory for another
    │   │                                                      model; the client should retry)
    │   └── EngineRestarted         503 engine_restarted     (the engine worker serving it died mid-request and
    │                                                          is restarting; the client should retry)
    ├── EngineFailed                500 engine_error         (a model or adapter could not be loaded or run)
    ├── Conflict                    409 conflict
    │   └── ModelNameTaken          409 model_name_taken
    ├── InvalidRequest              400 invalid_request
    │   ├── InvalidSource           400 invalid_source
    │   │   └── PresignedUrlExpiring 400 presigned_url_expiring
    │   ├── InvalidModelName        400 invalid_model_name
    │   ├── BaseModelNotFound       400 base_model_not_found  (an adapter's base is not one of the caller's models)
    │   ├── UnsupportedParameter    400 unsupported_parameter (a known field we cannot honour)
    │   ├── ContextLengthExceeded   400 context_length_exceeded
    │   ├── WrongModelType          400 model_type_mismatch   (chat with an embedding model; adapter files
    │   │                                                      sent as model_type 'model' and the reverse)
    │   ├── TemplateMissing         400 chat_template_missing (chat with a model that has no chat template)
    │   ├── ChatTemplateBudgetExceeded 400 chat_template_budget_exceeded (a model's chat template went over
    │   │                                                      its time, memory or output budget)
    │   ├── HardwareUnavailable     400 hardware_unavailable  (not on this host, too small, or reserved)
    │   └── EndpointNotRunning      400 endpoint_not_running  (called while STOPPED or in ERROR)
    └── IngestError                 (job failures; recorded on the job, not returned by the API)
        ├── SourceUnavailable       the source could not be fetched (404/403/network)
        │   ├── FetchRefused        the SSRF guard refused an address or scheme (400 invalid_source
        │   │                       when found at submission)
        │   └── SourceTooSlow       the download fell below MODELPORT_FETCH_MIN_BYTES_PER_S or passed
        │                           MODELPORT_FETCH_DEADLINE_S (source_too_slow)
        ├── ArchiveRejected         the archive is unreadable or unsafe
        │   ├── NeedsRandomAccess   never shown: a zip the one-pass reader cannot follow; the
        │   │                       directory-first reader takes over (ingest/zipstream.py)
        │   └── ExtractionStopped   never shown: another extraction thread refused the archive first
        ├── StagingFull             the disk filled up while unpacking
        ├── StorageQuotaFull        storing the model would pass the account's storage quota
        ├── ValidationFailed        the artifact is not a servable model; carries every problem
        └── AdmissionFailed         the model did not load and run in its admission test (ingest/admission.py)

Messages never include secrets: callers pass redacted sources only.
"""

from __future__ import annotations

from collections.abc import Sequence


class ModelportError(Exception):
    status_code = 500
    code = "internal_error"
    retry_after: int | None = None  # seconds, sent as Retry-After where waiting helps

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class AuthenticationError(ModelportError):
    status_code = 401
    code = "invalid_api_key"


class PermissionDenied(ModelportError):
    status_code = 403
    code = "permission_denied"


class NotFound(ModelportError):
    status_code = 404
    code = "not_found"


class RequestTooLarge(ModelportError):
    status_code = 413
    code = "request_too_large"


class UploadTooLarge(RequestTooLarge):
    code = "upload_too_large"


class QuotaExceeded(ModelportError):
    """An account is at one of its limits. ``retry_after``: seconds after which trying again can work,
    when waiting helps at all (it does not for a full model count or storage)."""

    status_code = 429
    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: int | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after = retry_after


class DatabaseUnavailable(ModelportError):
    """The database refused or lost the connection; the pool reconnects on the next request."""

    status_code = 503
    code = "database_unavailable"
    retry_after = 2


class RateLimited(QuotaExceeded):
    code = "rate_limit_exceeded"


class BlobUnavailable(ModelportError):
    status_code = 503
    code = "blob_store_unavailable"


class EngineOverloaded(ModelportError):
    """Too much queued work, or no memory left to load another model; the client should retry."""

    status_code = 503
    code = "engine_overloaded"


class EngineRestarted(EngineOverloaded):
    """The engine process serving a request died (a crash, the OOM killer) and is being restarted:
    what was in flight there ends with this, never a hang."""

    code = "engine_restarted"
    retry_after = 1


class EngineFailed(ModelportError):
    """A model or adapter could not be loaded or run."""

    status_code = 500
    code = "engine_error"


class Conflict(ModelportError):
    status_code = 409
    code = "conflict"


class ModelNameTaken(Conflict):
    code = "model_name_taken"


class InvalidRequest(ModelportError):
    status_code = 400
    code = "invalid_request"


class InvalidSource(InvalidRequest):
    code = "invalid_source"


class PresignedUrlExpiring(InvalidSource):
    code = "presigned_url_expiring"


class InvalidModelName(InvalidRequest):
    code = "invalid_model_name"


class BaseModelNotFound(InvalidRequest):
    """400, not 404: the route exists and the body names something that does not. A 404 on ``POST
    /v1/models`` reads to clients as a wrong base URL, and another account's model must answer exactly
    like a missing one, which a 400 about one field does."""

    code = "base_model_not_found"


class UnsupportedParameter(InvalidRequest):
    code = "unsupported_parameter"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class WrongModelType(InvalidRequest):
    code = "model_type_mismatch"


class TemplateMissing(InvalidRequest):
    code = "chat_template_missing"


class ChatTemplateBudgetExceeded(InvalidRequest):
    """The model's chat template (tenant code) took too long or too much memory, or rendered too much."""

    code = "chat_template_budget_exceeded"


class HardwareUnavailable(InvalidRequest):
    code = "hardware_unavailable"


class EndpointNotRunning(InvalidRequest):
    code = "endpoint_not_running"


class IngestError(ModelportError):
    """A job failure. ``code`` is stable and shown to users; ``problems`` lists every finding."""

    status_code = 422
    code = "ingest_failed"

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems) or [message]


class SourceUnavailable(IngestError):
    code = "source_unavailable"


class FetchRefused(SourceUnavailable):
    code = "fetch_refused"


class SourceTooSlow(SourceUnavailable):
    """A download too slow to finish in fair time: it would hold an ingest worker that other jobs need."""

    code = "source_too_slow"


class ArchiveRejected(IngestError):
    code = "archive_rejected"
    staged_bytes = 0  # set by the extractor: bytes it had written to staging before refusing (then removed)


class NeedsRandomAccess(ArchiveRejected):
    """A zip entry with no knowable end when streamed; the caller reads the zip directory-first instead."""


class ExtractionStopped(ArchiveRejected):
    """Raised in the other extraction threads once one has refused the archive; never the reason shown."""


class StagingFull(IngestError):
    code = "staging_full"


class StorageQuotaFull(IngestError):
    code = "quota_exceeded"


class ValidationFailed(IngestError):
    code = "validation_failed"

    def __init__(self, problems: Sequence[str]) -> None:
        summary = f"{len(problems)} problem(s) found: " + "; ".join(problems)
        super().__init__(summary, problems=problems)


class AdmissionFailed(IngestError):
    code = "admission_failed"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("the model did not pass its admission test: " + "; ".join(problems), problems=problems)


def from_code(code: str, message: str, *, param: str | None = None) -> ModelportError:
    """The error of the tree whose ``code`` this is, for errors that crossed a process boundary (an engine
    worker's refusal reaches the client as the same error, status and code). Unknown codes: ``EngineFailed``."""
    pending: list[type[ModelportError]] = [ModelportError]
    while pending:
        cls = pending.pop()
        if cls.code == code and cls.__init__ is ModelportError.__init__:
            return cls(message, param=param)
        pending.extend(cls.__subclasses__())
    return EngineFailed(message, param=param)
