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

The server's messages name its wire fields (``max_tokens``); the CLI says the flag a user typed
(``--max-tokens``) instead, and suggests ``modelport`` commands, never another client's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from modelport.cli.client import ApiError, NotFoundError, Unreachable
from modelport.cli.flags import API_COMMANDS, API_FLAGS
from modelport.humanize import human_sizes

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


# Flags for the fields a message can name, beyond the upload fields of cli/flags.py. A one-word field
# ("stop", "hardware") is also a plain word: it becomes its flag only where it is plainly the field,
# at the head of a validation clause or quoted in an error about it (its ``param``).
PARAM_FLAGS = {
    **API_FLAGS,
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--seed",
    "repetition_penalty": "--repetition-penalty",
    "stop": "--stop",
    "description": "--description",
    "hardware": "--hardware",
    "display_name": "--display-name",
    "min_replicas": "--min-replicas",
    "max_replicas": "--max-replicas",
    "autoscaling": "--min-replicas/--max-replicas",
    "inactive_timeout": "--inactive-timeout",
    "account": "--account",
    "since": "--since",
    "until": "--until",
}
API_CALLS = {
    **API_COMMANDS,
    "GET /v1/hardware": "`modelport endpoints hardware`",
    "/v1/chat/completions": "`modelport chat`",
    "/v1/completions": "`modelport complete`",
    "/v1/embeddings": "`modelport embed`",
}
# Replaced anywhere: a snake_case field is never a plain word, but can be part of a path, a URL or a
# tensor's name (``base_model.model.layers.0``), which stay as they are.
_IDENTIFIER = re.compile(r"(?<![\w./-])(" + "|".join(k for k in PARAM_FLAGS if "_" in k) + r")(?![\w-]|\.\w)")
# The field that starts each clause of a validation message: "temperature: Input should be ...".
_CLAUSE = re.compile(r"(?:^|(?<=; ))([a-z_][\w.]*)(?=: )")

NOT_FOUND_HINTS = {
    "model": "`modelport models list` shows the models you can use",
    "job": "`modelport jobs list` shows your jobs",
    "endpoint": "`modelport endpoints list` shows your endpoints",
    "key": "`modelport keys list` shows the keys you can manage",
    "upload": "run the upload again: it starts afresh",
}

_ON_PREM = (
    "an on-prem store is the server's choice: its administrator allows plain http:// with "
    "MODELPORT_FETCH_ALLOW_HTTP=true and a private address with MODELPORT_FETCH_ALLOW=HOST"
)
_TYPES = (
    "`modelport models get {ref}` shows its type: chat models answer `modelport chat`, plain language "
    "models `modelport complete`, embedding models `modelport embed`"
)
_AGAIN = "run the same `modelport models upload` again"

# Every code the server answers with, or fails a job with, has a hint here or is in SELF_EXPLAINED
# (tests/unit/test_cli_errors.py checks both ways). {ref} is the model, endpoint or job named.
CODE_HINTS = {
    # refused requests
    "invalid_api_key": "check --api-key or MODELPORT_API_KEY; an administrator makes keys with "
    "`modelport keys create --account NAME`",
    "permission_denied": "only an administrator (the account made on first start) can do this",
    "not_found": "`modelport models list`, `modelport endpoints list` and `modelport jobs list` show what exists",
    "conflict": "`modelport models list` and `modelport endpoints list` show what is in the way",
    "model_name_taken": "choose another --model-name, or delete the old model: `modelport models delete {ref}`",
    "invalid_model_name": "choose another --model-name",
    "base_model_not_found": "upload the base model first, or pass one of `modelport models list` as --base-model",
    "invalid_source": "--model-source takes a local folder or archive, a Hugging Face repo (org/name[@revision]), "
    "an https:// archive URL or an uploaded file id",
    "presigned_url_expiring": "presign the URL for longer: the job may need it for up to 100 minutes",
    "upload_too_large": "the server's limit is MODELPORT_MAX_UPLOAD_BYTES",
    "request_too_large": "the request is over the server's size limit (MODELPORT_MAX_BODY_BYTES, "
    "MODELPORT_MAX_INFERENCE_BODY_BYTES for inference); send less, e.g. a shorter prompt",
    "chat_template_budget_exceeded": "the model's chat template ran too long or wrote too much for this "
    "conversation; shorten the messages, or fix the template in tokenizer_config.json and upload it again",
    "quota_exceeded": "delete models you no longer need (`modelport models list`, `modelport models delete NAME`), "
    "or ask the administrator for a larger quota",
    "rate_limit_exceeded": "wait a little and try again",
    "hardware_unavailable": "`modelport endpoints hardware --model {ref}` lists what this server can run",
    "endpoint_not_running": "start it with `modelport endpoints start {ref} --wait`",
    "context_length_exceeded": "shorten the prompt or lower --max-tokens",
    "chat_template_missing": "this model has no chat template: try `modelport complete {ref} PROMPT`",
    "model_type_mismatch": _TYPES,
    "engine_overloaded": "the model is busy: try again in a moment, or give it its own endpoint with "
    "`modelport endpoints create --model {ref}`",
    "engine_restarted": "the engine process serving the model stopped and is restarting: try again in a "
    "moment; if it keeps happening, the server's engine logs (data dir, engines/) say why",
    "engine_error": "the model failed while answering; the server's log says why",
    "request_timeout": "the request arrived too slowly; check the network and try again",
    "method_not_allowed": "this CLI and the server may be different versions: compare `modelport --version`",
    "http_error": "this CLI and the server may be different versions: compare `modelport --version`",
    "internal_error": "the server failed; its log says why",
    "database_unavailable": "the server lost its database; try again in a moment",
    "blob_store_unavailable": "the server cannot reach its blob store (MODELPORT_BLOB_URL); its log says why",
    # failed jobs
    "ingest_failed": f"{_AGAIN}; the server's log says more",
    "source_unavailable": "check that --model-source exists and that the server can reach it; a private "
    "Hugging Face repo needs --hf-token",
    "fetch_refused": _ON_PREM,
    "archive_rejected": "send a .tar, .tar.gz or .zip holding the model's files (config.json, *.safetensors), "
    "or the model's folder itself",
    "staging_full": "the server's disk filled up while unpacking: free space under its MODELPORT_DATA_DIR, then "
    + _AGAIN,
    "validation_failed": f"fix every problem listed, then {_AGAIN}",
    "source_too_slow": "the source sent too slowly or for too long (the server's MODELPORT_FETCH_MIN_BYTES_PER_S "
    f"and MODELPORT_FETCH_DEADLINE_S); use a faster host, then {_AGAIN}",
    "admission_failed": "the weights did not load or gave non-finite outputs: check that the model loads with "
    "transformers, then upload it again",
    "check_timeout": "checking took longer than the server's MODELPORT_CHECK_TIMEOUT_S; its administrator can raise it",
    "check_crashed": "the files broke the server's checker: check that the model loads with transformers",
    "worker_lost": f"the worker running the job stopped; {_AGAIN}",
}

