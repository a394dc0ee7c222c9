"""What the engine protocol costs: the fake engine in-process against the same engine in an engine process.

The fake engine makes tokens up at no cost, so what is left is the transport: per request (a Unix-socket
connection, the request frame, the first step) and per token (one msgpack frame each way through the
socket). Both sides run in this one process's event loop for the in-process baseline; the engine side
runs in a `modelport engine` process for the protocol, as in `modelport serve`.

    .venv/bin/python benchmarks/ipc.py                 # 2000 one-token requests, 20 x 2000-token streams
    .venv/bin/python benchmarks/ipc.py --streams 16    # also: 16 streams at once

Prints each figure for both, and the ratio (protocol / in-process).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from modelport.manifest import Manifest, ModelKind  # noqa: E402
from modelport.serving.engine import Artifact, Engine, GenerationRequest, SamplingParams  # noqa: E402
from modelport.serving.engines.fake import FakeEngine  # noqa: E402
from modelport.serving.pool import EnginePool  # noqa: E402
from modelport.settings import Settings  # noqa: E402


def request(artifact: Artifact, tokens: int, i: int) -> GenerationRequest:
    return GenerationRequest(f"r{i}", artifact, None, list(range(1, 33)), SamplingParams(max_tokens=tokens), 4096)


async def round_trips(engine: Engine, artifact: Artifact, n: int) -> list[float]:
    """Seconds from sending a one-token request to its end, one at a time."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        async for _ in engine.generate(request(artifact, 1, i)):
            pass
        times.append(time.perf_counter() - started)
    return times


async def stream_rate(engine: Engine, artifact: Artifact, tokens: int, streams: int, repeats: int) -> float:
    """Tokens per second over ``streams`` concurrent streams of ``tokens`` each."""

    async def one(i: int) -> int:
        return sum([1 async for _ in engine.generate(request(artifact, tokens, i))])

    started, total = time.perf_counter(), 0
    for r in range(repeats):
        total += sum(await asyncio.gather(*(one(r * streams + i) for i in range(streams))))
    return total / (time.perf_counter() - started)


async def measure(engine: Engine, artifact: Artifact, args: argparse.Namespace) -> dict[str, float]:
    await engine.prepare(request(artifact, 1, -1))  # starts the engine process, for the pool
    trips = await round_trips(engine, artifact, args.requests)
    return {
        "request p50 (us)": statistics.median(trips) * 1e6,
        "request p99 (us)": sorted(trips)[int(len(trips) * 0.99)] * 1e6,
        "1 stream (tok/s)": await stream_rate(engine, artifact, args.tokens, 1, args.repeats),
        f"{args.streams} streams (tok/s)": await stream_rate(engine, artifact, args.tokens, args.streams, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = Artifact("m", Path(tmp), Manifest(kind=ModelKind.MODEL), 0)
        local = asyncio.run(measure(FakeEngine(max_num_seqs=64), artifact, args))
        pool = EnginePool(Settings(data_dir=Path(tmp), engine="fake", max_num_seqs=64))
        try:
            remote = asyncio.run(measure(pool, artifact, args))
        finally:
            pool.stop()
    print(f"{'':24} {'in-process':>12} {'protocol':>12} {'ratio':>8}")
    for name in local:
        print(f"{name:24} {local[name]:12.1f} {remote[name]:12.1f} {remote[name] / local[name]:7.2f}x")


if __name__ == "__main__":
    main()
