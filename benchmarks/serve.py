"""Serving benchmark on a ~50M-parameter Llama-style model generated in code (fp32, CPU unless CUDA).

Everything is measured in one run, against baselines from the same run:
- throughput: aggregate generated tokens/s with 1, 8 and 16 concurrent streaming completions, on
  `modelport serve` and on `transformers serve --continuous-batching` (same model files, same load);
- multi-LoRA: 16 concurrent requests over 16 distinct adapters against 16 base-only requests;
- adapter cold-load: first-request latency on a never-used adapter minus a warm base request's (p50);
- upload to first token: from `POST /v1/models` accepted to the first streamed token of that model.

    .venv/bin/python benchmarks/serve.py                   # everything (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/serve.py --skip-baseline   # modelport only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.fakehub import FakeHub  # noqa: E402
from tests.support.procs import Proc, free_port, start_modelport, wait_http  # noqa: E402
from tests.support.tinymodels import files_of  # noqa: E402

from modelport.demo import llama_config, llama_weights  # noqa: E402

KEY = "mp-benchmark-key-0123456789abcdef0123"
VOCAB = 32000
PROMPT_WORDS = 32
ADAPTERS = 16


def make_model(path: Path) -> int:
    """~50M parameters; the tokenizer has no EOS, so every request generates exactly max_tokens."""
    path.mkdir(parents=True)
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "<pad>", *(f"w{i}" for i in range(VOCAB - 3))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "unk_token": "<unk>"}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg | {"pad_token": "<pad>"}))
    cfg = llama_config(VOCAB, hidden=512, layers=8, heads=8, kv_heads=4, intermediate=1536)
    cfg |= {"max_position_embeddings": 2048, "eos_token_id": None}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
    weights = llama_weights(cfg)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return sum(w.size for w in weights.values())


def make_adapter(path: Path, seed: int, rank: int = 16) -> None:
    rng = np.random.default_rng(seed)
    hidden, kv = 512, 256
    tensors = {}
    for layer in range(8):
        for target, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, hidden)) * 0.05).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out, rank)) * 0.05).astype(np.float32)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank}
    config |= {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "base_model_name_or_path": "bench"}
    (path / "adapter_config.json").write_text(json.dumps(config | {"lora_dropout": 0.0, "bias": "none"}))


def prompt(i: int) -> str:
    return " ".join(f"w{(i * 7919 + j * 104729) % (VOCAB - 3)}" for j in range(PROMPT_WORDS))


async def stream_once(http: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int) -> dict[str, float]:
    body = {"model": model, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    async with http.stream("POST", f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event.get("choices"):
                chunks += 1
                first = first or time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    first = first or time.perf_counter()
    return {"tokens": tokens, "ttft": first - started, "first_at": first, "total": time.perf_counter() - started}


async def load(url: str, models: list[str], max_tokens: int, headers: dict[str, str]) -> dict[str, float]:
    async with httpx.AsyncClient(headers=headers, timeout=600) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream_once(http, url, m, i, max_tokens) for i, m in enumerate(models)))
        wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)
    return {"streams": len(models), "tokens": tokens, "seconds": wall, "tok_s": tokens / wall}


async def first_token(url: str, auth: dict[str, str]) -> float:
    async with httpx.AsyncClient(headers=auth, timeout=600) as http:
        return (await stream_once(http, url, "bench/base", 0, 1))["first_at"]


def upload(url: str, auth: dict[str, str], name: str, source: str, **extra: str) -> tuple[float, str]:
    resp = httpx.post(f"{url}/v1/models", headers=auth, json={"model_name": name, "model_source": source, **extra})
    resp.raise_for_status()
    accepted = time.perf_counter()
    job_id = resp.json()["data"]["job_id"]
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=auth).json())["status"] not in ("Complete", "Failed"):
        time.sleep(0.05)
    if job["status"] != "Complete":
        raise SystemExit(f"upload of {name} failed: {job}")
    return accepted, job_id


def run_modelport(work: Path, hub: FakeHub, model: Path, adapters: list[Path], max_tokens: int) -> dict[str, Any]:
    env = {
        "MODELPORT_DATA_DIR": str(work / "data"),
        "MODELPORT_BOOTSTRAP_API_KEY": KEY,
        "MODELPORT_BOOTSTRAP_ACCOUNT": "bench",
        "MODELPORT_HF_ENDPOINT": hub.url,
        "MODELPORT_FETCH_ALLOW_HTTP": "true",
        "MODELPORT_FETCH_ALLOW": "localhost,127.0.0.1",
        "MODELPORT_MAX_LORAS": str(ADAPTERS),
    }
    proc, url = start_modelport(env, work / "modelport.log", port=free_port())
    auth = {"Authorization": f"Bearer {KEY}"}
    out: dict[str, Any] = {}
    try:
        hub.add("bench/base", files_of(model))
        accepted, _ = upload(url, auth, "base", "bench/base")
        first = asyncio.run(first_token(url, auth))
        out["upload_to_first_token_s"] = first - accepted
        for i, adapter in enumerate(adapters):
            hub.add(f"bench/lora-{i}", files_of(adapter))
            upload(url, auth, f"lora-{i}", f"bench/lora-{i}", model_type="adapter", base_model="bench/base")
        out["throughput"] = {n: asyncio.run(load(url, ["bench/base"] * n, max_tokens, auth)) for n in (1, 8, 16)}
        out["cold_adapter_ms"] = cold_adapter_latencies(url, auth)
        names = [f"bench/lora-{i}" for i in range(ADAPTERS)]
        out["adapters16"] = asyncio.run(load(url, names, max_tokens, auth))
        out["base16"] = asyncio.run(load(url, ["bench/base"] * ADAPTERS, max_tokens, auth))
    finally:
        proc.stop()
    return out


def cold_adapter_latencies(url: str, auth: dict[str, str]) -> list[float]:
    """One-token requests, one at a time: each adapter's first use against a warm base request."""

    def one(model: str) -> float:
        started = time.perf_counter()
        body = {"model": model, "prompt": prompt(0), "max_tokens": 1, "temperature": 0}
        httpx.post(f"{url}/v1/completions", headers=auth, json=body, timeout=60).raise_for_status()
        return time.perf_counter() - started

    extra = []
    for i in range(ADAPTERS):
        warm = min(one("bench/base") for _ in range(3))
        extra.append((one(f"bench/lora-{i}") - warm) * 1000)
    return extra


