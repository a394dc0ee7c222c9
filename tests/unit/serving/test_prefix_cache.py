"""Prefix caching: a prompt that begins as an earlier one did prefills only the rest, and answers exactly
as if it had prefilled everything (greedy, fp32, against plain transformers/PEFT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams, TokenStep
from modelport.serving.engines.torch.lora import read_adapter
from modelport.serving.engines.torch.prefix import BLOCK, Block, PrefixCache
from modelport.serving.engines.torch.runner import BatchRunner, Sequence
from tests.support.reference import greedy
from tests.support.tinymodels import make_llama, make_lora

SYSTEM = [1] + [3 + (i * 7) % 15 for i in range(2 * BLOCK + 5)]  # 70 tokens: two full blocks and a bit


def test_keys_name_whole_prefixes_under_a_salt() -> None:
    a = PrefixCache.keys("m\0\0acct", list(range(100)))
    assert len(a) == 100 // BLOCK
    b = PrefixCache.keys("m\0\0acct", list(range(BLOCK)) + [7] * (100 - BLOCK))
    assert a[0] == b[0] and a[1] != b[1]  # same first block, different second
    shifted = PrefixCache.keys("m\0\0acct", [5, *range(BLOCK, 2 * BLOCK)])
    assert a[1] not in shifted  # block 2's tokens behind other text are another entry
    assert PrefixCache.keys("m\0\0other", list(range(100)))[0] != a[0]  # another account
    assert PrefixCache.keys("m\0lora\0acct", list(range(100)))[0] != a[0]  # an adapter


def test_the_store_is_an_lru_under_its_budget() -> None:
    def block() -> Block:
        return Block(torch.zeros(2, 1, BLOCK, 4), torch.zeros(2, 1, BLOCK, 4))

    size = block().nbytes
    cache = PrefixCache(budget=2 * size)
    keys = PrefixCache.keys("s", list(range(3 * BLOCK)))
    cache.put(keys[0], block())
    cache.put(keys[1], block())
    assert len(cache.match(keys)) == 2  # the run stops at the first missing block; both now recent
    cache.put(keys[2], block())  # evicts the least recently used
    assert len(cache) == 2 and cache.nbytes == 2 * size
    assert cache.match(keys) == [] and cache.match(keys[1:]) != []
    assert cache.stats()["hits"] == 2 and cache.stats()["reused_tokens"] == 4 * BLOCK


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prefix")
    base = make_llama(root / "base", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    return base, make_lora(root / "lora", base, seed=3, rank=4)


def artifact(path: Path, name: str) -> Artifact:
    return Artifact(name, path, Manifest(kind=ModelKind.MODEL), 0)


def reference(base: Path, lora: Path | None, prompt: list[int], max_new: int) -> list[int]:
    return greedy(base, lora, prompt, max_new, eos_token_id=None)


def run(runner: BatchRunner, requests: list[GenerationRequest], adapter: Path | None = None) -> list[list[int]]:
    out: list[list[TokenStep]] = [[] for _ in requests]
    for i, request in enumerate(requests):
        weights = read_adapter(request.adapter.id, adapter) if request.adapter and adapter else None
        runner.submit(Sequence(request, out[i].append, weights))
    while runner.busy:
        runner.step()
    return [[t.token_id for t in steps] for steps in out]


def request(base: Artifact, prompt: list[int], account: str = "acct", adapter: Artifact | None = None) -> Any:
    params = SamplingParams(max_tokens=6, temperature=0.0)
    return GenerationRequest(f"r{len(prompt)}", base, adapter, prompt, params, 256, account)


def test_a_shared_system_prompt_is_prefilled_once_and_answers_stay_exact(family: tuple[Path, Path]) -> None:
    base_path, lora_path = family
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, attn_implementation="sdpa")
    prefix = PrefixCache(budget=1 << 20)
    runner = BatchRunner(model, context_length=256, max_num_seqs=4, max_adapters=2, prefill_budget=512, prefix=prefix)
    base, lora = artifact(base_path, "base"), artifact(lora_path, "lora")
    first, second, third = [*SYSTEM, 4, 5], [*SYSTEM, 6, 7, 8], [*SYSTEM, 9]

    assert run(runner, [request(base, first)]) == [reference(base_path, None, first, 6)]
    assert prefix.reused_tokens == 0 and len(prefix) == 2  # its two full blocks are kept
    # Alone after the engine went idle (its cache buffers dropped), and then beside another sequence, in
    # the second row: each reuses both blocks and prefills the rest.
    assert run(runner, [request(base, second)]) == [reference(base_path, None, second, 6)]
    assert prefix.reused_tokens == 2 * BLOCK
    got = run(runner, [request(base, [1, 4, 5, 6]), request(base, third)])
    assert got == [reference(base_path, None, [1, 4, 5, 6], 6), reference(base_path, None, third, 6)]
    assert prefix.reused_tokens == 4 * BLOCK

    # Another account, or the same prompt through an adapter, finds nothing of these.
    run(runner, [request(base, second, account="other")])
    assert prefix.reused_tokens == 4 * BLOCK
    through = request(base, first, adapter=lora)
    assert run(runner, [through], lora_path) == [reference(base_path, lora_path, first, 6)]
    assert prefix.reused_tokens == 4 * BLOCK
    # The adapter's own second request reuses what its first stored, and still equals PEFT.
    assert run(runner, [request(base, second, adapter=lora)], lora_path) == [reference(base_path, lora_path, second, 6)]
    assert prefix.reused_tokens == 6 * BLOCK


def test_the_first_token_says_how_much_of_the_prompt_came_from_the_cache(family: tuple[Path, Path]) -> None:
    """What the API reports as ``usage.prompt_tokens_details.cached_tokens``."""
    base_path, _ = family
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, attn_implementation="sdpa")
    runner = BatchRunner(
        model, context_length=256, max_num_seqs=2, max_adapters=1, prefill_budget=512, prefix=PrefixCache(1 << 20)
    )
    base = artifact(base_path, "base")

    def steps(prompt: list[int]) -> list[TokenStep]:
        out: list[TokenStep] = []
        runner.submit(Sequence(request(base, prompt), out.append, None))
        while runner.busy:
            runner.step()
        return out

    first = steps([*SYSTEM, 4, 5])
    assert first and all(s.cached_tokens == 0 for s in first)  # nothing was cached yet
    again = steps([*SYSTEM, 6, 7])
    assert again[0].cached_tokens == 2 * BLOCK and all(s.cached_tokens == 0 for s in again[1:])


def test_a_prompt_that_is_all_cached_still_computes_its_last_token(family: tuple[Path, Path]) -> None:
    base_path, _ = family
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, attn_implementation="sdpa")
    prefix = PrefixCache(budget=1 << 20)
    runner = BatchRunner(model, context_length=256, max_num_seqs=4, max_adapters=1, prefill_budget=512, prefix=prefix)
    base = artifact(base_path, "base")
    exact = SYSTEM[: 2 * BLOCK]  # exactly two blocks
    assert run(runner, [request(base, exact)]) == [reference(base_path, None, exact, 6)]
    assert run(runner, [request(base, exact)]) == [reference(base_path, None, exact, 6)]
    assert prefix.reused_tokens == BLOCK  # the second block holds the last token, which is recomputed
