"""Turn a batch of next-token logits into tokens, each row with its own sampling parameters.

Order follows vLLM/HF: logit bias and penalties on the raw logits, then greedy rows take the argmax;
sampled rows are scaled by temperature, cut by top-k and top-p, and drawn with the row's own
generator (seeded requests are reproducible whatever else shares the batch). Reported logprobs are
those of the model's own distribution, before any of this processing.

A row with a grammar (``constraint.py``) brings its mask as bits: the tokens it forbids go to -inf
after the penalties, in that row only, so every choice below is one its grammar allows; the logprobs
reported stay the model's own.

Rows share tensors but never fate: NaN scores become -inf and +inf the largest float before anything
else, a row whose distribution still is not a distribution falls back to its argmax, and a row with
no finite score at all is reported as ``failed``, alone. ``torch.multinomial`` would otherwise raise
for the whole batch, failing every tenant's request in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelport.serving.engine import SamplingParams


@dataclass
class RowState:
    params: SamplingParams
    prompt_ids: list[int]
    output_ids: list[int]
    generator: torch.Generator | None


# The rows that carry a grammar, and their masks: bit j of word w of a row allows token 32 * w + j.
Masks = tuple[list[int], torch.Tensor]

LOGPROB_FLOOR = -9999.0  # what OpenAI reports for "impossible"; JSON has no -inf


@dataclass(frozen=True)
class Sampled:
    token_id: int
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    failed: bool = False  # the row's scores held no finite value: nothing can be chosen


def sample(logits: torch.Tensor, rows: list[RowState], masks: Masks | None = None) -> list[Sampled]:
    logits = _finite(logits.float())
    logprobs = torch.log_softmax(logits, dim=-1) if any(r.params.logprobs is not None for r in rows) else None
    adjusted = _adjust(logits, rows)
    if adjusted is not logits:  # a copy with bias or penalties applied, which may have made NaN or inf
        logits = _finite(adjusted)
    if masks is not None:
        logits = _constrain(logits, *masks)
    # One pass gives each row's best token and tells a row with no finite score (its best is -inf).
    best, tokens = logits.max(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        probs = _filtered_probs(logits[sampled], [rows[i].params for i in sampled])
        usable = (torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)).tolist()
        for j, i in enumerate(sampled):
            if usable[j]:  # else the argmax: this row's scores broke, the others' need not
                tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
    chosen = tokens.tolist()
    dead = (best == float("-inf")).tolist()
    return [
        Sampled(chosen[i], None, None, failed=True)
        if dead[i]
        else _result(chosen[i], logprobs[i] if logprobs is not None else None, rows[i])
        for i in range(len(rows))
    ]


def _finite(logits: torch.Tensor) -> torch.Tensor:
    """NaN → -inf (never chosen), +inf → the largest float (still the favourite), per element."""
    return torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max, neginf=float("-inf"))


def _adjust(logits: torch.Tensor, rows: list[RowState]) -> torch.Tensor:
    if not any(r.params.penalised or r.params.logit_bias for r in rows):
        return logits
    logits = logits.clone()
    for i, r in enumerate(rows):
        p = r.params
        if p.logit_bias:
            ids = torch.tensor(list(p.logit_bias), device=logits.device)
            logits[i, ids] += torch.tensor(list(p.logit_bias.values()), device=logits.device)
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(r.prompt_ids) | set(r.output_ids)), device=logits.device, dtype=torch.long)
            values = logits[i, seen]
            logits[i, seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and r.output_ids:
            out = torch.tensor(r.output_ids, device=logits.device)
            counts = torch.bincount(out, minlength=logits.shape[-1]).to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


_BITS = torch.arange(32, dtype=torch.int32)


def unpack_bits(words: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of int32 words -> rows of ``width`` booleans (True: the token is allowed)."""
    bits = (words.unsqueeze(-1) >> _BITS) & 1
    return bits.view(words.shape[0], -1)[:, :width].bool()


def _constrain(logits: torch.Tensor, index: list[int], words: torch.Tensor) -> torch.Tensor:
    allowed = unpack_bits(words, logits.shape[-1]).to(logits.device)
    # In place: ``logits`` is this call's own tensor (``_finite`` made it).
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))
    return logits


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    device = logits.device
    temps = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
    # Shifted so the best score is 0: a small temperature then sends the rest to -inf, not to NaN.
    logits = (logits - logits.max(dim=-1, keepdim=True).values) / temps
    vocab = logits.shape[-1]
    top_k = torch.tensor([p.top_k if 0 < p.top_k < vocab else vocab for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
    if bool((top_k < vocab).any()) or bool((top_p < 1.0).any()):
        ordered, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device).expand_as(ordered)
        drop = ranks >= top_k.unsqueeze(1)
        cumulative = ordered.masked_fill(drop, float("-inf")).softmax(dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always survives).
        drop |= (cumulative - ordered.masked_fill(drop, float("-inf")).softmax(dim=-1)) >= top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, ordered)
    probs = logits.softmax(dim=-1)
    min_p = torch.tensor([p.min_p for p in params], device=device).unsqueeze(1)
    if bool((min_p > 0).any()):
        # min-p: drop tokens less likely than min_p times the most likely one.
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _result(token: int, logprobs: torch.Tensor | None, row: RowState) -> Sampled:
    k = row.params.logprobs
    if logprobs is None or k is None:
        return Sampled(token, None, None)
    logprobs = logprobs.nan_to_num(nan=LOGPROB_FLOOR).clamp(min=LOGPROB_FLOOR)
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = logprobs.topk(k)
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return Sampled(token, float(logprobs[token]), top)
