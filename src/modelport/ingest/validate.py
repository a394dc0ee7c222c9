"""Decide whether a staged tree is a servable model or adapter, and describe it in a manifest.

Every check runs and adds to one list of problems, so the user sees the whole report at once.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from modelport import adapter_patterns
from modelport.errors import ValidationFailed
from modelport.ingest.layout import CODE_REFUSED, PICKLE_REFUSED
from modelport.ingest.safetensors_header import Header, SafetensorsError, TensorInfo, read_file_header
from modelport.ingest.staging import StagedFile
from modelport.ingest.transformers_catalog import architectures, known_model_types
from modelport.manifest import AdapterInfo, FileEntry, Manifest, ModelKind, ModelType

MAX_CONFIG_BYTES = 4 * 2**20
# Tokenizer files can be large (big vocabularies), but not unboundedly so.
MAX_TOKENIZER_BYTES = 64 * 2**20
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")
# Upper bounds that no real text model comes near; a config past them would make even the meta-device
# skeleton (millions of Python objects) exhaust memory.
SIZE_BOUNDS = {
    "hidden_size": 1 << 17,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 4096,
    "num_key_value_heads": 4096,
    "vocab_size": 1 << 24,
    "max_position_embeddings": 1 << 24,
    "head_dim": 1 << 14,
    "num_local_experts": 4096,
    "num_experts": 4096,
    "n_embd": 1 << 17,
    "n_layer": 1024,
    "n_head": 4096,
    "d_model": 1 << 17,
    "num_layers": 1024,
}
# The config may describe at most this many times the parameters its weights hold.
MAX_CONFIG_TO_WEIGHTS_RATIO = 20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",))
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class BaseModel:
    """The registered model an adapter claims to extend."""

    name: str
    manifest: Manifest
    tensors: dict[str, TensorInfo]


@dataclass
class _Report:
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.problems.append(problem)


def validate(
    files: list[StagedFile], not_fetched: list[str], kind: str, base: BaseModel | None, base_name: str | None
) -> Manifest:
    """Return the manifest, or raise ``ValidationFailed`` listing every problem found."""
    report = _Report()
    by_path = {f.path: f for f in files}
    _check_forbidden(list(by_path) + not_fetched, report)
    headers = _read_headers(by_path, report)
    if kind == ModelKind.ADAPTER:
        manifest = _adapter(by_path, headers, base, base_name, report)
    else:
        manifest = _model(by_path, headers, report)
    if report.problems:
        raise ValidationFailed(report.problems)
    return manifest.with_files(file_entries(files))


def file_entries(files: list[StagedFile]) -> list[FileEntry]:
    """The manifest's ``files``: path, size and hash of each staged file, in path order."""
    return [FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in sorted(files, key=lambda f: f.path)]


def _check_forbidden(paths: list[str], report: _Report) -> None:
    for path in sorted(paths):
        name = PurePosixPath(path).name
        if name.endswith(PICKLE_SUFFIXES):
            report.add(PICKLE_REFUSED.format(path))
        elif name.endswith(".py"):
            report.add(CODE_REFUSED.format(path))


def _read_headers(by_path: dict[str, StagedFile], report: _Report) -> dict[str, Header]:
    headers = {}
    for path, f in by_path.items():
        if path.endswith(".safetensors"):
            try:
                headers[path] = read_file_header(str(f.local), f.size)
            except SafetensorsError as e:
                report.add(f"{path}: not a valid safetensors file: {e}")
    return headers


