"""The checks that run before any byte of an upload moves and before a job exists.

``Catalog.preflight`` runs them against the database; this module holds the parts that need none: the
type rules, what a list of file names says the artifact is, and the messages, which name API fields
(the CLI and the console say the same things in their own words, keyed by the error's ``code``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modelport.errors import ArchiveRejected, BaseModelNotFound, InvalidRequest, ModelNameTaken, WrongModelType
from modelport.ingest.archive import safe_member_path
from modelport.ingest.layout import detect_kind
from modelport.ingest.sources import SourceSpec

MODEL_TYPES = ("model", "adapter")
MAX_SUGGESTIONS = 3


@dataclass(frozen=True)
class Preflight:
    """What the checks found: the name the model will get, and the base it will be checked against."""

    model_name: str  # qualified: <account>/<name>
    model_type: str
    detected_type: str | None  # from the file names; None when none were sent
    base_model: str | None  # the base's qualified name, resolved as the ingest job will resolve it
    source: SourceSpec | None = None


def check_type(model_type: str, base_model: str | None, lora_model: str | None) -> None:
    if model_type not in MODEL_TYPES:
        raise InvalidRequest("model_type must be 'model' or 'adapter'", param="model_type")
    if model_type == "model" and (base_model or lora_model):
        raise InvalidRequest("base_model and lora_model only apply to model_type 'adapter'", param="base_model")


def check_files(files: Sequence[str], model_type: str, param: str = "files") -> str:
    """The kind the names say (``detect_kind``), which must be ``model_type``; raises otherwise.
    ``param``: the field that carried the names (``files``, or ``model_source`` for an uploaded archive)."""
    names = top_level_names(files, param)
    kind = detect_kind(names)
    if kind == "model" and model_type == "adapter" and "adapter_config.json" in names:
        # Both configs fit either type (a merged checkpoint that kept its adapter config, or an adapter
        # saved with its base's config): the job checks the files as the type asked for, so do we.
        kind = "adapter"
    if kind is None:
        raise InvalidRequest(_no_config(names), param=param)
    if kind != model_type:
        raise WrongModelType(_mismatch(kind), param="model_type")
    return kind


def top_level_names(files: Iterable[str], param: str = "files") -> list[str]:
    """Names as the ingest job will see them once the archive is unpacked: litter (``.DS_Store``,
    ``__MACOSX/``) dropped, and one folder wrapping everything taken off (``archive._flatten``)."""
    names = []
    for raw in files:
        try:
            rel = safe_member_path(raw.replace("\\", "/"))
        except ArchiveRejected as e:
            raise InvalidRequest(e.message, param=param) from None
        if rel is not None:
            names.append(rel)
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        return [n.split("/", 1)[1] for n in names]
    return names


def _mismatch(found: str) -> str:
    if found == "adapter":
        return (
            "the files are a LoRA adapter (adapter_config.json, no config.json) but model_type is 'model'; "
            "send model_type 'adapter' with its base_model"
        )
    return (
        "the files are a full model (config.json at the top level) but model_type is 'adapter'; send "
        "model_type 'model', or send the adapter's own files (adapter_config.json and "
        "adapter_model.safetensors, no config.json)"
    )


def _no_config(names: Sequence[str]) -> str:
    message = (
        "no config.json or adapter_config.json at the top level: a model needs config.json and a LoRA "
        "adapter adapter_config.json, next to their weights"
    )
    nested = sorted(n for n in names if n.rsplit("/", 1)[-1] in ("config.json", "adapter_config.json"))
    if nested:
        return f"{message}; found {nested[0]}: send the folder that holds it"
    return message if names else f"{message}; the list of files is empty"


def name_taken(name: str, still_uploading: bool) -> ModelNameTaken:
    # "Model name already exists" is the phrase Together answers with; clients may match on it.
    if still_uploading:
        detail = "it is still uploading; choose another model_name, or wait for its job and delete it"
    else:
        detail = "choose another model_name, or delete the existing model first"
    return ModelNameTaken(f"Model name already exists: {name} ({detail})", param="model_name")


def base_not_found(ref: str, account: str, bases: Sequence[str], pending: str | None) -> BaseModelNotFound:
    """``bases``: the caller's ready full models, the only names that may be suggested (tenancy)."""
    message = f"base model {ref!r} is not one of your models"
    if pending:
        message = f"base model {pending!r} is not ready yet; send the adapter once its upload job is Complete"
    elif hints := suggestions(ref, bases):
        message += "; did you mean " + " or ".join(repr(h) for h in hints) + "?"
    elif bases:
        message += f"; base_model is one of your models (as {account}/NAME, NAME or its id): GET /v1/models lists them"
    else:
        message += "; you have no models yet: upload the base model first (model_type 'model')"
    return BaseModelNotFound(message, param="base_model")


def suggestions(ref: str, full_names: Iterable[str]) -> list[str]:
    """Close matches to what was typed, over short (``tiny-llama``) and full (``alice/tiny-llama``)
    forms alike, always answered with the full name."""
    forms: dict[str, str] = {}
    for full in full_names:
        forms[full] = full
        forms.setdefault(full.partition("/")[2] or full, full)
    matches = difflib.get_close_matches(ref, forms, n=MAX_SUGGESTIONS * 2, cutoff=0.6)
    return list(dict.fromkeys(forms[m] for m in matches))[:MAX_SUGGESTIONS]
