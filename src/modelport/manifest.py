"""The artifact manifest: what ingest learned about a model or adapter, and all that readers may rely on.

The contract between ingest, which writes a manifest once, and everything that reads it: the catalog and
storage (``models.manifest``), serving and endpoints (dtype, context length, sizing), and the edges (the
Together model detail, the CLI's ``models get``, the web model page). Readers use these types, never
the raw JSON.

Who writes what:

- ``ingest.validate.validate`` builds the ``Manifest``: files, kind, what the config says (``model_type``,
  ``architecture``), what the weights hold (``parameters``, ``dtype``), the serving ``type`` and the
  ``context_length``; for an adapter also ``adapter`` and ``base_model``, and the base's ``type``,
  ``architecture``, ``model_type`` and ``context_length``.
- ``ingest.checker`` adds the ``AdmissionReport`` (``Manifest.with_admission``).

The JSON form (``to_json``, which ``model_dump`` also gives) is what the database column, the Together
``GET /v1/models/{id}`` detail and the replica spec hold. Its keys and values are those modelport has
always stored, so old rows need no migration:

- ``files``, ``total_bytes``, ``kind``, ``model_type``, ``architecture``, ``type``, ``parameters``,
  ``dtype`` and ``context_length`` are always written, ``null`` where unknown;
- ``adapter`` and ``base_model`` only for adapters, ``admission`` only once admitted (rows older than
  admission have none): absent, never ``null``;
- an admission report holds ``checked`` and ``ms``, plus ``reason`` (structure only), or ``tokens`` and
  ``output_shape`` (a model's forward pass), or ``tokens``, ``target_modules`` and ``changed_modules``
  (an adapter's effect).

``from_json`` reads any row written so far: every key but ``kind`` may be missing, unknown keys are
ignored. Defaults for what a manifest may not know live here (``DEFAULT_CONTEXT_LENGTH``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

# The context a model gets when its config names none (no max_position_embeddings or the like).
DEFAULT_CONTEXT_LENGTH = 2048


class ModelKind(StrEnum):
    """A full model, or a LoRA adapter that runs on a base model (``models.kind``)."""

    MODEL = "model"
    ADAPTER = "adapter"


class ModelType(StrEnum):
    """What a model serves (``models.type``): chat completions (it has a chat template), plain completions,
    or embeddings. An adapter has its base model's type."""

    CHAT = "chat"
    LANGUAGE = "language"
    EMBEDDING = "embedding"


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FileEntry(_Contract):
    """One stored file: its path in the artifact ('/'-separated), size and content hash (the blob key)."""

    path: str
    size: int
    sha256: str


class AdapterInfo(_Contract):
    """A LoRA adapter's ``adapter_config.json``, as validated."""

    peft_type: str
    rank: int
    alpha: int | float | None = None
    target_modules: list[str] = []


class AdmissionReport(_Contract):
    """How admission proved the artifact works (``ingest.admission``): ``checked`` is ``meta`` (the
    weights fit the architecture; the forward pass was skipped, ``reason`` says why) or ``forward``."""

    checked: Literal["meta", "forward"]
    reason: str | None = None
    tokens: int | None = None
    output_shape: list[int] | None = None
    target_modules: int | None = None
    changed_modules: int | None = None
    ms: int

    @model_serializer(mode="wrap")
    def _written_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Each kind of report has its own keys; the others are absent, not null.
        return {k: v for k, v in handler(self).items() if v is not None}


# Keys absent from the JSON form when unset (see the module docstring); every other key is always written.
_ABSENT_WHEN_NONE = ("adapter", "base_model", "admission", "tool_call_parser")


class Manifest(_Contract):
    """A model or adapter as ingest validated and admitted it. See the module docstring for the JSON form."""

    files: list[FileEntry] = []
    total_bytes: int = 0
    kind: ModelKind
    model_type: str | None = None  # config.json's model_type, e.g. "llama"; not ``type``
    architecture: str | None = None  # e.g. "LlamaForCausalLM"
    type: ModelType | None = None
    parameters: int | None = None
    dtype: str | None = None  # the safetensors dtype holding most bytes, e.g. "BF16"
    context_length: int | None = None
    adapter: AdapterInfo | None = None
    base_model: str | None = None  # the base model's name, for an adapter
    admission: AdmissionReport | None = None
    # How the model writes tool calls ("hermes", "llama3_json", "mistral"; ``serving/toolcalls.py``): given
    # at upload, or read off its chat template then; None: tool calls are not parsed from its answers.
    tool_call_parser: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        """Read a stored (or received) manifest; keys missing from older rows take their defaults."""
        return cls.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        """The JSON form that is stored and sent (see the module docstring)."""
        return self.model_dump(mode="json")

    @model_serializer(mode="wrap")
    def _written_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _ABSENT_WHEN_NONE:
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def context_length_or_default(self) -> int:
        """The context the model is served with: its own, or ``DEFAULT_CONTEXT_LENGTH`` when unknown."""
        return self.context_length or DEFAULT_CONTEXT_LENGTH

    @property
    def is_adapter(self) -> bool:
        return self.kind == ModelKind.ADAPTER

    def with_files(self, files: list[FileEntry]) -> Manifest:
        """This manifest describing ``files``, whose sizes add up to ``total_bytes``."""
        return self.model_copy(update={"files": files, "total_bytes": sum(f.size for f in files)})

    def with_admission(self, report: AdmissionReport) -> Manifest:
        return self.model_copy(update={"admission": report})


def context_length_of(manifest: Manifest | None, cap: int | None = None) -> int:
    """The context a model is served with; ``DEFAULT_CONTEXT_LENGTH`` also when it has no manifest.
    ``cap``: the server's limit (``MODELPORT_MAX_MODEL_LEN``; a config may declare up to 2^24)."""
    context = manifest.context_length_or_default if manifest else DEFAULT_CONTEXT_LENGTH
    return context if cap is None else min(context, cap)