def _load_json(by_path: dict[str, StagedFile], path: str, report: _Report) -> dict[str, Any] | None:
    f = by_path.get(path)
    if f is None:
        return None
    if f.size > MAX_CONFIG_BYTES:
        report.add(f"{path}: {f.size} bytes is larger than the {MAX_CONFIG_BYTES} bytes allowed for a config")
        return None
    try:
        data = json.loads(f.local.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        report.add(f"{path}: not valid JSON ({e})")
        return None
    if not isinstance(data, dict):
        report.add(f"{path}: must be a JSON object")
        return None
    return data


def _model(by_path: dict[str, StagedFile], headers: dict[str, Header], report: _Report) -> Manifest:
    config = _load_json(by_path, "config.json", report)
    if config is None:
        if "config.json" not in by_path:
            report.add("config.json is missing: a model needs its Hugging Face config at the archive root")
        return Manifest(kind=ModelKind.MODEL)
    model_type, architecture = _architecture(config, report)
    _check_sizes(config, report)
    _check_tokenizer_files(by_path, report)
    served = _served_type(architecture, by_path, report)
    weights = [p for p in headers if not PurePosixPath(p).name.startswith("adapter_")]
    if not weights and not any(p.endswith(".safetensors") for p in by_path):
        report.add("no weights: a model needs its weights as .safetensors files")
    _check_shards(by_path, report)
    # Every served type tokenizes its input; an embedder too (the server embeds text, not ids).
    if served is not None and not _has_tokenizer(by_path):
        report.add(
            "no tokenizer: a text-generation or embedding model needs tokenizer.json, or files transformers "
            "builds a fast tokenizer from: tokenizer.model, vocab.json + merges.txt, or vocab.txt"
        )
    parameters, dtype = _weight_stats([headers[p] for p in weights])
    context_length = _context_length(config, by_path, report)
    _check_config_against_weights(config, parameters, report)
    return Manifest(
        kind=ModelKind.MODEL,
        model_type=model_type,
        architecture=architecture,
        type=served,
        parameters=parameters,
        dtype=dtype,
        context_length=context_length,
    )


def _served_type(architecture: str | None, by_path: dict[str, StagedFile], report: _Report) -> ModelType | None:
    kinds = architectures()
    if "modules.json" in by_path or "config_sentence_transformers.json" in by_path:
        return ModelType.EMBEDDING
    if architecture in kinds["generation"]:
        return ModelType.CHAT if _has_chat_template(by_path, report) else ModelType.LANGUAGE
    if architecture in kinds["encoder"]:
        return ModelType.EMBEDDING
    if architecture:
        report.add(
            f"config.json: architecture {architecture} is neither a text-generation nor an embedding "
            "model; modelport serves those two kinds"
        )
    return None


def _check_sizes(config: dict[str, Any], report: _Report) -> None:
    for scope in (config, config.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key, bound in SIZE_BOUNDS.items():
            value = scope.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= bound:
                report.add(f"config.json: {key} = {value!r} must be a positive integer no larger than {bound}")


def _check_config_against_weights(config: dict[str, Any], weight_params: int, report: _Report) -> None:
    """A config describing a far bigger model than its weights would make the skeleton alone huge."""
    h, layers = config.get("hidden_size"), config.get("num_hidden_layers")
    vocab, inter = config.get("vocab_size") or 0, config.get("intermediate_size") or 0
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, layers, vocab, inter)):
        return
    assert isinstance(h, int) and isinstance(layers, int)
    estimate = layers * (4 * h * h + 3 * h * inter) + vocab * h
    if weight_params and estimate > MAX_CONFIG_TO_WEIGHTS_RATIO * weight_params:
        report.add(
            f"config.json describes about {estimate} parameters but the weights hold {weight_params}: "
            "the config does not belong to these weights"
        )


def _check_tokenizer_files(by_path: dict[str, StagedFile], report: _Report) -> None:
    for name in TOKENIZER_FILES:
        f = by_path.get(name)
        if f is not None and f.size > MAX_TOKENIZER_BYTES:
            report.add(f"{name}: {f.size} bytes is larger than the {MAX_TOKENIZER_BYTES} bytes allowed")
    tok_config = _load_json(by_path, "tokenizer_config.json", report) or {}
    if "auto_map" in tok_config:
        report.add("tokenizer_config.json: auto_map asks for custom tokenizer code (trust_remote_code); it is refused")


def _architecture(config: dict[str, Any], report: _Report) -> tuple[str | None, str | None]:
    """config.json's ``model_type`` and first architecture, each ``None`` (and reported) when unknown."""
    if "auto_map" in config:
        report.add("config.json: auto_map asks for custom code (trust_remote_code); it is refused")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in known_model_types():
        report.add(f"config.json: model_type {model_type!r} is not one transformers knows")
        model_type = None
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        report.add("config.json: 'architectures' must list the model class, e.g. [\"LlamaForCausalLM\"]")
        return model_type, None
    unknown = [a for a in archs if a not in architectures()["all"]]
    if unknown:
        report.add(f"config.json: architecture {', '.join(unknown)} is not built into transformers")
        return model_type, None
    return model_type, archs[0]


