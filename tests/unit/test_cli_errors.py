"""The CLI's error table: every code the server sends has a hint, and messages speak in flags and commands."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import modelport
from modelport.cli.client import ApiError, NotFoundError
from modelport.cli.errors import CODE_HINTS, SELF_EXPLAINED, explain, in_flags, job_failure
from modelport.errors import ModelportError

SRC = Path(modelport.__file__).parent
# Functions that take a machine code positionally, and where (a job's failure, an envelope).
CODE_ARGUMENT = {"_error": 0, "_fail": 2, "finish_failed": 2, "openai_envelope": 3}


def _modules_with_error_classes() -> list[str]:
    """Modules that define a class with a ``code`` attribute: importing them registers every subclass."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_assigns_code(stmt) for stmt in node.body):
                found.append(".".join(("modelport", *path.relative_to(SRC).with_suffix("").parts)))
                break
    return found


def _assigns_code(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "code" for t in stmt.targets)


def subclass_codes() -> set[str]:
    for module in _modules_with_error_classes():
        importlib.import_module(module)
    codes, todo = set(), [ModelportError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return codes


def ad_hoc_codes() -> set[str]:
    """Codes given outside a class: ``code=`` arguments, ``{"code": ...}`` bodies, ``code = ...``
    assignments, the code argument of the functions in CODE_ARGUMENT, and (type, code) pairs."""
    codes: set[str] = set()
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            codes.update(code for code in _codes_in(node) if code)
    return codes


def _text(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _codes_in(node: ast.AST) -> list[str | None]:
    if isinstance(node, ast.keyword) and node.arg == "code":
        return [_text(node.value)]
    if isinstance(node, ast.Dict):
        return [_text(v) for k, v in zip(node.keys, node.values, strict=True) if _text(k) == "code"]
    if isinstance(node, ast.Assign):
        return _assigned_codes(node)
    if isinstance(node, ast.Call):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        at = CODE_ARGUMENT.get(name)
        return [_text(node.args[at])] if at is not None and len(node.args) > at else []
    if isinstance(node, ast.Tuple) and len(node.elts) == 2 and (kind := _text(node.elts[0])):
        return [_text(node.elts[1])] if kind.endswith("_error") else []  # ("not_found_error", "not_found")
    return []


def _assigned_codes(node: ast.Assign) -> list[str | None]:
    found: list[str | None] = []
    for target in node.targets:
        if (
            isinstance(target, ast.Name | ast.Attribute)
            and getattr(target, "id", getattr(target, "attr", "")) == "code"
        ):
            found.append(_text(node.value))
        elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
            names = [getattr(t, "id", None) for t in target.elts]
            found.extend(_text(v) for n, v in zip(names, node.value.elts, strict=False) if n == "code")
    return found


def server_codes() -> set[str]:
    return subclass_codes() | ad_hoc_codes()


def hint_of(error: ApiError) -> str:
    why = explain(error)
    assert why is not None
    return why.hint or ""


def test_the_code_finder_sees_subclasses_elsewhere_and_ad_hoc_codes() -> None:
    codes = server_codes()
    # Subclasses outside errors.py, codes given to jobs and envelopes, and the route errors' pairs.
    assert {"chat_template_missing", "engine_overloaded", "admission_failed", "blob_store_unavailable"} <= codes
    assert {"check_timeout", "check_crashed", "worker_lost", "engine_error", "method_not_allowed"} <= codes
    assert {"rate_limit_exceeded", "base_model_not_found", "model_type_mismatch", "internal_error"} <= codes


def test_every_code_the_server_sends_has_a_hint() -> None:
    missing = server_codes() - CODE_HINTS.keys() - SELF_EXPLAINED
    assert not missing, f"add these to CODE_HINTS (or SELF_EXPLAINED) in cli/errors.py: {sorted(missing)}"


def test_every_hint_is_for_a_code_the_server_sends() -> None:
    unknown = (CODE_HINTS.keys() | SELF_EXPLAINED) - server_codes()
    assert not unknown, f"no server error has these codes: {sorted(unknown)}"


def test_hints_name_modelport_commands_never_another_client() -> None:
    for code, hint in CODE_HINTS.items():
        assert "together" not in hint.lower(), code
        hint.format(ref="NAME")  # no placeholder but {ref}


@pytest.mark.parametrize(
    ("message", "param", "expected"),
    [
        (
            "base_model and lora_model only apply to model_type 'adapter'",
            "base_model",
            "--base-model and --lora-model only apply to --model-type 'adapter'",
        ),
        ("max_tokens must be at least 1", "max_tokens", "--max-tokens must be at least 1"),
        (
            "temperature: Input should be greater than or equal to 0; autoscaling.min_replicas: too small",
            "temperature",
            "--temperature: Input should be greater than or equal to 0; --min-replicas: too small",
        ),
        ("at most 4 'stop' strings", "stop", "at most 4 --stop strings"),
        # A one-word field that is not quoted, nor the head of a clause, is a plain word.
        ("pick smaller hardware", "hardware", "pick smaller hardware"),
        ("the seed was too large", None, "the seed was too large"),
        # Paths, URLs and tensor names keep their snake_case.
        (
            "base_model.model.layers.0.q_proj.lora_A.weight is missing from http://h/model_name.tar",
            "base_model",
            "base_model.model.layers.0.q_proj.lora_A.weight is missing from http://h/model_name.tar",
        ),
        ("MODELPORT_MAX_TOKENS is set", None, "MODELPORT_MAX_TOKENS is set"),
        # API calls become the commands that make them; byte counts become MiB and GiB.
        ("x is an embedding model; call /v1/embeddings", "model", "x is an embedding model; call `modelport embed`"),
        ("storing 5 files (302216573 bytes)", None, "storing 5 files (288.2 MiB)"),
    ],
)
def test_server_messages_in_cli_terms(message: str, param: str | None, expected: str) -> None:
    assert in_flags(message, param) == expected


def test_an_api_error_names_the_flag_and_the_next_command() -> None:
    error = ApiError(
        400, "base model 'nope' is not one of your models", code="base_model_not_found", param="base_model"
    )
    why = explain(error)
    assert why is not None and why.exit_code == 1 and "--base-model" in (why.hint or "")
    stopped = ApiError(400, "endpoint admin/m-1 is STOPPED", code="endpoint_not_running", ref="admin/m-1")
    assert "`modelport endpoints start admin/m-1" in hint_of(stopped)


def test_a_type_mismatch_hint_depends_on_the_field() -> None:
    serving = ApiError(400, "x is an embedding model", code="model_type_mismatch", param="model", ref="admin/x")
    assert "`modelport models get admin/x`" in hint_of(serving)
    uploading = ApiError(400, "these are an adapter's files", code="model_type_mismatch", param="model_type")
    assert "--model-type adapter" in hint_of(uploading)


def test_rate_limits_say_when_to_try_again() -> None:
    limited = ApiError(429, "too many requests", code="rate_limit_exceeded", retry_after="7")
    assert hint_of(limited) == "try again in 7 s"
    assert hint_of(ApiError(429, "slow down", code="rate_limit_exceeded")) == CODE_HINTS["rate_limit_exceeded"]


@pytest.mark.parametrize(
    ("sent", "env_hint"),
    [("http://store.lan/m.tar", True), ("https://10.0.0.5/m.tar", True), ("not a repo!", False)],
)
def test_a_refused_url_points_at_the_servers_fetch_settings(sent: str, env_hint: bool) -> None:
    error = ApiError(400, "refused", code="invalid_source", param="model_source", sent=sent)
    hint = hint_of(error)
    assert ("MODELPORT_FETCH_ALLOW_HTTP" in hint and "MODELPORT_FETCH_ALLOW=" in hint) is env_hint
    assert env_hint or "--model-source" in hint


def test_not_found_names_what_was_missing_and_exits_4() -> None:
    why = explain(NotFoundError(404, "model 'x' not found", code="not_found", resource="model", ref="x"))
    assert why is not None and why.exit_code == 4 and "modelport models list" in (why.hint or "")
    route = explain(NotFoundError(404, "route not found", code="not_found"))
    assert route is not None and route.exit_code == 4 and route.hint == CODE_HINTS["not_found"]


def test_a_failed_job_exits_5_with_its_codes_hint() -> None:
    job = {
        "job_id": "job-1",
        "error": {"code": "fetch_refused", "message": "refused to fetch over plain http://"},
        "args": {"modelName": "admin/m"},
    }
    failure = job_failure(job, "admin/m")
    assert failure.exit_code == 5 and failure.message.startswith("job job-1 failed (fetch_refused): refused")
    assert "MODELPORT_FETCH_ALLOW_HTTP" in (failure.hint or "") and "`modelport jobs get job-1`" in (failure.hint or "")
