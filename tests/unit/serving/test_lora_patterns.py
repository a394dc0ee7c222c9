"""Adapter module patterns: the safe language, and PEFT's exact answers for every pattern inside it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.utils.other import get_pattern_key
from transformers import AutoModelForCausalLM

from modelport.adapter_patterns import MAX_STEPS, PatternTable, UnsafePattern, check
from modelport.errors import EngineFailed
from modelport.serving.engines.torch.lora import read_adapter
from tests.support.tinymodels import make_llama, make_lora

MODULES = [
    f"model.layers.{i}.{block}.{name}"
    for i in (0, 1, 10, 11)
    for block, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("up_proj", "down_proj")))
    for name in names
] + ["lm_head", "q_proj", "model.layers.1.self_attn.q_proj_extra", "modelXlayersX0Xmlp.up_proj"]

# What real adapters write (plain names, alternations, anchors, a \d+), and corners of PEFT's rule:
# '.' is a wildcard, a match must start at a dot boundary and run to the end of the name.
ACCEPTED = [
    "q_proj",
    "layers.1.self_attn.v_proj",
    "model.layers.0.mlp.up_proj",
    "^model.layers.10.self_attn.k_proj",
    "(q|k|v)_proj",
    "(?:up|down)_proj",
    r"layers\.\d+\.mlp\.down_proj",
    "layers.1[01].self_attn.o_proj",
    ".*_proj",
    "proj",
    "self_attn.q.proj",
    "o_proj|lm_head",
    "[qkv]_proj$",
    "layers.0.mlp.up_proj",
]
REFUSED = {
    "(a+)+$": "after a group",
    "(a|aa)*": "after a group",
    "(?=q)q_proj": "lookarounds",
    r"(q)\1": r"escape '\1'",
    "(?i)Q_PROJ": "inline flags",
    ".*.*.*q_proj": "too ambiguous",
    "q_proj{": "nothing to apply to",
    "a*?": "lazy",
    "x" * 600: "longer than",
}


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_matching_is_exactly_pefts(pattern: str) -> None:
    # Two patterns in order, so "first match wins" is compared too.
    for patterns in ({pattern: 1.0}, {"layers.1.self_attn.v_proj": 2.0, pattern: 1.0}):
        table = PatternTable.build(patterns)
        for module in MODULES:
            key = get_pattern_key(list(patterns), module)
            assert table.lookup(module, 0.0) == patterns.get(key, 0.0), (pattern, module)


@pytest.mark.parametrize(("pattern", "why"), REFUSED.items())
def test_patterns_outside_the_language_are_refused_with_a_reason(pattern: str, why: str) -> None:
    with pytest.raises(UnsafePattern, match=why.replace("\\", "\\\\").replace("(", r"\(")):
        check(pattern)


def test_a_table_too_costly_for_its_modules_is_refused() -> None:
    table = PatternTable.build({f".*{i}_proj": 1.0 for i in range(64)})
    with pytest.raises(UnsafePattern, match=f"more than {MAX_STEPS} steps"):
        table.check_budget(MODULES * 20)
    PatternTable.build({m: 1.0 for m in MODULES * 50}).check_budget(MODULES * 50)  # plain names cost little


def test_the_worst_accepted_pattern_is_fast_on_the_longest_names() -> None:
    names = [f"model.language_model.layers.{i}.self_attn.q_proj" for i in range(1024)]
    table = PatternTable.build({"(.|.|.|.)(.|.|.|.)(.|.|.|.)(.|.|.|.)(.|.|.|.)x": 1.0})
    table.check_budget(names[:100])
    started = time.perf_counter()
    for name in names[:100]:
        table.lookup(name, 0.0)
    assert time.perf_counter() - started < 0.25


def test_engine_scales_equal_pefts_for_an_adapter_with_patterns(tmp_path: Path) -> None:
    base = make_llama(tmp_path / "base", layers=2)
    lora = make_lora(tmp_path / "lora", base, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    config = json.loads((lora / "adapter_config.json").read_text())
    alpha = {"layers.1.self_attn.v_proj": 3, "(k|o)_proj": 5, r"layers\.\d+\.self_attn\.q_proj": 7}
    (lora / "adapter_config.json").write_text(json.dumps(config | {"alpha_pattern": alpha}))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    targets = frozenset(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    ours = read_adapter("a", lora, targets)
    peft = PeftModel.from_pretrained(model, lora)
    for name, module in peft.base_model.model.named_modules():
        if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
            assert ours.modules[name][2] == pytest.approx(module.scaling["default"]), name
    assert len({s for _, _, s in ours.modules.values()}) > 2  # the patterns did pick different scales


def test_engine_refuses_modules_the_base_does_not_have_before_matching(tmp_path: Path) -> None:
    base = make_llama(tmp_path / "base", layers=1)
    lora = make_lora(tmp_path / "lora", base)
    with pytest.raises(EngineFailed, match="not a Linear layer of the base model"):
        read_adapter("a", lora, frozenset({"model.layers.0.mlp.up_proj"}))