def _has_tokenizer(by_path: dict[str, StagedFile]) -> bool:
    return any(all(name in by_path for name in names) for names in TOKENIZER_SETS)


def _has_chat_template(by_path: dict[str, StagedFile], report: _Report) -> bool:
    if "chat_template.jinja" in by_path or "chat_template.json" in by_path:
        return True
    config = _load_json(by_path, "tokenizer_config.json", report) or {}
    return bool(config.get("chat_template"))


def _check_shards(by_path: dict[str, StagedFile], report: _Report) -> None:
    for path in by_path:
        if not path.endswith(".safetensors.index.json"):
            continue
        index = _load_json(by_path, path, report) or {}
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            report.add(f"{path}: 'weight_map' is missing")
            continue
        for shard in sorted(set(map(str, weight_map.values()))):
            if shard not in by_path:
                report.add(f"{path}: lists shard {shard}, which is missing")


def _weight_stats(headers: list[Header]) -> tuple[int, str | None]:
    """The parameter count, and the dtype holding most bytes."""
    params = 0
    bytes_by_dtype: Counter[str] = Counter()
    for header in headers:
        for t in header.tensors.values():
            params += t.numel
            bytes_by_dtype[t.dtype] += t.end - t.start
    dtype = bytes_by_dtype.most_common(1)[0][0] if bytes_by_dtype else None
    return params, dtype


def _context_length(config: dict[str, Any], by_path: dict[str, StagedFile], report: _Report) -> int | None:
    sbert = _load_json(by_path, "sentence_bert_config.json", report) or {}
    candidates = [sbert.get("max_seq_length"), *(config.get(k) for k in CONTEXT_KEYS)]
    text_config = config.get("text_config")
    if isinstance(text_config, dict):
        candidates += [text_config.get(k) for k in CONTEXT_KEYS]
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _adapter(
    by_path: dict[str, StagedFile],
    headers: dict[str, Header],
    base: BaseModel | None,
    base_name: str | None,
    report: _Report,
) -> Manifest:
    for required in ("adapter_config.json", "adapter_model.safetensors"):
        if required not in by_path:
            report.add(f"{required} is missing: an adapter needs adapter_config.json and adapter_model.safetensors")
    config = _load_json(by_path, "adapter_config.json", report)
    info = _adapter_config(config, report) if config is not None else None
    if base is None:
        report.add(
            f"base model {base_name!r} is not one of your models: upload the base model first "
            "and pass its name as base_model"
            if base_name
            else "no base model: pass base_model, or set base_model_name_or_path in adapter_config.json"
        )
        return Manifest(kind=ModelKind.ADAPTER, adapter=info)
    header = headers.get("adapter_model.safetensors")
    if config is not None:
        _check_patterns(config, header, report)
    parameters, dtype = None, None
    if header is not None and config is not None:
        _check_against_base(header, config, base, report)
        parameters, dtype = _weight_stats([header])
    # An adapter serves as its base does.
    of_base = base.manifest
    return Manifest(
        kind=ModelKind.ADAPTER,
        adapter=info,
        base_model=base.name,
        type=of_base.type,
        architecture=of_base.architecture,
        model_type=of_base.model_type,
        context_length=of_base.context_length,
        parameters=parameters,
        dtype=dtype,
    )


def _adapter_config(config: dict[str, Any], report: _Report) -> AdapterInfo:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        report.add(f"adapter_config.json: peft_type {config.get('peft_type')!r} is not supported; only LORA is")
    # The serving engine's slot kernels apply plain LoRA deltas to Linear layers; refuse at upload what
    # it could not serve, rather than failing the first inference request.
    for flag, what in (
        ("use_dora", "DoRA (use_dora)"),
        ("fan_in_fan_out", "fan_in_fan_out (Conv1D layers)"),
        ("modules_to_save", "modules_to_save (fully trained extra modules)"),
    ):
        if config.get(flag):
            report.add(f"adapter_config.json: {what} is not supported by modelport's serving engine")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        report.add("adapter_config.json: 'r' (the LoRA rank) must be a positive integer")
        rank = 0
    alpha = config.get("lora_alpha")
    if alpha is not None and (not isinstance(alpha, int | float) or isinstance(alpha, bool)):
        report.add("adapter_config.json: 'lora_alpha' must be a number")
        alpha = None
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        report.add("adapter_config.json: 'target_modules' must name the modules the adapter changes")
        targets = []
    return AdapterInfo(peft_type=peft_type, rank=rank, alpha=alpha, target_modules=sorted(targets))


