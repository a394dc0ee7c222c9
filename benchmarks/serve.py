"""Serving benchmark on a ~50M-parameter Llama-style model generated in code (stored in fp32; CPU unless CUDA).

Everything is measured in one run, against baselines from the same run; throughput figures are the best
of 3 runs each (this machine's speed varies by up to 20% from one run to the next):
- throughput: aggregate generated tokens/s with 1, 8 and 16 concurrent streaming completions, on
  `modelport serve` (in the dtype its engine picks for this machine) and on `transformers serve
  --continuous-batching` (same model files, same load) as it loads them (fp32) and in bf16;
- multi-LoRA: 16 concurrent requests over 16 distinct adapters against 16 base-only requests;
- adapter cold-load: first-request latency on a never-used adapter minus a warm base request's (p50);
- upload to first token: from `POST /v1/models` accepted to the first streamed token of that model;
- long prompt: time to first token of short requests while a 1,500-token prompt prefills, against the
  same requests on an idle server;
- prefix caching: time to first token of 1,040-token prompts that share their first 1,024 tokens,
  against prompts that share nothing;
- roofline: the machine's memory bandwidth (a large tensor copy), and each throughput figure as the
  fraction of it that reading the weights once per step at that rate takes;
- structured outputs: 16 streams on the same model with a byte-level tokenizer, all free text, against 8
  free and 8 under a JSON schema in the same batches (the free rows' speed must hold within 10%), and
  the grammar's mask time per token, measured on that model's 32,000-token vocabulary.

    .venv/bin/python benchmarks/serve.py                   # everything (~10 min on 2 CPU cores)
    .venv/bin/python benchmarks/serve.py --skip-baseline   # modelport only
    .venv/bin/python benchmarks/serve.py --structured-only # the structured-outputs lines only (~3 min)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

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


# The constrained rows' answer: an array of short strings that the rows keep writing until max_tokens
# (their "]" is biased away), so the batch keeps its size and every step computes a full mask.
JSON_SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 8}}
ROUNDS = 3


def make_json_model(path: Path, base: Path) -> dict[str, Any]:
    """The benchmark model's weights with a byte-level BPE of the same 32,000 ids, which can write JSON,
    and an end-of-sequence token. Returns the extra request fields: free rows bias that token away, and
    constrained rows bias away every token holding "]", so both run to max_tokens."""
    path.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = [prompt(i) for i in range(4000)] + ['["w1", "w22", "w333"]', '{"a": [1, 2, 3]}'] * 50
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(f"<x{i}>", special=False) for i in range(VOCAB - tok.get_vocab_size())])
    tok.save(str(path / "tokenizer.json"))
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg | {"unk_token": "<unk>"}))
    eos = tok.token_to_id("</s>")
    cfg = json.loads((base / "config.json").read_text()) | {"eos_token_id": eos}
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": eos}))
    (path / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes())
    closing = [i for token, i in tok.get_vocab().items() if "]" in token][:1000]
    free = {"logit_bias": {str(eos): -100}}
    constrained = {
        "logit_bias": {str(i): -100 for i in closing},
        "response_format": {"type": "json_schema", "schema": JSON_SCHEMA},
    }
    return {"free": free, "constrained": constrained}


def mask_time_per_token(path: Path, steps: int = 2000) -> float:
    """Microseconds to compute a constrained row's mask and advance its grammar, per token, on a random
    walk through the grammar (the engine's work per token, beside the forward pass)."""
    import random

    import torch

    from modelport.serving.constraint import Vocabulary
    from modelport.serving.grammar import json_grammar
    from modelport.serving.text import load_text_model

    vocabulary = Vocabulary(load_text_model(path), VOCAB)
    constraint = vocabulary.constraint(json_grammar(JSON_SCHEMA, "response_format"))
    words = torch.zeros((1, vocabulary.words), dtype=torch.int32)
    rng, spent = random.Random(0), 0.0
    closing = {i for token, i in load_text_model(path).tokenizer.get_vocab().items() if "]" in token}
    for _ in range(steps):
        started = time.perf_counter()
        constraint.fill(words, 0)
        spent += time.perf_counter() - started
        bits = np.unpackbits(words.numpy().view(np.uint8), bitorder="little")[:VOCAB]
        allowed = [int(t) for t in np.flatnonzero(bits)]
        choice = rng.choice([t for t in allowed if t not in closing] or allowed)
        started = time.perf_counter()
        constraint.advance(choice)
        spent += time.perf_counter() - started
    return spent / steps * 1e6


def prompt(i: int) -> str:
    return " ".join(f"w{(i * 7919 + j * 104729) % (VOCAB - 3)}" for j in range(PROMPT_WORDS))


async def stream_once(
    http: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int, extra: dict[str, Any] | None = None
) -> dict[str, float]:
    body = {"model": model, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0, "stream": True}
    body |= extra or {}
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


async def load(
    url: str, models: list[str], max_tokens: int, headers: dict[str, str], extras: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    async with httpx.AsyncClient(headers=headers, timeout=600) as http:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_once(http, url, m, i, max_tokens, extras[i] if extras else None) for i, m in enumerate(models))
        )
        wall = time.perf_counter() - started
    tokens = sum(r["tokens"] for r in results)
    rates = [r["tokens"] / r["total"] for r in results]  # each stream's own tokens/s
    return {"streams": len(models), "tokens": tokens, "seconds": wall, "tok_s": tokens / wall, "rates": rates}