# Where the field an error is about calls for another hint than its code's.
PARAM_HINTS = {
    ("model_type_mismatch", "model_type"): "--model-type adapter is for a LoRA adapter's files (adapter_config.json), "
    "with --base-model naming its base; --model-type model for a full model",
}

# Codes whose message says all there is to say (which field, which value, and why).
SELF_EXPLAINED = frozenset(
    {
        "invalid_request",  # a bad field: the message names it, as its flag
        "unsupported_parameter",  # the message names the parameter that cannot be honoured
    }
)

STATUS_HINTS = {
    409: CODE_HINTS["conflict"],
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
    message = in_flags(exc.message, exc.param)
    if isinstance(exc, NotFoundError) and exc.code in (None, "not_found") and exc.resource in NOT_FOUND_HINTS:
        return Explained(message, NOT_FOUND_HINTS[exc.resource], 4)
    hint = _hint(exc)
    code = 3 if exc.status in (401, 403) else 4 if exc.status == 404 else 1
    return Explained(message, hint.format(ref=exc.ref or "NAME") if hint else None, code)


def _hint(exc: ApiError) -> str | None:
    if exc.retry_after and exc.status in (429, 503):
        return f"try again in {exc.retry_after} s"
    # The field's value, not the message, says an on-prem URL was refused.
    if exc.code == "invalid_source" and str(exc.sent or "").startswith(("http://", "https://")):
        return _ON_PREM
    code = exc.code or ""
    hint = PARAM_HINTS.get((code, exc.param or "")) or CODE_HINTS.get(code) or STATUS_HINTS.get(exc.status)
    if hint is None and exc.status >= 500:
        return CODE_HINTS["internal_error"]
    return hint


def in_flags(message: str, param: str | None = None) -> str:
    """A server message in CLI terms: fields as flags, API calls as commands, sizes in MiB/GiB."""
    text = message
    for call, command in API_CALLS.items():
        text = text.replace(call, command)
    text = _CLAUSE.sub(lambda m: PARAM_FLAGS.get(m[1].rsplit(".", 1)[-1], m[1]), text)
    text = _IDENTIFIER.sub(lambda m: PARAM_FLAGS[m[1]], text)
    leaf = (param or "").rsplit(".", 1)[-1]
    if flag := PARAM_FLAGS.get(leaf):
        text = re.sub(rf"`{leaf}`|'{leaf}'|\"{leaf}\"", flag, text)
    return human_sizes(text)


def job_failure(job: dict[str, Any], model: str | None = None) -> CliFailure:
    """A Failed job as the CLI reports it: its code and message, what to do, and exit code 5."""
    error = job.get("error") or {}
    code = error.get("code") or "ingest_failed"
    detail = f"`modelport jobs get {job['job_id']}` shows every status update"
    hint = CODE_HINTS.get(code)
    return CliFailure(
        f"job {job['job_id']} failed ({code}): {in_flags(str(error.get('message') or ''))}",
        hint=f"{hint.format(ref=model or 'NAME')}; {detail}" if hint else detail,
        exit_code=5,
    )
