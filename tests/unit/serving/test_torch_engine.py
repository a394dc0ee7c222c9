"""The engine thread, the async bridge, cancellation and the model LRU, with a real tiny model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from modelport.errors import ContextLengthExceeded, EngineOverloaded
from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, Pooling, SamplingParams
from modelport.serving.engines.torch.engine import TorchEngine
from modelport.settings import Settings
from tests.support.tinymodels import make_bert_embedder, make_llama

MODEL = Manifest(kind=ModelKind.MODEL)  # what the engine reads of a manifest: the dtype, here unknown


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> list[Artifact]:
    root = tmp_path_factory.mktemp("engine")
    folders = [make_llama(root / f"m{i}", seed=i) for i in range(2)]
    return [Artifact(f"model-{i}", f, MODEL, (f / "model.safetensors").stat().st_size) for i, f in enumerate(folders)]


def request(artifact: Artifact, max_tokens: int) -> GenerationRequest:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    return GenerationRequest("r", artifact, None, [1, 4, 5], params, 128)


def test_closing_the_stream_cancels_and_concurrent_streams_share_steps(
    tmp_path: Path, artifacts: list[Artifact]
) -> None:
    engine = TorchEngine(Settings(data_dir=tmp_path, max_num_seqs=4))
    engine.start()

    async def run() -> None:
        stream = engine.generate(request(artifacts[0], 100))
        first = await anext(stream)
        assert first.finish_reason is None
        await stream.aclose()
        for _ in range(100):
            if engine.stats()["models"]["model-0"]["running"] == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.stats()["models"]["model-0"]["running"] == 0

        async def count(n: int) -> int:
            return len([s async for s in engine.generate(request(artifacts[0], n))])

        assert await asyncio.gather(*(count(n) for n in (3, 5, 8))) == [3, 5, 8]

    try:
        asyncio.run(run())
    finally:
        engine.stop()


def test_memory_budget_evicts_idle_models_and_refuses_what_cannot_fit(
    tmp_path: Path, artifacts: list[Artifact]
) -> None:
    size = artifacts[0].weight_bytes
    engine = TorchEngine(Settings(data_dir=tmp_path, engine_memory_bytes=int(size * 1.5)))
    engine.start()

    async def run() -> None:
        for artifact in (artifacts[0], artifacts[1], artifacts[0]):
            assert len([s async for s in engine.generate(request(artifact, 2))]) == 2
            assert list(engine.stats()["models"]) == [artifact.id]  # only one fits
        huge = Artifact("huge", artifacts[0].path, MODEL, size * 10)
        with pytest.raises(EngineOverloaded, match="memory budget"):
            await anext(engine.generate(request(huge, 1)))

    try:
        asyncio.run(run())
    finally:
        engine.stop()


def test_embeddings_run_in_slices_that_fit_and_refuse_an_input_that_cannot(tmp_path: Path) -> None:
    folder = make_bert_embedder(tmp_path / "e")
    artifact = Artifact("embedder", folder, MODEL, (folder / "model.safetensors").stat().st_size)
    pooling = Pooling("mean", True)
    batch = [[2, 5 + i % 10, 6 + i % 7, 3] * 4 for i in range(12)]
    engine = TorchEngine(Settings(data_dir=tmp_path, engine_sequence_memory_bytes=100_000))  # a few rows a pass
    engine.start()

    async def run() -> None:
        sliced = await engine.embed(artifact, batch, pooling)
        one_by_one = [(await engine.embed(artifact, [ids], pooling))[0] for ids in batch]
        assert torch.allclose(torch.tensor(sliced), torch.tensor(one_by_one), atol=1e-5)
        with pytest.raises(ContextLengthExceeded, match="MODELPORT_ENGINE_SEQUENCE_MEMORY_BYTES"):
            await engine.embed(artifact, [[2, *([5] * 58), 3]], pooling)

    try:
        asyncio.run(run())
    finally:
        engine.stop()