LONG_PROMPT_TOKENS = 1500


async def long_prompt_ttft(url: str, auth: dict[str, str]) -> dict[str, float]:
    """Short requests' time to first token alone, then while a long prompt prefills (median of 5 each)."""
    async with httpx.AsyncClient(headers=auth, timeout=600) as http:
        alone = [(await stream_once(http, url, "bench/base", 100 + i, 1))["ttft"] for i in range(5)]
        long_body = {"prompt": " ".join(f"w{(j * 7919) % (VOCAB - 3)}" for j in range(LONG_PROMPT_TOKENS))}
        long_task = asyncio.create_task(stream_once(http, url, "bench/base", 0, 1, long_body))
        loaded = []
        for i in range(5):  # spread over the long prompt's prefill (about 2 s here), which starts after its
            await asyncio.sleep(0.3)  # own tokenizing
            loaded.append((await stream_once(http, url, "bench/base", 200 + i, 1))["ttft"])
        long_ttft = (await long_task)["ttft"]
    return {"alone": statistics.median(alone), "loaded": statistics.median(loaded), "long": long_ttft}


PREFIX_TOKENS = 1024


async def shared_prefix_ttft(url: str, auth: dict[str, str]) -> dict[str, float]:
    """Time to first token of prompts of 1,024 + 16 tokens, one at a time: each with a prefix of its own,
    then all beginning with the same 1,024 tokens (a system prompt) after one request has sent it once."""

    def words(seed: int, n: int) -> str:
        return " ".join(f"w{(seed * 104729 + j * 7919) % (VOCAB - 3)}" for j in range(n))

    async def ttft(http: httpx.AsyncClient, text: str) -> float:
        return (await stream_once(http, url, "bench/base", 0, 1, {"prompt": text}))["ttft"]

    async with httpx.AsyncClient(headers=auth, timeout=600) as http:
        own = [await ttft(http, f"{words(300 + i, PREFIX_TOKENS)} {words(400 + i, 16)}") for i in range(5)]
        system = words(500, PREFIX_TOKENS)
        await ttft(http, f"{system} {words(600, 16)}")
        shared = [await ttft(http, f"{system} {words(700 + i, 16)}") for i in range(5)]
    return {"own": statistics.median(own), "shared": statistics.median(shared)}


def memory_bandwidth() -> float:
    """Bytes per second this machine moves copying a 256 MiB tensor (read plus write), best of 5."""
    import torch

    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() * src.element_size() / best


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


def structured(
    url: str, auth: dict[str, str], hub: FakeHub, model: Path, extras: dict[str, Any], max_tokens: int
) -> dict[str, Any]:
    """16 free streams against 8 free and 8 constrained ones, on the byte-level model. Runs alternate,
    ROUNDS of each, and each side keeps its best: one run to the next varies by up to 10% here."""
    hub.add("bench/json", files_of(model))
    upload(url, auth, "json", "bench/json")
    asyncio.run(load(url, ["bench/json"], 4, auth, [extras["free"]]))  # loads the model
    n, free, mixed = 16, [], []
    mixed_extras = [extras["free"] if i % 2 == 0 else extras["constrained"] for i in range(n)]
    for _ in range(ROUNDS):
        free.append(asyncio.run(load(url, ["bench/json"] * n, max_tokens, auth, [extras["free"]] * n)))
        mixed.append(asyncio.run(load(url, ["bench/json"] * n, max_tokens, auth, mixed_extras)))
    return {"free": free, "mixed": mixed}