def _check_patterns(config: dict[str, Any], header: Header | None, report: _Report) -> None:
    """PEFT evaluates these as regular expressions against module names (admission loads the adapter
    with PEFT; the engine reads ``alpha_pattern``): each must be in the language whose evaluation time
    is bounded (``modelport.adapter_patterns``), or a tenant's regex could hold a CPU for hours."""
    modules = sorted({m["module"] for name in (header.tensors if header else {}) if (m := _LORA_KEY.match(name))})
    for key in ("rank_pattern", "alpha_pattern"):
        patterns = config.get(key)
        if patterns in (None, {}):
            continue
        numbers = isinstance(patterns, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in patterns.values()
        )
        if not numbers:
            report.add(f"adapter_config.json: {key} must map module names (or patterns) to numbers")
            continue
        try:
            adapter_patterns.PatternTable.build(patterns).check_budget(modules)
        except adapter_patterns.UnsafePattern as e:
            report.add(f"adapter_config.json: {key} {e}; {_PATTERN_HINT}")
    for key in ("target_modules", "exclude_modules", "layers_pattern"):
        value = config.get(key)
        strings = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        # PEFT matches a list of target or excluded module names literally, and everything else as a regex.
        pattern_like = key == "layers_pattern" or isinstance(value, str)
        if pattern_like:
            for problem in adapter_patterns.check_all(s for s in strings if isinstance(s, str)):
                report.add(f"adapter_config.json: {key} {problem}; {_PATTERN_HINT}")


_PATTERN_HINT = (
    "module patterns may use names, '.', character classes, '^', '$', alternation (a|b) and a "
    "quantifier after a single character, not after a group"
)


def _check_against_base(header: Header, config: dict[str, Any], base: BaseModel, report: _Report) -> None:
    """Every LoRA pair must sit on a base weight, with shapes [r, in] and [out, r] matching it."""
    pairs: dict[str, dict[str, TensorInfo]] = {}
    for name, tensor in header.tensors.items():
        match = _LORA_KEY.match(name)
        if match:
            pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    if not pairs:
        report.add("adapter_model.safetensors holds no LoRA weights (lora_A / lora_B)")
        return
    mismatches = []
    for module, ab in sorted(pairs.items()):
        base_weight = _find_base_weight(module, base.tensors)
        if base_weight is None:
            mismatches.append(f"{module} does not exist in the base model")
        elif "A" not in ab or "B" not in ab:
            mismatches.append(f"{module} lacks its lora_{'B' if 'A' in ab else 'A'} weight")
        elif len(base_weight.shape) == 2:
            out_f, in_f = base_weight.shape
            a, b = ab["A"].shape, ab["B"].shape
            if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or a[0] != b[1]:
                mismatches.append(
                    f"{module}: lora_A {list(a)} / lora_B {list(b)} do not fit the base weight {[out_f, in_f]}"
                )
    for problem in mismatches[:10]:
        report.add(f"adapter does not match base model {base.name}: {problem}")
    if len(mismatches) > 10:
        report.add(f"... and {len(mismatches) - 10} more modules that do not match {base.name}")


def _find_base_weight(module: str, tensors: dict[str, TensorInfo]) -> TensorInfo | None:
    # PEFT names modules from the top-level model (model.layers.0...); some bases are saved without
    # the top-level prefix (layers.0...), so try both spellings.
    candidates = [f"{module}.weight"]
    if "." in module:
        candidates.append(f"{module.split('.', 1)[1]}.weight")
    for candidate in candidates:
        if candidate in tensors:
            return tensors[candidate]
    return None
