"""The engine protocol over a real Unix socket: streams, errors as the same error, cancellation by
closing, a burst of connections, and a server that goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from modelport.errors import ContextLengthExceeded, EngineRestarted
from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, Pooling, SamplingParams
from modelport.serving.engines.fake import FakeEngine
from modelport.serving.ipc import EngineClient, EngineServer, probe

ARTIFACT = Artifact("m", Path("/nowhere"), Manifest(kind=ModelKind.MODEL, context_length=64), 1)


def request(i: int = 0, tokens: int = 5, prompt: list[int] | None = None) -> GenerationRequest:
    params = SamplingParams(max_tokens=tokens, logprobs=1)
    return GenerationRequest(f"r{i}", ARTIFACT, None, prompt or [1, 2, 3], params, 64)


class Refusing(FakeEngine):
    async def prepare(self, request: GenerationRequest) -> None:
        raise ContextLengthExceeded("too long for this model", param="messages")


@asynccontextmanager
async def serving(engine: FakeEngine, path: Path) -> AsyncIterator[EngineClient]:
    ready = asyncio.Event()
    task = asyncio.create_task(EngineServer(engine, path).serve(ready.set))
    await ready.wait()
    try:
        yield EngineClient(path, engine.name, "test")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def run(engine: FakeEngine, path: Path, body: Callable[[EngineClient], Awaitable[None]]) -> None:
    """``body`` against ``engine`` served on ``path``, in one event loop."""

    async def main() -> None:
        async with serving(engine, path) as client:
            await body(client)

    asyncio.run(main())


def test_a_stream_crosses_whole_with_its_logprobs(tmp_path: Path) -> None:
    async def body(client: EngineClient) -> None:
        steps = [s async for s in client.generate(request(prompt=[7, 8, 9]))]
        assert [s.token_id for s in steps] == [9, 8, 7, 9, 8]
        assert steps[0].top_logprobs == [(9, -0.5)] and steps[-1].finish_reason == "length"
        vectors = await client.embed(ARTIFACT, [[1, 2], [3]], Pooling("mean", True))
        assert len(vectors) == 2 and client.in_flight == 0

    run(FakeEngine(), tmp_path / "e.sock", body)


def test_an_engine_refusal_arrives_as_the_same_error(tmp_path: Path) -> None:
    async def body(client: EngineClient) -> None:
        with pytest.raises(ContextLengthExceeded) as refused:
            await client.prepare(request())
        assert refused.value.param == "messages" and refused.value.status_code == 400

    run(Refusing(), tmp_path / "e.sock", body)


def test_closing_a_stream_cancels_its_sequence_in_the_engine(tmp_path: Path) -> None:
    engine = FakeEngine(token_delay_s=0.02)

    async def body(client: EngineClient) -> None:
        stream = client.generate(request(tokens=1000))
        await stream.__anext__()
        assert engine.running == 1
        await stream.aclose()
        for _ in range(100):
            if engine.running == 0:
                break
            await asyncio.sleep(0.01)
        assert engine.running == 0  # freed well before its 20 s of tokens

    run(engine, tmp_path / "e.sock", body)


def test_a_burst_of_streams_is_queued_not_refused(tmp_path: Path) -> None:
    async def body(client: EngineClient) -> None:
        async def one(i: int) -> int:
            return len([s async for s in client.generate(request(i))])

        assert await asyncio.gather(*(one(i) for i in range(500))) == [5] * 500

    run(FakeEngine(max_num_seqs=500), tmp_path / "e.sock", body)


def test_an_engine_that_is_gone_fails_requests_with_engine_restarted(tmp_path: Path) -> None:
    path = tmp_path / "e.sock"
    client = EngineClient(path, "fake", "test")
    with pytest.raises(EngineRestarted):
        asyncio.run(client.prepare(request()))
    assert probe(path, timeout=0.2) is None

    async def body(client: EngineClient) -> None:
        assert await asyncio.to_thread(probe, path) == {"engine": "fake", "running": 0}

    run(FakeEngine(), path, body)


def test_over_tcp_only_requests_with_the_token_are_answered() -> None:
    """A replica on a Ray node listens on TCP: the cluster's network may reach it, its token is the key."""
    from modelport.errors import EngineFailed
    from modelport.serving.ipc import TcpAddress

    async def main() -> None:
        server = EngineServer(FakeEngine(), TcpAddress("127.0.0.1", 0, "s3cret-token"))
        ready = asyncio.Event()
        task = asyncio.create_task(server.serve(ready.set))
        await ready.wait()
        try:
            good = EngineClient(TcpAddress("127.0.0.1", server.port, "s3cret-token"), "fake", "tcp")
            steps = [s async for s in good.generate(request(prompt=[7, 8, 9]))]
            assert [s.token_id for s in steps] == [9, 8, 7, 9, 8]
            assert await asyncio.to_thread(probe, good.path) is not None
            bad = EngineClient(TcpAddress("127.0.0.1", server.port, "guess"), "fake", "tcp")
            with pytest.raises(EngineFailed, match="without its token"):
                [s async for s in bad.generate(request())]
            assert await asyncio.to_thread(probe, bad.path) is None
            assert "s3cret" not in repr(good.path) and "s3cret" not in str(good.path)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_a_client_is_quiet_only_a_while_after_its_last_call(tmp_path: Path) -> None:
    """What a drain reads before it stops a retired replica: the gap between a stream's ``prepare`` and
    its ``generate`` holds nothing in flight, and must not count as quiet."""

    async def body(client: EngineClient) -> None:
        await client.prepare(request())
        assert client.in_flight == 0 and not client.quiet_for(0.5)  # between prepare and generate
        await asyncio.sleep(0.6)
        assert client.quiet_for(0.5)
        client.touch()  # routed here: the request will call soon
        assert not client.quiet_for(0.5)
        stream = client.generate(request(tokens=3))
        await stream.__anext__()
        await asyncio.sleep(0.6)
        assert client.in_flight == 1 and not client.quiet_for(0.5)  # a long stream is never quiet
        _ = [s async for s in stream]
        assert client.in_flight == 0

    run(FakeEngine(), tmp_path / "e.sock", body)