def run_modelport(
    work: Path,
    hub: FakeHub,
    model: Path,
    adapters: list[Path],
    max_tokens: int,
    json_model: tuple[Path, Any],
    structured_only: bool = False,
) -> dict[str, Any]:
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
        out["dtype"] = engine_dtype(url)
        for i, adapter in enumerate(adapters):
            hub.add(f"bench/lora-{i}", files_of(adapter))
            upload(url, auth, f"lora-{i}", f"bench/lora-{i}", model_type="adapter", base_model="bench/base")
        if not structured_only:
            out["throughput"] = throughput(url, "bench/base", max_tokens, auth)
            out["cold_adapter_ms"] = cold_adapter_latencies(url, auth)
            names = [f"bench/lora-{i}" for i in range(ADAPTERS)]
            rounds = [
                (
                    asyncio.run(load(url, names, max_tokens, auth)),
                    asyncio.run(load(url, ["bench/base"] * ADAPTERS, max_tokens, auth)),
                )
                for _ in range(ROUNDS)
            ]  # alternating, each side's best: one run to the next varies by up to 20% here
            out["adapters16"] = max((a for a, _ in rounds), key=lambda r: r["tok_s"])
            out["base16"] = max((b for _, b in rounds), key=lambda r: r["tok_s"])
            out["long_prompt"] = asyncio.run(long_prompt_ttft(url, auth))
            out["shared_prefix"] = asyncio.run(shared_prefix_ttft(url, auth))
        out["structured"] = structured(url, auth, hub, json_model[0], json_model[1], max_tokens)
    finally:
        proc.stop()
    return out


def engine_dtype(url: str) -> str:
    """The dtype the server's engine chose (``modelport_worker_precision_info``)."""
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'^modelport_worker_precision_info\{[^}]*dtype="([^"]+)"', text, re.MULTILINE)
    return found.group(1) if found else "unknown"


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


def run_transformers(work: Path, model: Path, max_tokens: int, dtype: str = "auto") -> dict[int, dict[str, float]]:
    """``transformers serve --continuous-batching`` on the same files: ``dtype`` auto is the stored fp32."""
    port = free_port()
    exe = Path(sys.executable).parent / "transformers"
    args = [str(exe), "serve", str(model), "--continuous-batching", "--port", str(port), "--host", "127.0.0.1"]
    args += ["--dtype", dtype]
    if not os.environ.get("CUDA_VISIBLE_DEVICES") and not _has_cuda():
        args += ["--device", "cpu"]
    proc = Proc(args, work / f"transformers-{dtype}.log", {"HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc.popen, timeout=300)
        asyncio.run(load(url, [str(model)], 1, {}))  # warm-up: the model loads on first use
        return throughput(url, str(model), max_tokens, {})
    finally:
        proc.stop()


def throughput(url: str, model: str, max_tokens: int, auth: dict[str, str]) -> dict[int, dict[str, Any]]:
    """Aggregate tokens/s at 1, 8 and 16 concurrent streams, the best of ROUNDS runs of each."""
    return {
        n: max((asyncio.run(load(url, [model] * n, max_tokens, auth)) for _ in range(ROUNDS)), key=lambda r: r["tok_s"])
        for n in (1, 8, 16)
    }


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--structured-only", action="store_true", help="only the structured-outputs lines")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mp-serve-bench-"))
    params = make_model(work / "model")
    adapters = [work / f"lora-{i}" for i in range(ADAPTERS)]
    for i, path in enumerate(adapters):
        make_adapter(path, seed=100 + i)
    json_model = (work / "json-model", make_json_model(work / "json-model", work / "model"))
    print(f"model: {params / 1e6:.1f}M parameters, stored in fp32; prompts {PROMPT_WORDS} tokens, ", end="")
    print(f"{args.max_tokens} generated")
    hub = FakeHub()
    hub.start(free_port())
    try:
        ours = run_modelport(work, hub, work / "model", adapters, args.max_tokens, json_model, args.structured_only)
    finally:
        hub.stop()
    ours["mask_us"] = mask_time_per_token(work / "json-model")
    itemsize = {"float32": 4, "bfloat16": 2, "float16": 2}.get(ours.get("dtype", ""), 4)
    ours["bandwidth"], ours["weight_bytes"] = memory_bandwidth(), itemsize * params
    skip = args.skip_baseline or args.structured_only
    theirs = {}
    if not skip:  # as it loads the files (fp32), and in bf16, which is what modelport runs on some CPUs
        theirs = {d: run_transformers(work, work / "model", args.max_tokens, d) for d in ("auto", "bfloat16")}
    print(report(ours, theirs))


