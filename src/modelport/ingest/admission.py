"""Admission proof: before a model is ``Complete``, show that it really loads and runs.

1. Instantiate the architecture on the meta device (no memory) and check that the safetensors
   weights cover every parameter with the right shape.
2. If the weights fit ``admission_max_bytes``, load the model on CPU for real and run a one-token
   forward pass; outputs must be finite.
3. For an adapter: apply it to its base and require that it changes the output of at least one of
   its target modules (an adapter with all-zero ``lora_B`` would silently do nothing).
4. Render the chat template, if any, in the sandbox.

Before any of that, ``derive_tokenizer`` writes the ``tokenizer.json`` serving needs where an upload has
only other tokenizer files.

torch, transformers and peft are imported here only, when an admission runs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport import chat_template
from modelport.chat_template_workers import default_renderer
from modelport.errors import AdmissionFailed
from modelport.ingest.safetensors_header import TensorInfo
from modelport.manifest import AdmissionReport, Manifest, ModelType
from modelport.tokenizer_files import find_chat_template

log = logging.getLogger(__name__)
PROBE_TEXT = "Hello"
# What the server reads of a tokenizer (``serving/text.py``, the ``tokenizers`` library), and what a fast
# tokenizer's ``save_pretrained`` writes: derived from the other tokenizer files where an upload lacks them.
FAST_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class Candidate:
    """What admission looks at: a directory in Hugging Face layout and its parsed weight headers."""

    directory: Path
    manifest: Manifest
    tensors: dict[str, TensorInfo]


def admit(candidate: Candidate, *, max_bytes: int, base: Candidate | None = None) -> AdmissionReport:
    """Return the admission report; raise ``AdmissionFailed`` listing every problem."""
    started = time.monotonic()
    problems: list[str] = []
    model_side = base if candidate.manifest.is_adapter else candidate
    if model_side is None:
        raise AdmissionFailed(["the adapter's base model is not available"])
    _check_template(model_side.directory, problems)
    _check_weights_cover_architecture(model_side, problems)
    if problems:
        raise AdmissionFailed(problems)
    weight_bytes = model_side.manifest.total_bytes
    if weight_bytes > max_bytes:
        return AdmissionReport(
            checked="meta",
            reason=f"weights ({weight_bytes} bytes) exceed the admission budget "
            f"({max_bytes} bytes): structure checked, forward pass skipped",
            ms=_ms(started),
        )
    if candidate is model_side:
        return _forward(model_side, started)
    return _adapter_effect(model_side, candidate, started)


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _check_template(directory: Path, problems: list[str]) -> None:
    template = find_chat_template(directory)  # the one serving will use
    if template is None:
        return
    try:  # under the budget chat requests have (a worker process with time and memory limits)
        probe = [{"role": "user", "content": PROBE_TEXT}]
        default_renderer().render(template, probe, bos_token="", eos_token="")
    except chat_template.ChatTemplateError as e:
        problems.append(f"chat template: {e}")


def _auto_class(manifest: Manifest) -> Any:
    import transformers

    if manifest.type == ModelType.EMBEDDING:
        return transformers.AutoModel
    if (manifest.architecture or "").endswith("ForConditionalGeneration"):
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModelForCausalLM


def _check_weights_cover_architecture(model: Candidate, problems: list[str]) -> None:
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model.directory, trust_remote_code=False)
        with torch.device("meta"):
            skeleton = _auto_class(model.manifest).from_config(config, trust_remote_code=False)
    except Exception as e:  # any failure to build the architecture is the finding itself
        problems.append(f"the architecture cannot be built from config.json: {type(e).__name__}: {e}")
        return
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    tied = set(getattr(skeleton, "_tied_weights_keys", None) or []) if config.tie_word_embeddings else set()
    have = _align_prefix(model.tensors, expected, getattr(skeleton, "base_model_prefix", ""))
    missing = sorted(k for k in expected if k not in have and k not in tied)
    wrong = sorted(k for k in expected if k in have and have[k] != expected[k])
    if missing:
        problems.append(f"the weights lack {len(missing)} parameters of the architecture, e.g. {missing[:3]}")
    for key in wrong[:5]:
        problems.append(f"weight {key} has shape {list(have[key])}, the architecture needs {list(expected[key])}")


def _align_prefix(
    tensors: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]], prefix: str
) -> dict[str, tuple[int, ...]]:
    """Checkpoints saved from a task head carry ``bert.``-style prefixes that a bare model lacks."""
    shapes = {k: t.shape for k, t in tensors.items()}
    if prefix and not set(shapes) & set(expected):
        stripped = {k.removeprefix(prefix + "."): v for k, v in shapes.items()}
        if set(stripped) & set(expected):
            return stripped
    return shapes


def _load(model: Candidate) -> Any:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a worker's log is no terminal

    loaded = _auto_class(model.manifest).from_pretrained(
        model.directory, dtype=torch.float32, trust_remote_code=False, use_safetensors=True
    )
    return loaded.eval()


def derive_tokenizer(directory: Path, present: Collection[str]) -> list[str]:
    """Write the ``FAST_TOKENIZER_FILES`` missing from ``present`` (the uploaded paths) into ``directory``,
    as transformers' fast tokenizer saves them; return their names. Needed when there is no tokenizer.json:
    the API server has no transformers to build a tokenizer from vocab or SentencePiece files, so a model
    stored without one could never serve. Raises ``AdmissionFailed`` when no fast tokenizer can be built."""
    if "tokenizer.json" in present:
        return []
    tokenizer = _fast_tokenizer(directory)
    missing = [name for name in FAST_TOKENIZER_FILES if name not in present]
    # A scratch folder inside the tree: a rename into place, and nothing else save_pretrained writes
    # (special_tokens_map.json, a chat template file) joins the upload.
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=directory) as scratch:
        tokenizer.save_pretrained(scratch)
        for name in missing:
            os.replace(Path(scratch) / name, directory / name)
    return missing


def _fast_tokenizer(directory: Path) -> Any:
    try:
        tokenizer = _auto_tokenizer(directory)
    except Exception as e:  # e.g. a SentencePiece model without the sentencepiece package
        why = f"transformers builds no fast tokenizer from the other tokenizer files ({type(e).__name__}: {e})"
    else:
        if tokenizer.is_fast:
            return tokenizer
        why = f"transformers loads the tokenizer files only as a slow {type(tokenizer).__name__}"
    raise AdmissionFailed(
        [
            f"no tokenizer.json, and {why}: the server reads fast-tokenizer files only; upload the model again "
            "with the tokenizer saved by transformers' tokenizer.save_pretrained(folder), which writes tokenizer.json"
        ]
    )


def _auto_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, trust_remote_code=False)


def _probe_ids(model: Candidate) -> Any:
    import torch

    try:
        tokenizer = _auto_tokenizer(model.directory)
        ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"][:, :8]
        if ids.numel():
            return ids
    except Exception as e:
        raise AdmissionFailed([f"the tokenizer does not load: {type(e).__name__}: {e}"]) from None
    return torch.tensor([[0]])


def _forward(model: Candidate, started: float) -> AdmissionReport:
    import torch

    try:
        loaded = _load(model)
        ids = _probe_ids(model)
        with torch.inference_mode():
            out = loaded(input_ids=ids)
    except AdmissionFailed:
        raise
    except Exception as e:
        raise AdmissionFailed([f"loading and running the model failed: {type(e).__name__}: {e}"]) from None
    values = getattr(out, "logits", None)
    if values is None:
        values = out.last_hidden_state
    if not torch.isfinite(values).all():
        raise AdmissionFailed(["the forward pass produced NaN or infinite values"])
    return AdmissionReport(
        checked="forward", tokens=int(ids.shape[1]), output_shape=list(values.shape), ms=_ms(started)
    )


def _adapter_effect(base: Candidate, adapter: Candidate, started: float) -> AdmissionReport:
    import torch
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(_load(base), adapter.directory, is_trainable=False).eval()
        ids = _probe_ids(base)
        with_adapter, without = _module_outputs(model, ids)
    except AdmissionFailed:
        raise
    except Exception as e:
        raise AdmissionFailed([f"applying the adapter to its base failed: {type(e).__name__}: {e}"]) from None
    changed = sorted(name for name in with_adapter if not torch.equal(with_adapter[name], without[name]))
    if not changed:
        raise AdmissionFailed(
            [
                f"the adapter changes none of its {len(with_adapter)} target modules' outputs "
                "(are its lora_B weights all zero?)"
            ]
        )
    return AdmissionReport(
        checked="forward",
        tokens=int(ids.shape[1]),
        target_modules=len(with_adapter),
        changed_modules=len(changed),
        ms=_ms(started),
    )


def _module_outputs(model: Any, ids: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Outputs of every LoRA-wrapped module, with the adapter on and off."""
    import torch
    from peft.tuners.lora import LoraLayer

    captured: dict[str, Any] = {}
    lora_modules: list[tuple[str, Any]] = [
        (name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)
    ]
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach()))
        for name, module in lora_modules
    ]
    try:
        with torch.inference_mode():
            model(input_ids=ids)
            with_adapter = dict(captured)
            with model.disable_adapter():
                model(input_ids=ids)
            without = dict(captured)
    finally:
        for hook in hooks:
            hook.remove()
    return with_adapter, without
