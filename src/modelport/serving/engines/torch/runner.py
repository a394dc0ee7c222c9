"""Continuous batching for one base model: sequences join and leave between forward passes.

Each ``step()`` (always on the engine thread) drops cancelled sequences, admits waiting ones while
rows, adapter slots and the prefill token budget allow, prefills them in one left-padded pass, then
advances every other running sequence by one token in one decode pass. Rows of different lengths
and different adapters share those passes: ``SlotKVCache`` keeps per-row lengths and ``LoraSlots``
per-row adapters.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from modelport.serving.engine import EngineFailed, GenerationRequest, TokenStep
from modelport.serving.engines.torch.kvcache import SlotKVCache
from modelport.serving.engines.torch.lora import AdapterWeights, LoraSlots
from modelport.serving.engines.torch.sampler import RowState, Sampled, sample

log = logging.getLogger(__name__)

Emit = Callable[[TokenStep | BaseException], None]


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    emit: Emit
    adapter: AdapterWeights | None
    state: RowState = field(init=False)
    slot: int = 0
    length: int = 0  # tokens already in the KV cache
    next_token: int = -1  # sampled but not yet in the cache
    cancelled: bool = False  # set from the event loop's thread; read between steps
    finished: bool = False

    def __post_init__(self) -> None:
        params = self.request.params
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator().manual_seed(params.seed)
        self.state = RowState(params, self.request.prompt_ids, [], generator)


class BatchRunner:
    def __init__(
        self, model: nn.Module, *, context_length: int, max_num_seqs: int, max_adapters: int, prefill_budget: int
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.context_length, self.max_num_seqs, self.prefill_budget = context_length, max_num_seqs, prefill_budget
        self.cache = SlotKVCache(context_length)
        self.lora = LoraSlots(model, max_adapters)
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.steps = 0

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @torch.inference_mode()
    def step(self) -> bool:
        """One scheduling round; False when there was nothing to do."""
        self._drop_cancelled()
        decoding = list(self.running)
        admitted = self._admit()
        if not admitted and not decoding:
            if not self.running:
                self.cache.shrink()
            return False
        try:
            if admitted:
                self._prefill(admitted)
            if decoding:
                self._decode(decoding)
        except Exception as e:  # a failed pass fails its sequences, never the engine thread
            log.exception("forward pass failed; failing %d sequences", len(self.running))
            for seq in list(self.running):
                seq.emit(EngineFailed(f"the model failed while generating: {type(e).__name__}"))
                self._finish(seq)
        self._compact()
        self.steps += 1
        return True

    # --- admission ---------------------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self.prefill_budget
        skipped: deque[Sequence] = deque()
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            n = len(seq.request.prompt_ids)
            if admitted and n > budget:
                skipped.append(seq)
                break
            if seq.adapter is not None:
                try:
                    slot = self.lora.acquire(seq.adapter)
                except EngineFailed as e:
                    seq.emit(e)
                    continue
                if slot is None:  # every adapter slot is busy: wait, but let others pass
                    skipped.append(seq)
                    continue
                seq.slot = slot
            budget -= n
            self.running.append(seq)
            admitted.append(seq)
        self.waiting.extendleft(reversed(skipped))
        return admitted

    def _drop_cancelled(self) -> None:
        self.waiting = deque(s for s in self.waiting if not s.cancelled)
        for seq in self.running:
            if seq.cancelled:
                self._finish(seq)
        self._compact()

    # --- forward passes ----------------------------------------------------------------------------
    def _prefill(self, seqs: list[Sequence]) -> None:
        rows = [self.running.index(s) for s in seqs]
        lengths = [len(s.request.prompt_ids) for s in seqs]
        padded = max(lengths)
        ids = torch.zeros((len(seqs), padded), dtype=torch.long)
        for i, seq in enumerate(seqs):
            ids[i, padded - lengths[i] :] = torch.tensor(seq.request.prompt_ids)
        lens = torch.tensor(lengths).unsqueeze(1)
        pos = torch.arange(padded).unsqueeze(0) - (padded - lens)
        q = torch.arange(padded).view(1, padded, 1)
        k = torch.arange(padded).view(1, 1, padded)
        start = (padded - lens).view(-1, 1, 1)
        # Causal within the real tokens; a padding query sees only itself, so no row is all-masked.
        allowed = ((k <= q) & (k >= start)) | (k == q)
        self.cache.begin_prefill(rows, lengths)
        self.lora.set_batch([s.slot for s in seqs])
        logits = self._forward(ids, allowed.unsqueeze(1), pos.clamp(min=0))
        for seq, n in zip(seqs, lengths, strict=True):
            seq.length = n
        self._emit(seqs, sample(logits, [s.state for s in seqs]))

    def _decode(self, seqs: list[Sequence]) -> None:
        # ``seqs`` are rows 0..n-1: admission appends, compaction keeps live rows contiguous.
        assert self.running[: len(seqs)] == seqs
        lengths = torch.tensor([s.length for s in seqs])
        self.cache.begin_decode(lengths.to(self.device))
        width = int(lengths.max()) + 1
        allowed = torch.arange(width).view(1, width) <= lengths.view(-1, 1)
        ids = torch.tensor([[s.next_token] for s in seqs])
        self.lora.set_batch([s.slot for s in seqs])
        logits = self._forward(ids, allowed.view(len(seqs), 1, 1, width), lengths.view(-1, 1))
        for seq in seqs:
            seq.length += 1
        self._emit(seqs, sample(logits, [s.state for s in seqs]))

    def _forward(self, ids: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill(~allowed, torch.finfo(self.dtype).min)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=self.cache,  # transformers 5.24 renamed past_key_values; the old name goes in 5.40
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    # --- results -----------------------------------------------------------------------------------
    def _emit(self, seqs: list[Sequence], results: list[Sampled]) -> None:
        for seq, r in zip(seqs, results, strict=True):
            if seq.cancelled:
                self._finish(seq)
                continue
            seq.state.output_ids.append(r.token_id)
            seq.next_token = r.token_id
            reason = self._finish_reason(seq, r.token_id)
            seq.emit(TokenStep(r.token_id, r.logprob, r.top_logprobs, reason))
            if reason:
                self._finish(seq)

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.request.params
        if token in params.stop_token_ids:
            return "stop"
        if len(seq.state.output_ids) >= params.max_tokens or seq.length + 1 >= self.context_length:
            return "length"
        return None

    def _finish(self, seq: Sequence) -> None:
        if not seq.finished:
            seq.finished = True
            if seq.adapter is not None and seq.slot:
                self.lora.release(seq.adapter.id)

    def _compact(self) -> None:
        """Remove finished rows, filling each hole with the last live row so rows stay contiguous."""
        i = 0
        while i < len(self.running):
            if self.running[i].finished:
                last = self.running.pop()
                if i < len(self.running):
                    self.cache.move_row(len(self.running), i, last.length)
                    self.running[i] = last
                continue
            i += 1