def run_transformers(work: Path, model: Path, max_tokens: int) -> dict[int, dict[str, float]]:
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    args = [str(exe), "serve", str(model), "--continuous-batching", "--port", str(port), "--host", "127.0.0.1"]
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and not _has_cuda():
        args += ["--device", "cpu"]
    proc = Proc(args, work / "transformers.log", {"HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc.popen, timeout=300)
        asyncio.run(load(url, [str(model)], 1, {}))  # warm-up: the model loads on first use
        return {n: asyncio.run(load(url, [str(model)] * n, max_tokens, {})) for n in (1, 8, 16)}
    finally:
        proc.stop()


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mp-serve-bench-"))
    params = make_model(work / "model")
    adapters = [work / f"lora-{i}" for i in range(ADAPTERS)]
    for i, path in enumerate(adapters):
        make_adapter(path, seed=100 + i)
    print(f"model: {params / 1e6:.1f}M parameters, fp32; prompts {PROMPT_WORDS} tokens, {args.max_tokens} generated")
    hub = FakeHub()
    hub.start(free_port())
    try:
        ours = run_modelport(work, hub, work / "model", adapters, args.max_tokens)
    finally:
        hub.stop()
    theirs = None if args.skip_baseline else run_transformers(work, work / "model", args.max_tokens)
    print(report(ours, theirs))


def report(ours: dict[str, Any], theirs: dict[int, dict[str, float]] | None) -> str:
    lines = [
        "",
        "| streams | modelport tok/s | transformers serve --continuous-batching tok/s | ratio |",
        "|---|---|---|---|",
    ]
    for n, row in ours["throughput"].items():
        base = theirs[n]["tok_s"] if theirs else float("nan")
        lines.append(f"| {n} | {row['tok_s']:.1f} | {base:.1f} | {row['tok_s'] / base:.2f}x |")
    a, b = ours["adapters16"]["tok_s"], ours["base16"]["tok_s"]
    cold = ours["cold_adapter_ms"]
    lines += [
        "",
        f"16 requests over 16 adapters: {a:.1f} tok/s; 16 base-only requests: {b:.1f} tok/s; ratio {a / b:.2f}x",
        f"adapter cold load (first request minus warm base request): p50 {statistics.median(cold):.1f} ms, "
        f"max {max(cold):.1f} ms over {len(cold)} adapters",
        f"upload accepted -> first token: {ours['upload_to_first_token_s']:.2f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
