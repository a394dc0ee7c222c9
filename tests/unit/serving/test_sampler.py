from __future__ import annotations

import torch

from modelport.serving.engine import SamplingParams
from modelport.serving.engines.torch.sampler import RowState, sample


def row(seed: int | None = None, **kw: object) -> RowState:
    params = SamplingParams(max_tokens=8, **kw)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return RowState(params, [1, 2], [], generator)


def logits() -> torch.Tensor:
    return torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.5]] * 2)


def test_greedy_takes_the_argmax_and_reports_raw_logprobs() -> None:
    out = sample(logits(), [row(temperature=0.0, logprobs=2), row(temperature=0.0)])
    assert [o.token_id for o in out] == [2, 2]
    expected = torch.log_softmax(logits()[0], -1)
    assert abs(out[0].logprob - float(expected[2])) < 1e-6  # type: ignore[operator]
    assert [t for t, _ in out[0].top_logprobs or []] == [2, 3]
    assert out[1].logprob is None


def test_seeded_rows_repeat_whatever_shares_the_batch() -> None:
    draws = [[sample(logits(), [row(seed=5, temperature=1.0), row(temperature=1.0)])[0].token_id] for _ in range(1)]
    first = []
    r = row(seed=5, temperature=1.0)
    for _ in range(20):
        first.append(sample(logits(), [r, row(temperature=1.0)])[0].token_id)
    r = row(seed=5, temperature=1.0)
    second = [sample(logits(), [row(temperature=2.0), r])[1].token_id for _ in range(20)]
    assert first == second and draws
    assert len(set(first)) > 1


def test_top_k_one_and_tiny_top_p_are_greedy() -> None:
    for kw in ({"top_k": 1}, {"top_p": 0.01}, {"min_p": 0.99}):
        rows = [row(seed=i, temperature=1.5, **kw) for i in range(2)]
        assert all(o.token_id == 2 for _ in range(10) for o in sample(logits(), rows)), kw


def test_logit_bias_and_penalties_move_the_choice() -> None:
    assert sample(logits(), [row(temperature=0.0, logit_bias={4: 100.0})] * 2)[0].token_id == 4
    seen = RowState(SamplingParams(max_tokens=8, temperature=0.0, frequency_penalty=2.0), [0], [2], None)
    assert sample(logits(), [seen, seen])[0].token_id == 3
    rep = RowState(SamplingParams(max_tokens=8, temperature=0.0, repetition_penalty=2.0), [2], [], None)
    assert sample(logits(), [rep, rep])[0].token_id == 3  # 3.0 / 2 < 2.0


def test_a_broken_row_fails_alone_and_a_denormal_temperature_is_greedy() -> None:
    broken = logits()
    broken[0] = float("nan")
    seeded = [row(seed=3, temperature=1.0) for _ in range(2)]
    out = sample(broken, [row(seed=1, temperature=1.0, logprobs=1), seeded[0]])
    alone = sample(logits(), [row(temperature=0.0), seeded[1]])
    assert out[0].failed and not out[1].failed and out[1].token_id == alone[1].token_id
    inf = logits()
    inf[0, 1] = float("inf")
    tiny = sample(inf, [row(temperature=1e-45, logprobs=2), row(seed=2, temperature=1e-30)])
    assert [t.token_id for t in tiny] == [1, 2]  # +inf is the favourite; 1e-30 is greedy too
    assert all(abs(lp) < 1e4 for _, lp in tiny[0].top_logprobs or [])  # finite, JSON-safe logprobs
