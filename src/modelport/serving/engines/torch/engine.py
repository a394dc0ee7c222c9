"""``TorchEngine``: transformers models on one device, driven by a single engine thread.

Request coroutines never touch torch state: they load models and read adapters in worker threads
(``asyncio.to_thread``), hand a ``Sequence`` to the engine thread through an inbox, and receive tokens
back through ``loop.call_soon_threadsafe``. The engine thread owns every forward pass, so CPU cores
are not fought over and model state needs no locks. Loaded models live in an LRU bounded by a memory
budget; a model with sequences in flight is never evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from typing import Any

import torch
from torch import nn

# Resolved here, once, as the engine process starts: transformers resolves its names lazily, and two
# threads loading their first models at once can see a half-initialised module (ImportError).
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from modelport.errors import ContextLengthExceeded, EngineFailed, EngineOverloaded, ModelportError
from modelport.serving.constraint import Constraint, Vocabulary
from modelport.serving.engine import (
    Artifact,
    GenerationRequest,
    Pooling,
    TokenStep,
)
from modelport.serving.engines.torch.lora import AdapterWeights, read_adapter
from modelport.serving.engines.torch.memory import Footprint, MemoryLedger
from modelport.serving.engines.torch.pooling import Embedder
from modelport.serving.engines.torch.precision import Precision, choose
from modelport.serving.engines.torch.prefix import PrefixCache
from modelport.serving.engines.torch.runner import BatchRunner, Sequence
from modelport.serving.engines.torch.threads import ThreadTuner
from modelport.serving.text import load_text_model
from modelport.settings import Settings

log = logging.getLogger(__name__)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _budget(settings: Settings, device: torch.device) -> int:
    if settings.engine_memory_bytes:
        return settings.engine_memory_bytes
    # The default is the host's (or GPU's) share for all serverless engine processes together.
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8) // settings.engine_workers
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5) // settings.engine_workers


def _sequence_budget(settings: Settings, device: torch.device) -> int:
    """KV caches and forward-pass scratch, beside the weights' budget: together they leave a quarter
    of the RAM (a tenth of the GPU) to the process, the tokenizers and the system."""
    if settings.engine_sequence_memory_bytes:
        return settings.engine_sequence_memory_bytes
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.1) // settings.engine_workers
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25) // settings.engine_workers


class _Loaded:
    def __init__(self, worker: BatchRunner | Embedder, nbytes: int, dtype: torch.dtype) -> None:
        self.worker, self.nbytes, self.dtype = worker, nbytes, str(dtype).removeprefix("torch.")
        self.pending = 0  # requests between "model chosen" and "sequence finished"


class TorchEngine:
    name = "transformers"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = _device(settings.engine_device)
        self.budget = _budget(settings, self.device)
        self.ledger = MemoryLedger(_sequence_budget(settings, self.device))
        self.precision: Precision = choose(settings.engine_dtype, self.device)
        prefix_budget = settings.prefix_cache_bytes or self.ledger.total // 8
        self.prefix = PrefixCache(prefix_budget) if settings.prefix_caching else None
        self._models: OrderedDict[str, _Loaded] = OrderedDict()
        self._adapters: OrderedDict[str, AdapterWeights] = OrderedDict()  # read from disk, on the CPU
        self._vocabularies: OrderedDict[str, Vocabulary] = OrderedDict()  # for grammars, by base model
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.adapter_load_s: list[float] = []
        self._threads = 1
        self._tuner: ThreadTuner | None = None  # on a CPU with more than one thread

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._threads = torch.get_num_threads()
            if self.device.type == "cpu" and self._threads > 1:
                self._tuner = ThreadTuner((1, max(1, self._threads // 2), self._threads))
            self._thread = threading.Thread(target=self._loop, name="modelport-engine", daemon=True)
            self._thread.start()
            log.info(
                "engine %s on %s in %s (%s), memory budget %.1f GiB for weights and %.1f GiB for sequences",
                self.name,
                self.device,
                self.precision.label,
                self.precision.reason,
                self.budget / 2**30,
                self.ledger.total / 2**30,
            )

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            models = {
                key: {
                    "bytes": m.nbytes,
                    "running": len(m.worker.running) if isinstance(m.worker, BatchRunner) else 0,
                    "waiting": len(m.worker.waiting) if isinstance(m.worker, BatchRunner) else 0,
                    "adapters": list(m.worker.lora.resident) if isinstance(m.worker, BatchRunner) else [],
                    "dtype": m.dtype,
                }
                for key, m in self._models.items()
            }
        return {
            "engine": self.name,
            "device": str(self.device),
            "dtype": self.precision.label,
            "dtype_reason": self.precision.reason,
            "budget_bytes": self.budget,
            "sequence_budget_bytes": self.ledger.total,
            "sequence_bytes": self.ledger.used,
            "models": models,
            "prefix_cache": self.prefix.stats() if self.prefix is not None else None,
        }

    # --- requests ----------------------------------------------------------------------------------
    def preload(self, artifact: Artifact, context_length: int) -> None:
        """Load a model now (blocking), so the first request finds it ready."""
        self._release(self._acquire(artifact, context_length))

    async def prepare(self, request: GenerationRequest) -> None:
        loaded = await asyncio.to_thread(self._acquire, request.base, request.context_length)
        try:
            runner = loaded.worker
            assert isinstance(runner, BatchRunner)
            self._check_fits(runner, request)
            if request.adapter is not None:
                await asyncio.to_thread(self._adapter_weights, request.adapter, runner.lora.targets)
            await self._constraint(request, runner)  # a grammar that cannot run here is a 400 now
        finally:
            self._release(loaded)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        loaded = await asyncio.to_thread(self._acquire, request.base, request.context_length)
        try:
            runner = loaded.worker
            assert isinstance(runner, BatchRunner)
            self._check_fits(runner, request)
            adapter = None
            if request.adapter is not None:
                adapter = await asyncio.to_thread(self._adapter_weights, request.adapter, runner.lora.targets)
            if len(runner.waiting) >= self.settings.max_queued_requests:
                raise EngineOverloaded("too many requests are waiting for this model; retry shortly")
            constraint = await self._constraint(request, runner)
            out: asyncio.Queue[TokenStep | BaseException] = asyncio.Queue()
            seq = Sequence(request, _emitter(out), adapter, constraint)
            self._submit(lambda: runner.submit(seq))
            try:
                while True:
                    item = await out.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if item.finish_reason:
                        return
            finally:
                seq.cancelled = True  # a no-op when finished; frees the row when the client left early
                self._wake.set()
        finally:
            self._release(loaded)

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        loaded = await asyncio.to_thread(self._acquire, model, 0, pooling)
        try:
            embedder = loaded.worker
            assert isinstance(embedder, Embedder)
            loop = asyncio.get_running_loop()
            done: asyncio.Future[list[list[float]]] = loop.create_future()

            def run() -> None:
                try:
                    result = embedder.embed(batch)
                except ModelportError as e:  # a refusal (too long for memory), not a failure
                    _settle(loop, done, e)
                except Exception as e:
                    log.exception("embedding failed for %s", model.id)
                    _settle(loop, done, EngineFailed(f"the model failed while embedding: {type(e).__name__}"))
                else:
                    _settle(loop, done, result)

            self._submit(run)
            return await done
        finally:
            self._release(loaded)

    # --- loading -----------------------------------------------------------------------------------
    def _acquire(self, artifact: Artifact, context_length: int, pooling: Pooling | None = None) -> _Loaded:
        with self._lock:
            lock = self._load_locks.setdefault(artifact.id, threading.Lock())
        with lock:  # one load per model, however many first requests arrive together
            with self._lock:
                loaded = self._models.get(artifact.id)
                if loaded is not None:
                    self._models.move_to_end(artifact.id)
                    loaded.pending += 1
                    return loaded
                dtype, size = self._resident(artifact)
                self._make_room(size)
            started = time.perf_counter()
            worker = self._load(artifact, context_length, pooling, dtype)
            log.info("loaded %s on %s in %.2fs", artifact.id, self.device, time.perf_counter() - started)
            loaded = _Loaded(worker, size, dtype)
            with self._lock:
                self._models[artifact.id] = loaded
                loaded.pending += 1
            return loaded

    def _resident(self, artifact: Artifact) -> tuple[torch.dtype, int]:
        """The dtype it is served in, and its weights' bytes once loaded: a float32 checkpoint served in bf16
        takes half its file size."""
        dtype = self.precision.for_model(artifact.manifest.dtype)
        params = artifact.manifest.parameters
        return dtype, params * dtype.itemsize if params else artifact.weight_bytes

    def _release(self, loaded: _Loaded) -> None:
        with self._lock:
            loaded.pending -= 1

    def _make_room(self, need: int) -> None:
        if need > self.budget:
            raise EngineOverloaded(
                f"the model needs {need / 2**30:.1f} GiB but the engine's memory budget is "
                f"{self.budget / 2**30:.1f} GiB (MODELPORT_ENGINE_MEMORY_BYTES)"
            )
        used = sum(m.nbytes for m in self._models.values())
        for key in list(self._models):
            if used + need <= self.budget:
                break
            victim = self._models[key]
            if victim.pending == 0:
                log.info("evicting %s to make room", key)
                del self._models[key]
                self.ledger.hold(victim.worker, 0)
                used -= victim.nbytes
        if used + need > self.budget:
            raise EngineOverloaded("every loaded model is busy and no memory is left for another; retry shortly")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(
        self, artifact: Artifact, context_length: int, pooling: Pooling | None, dtype: torch.dtype
    ) -> BatchRunner | Embedder:
        try:
            if pooling is not None:
                return Embedder.load(
                    artifact.path, pooling, self.device, dtype, self.settings.max_model_len, self.ledger
                )
            model = _load_causal_lm(artifact, self.device, dtype)
        except EngineFailed:
            raise
        except Exception as e:
            log.exception("could not load %s", artifact.id)
            raise EngineFailed(f"the model could not be loaded: {type(e).__name__}: {e}") from None
        footprint = Footprint.of(model.config, dtype.itemsize)
        affordable = footprint.longest_affordable(self.ledger.total)
        if affordable < 2:
            raise EngineOverloaded(
                f"the engine's sequence memory ({self.ledger.total / 2**20:.0f} MiB, "
                "MODELPORT_ENGINE_SEQUENCE_MEMORY_BYTES) cannot hold one token of this model's attention state"
            )
        return BatchRunner(
            model,
            # The model's declared context is the tenant's word; the server caps it, and memory may cap it lower.
            context_length=min(context_length, self.settings.max_model_len, affordable),
            max_num_seqs=self.settings.max_num_seqs,
            max_adapters=self.settings.max_loras,
            prefill_budget=self.settings.prefill_token_budget,
            ledger=self.ledger,
            footprint=footprint,
            prefix=self.prefix,
        )

    def _check_fits(self, runner: BatchRunner, request: GenerationRequest) -> None:
        """Refuse, before anything is allocated, a prompt that the model's usable context or the memory
        for one sequence cannot hold (the per-request estimate: its KV cache and a prefill chunk)."""
        n = len(request.prompt_ids)
        context = min(request.context_length, self.settings.max_model_len)
        if n + 1 > context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens (on this server at most "
                f"MODELPORT_MAX_MODEL_LEN = {self.settings.max_model_len}). However, your prompt has {n} tokens "
                "and the completion needs at least one more. Please reduce the prompt."
            )
        need = runner.footprint.one_sequence(n + 1)
        if need > self.ledger.total:
            raise ContextLengthExceeded(
                f"This prompt of {n} tokens needs about {need / 2**20:.0f} MiB for its attention state, more than "
                f"the {self.ledger.total / 2**20:.0f} MiB the engine gives one request "
                f"(MODELPORT_ENGINE_SEQUENCE_MEMORY_BYTES): at most {runner.context_length - 1} prompt tokens fit "
                "for this model. Please reduce the prompt."
            )

    async def _constraint(self, request: GenerationRequest, runner: BatchRunner) -> Constraint | None:
        grammar = request.params.grammar
        if grammar is None:
            return None
        vocabulary = await asyncio.to_thread(self._vocabulary, request.base, runner)
        return await asyncio.to_thread(vocabulary.constraint, grammar)  # compiling drops the GIL

    def _vocabulary(self, artifact: Artifact, runner: BatchRunner) -> Vocabulary:
        with self._lock:
            lock = self._load_locks.setdefault(f"vocabulary:{artifact.id}", threading.Lock())
        with lock:  # built once per model (about a second for a 150k-token vocabulary)
            with self._lock:
                cached = self._vocabularies.get(artifact.id)
                if cached is not None:
                    self._vocabularies.move_to_end(artifact.id)
                    return cached
            head: Any = runner.model
            width = int(head.get_output_embeddings().weight.shape[0])  # the logits' width
            vocabulary = Vocabulary(load_text_model(artifact.path), width)
            with self._lock:
                self._vocabularies[artifact.id] = vocabulary
                while len(self._vocabularies) > VOCABULARIES:
                    self._vocabularies.popitem(last=False)
            return vocabulary

    def _adapter_weights(self, artifact: Artifact, base_modules: frozenset[str]) -> AdapterWeights:
        with self._lock:
            cached = self._adapters.get(artifact.id)
            if cached is not None:
                self._adapters.move_to_end(artifact.id)
                return cached
        started = time.perf_counter()
        weights = read_adapter(artifact.id, artifact.path, base_modules)
        with self._lock:
            self._adapters[artifact.id] = weights
            while len(self._adapters) > 4 * self.settings.max_loras:
                self._adapters.popitem(last=False)
            self.adapter_load_s.append(time.perf_counter() - started)
        return weights

    # --- the engine thread -------------------------------------------------------------------------
    def _pick_threads(self, runners: list[BatchRunner]) -> tuple[int, int] | None:
        """On CPU, the thread count the tuner (``threads.py``) finds fastest for this many rows, measured
        on this machine as it serves; ``(rows, threads)`` to record the step's time against."""
        if self._tuner is None:
            return None
        rows = sum(len(r.running) + len(r.waiting) for r in runners)
        want = self._tuner.pick(rows)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
        return rows, want

    def _submit(self, work: Callable[[], None]) -> None:
        self._inbox.put(work)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            while True:
                try:
                    self._inbox.get_nowait()()
                except queue.Empty:
                    break
            with self._lock:
                runners = [m.worker for m in self._models.values() if isinstance(m.worker, BatchRunner)]
            picked = self._pick_threads(runners)
            started = time.perf_counter()
            did_work = False
            for runner in runners:
                did_work |= runner.step()
            if did_work and picked is not None and self._tuner is not None:
                self._tuner.record(*picked, time.perf_counter() - started)
            if not did_work:
                self._wake.wait(timeout=1.0)


VOCABULARIES = 8  # tokenizers kept ready for grammars, one per base model


def _load_causal_lm(artifact: Artifact, device: torch.device, dtype: torch.dtype) -> nn.Module:
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # a bar per load fills the log
    model: nn.Module = AutoModelForCausalLM.from_pretrained(
        artifact.path, dtype=dtype, attn_implementation="sdpa", local_files_only=True, trust_remote_code=False
    )
    model.to(device)
    model.eval()
    return model


def _emitter(out: asyncio.Queue[TokenStep | BaseException]) -> Callable[[TokenStep | BaseException], None]:
    loop = asyncio.get_running_loop()

    def emit(item: TokenStep | BaseException) -> None:
        # RuntimeError: the event loop is gone (server shutting down), so nobody is listening.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(out.put_nowait, item)

    return emit


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], value: Any) -> None:
    def settle() -> None:
        if future.done():
            return
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(settle)
