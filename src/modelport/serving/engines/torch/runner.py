"""Continuous batching for one base model: sequences join and leave between forward passes.

Each ``step()`` (always on the engine thread) drops cancelled sequences, admits waiting ones while
rows, adapter slots and memory allow, runs one prefill pass over the next chunk of every prompt still
entering the cache (``prefill_budget`` tokens in all, fewer when memory is short), then advances
every sequence that has a token to decode by one token in one decode pass. Rows of different
lengths and different adapters share those passes: ``SlotKVCache`` keeps per-row lengths and
``LoraSlots`` per-row adapters.

Memory is planned before it is allocated. The engine's ``MemoryLedger`` holds one budget for every
model's KV cache and forward-pass scratch, and ``Footprint`` prices both from the model's config. A
prompt is prefilled in chunks, so attention state is chunk x length, never length squared; a waiting
sequence is admitted only when its prompt's cache fits; when decoding would grow the cache past the
budget, the newest sequence is put back in the queue (its cache is recomputed when it returns, as
vLLM does). The engine refuses up front a request that could not fit even alone.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from modelport.errors import EngineFailed
from modelport.serving.constraint import Constraint, fill_all
from modelport.serving.engine import GenerationRequest, TokenStep
from modelport.serving.engines.torch.kvcache import SlotKVCache
from modelport.serving.engines.torch.lora import AdapterWeights, LoraSlots
from modelport.serving.engines.torch.memory import MIN_CHUNK, Footprint, MemoryLedger
from modelport.serving.engines.torch.packed import pack_linears
from modelport.serving.engines.torch.prefix import BLOCK, Block, PrefixCache
from modelport.serving.engines.torch.sampler import Masks, RowState, Sampled, sample

log = logging.getLogger(__name__)

Emit = Callable[[TokenStep | BaseException], None]
UNBOUNDED = 1 << 62


@dataclass(eq=False)
class Sequence:
    request: GenerationRequest
    emit: Emit
    adapter: AdapterWeights | None
    constraint: Constraint | None = None  # the row's grammar (``response_format``, a forced tool call)
    state: RowState = field(init=False)
    to_cache: list[int] = field(init=False)  # what the cache must hold before the next token is chosen
    slot: int = 0
    length: int = 0  # tokens already in the KV cache
    next_token: int = -1  # sampled but not yet in the cache
    cancelled: bool = False  # set from the event loop's thread; read between steps
    finished: bool = False
    prefix_keys: list[bytes] | None = None  # its prompt's prefix-cache keys, once looked up (prefix.py)
    stored_blocks: int = 0  # of those, the blocks already in the prefix cache or copied from it
    cached_tokens: int = 0  # of its prompt, the tokens copied from the prefix cache when it was first admitted

    def __post_init__(self) -> None:
        params = self.request.params
        generator = None
        if params.seed is not None and not params.greedy:
            generator = torch.Generator().manual_seed(params.seed)
        self.state = RowState(params, self.request.prompt_ids, [], generator)
        self.to_cache = self.request.prompt_ids

    @property
    def salt(self) -> str:
        """Whose cached prefixes this sequence may reuse: same base model, adapter and account."""
        base, adapter = self.request.base, self.request.adapter
        return "\0".join((base.id if base else "", adapter.id if adapter else "", self.request.cache_salt))

    @property
    def prefilling(self) -> bool:
        return self.length < len(self.to_cache)

    @property
    def needs(self) -> int:
        """Cache positions this sequence needs for its next pass."""
        return max(len(self.to_cache), self.length + 1)


class BatchRunner:
    def __init__(
        self,
        model: nn.Module,
        *,
        context_length: int,
        max_num_seqs: int,
        max_adapters: int,
        prefill_budget: int,
        ledger: MemoryLedger | None = None,
        footprint: Footprint | None = None,
        prefix: PrefixCache | None = None,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.packed = pack_linears(model)  # bf16 on CPU: weights laid out once for oneDNN (packed.py)
        self.context_length, self.max_num_seqs, self.prefill_budget = context_length, max_num_seqs, prefill_budget
        self.ledger = ledger or MemoryLedger(UNBOUNDED)
        self.footprint = footprint or Footprint.of(model.config, self.dtype.itemsize)
        self.cache = SlotKVCache(context_length, max_num_seqs)
        self.prefix = prefix
        self.lora = LoraSlots(model, max_adapters)
        self.running: list[Sequence] = []
        self.waiting: deque[Sequence] = deque()
        self.steps = 0
        self.preempted = 0

    @property
    def busy(self) -> bool:
        return bool(self.running or self.waiting)

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @torch.inference_mode()
    def step(self) -> bool:
        """One scheduling round; False when there was nothing to do (or no memory to do it with)."""
        self._drop_cancelled()
        self._admit()
        prefilling = [s for s in self.running if s.prefilling]
        decoding = [s for s in self.running if not s.prefilling]
        did_work = False
        try:
            if prefilling:
                did_work |= self._prefill(prefilling)
            if decoding:
                did_work |= self._decode(decoding)
        except Exception as e:  # a failed pass fails its sequences, never the engine thread
            log.exception("forward pass failed; failing %d sequences", len(self.running))
            for seq in list(self.running):
                seq.emit(EngineFailed(f"the model failed while generating: {type(e).__name__}"))
                self._finish(seq)
            did_work = True
        if not did_work and len(self.running) > 1:
            self._requeue_newest()  # nothing could move for lack of memory: fewer rows, then alone
        self._compact()
        self._settle_memory()
        self.steps += did_work
        return did_work

    # --- admission ---------------------------------------------------------------------------------
    def _admit(self) -> None:
        skipped: deque[Sequence] = deque()
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._fits(seq):  # first come, first served: a long prompt is not overtaken forever
                break
            self.waiting.popleft()
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
            self.running.append(seq)
        self.waiting.extendleft(reversed(skipped))

    def _fits(self, seq: Sequence) -> bool:
        """With a row for ``seq``'s whole prompt, would the cache still leave room for a minimal
        prefill chunk of any prompt, and for a decode pass over every row?"""
        if not self.running:
            # Alone it always fits the budget (the engine refused what would not); other models'
            # sequences may hold memory now, but waiting for them could wait forever.
            return True
        rows = len(self.running) + 1
        length = max(self._needed_length(), len(seq.to_cache) + 1, self.cache.capacity)
        scratch = max(self.footprint.forward(1, MIN_CHUNK, length), self.footprint.forward(rows, 1, length))
        return self._cache_bytes(rows, length) + scratch <= self.ledger.available(self)

    def _drop_cancelled(self) -> None:
        self.waiting = deque(s for s in self.waiting if not s.cancelled)
        for seq in self.running:
            if seq.cancelled:
                self._finish(seq)
        self._compact()

    # --- prefill -----------------------------------------------------------------------------------
    def _prefill(self, seqs: list[Sequence]) -> bool:
        if self.prefix is not None:
            for seq in seqs:
                if seq.prefix_keys is None:
                    self._reuse_prefix(seq, self.prefix)
        plan = self._plan_chunks(seqs)
        if not plan:
            return False
        chunk = [s for s, _ in plan]
        rows = [self.running.index(s) for s in chunk]
        starts = [s.length for s in chunk]
        counts = [n for _, n in plan]
        width = max(a + n for a, n in zip(starts, counts, strict=True))
        self._grow(len(self.running), width, self.footprint.forward(len(chunk), max(counts), width))
        ids, allowed, positions = _chunk_inputs(
            [s.to_cache[a : a + n] for s, a, n in zip(chunk, starts, counts, strict=True)], starts, width
        )
        self.cache.begin_extend(rows, starts, counts)
        self.lora.set_batch([s.slot for s in chunk])
        logits = self._forward(ids, allowed, positions)
        for seq, n in plan:
            seq.length += n
        if self.prefix is not None:
            for seq, row in zip(chunk, rows, strict=True):
                self._store_prefix(seq, row, self.prefix)
        # A prompt that is now complete yields its first token; one that came back after being put
        # out of the batch already has its next token.
        done = [i for i, s in enumerate(chunk) if not s.prefilling and not s.state.output_ids]
        if done:
            self._choose([chunk[i] for i in done], logits[done])
        return True

    def _plan_chunks(self, seqs: list[Sequence]) -> list[tuple[Sequence, int]]:
        """The next chunk of each prompt, within the token budget and the memory left."""
        plan: list[tuple[Sequence, int]] = []
        budget = self.prefill_budget
        for seq in seqs:
            if budget <= 0:
                break
            n = min(len(seq.to_cache) - seq.length, budget)
            plan.append((seq, n))
            budget -= n
        while plan:
            width = max(s.length + n for s, n in plan)
            room = self.ledger.available(self) - self._cache_bytes(len(self.running), width)
            fp, rows = self.footprint, len(plan)
            longest = (room // rows - width * fp.per_key) // (width * fp.per_pair + fp.per_query)
            if longest >= min(MIN_CHUNK, max(n for _, n in plan)):
                return [(s, min(n, longest)) for s, n in plan]
            if rows == 1:
                if len(self.running) == 1:  # alone: it fits the whole budget (the engine checked)
                    return [(plan[0][0], min(plan[0][1], MIN_CHUNK))]
                return []
            plan.pop()
        return plan

    def _reuse_prefix(self, seq: Sequence, prefix: PrefixCache) -> None:
        """Start ``seq`` past the longest cached prefix of what it must prefill, copied into its row."""
        seq.prefix_keys = prefix.keys(seq.salt, seq.to_cache)
        if seq.length:
            return
        usable = (len(seq.to_cache) - 1) // BLOCK  # the last token is always computed: its logits choose
        blocks = prefix.match(seq.prefix_keys[:usable])
        if not blocks:
            return
        self._grow(len(self.running), len(blocks) * BLOCK, 0)
        row = self.running.index(seq)
        seq.length = self.cache.copy_in(row, [b.keys for b in blocks], [b.values for b in blocks])
        seq.stored_blocks = len(blocks)
        if not seq.state.output_ids:  # back after a preemption, it reports what its first admission found
            seq.cached_tokens = seq.length

    def _store_prefix(self, seq: Sequence, row: int, prefix: PrefixCache) -> None:
        """Copy the full blocks of ``seq``'s prompt that are now in its row into the prefix cache."""
        assert seq.prefix_keys is not None
        full = min(seq.length, len(seq.to_cache)) // BLOCK
        for i in range(seq.stored_blocks, full):
            if seq.prefix_keys[i] not in prefix:
                prefix.put(seq.prefix_keys[i], Block(*self.cache.copy_out(row, i * BLOCK, BLOCK)))
        seq.stored_blocks = max(seq.stored_blocks, full)

    # --- decode ------------------------------------------------------------------------------------
    def _decode(self, seqs: list[Sequence]) -> bool:
        # One pass over rows 0..m-1, contiguous so the cache returns views. Rows in that range that
        # were not ready to decode when the step began (still prefilling, or given their first token
        # by this step's prefill, maybe their last) ride along with a dummy token at their current
        # length: the position their next chunk or token overwrites.
        while True:
            m = max(self.running.index(s) for s in seqs) + 1
            rows = self.running[:m]
            width = max(s.length for s in rows) + 1
            scratch = self.footprint.forward(m, 1, width)
            need = self._cache_bytes(len(self.running), width) + scratch
            if need <= self.ledger.available(self) or len(self.running) == 1:
                break
            victim = self._requeue_newest()
            seqs = [s for s in seqs if s is not victim]
            if not seqs:
                return True
        self._grow(m, width, scratch)
        lengths = torch.tensor([s.length for s in rows])
        self.cache.begin_decode(lengths.to(self.device))
        allowed = torch.arange(width).view(1, width) <= lengths.view(-1, 1)
        ready = set(seqs)
        ids = torch.tensor([[s.next_token if s in ready else 0] for s in rows])
        self.lora.set_batch([s.slot for s in rows])
        logits = self._forward(ids, allowed.view(m, 1, 1, width), lengths.view(-1, 1))
        index = [i for i, s in enumerate(rows) if s in ready]
        for i in index:
            rows[i].length += 1
        # Usually every row was ready: then the logits are already in order, with nothing to gather.
        self._choose([rows[i] for i in index], logits if len(index) == len(rows) else logits[index])
        return True

    def _requeue_newest(self) -> Sequence:
        """Put the most recently admitted sequence back in the queue, freeing its row (vLLM's
        recompute preemption): when it returns, its prompt and output so far are prefilled again."""
        seq = self.running.pop()
        if seq.adapter is not None and seq.slot:
            self.lora.release(seq.adapter.id)
            seq.slot = 0
        out = seq.state.output_ids
        seq.to_cache = seq.request.prompt_ids + out[:-1] if out else seq.request.prompt_ids
        seq.length, seq.prefix_keys, seq.stored_blocks = 0, None, 0
        self.waiting.appendleft(seq)
        self.preempted += 1
        log.info("memory is short: request %s goes back to the queue", seq.request.request_id)
        return seq

    # --- memory ------------------------------------------------------------------------------------
    def _grow(self, rows: int, length: int, scratch: int) -> None:
        """Make room for ``rows`` x ``length``: doubling when that fits the budget, exactly otherwise."""
        if rows <= self.cache.rows and length <= self.cache.capacity:
            return
        planned = self.footprint.cache(*self.cache.planned(rows, length))
        exact = planned + scratch > self.ledger.available(self)
        self.cache.reserve(rows, length, exact=exact)
        self._hold()

    def _settle_memory(self) -> None:
        if not self.running:
            self.cache.shrink()
        else:
            self.cache.fit(len(self.running), self._needed_length())
        self._hold()

    def _cache_bytes(self, rows: int, length: int) -> int:
        """The cache once it holds ``rows`` x ``length`` (it never shrinks below what it has)."""
        return self.footprint.cache(max(rows, self.cache.rows), max(length, self.cache.capacity))

    def _hold(self) -> None:
        estimate = self.footprint.cache(self.cache.rows, self.cache.capacity)
        self.ledger.hold(self, max(estimate, self.cache.nbytes()))

    def _needed_length(self) -> int:
        return max((s.needs for s in self.running), default=1)

    # --- forward passes ----------------------------------------------------------------------------
    def _forward(self, ids: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # A boolean mask: SDPA takes it as is, where a float one would cost 4 bytes per pair.
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=allowed.to(self.device),
            position_ids=positions.to(self.device),
            cache=self.cache,  # transformers 5.24 renamed past_key_values; the old name goes in 5.40
            use_cache=True,
            logits_to_keep=1,
        )
        logits: torch.Tensor = out.logits[:, -1]
        return logits

    # --- results -----------------------------------------------------------------------------------
    def _choose(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Sample a token for each row (within its grammar, if it has one) and hand them out."""
        self._emit(seqs, sample(logits, [s.state for s in seqs], self._masks(seqs)))

    def _masks(self, seqs: list[Sequence]) -> Masks | None:
        constrained = [(i, s.constraint) for i, s in enumerate(seqs) if s.constraint is not None]
        if not constrained:
            return None
        words = torch.zeros((len(constrained), constrained[0][1].words), dtype=torch.int32)
        fill_all([c for _, c in constrained], words)
        return [i for i, _ in constrained], words

    def _emit(self, seqs: list[Sequence], results: list[Sampled]) -> None:
        for seq, r in zip(seqs, results, strict=True):
            if seq.cancelled:
                self._finish(seq)
                continue
            if r.failed:  # this row alone: its scores were all NaN or inf, or its grammar allowed no token
                why = (
                    "no token of this model's vocabulary can continue the answer in the requested format"
                    if seq.constraint is not None
                    else "the model produced no usable scores for this request (NaN or inf)"
                )
                seq.emit(EngineFailed(why))
                self._finish(seq)
                continue
            seq.state.output_ids.append(r.token_id)
            seq.next_token = r.token_id
            complete = seq.constraint is not None and seq.constraint.advance(r.token_id)
            if seq.constraint is not None and (failed := seq.constraint.failed) is not None:
                # Past one of its limits (constraint.LIMITS): this row ends with the reason, no other does.
                seq.emit(EngineFailed(f"the requested format could not be followed: {failed}"))
                self._finish(seq)
                continue
            reason = "stop" if complete else self._finish_reason(seq, r.token_id)
            cached = seq.cached_tokens if len(seq.state.output_ids) == 1 else 0
            seq.emit(TokenStep(r.token_id, r.logprob, r.top_logprobs, reason, cached))
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


def _chunk_inputs(
    chunks: list[list[int]], starts: list[int], width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, the boolean mask over the cache rows (``width`` keys) and positions.

    A real query at absolute position p sees keys 0..p of its row; a padding query sees key 0 only,
    so no query is all-masked (which would make NaN).
    """
    counts = torch.tensor([len(c) for c in chunks]).view(-1, 1)
    padded = int(counts.max())
    ids = torch.zeros((len(chunks), padded), dtype=torch.long)
    for i, c in enumerate(chunks):
        ids[i, padded - len(c) :] = torch.tensor(c)
    column = torch.arange(padded).view(1, -1)
    absolute = column - (padded - counts) + torch.tensor(starts).view(-1, 1)
    real = column >= padded - counts
    keys = torch.arange(width).view(1, 1, -1)
    allowed = (keys <= absolute.unsqueeze(-1)) & real.unsqueeze(-1)
    allowed |= (keys == 0) & ~real.unsqueeze(-1)
    return ids, allowed.unsqueeze(1), absolute.clamp(min=0)
