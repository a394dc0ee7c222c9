"""Continuous batching with mixed adapters gives, per request, exactly what transformers/PEFT give alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelport.serving.engine import GenerationRequest, SamplingParams, TokenStep
from modelport.serving.engines.torch.lora import read_adapter
from modelport.serving.engines.torch.memory import MIN_CHUNK, Footprint, MemoryLedger
from modelport.serving.engines.torch.runner import BatchRunner, Sequence
from tests.support.reference import greedy
from tests.support.tinymodels import make_llama, make_lora

EOS = 2
PROMPTS = [[1, 4, 5, 6, 7, 8, 9], [1, 10, 11], [1, 4, 4, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [1, 17, 16, 15], [1, 5]]
ADAPTERS = [None, 0, 1, 2, 0]  # the base, three adapters (ranks 4, 6, 8), one adapter twice


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("family")
    base = make_llama(root / "base", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    targets = [("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"), ("v_proj", "o_proj")]
    loras = [make_lora(root / f"l{i}", base, seed=10 + i, rank=4 + 2 * i, targets=targets[i]) for i in range(3)]
    return base, loras


def reference(base: Path, lora: Path | None, prompt: list[int], max_new: int) -> list[int]:
    return greedy(base, lora, prompt, max_new, eos_token_id=EOS)


def sequences(loras: list[Path], max_tokens: list[int]) -> tuple[list[Sequence], dict[int, list[TokenStep]]]:
    out: dict[int, list[TokenStep]] = {}
    seqs = []
    for i, (prompt, a) in enumerate(zip(PROMPTS, ADAPTERS, strict=True)):
        params = SamplingParams(max_tokens=max_tokens[i], temperature=0.0, stop_token_ids=frozenset({EOS}))
        out[i] = []
        adapter = read_adapter(f"adapter-{a}", loras[a]) if a is not None else None
        seqs.append(Sequence(GenerationRequest(f"r{i}", None, None, prompt, params, 128), out[i].append, adapter))  # type: ignore[arg-type]
    return seqs, out


def test_mixed_batch_equals_each_request_alone(family: tuple[Path, list[Path]]) -> None:
    base, loras = family
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    # Two adapter slots for three adapters: the third waits for a slot, then reuses one.
    runner = BatchRunner(model, context_length=128, max_num_seqs=8, max_adapters=2, prefill_budget=64)
    max_tokens = [12, 9, 12, 5, 12]  # rows finish at different steps, so rows get compacted mid-run
    seqs, out = sequences(loras, max_tokens)
    runner.submit(seqs[0])
    runner.submit(seqs[1])
    runner.step()
    runner.step()  # the first two are decoding when the others join
    for seq in seqs[2:]:
        runner.submit(seq)
    steps = 0
    while runner.step():
        steps += 1
    assert runner.lora.loads >= 3 and not runner.busy
    for i, (prompt, a) in enumerate(zip(PROMPTS, ADAPTERS, strict=True)):
        got = [t.token_id for t in out[i]]
        assert got == reference(base, loras[a] if a is not None else None, prompt, max_tokens[i]), f"request {i}"
        assert out[i][-1].finish_reason in ("stop", "length")
    # Batched: far fewer steps than the tokens produced.
    assert steps < sum(len(v) for v in out.values()) / 2


def test_cancelled_sequence_frees_its_row_at_the_next_step(family: tuple[Path, list[Path]]) -> None:
    base, loras = family
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    runner = BatchRunner(model, context_length=128, max_num_seqs=1, max_adapters=1, prefill_budget=64)
    seqs, out = sequences(loras, [100, 3, 3, 3, 3])
    runner.submit(seqs[0])
    runner.submit(seqs[1])
    runner.step()
    runner.step()
    assert len(runner.running) == 1 and len(runner.waiting) == 1  # the cap queues the second
    seqs[0].cancelled = True
    runner.step()
    assert runner.running == [seqs[1]]
    while runner.step():
        pass
    assert len(out[1]) == 3 and out[1][-1].finish_reason == "length"
    assert len(out[0]) < 100


def run_all(runner: BatchRunner, loras: list[Path], max_tokens: list[int]) -> dict[int, list[TokenStep]]:
    seqs, out = sequences(loras, max_tokens)
    for seq in seqs:
        runner.submit(seq)
    while runner.busy:
        runner.step()
    return out


def test_prompts_prefilled_in_chunks_give_the_same_tokens(family: tuple[Path, list[Path]]) -> None:
    base, loras = family
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    # Three prompt tokens per step: the long prompts enter over several steps, beside rows decoding.
    runner = BatchRunner(model, context_length=128, max_num_seqs=8, max_adapters=3, prefill_budget=3)
    out = run_all(runner, loras, [6] * 5)
    for i, (prompt, a) in enumerate(zip(PROMPTS, ADAPTERS, strict=True)):
        assert [t.token_id for t in out[i]] == reference(base, loras[a] if a is not None else None, prompt, 6)


def test_short_memory_puts_sequences_back_and_they_resume_exactly(family: tuple[Path, list[Path]]) -> None:
    base, loras = family
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    fp = Footprint.of(model.config, 4)
    # Eight rows fit while they are short; past 256 positions the cache must grow, which does not
    # fit: the newest rows go back to the queue, and resume (recomputed) as the others finish.
    ledger = MemoryLedger(fp.cache(8, 256) + max(fp.forward(1, MIN_CHUNK, 256), fp.forward(8, 1, 256)))
    prompts = [*PROMPTS, [1, 6, 7], [1, 8, 9, 10], [1, 11]]
    adapters = [read_adapter(f"adapter-{i}", lora) for i, lora in enumerate(loras)]

    def run(runner: BatchRunner) -> list[list[int]]:
        outs: list[list[TokenStep]] = [[] for _ in prompts]
        for i, prompt in enumerate(prompts):
            params = SamplingParams(max_tokens=260 + 5 * i, temperature=0.0)
            request = GenerationRequest(f"r{i}", None, None, prompt, params, 512)  # type: ignore[arg-type]
            runner.submit(Sequence(request, outs[i].append, adapters[i % 3] if i % 4 else None))
        while runner.busy:
            runner.step()
        return [[t.token_id for t in out] for out in outs]

    kw = {"context_length": 512, "max_num_seqs": 8, "max_adapters": 3, "prefill_budget": 64}
    tight = BatchRunner(model, **kw, ledger=ledger)  # type: ignore[arg-type]
    interrupted = run(tight)
    assert tight.preempted > 0 and ledger.used == 0
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
    assert interrupted == run(BatchRunner(model, **kw))  # type: ignore[arg-type]  # a fresh model: no LoRA wrappers