Baseline = dict[str, dict[int, dict[str, float]]]  # transformers serve's throughput by --dtype, by streams


def report(ours: dict[str, Any], theirs: Baseline) -> str:
    lines = [] if "throughput" not in ours else _throughput(ours, theirs)
    return "\n".join(lines + _structured(ours))


def _throughput(ours: dict[str, Any], theirs: Baseline) -> list[str]:
    nan = float("nan")
    lines = [
        "",
        f"modelport runs {ours.get('dtype', 'unknown')}; transformers serve --continuous-batching as it loads the "
        "files (fp32), and with --dtype bfloat16",
        "",
        "| streams | modelport tok/s | transformers tok/s | ratio | transformers bf16 tok/s | ratio | roofline |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, row in ours["throughput"].items():
        base = theirs["auto"][n]["tok_s"] if theirs else nan
        half = theirs["bfloat16"][n]["tok_s"] if theirs else nan
        # Each step reads every weight once and yields one token per stream.
        roofline = ours["weight_bytes"] * row["tok_s"] / n / ours["bandwidth"]
        lines.append(
            f"| {n} | {row['tok_s']:.1f} | {base:.1f} | {row['tok_s'] / base:.2f}x | {half:.1f} | "
            f"{row['tok_s'] / half:.2f}x | {roofline:.0%} |"
        )
    a, b = ours["adapters16"]["tok_s"], ours["base16"]["tok_s"]
    cold = ours["cold_adapter_ms"]
    lines += [
        "",
        f"16 requests over 16 adapters: {a:.1f} tok/s; 16 base-only requests: {b:.1f} tok/s; ratio {a / b:.2f}x",
        f"adapter cold load (first request minus warm base request): p50 {statistics.median(cold):.1f} ms, "
        f"max {max(cold):.1f} ms over {len(cold)} adapters",
        f"upload accepted -> first token: {ours['upload_to_first_token_s']:.2f} s",
        f"memory bandwidth (tensor copy): {ours['bandwidth'] / 1e9:.1f} GB/s; "
        f"weights {ours['weight_bytes'] / 1e6:.0f} MB",
    ]
    long = ours["long_prompt"]
    lines.append(
        f"time to first token of short requests: alone {long['alone'] * 1000:.0f} ms, while a "
        f"{LONG_PROMPT_TOKENS}-token prompt prefills {long['loaded'] * 1000:.0f} ms "
        f"({long['loaded'] / long['alone']:.2f}x); the long prompt's own {long['long']:.2f} s"
    )
    shared = ours["shared_prefix"]
    lines.append(
        f"time to first token of {PREFIX_TOKENS}+16-token prompts, one at a time: each its own prefix "
        f"{shared['own'] * 1000:.0f} ms, a shared {PREFIX_TOKENS}-token prefix {shared['shared'] * 1000:.0f} ms "
        f"({shared['own'] / shared['shared']:.1f}x faster)"
    )
    return lines


def _structured(ours: dict[str, Any]) -> list[str]:
    free, mixed = ours["structured"]["free"], ours["structured"]["mixed"]
    alone = max(statistics.mean(run["rates"]) for run in free)
    beside = max(statistics.mean(run["rates"][0::2]) for run in mixed)  # the free rows of the mixed batches
    constrained = max(statistics.mean(run["rates"][1::2]) for run in mixed)
    return [
        f"structured outputs, 16 streams, best of {ROUNDS}: free rows alone {alone:.2f} tok/s each; "
        f"beside 8 constrained rows {beside:.2f} tok/s each (ratio {beside / alone:.2f}x); "
        f"the constrained rows {constrained:.2f} tok/s each",
        f"grammar mask + advance per token ({VOCAB} ids): {ours['mask_us']:.0f} us",
    ]


if __name__ == "__main__":
    main()
