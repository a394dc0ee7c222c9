"""The one table that turns a failure into a message, a hint of what to run next, and an exit code.

Exit codes (also in ``modelport --help`` and docs/cli.md):

    0    success
    1    the server refused the request, or an operation failed
    2    usage error: unknown command, bad flag or argument
    3    no API key, or the key was refused (401/403)
    4    not found: the model, job, endpoint or key does not exist (or is another account's)
    5    a job or endpoint you waited for failed (job Failed, endpoint ERROR)
    6    the server cannot be reached
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.cli.client import ApiError, NotFoundError, Unreachable

EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "the server refused the request, or an operation failed",
    2: "usage error: unknown command, bad flag or argument",
    3: "no API key, or the key was refused (401/403)",
    4: "not found: the model, job, endpoint or key does not exist (or is another account's)",
    5: "a job or endpoint you waited for failed (job Failed, endpoint ERROR)",
    6: "the server cannot be reached",
    130: "interrupted (Ctrl-C)",
}


class CliFailure(Exception):
    """A failure the CLI itself detects (a failed job, a missing key), already explained."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message, self.hint, self.exit_code = message, hint, exit_code


@dataclass(frozen=True)
class Explained:
    message: str
    hint: str | None
    exit_code: int


NOT_FOUND_HINTS = {
    "model": "`modelport models list` shows the models you can use",
    "job": "`modelport jobs list` shows your jobs",
    "endpoint": "`modelport endpoints list` shows your endpoints",
    "key": "`modelport keys list` shows the keys you can manage",
    "upload": "run the upload again: it starts afresh",
}

CODE_HINTS = {
    "invalid_api_key": "check --api-key or MODELPORT_API_KEY; an administrator makes keys with "
    "`modelport keys create --account NAME`",
    "permission_denied": "only an administrator (the account made on first start) can do this",
    "model_name_taken": "choose another --model-name, or delete the old model: `modelport models delete {ref}`",
    "hardware_unavailable": "`modelport endpoints hardware --model {ref}` lists what this server can run",
    "endpoint_not_running": "`modelport endpoints list` shows its state; start it with `modelport endpoints start`",
    "presigned_url_expiring": "presign the URL for longer: the job may need it for up to 100 minutes",
    "context_length_exceeded": "shorten the prompt or lower --max-tokens",
    "chat_template_missing": "this model has no chat template: try `modelport complete {ref} PROMPT`",
    "model_type_mismatch": "`modelport models get {ref}` shows what kind of model it is",
    "upload_too_large": "the server's limit is MODELPORT_MAX_UPLOAD_BYTES",
    "rate_limited": "wait a little and try again",
}

STATUS_HINTS = {
    409: "`modelport models list` and `modelport endpoints list` show what is in the way",
    429: "wait and try again",
}


def explain(exc: BaseException) -> Explained | None:
    """What to tell the user about ``exc``; None for a bug (the caller shows it as one)."""
    if isinstance(exc, CliFailure):
        return Explained(exc.message, exc.hint, exc.exit_code)
    if isinstance(exc, Unreachable):
        hint = "start the server with `modelport serve`, or point --base-url (MODELPORT_BASE_URL) at it"
        return Explained(str(exc), hint, 6)
    if isinstance(exc, ApiError):
        return _explain_api(exc)
    return None


def _explain_api(exc: ApiError) -> Explained:
    ref = exc.ref or "NAME"
    if isinstance(exc, NotFoundError) and exc.code in (None, "not_found"):
        return Explained(exc.message, NOT_FOUND_HINTS.get(exc.resource or ""), 4)
    hint = CODE_HINTS.get(exc.code or "") or STATUS_HINTS.get(exc.status)
    if exc.status >= 500:
        hint = "the server failed; its log says why"
    if exc.status == 429 and exc.retry_after:
        hint = f"try again in {exc.retry_after} s"
    code = 3 if exc.status in (401, 403) else 4 if exc.status == 404 else 1
    return Explained(exc.message, hint.format(ref=ref) if hint else None, code)
