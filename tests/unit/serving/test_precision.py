"""The engine's precision: bf16 where the CPU multiplies it in hardware, and what that costs in answers.

The tolerance (docs/serving.md, "Precision"): every token that greedy decoding in bf16 picks, in a batch
mixing adapters and the base, is one that the fp32 model, fed the same text, scores within
``TOLERANCE_NATS`` of its own best token. Identical tokens are not promised: bf16 keeps 8 bits of
mantissa, so where fp32's two best tokens are nearly tied, bf16 may take the other one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForCausalLM

from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams, TokenStep
from modelport.serving.engines.torch import precision
from modelport.serving.engines.torch.engine import TorchEngine
from modelport.serving.engines.torch.lora import LoraContext, MultiLoraLinear, read_adapter
from modelport.serving.engines.torch.packed import PackedLinear, can_pack, pack_linears
from modelport.serving.engines.torch.precision import Precision, choose
from modelport.serving.engines.torch.runner import BatchRunner, Sequence
from modelport.settings import Settings
from tests.support.tinymodels import make_llama, make_lora

TOLERANCE_NATS = 0.05
PROMPTS = [[1, 4, 5, 6, 7, 8, 9], [1, 10, 11], [1, 4, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 17, 16, 15], [1, 5]]
ADAPTERS = [None, 0, 1, None, 0]
NEW_TOKENS = 16


def test_auto_is_bf16_only_where_the_cpu_multiplies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "AMX")
    assert choose("auto", cpu) == Precision(torch.bfloat16, "this CPU multiplies bf16 in hardware (AMX)")
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: None)
    assert choose("auto", cpu).dtype == torch.float32
    assert choose("bfloat16", cpu).dtype == torch.bfloat16  # the setting wins over the hardware
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "AVX512-BF16")
    assert choose("float32", cpu).dtype == torch.float32


def test_cuda_keeps_a_stored_half_precision_and_halves_fp32() -> None:
    auto = choose("auto", torch.device("cuda"))
    assert auto.dtype is None and auto.label == "stored"
    assert auto.for_model("F16") == torch.float16
    assert auto.for_model("BF16") == torch.bfloat16
    assert auto.for_model("F32") == torch.bfloat16
    assert auto.for_model(None) == torch.bfloat16
    assert choose("float32", torch.device("cuda")).for_model("BF16") == torch.float32


def test_the_probe_names_a_feature_torch_reports() -> None:
    found = precision.cpu_bf16_feature()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    assert found == ("AMX" if amx else "AVX512-BF16" if bf16 else None)


def test_the_engine_reports_its_precision_and_prices_weights_by_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_feature", lambda: "AMX")
    engine = TorchEngine(Settings(data_dir=tmp_path, engine_dtype="auto", engine_device="cpu"))
    stats = engine.stats()
    assert (stats["dtype"], stats["dtype_reason"]) == ("bfloat16", "this CPU multiplies bf16 in hardware (AMX)")
    fp32 = TorchEngine(Settings(data_dir=tmp_path, engine_dtype="float32", engine_device="cpu"))
    assert fp32.stats()["dtype"] == "float32"
    # A float32 checkpoint of 1,000 parameters takes 2,000 bytes loaded in bf16: the LRU budget counts that.
    stored = Artifact("m", tmp_path, Manifest(kind=ModelKind.MODEL, parameters=1000, dtype="F32"), 4000)
    assert engine._resident(stored) == (torch.bfloat16, 2000) and fp32._resident(stored) == (torch.float32, 4000)
    unknown = Artifact("m", tmp_path, Manifest(kind=ModelKind.MODEL), 4000)
    assert engine._resident(unknown)[1] == 4000  # no parameter count: the files' size, to be safe


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("precision")
    base = make_llama(root / "base", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    loras = [make_lora(root / f"l{i}", base, seed=20 + i, rank=4 + 4 * i) for i in range(2)]
    return base, loras


def test_bf16_greedy_stays_within_tolerance_of_fp32(family: tuple[Path, list[Path]]) -> None:
    base, loras = family
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, attn_implementation="sdpa")
    runner = BatchRunner(model, context_length=128, max_num_seqs=8, max_adapters=2, prefill_budget=64)
    assert runner.dtype == torch.bfloat16
    assert runner.packed == (15 if can_pack(model) else 0)  # 7 per layer and the untied head
    out: dict[int, list[TokenStep]] = {}
    for i, (prompt, a) in enumerate(zip(PROMPTS, ADAPTERS, strict=True)):
        out[i] = []
        adapter = read_adapter(f"adapter-{a}", loras[a]) if a is not None else None
        params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)
        runner.submit(Sequence(GenerationRequest(f"r{i}", None, None, prompt, params, 128), out[i].append, adapter))  # type: ignore[arg-type]
    while runner.busy:
        runner.step()
    assert all(layer.a.dtype == torch.bfloat16 for layer in runner.lora.layers.values())  # adapters follow the base

    for i, (prompt, a) in enumerate(zip(PROMPTS, ADAPTERS, strict=True)):
        tokens = [t.token_id for t in out[i]]
        assert len(tokens) == NEW_TOKENS
        reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        if a is not None:
            reference = PeftModel.from_pretrained(reference, loras[a])
        with torch.no_grad():
            logits = reference(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        gaps = logprobs.max(dim=-1).values - logprobs[torch.arange(NEW_TOKENS), torch.tensor(tokens)]
        assert float(gaps.max()) <= TOLERANCE_NATS, f"request {i}: bf16 chose tokens fp32 ranks lower by {gaps}"


needs_onednn_bf16 = pytest.mark.skipif(
    not can_pack(nn.Linear(2, 2).to(torch.bfloat16)), reason="this CPU's oneDNN does not run bf16"
)


@needs_onednn_bf16
def test_a_packed_linear_gives_the_plain_layers_result_to_the_bit() -> None:
    torch.manual_seed(0)
    for bias in (True, False):
        linear = nn.Linear(48, 80, bias=bias).to(torch.bfloat16)
        packed = PackedLinear(linear)
        for shape in ((1, 48), (7, 48), (3, 5, 48)):
            x = torch.randn(shape).to(torch.bfloat16)
            assert torch.equal(packed(x), linear(x))


@needs_onednn_bf16
def test_packing_skips_tied_weights_and_fp32() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.proj, self.head = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False)
            self.head.weight = self.embed.weight

    model = Tied().to(torch.bfloat16)
    assert pack_linears(model) == 1
    assert isinstance(model.proj, PackedLinear) and type(model.head) is nn.Linear
    assert model.head.weight is model.embed.weight
    assert pack_linears(Tied()) == 0  # fp32 stays as it is


@needs_onednn_bf16
def test_lora_over_a_packed_base_matches_lora_over_a_plain_one() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(32, 24).to(torch.bfloat16)
    ctx = LoraContext()
    plain, packed = MultiLoraLinear(linear, ctx, 4), MultiLoraLinear(PackedLinear(linear), ctx, 4)
    for slot, rank in ((1, 4), (2, 8), (3, 2)):
        a, b = torch.randn(rank, 32) * 0.3, torch.randn(24, rank) * 0.3
        plain.load(slot, a, b, 2.0)
        packed.load(slot, a, b, 2.0)
    slots = [3, 0, 1, 2, 1]
    ctx.set(torch.tensor(slots), max(slots) + 1)
    for tokens in (1, 3):  # decode (all slots under a mask, packed) and prefill (gathered per row)
        x = torch.randn(len(slots), tokens, 32).to(torch.bfloat16)
        torch.testing.assert_close(packed(x), plain(x), atol=2e-2, rtol=2e-2)
    # Removing an adapter drops the packed copies: slot 3 now adds nothing.
    packed.clear(3)
    x = torch.randn(len(slots), 1, 32).to(torch.bfloat16)
    torch.testing.assert_close(packed(x)[0], linear(x[0]), atol=2e-2, rtol=2e-2)
