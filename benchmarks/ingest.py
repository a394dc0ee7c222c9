"""Ingest benchmark: a ~1 GiB model (and optionally ~4 GiB) as .tar.gz, .tar and .zip, served by presigned
URL from a local S3 server (moto), ingested end to end by a live `modelport serve` (accepted -> Complete).

Every figure is compared with baselines measured in the same run, from the same S3 server:
- baseline: the best shell pipeline, `curl URL | igzip -dc | tar -x` (ISA-L's CLI, Debian package `isal`;
  `python -m isal.igzip` when absent) then `sha256sum` of
  every file (zip cannot be streamed by standard tools: `curl -o`, `unzip`, `sha256sum`);
- naive: Python that downloads the whole archive to disk, extracts it with the standard library, then
  hashes every file by reading it back.
It also samples the server process's resident memory (RSS) during each ingest.

    .venv/bin/python benchmarks/ingest.py                 # 1 GiB, all three formats
    .venv/bin/python benchmarks/ingest.py --sizes 1,4     # adds the 4 GiB RSS run (tar.gz)

Admission runs with MODELPORT_ADMISSION_MAX_BYTES=0 (structure check only) so the figures measure
moving bytes; `--with-forward` adds one 1 GiB run with the CPU forward pass for reference.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import psutil
from isal import igzip
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.procs import Proc, free_port, start_modelport, start_moto  # noqa: E402

from modelport.demo import llama_config, tokenizer_config, train_tokenizer  # noqa: E402

KEY = "mp-benchmark-key-0123456789abcdef0123"
SHARD_BYTES = 256 * 2**20
INFLATE = "igzip -dc" if shutil.which("igzip") else f"{sys.executable} -m isal.igzip -dc"


def make_model(path: Path, layers: int) -> int:
    """A Llama-shaped fp16 model in 256 MiB shards; returns its size in bytes."""
    path.mkdir(parents=True)
    train_tokenizer().save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(chat_template=None)))
    cfg = llama_config(32000, hidden=2048, layers=layers, heads=16, kv_heads=16, intermediate=5504)
    cfg["torch_dtype"] = "float16"
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    shapes = {"model.embed_tokens.weight": (32000, 2048), "lm_head.weight": (32000, 2048), "model.norm.weight": (2048,)}
    for n in range(layers):
        p = f"model.layers.{n}"
        shapes |= {f"{p}.self_attn.{x}_proj.weight": (2048, 2048) for x in "qkvo"}
        shapes |= {
            f"{p}.mlp.gate_proj.weight": (5504, 2048),
            f"{p}.mlp.up_proj.weight": (5504, 2048),
            f"{p}.mlp.down_proj.weight": (2048, 5504),
            f"{p}.input_layernorm.weight": (2048,),
            f"{p}.post_attention_layernorm.weight": (2048,),
        }
    shard: dict[str, np.ndarray] = {}
    weight_map: dict[str, str] = {}
    shards: list[dict[str, np.ndarray]] = []
    for name, shape in shapes.items():
        shard[name] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)
        if sum(t.nbytes for t in shard.values()) >= SHARD_BYTES:
            shards.append(shard)
            shard = {}
    if shard:
        shards.append(shard)
    total = 0
    for i, tensors in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in tensors})
        total += sum(t.nbytes for t in tensors.values())
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return sum(f.stat().st_size for f in path.iterdir())


def make_archive(model: Path, fmt: str, out: Path) -> Path:
    archive = out / f"model.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for f in sorted(model.iterdir()):
                zf.write(f, f.name)
        return archive
    raw = out / "model.tar"
    with tarfile.open(raw, "w") as tf:
        for f in sorted(model.iterdir()):
            tf.add(f, f.name)
    if fmt == "tar":
        return raw
    with open(raw, "rb") as src, igzip.open(archive, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 8 * 2**20)
    return archive


def sha256_tree(root: Path) -> None:
    subprocess.run(f"find {root} -type f -print0 | xargs -0 sha256sum > /dev/null", shell=True, check=True)


def source_only(url: str) -> float:
    """How fast the S3 server alone delivers the archive: the ceiling for every method."""
    started = time.monotonic()
    subprocess.run(f"curl -sf -o /dev/null '{url}'", shell=True, check=True)
    return time.monotonic() - started


def baseline(url: str, fmt: str, work: Path) -> float:
    dest = work / "baseline"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    started = time.monotonic()
    if fmt == "tar.gz":
        cmd = f"curl -sf '{url}' | {INFLATE} | tar -x -C {dest}"
    elif fmt == "tar":
        cmd = f"curl -sf '{url}' | tar -x -C {dest}"
    else:
        cmd = f"curl -sf -o {work}/b.zip '{url}' && unzip -q {work}/b.zip -d {dest} && rm {work}/b.zip"
    subprocess.run(cmd, shell=True, check=True)
    sha256_tree(dest)
    elapsed = time.monotonic() - started
    shutil.rmtree(dest)
    return elapsed


def naive(url: str, fmt: str, work: Path) -> float:
    dest, archive = work / "naive", work / "naive.archive"
    shutil.rmtree(dest, ignore_errors=True)
    started = time.monotonic()
    with httpx.stream("GET", url, timeout=300) as resp, open(archive, "wb") as out:
        for chunk in resp.iter_bytes():
            out.write(chunk)
    if fmt == "zip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")
    for f in dest.rglob("*"):
        if f.is_file():
            hashlib.sha256(f.read_bytes()).hexdigest()
    elapsed = time.monotonic() - started
    shutil.rmtree(dest)
    archive.unlink()
    return elapsed


class RssSampler:
    """Peak RSS of the server process, and separately of its children (the checker's forks)."""

    def __init__(self, pid: int) -> None:
        self.proc, self.peak, self.child_peak, self._stop = psutil.Process(pid), 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)
            for child in self.proc.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.child_peak = max(self.child_peak, child.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ours(server: str, pid: int, url: str, name: str) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {KEY}"}
    with RssSampler(pid) as rss:
        started = time.monotonic()
        resp = httpx.post(
            f"{server}/v1/models", headers=auth, json={"model_name": name, "model_source": url}, timeout=30
        )
        resp.raise_for_status()
        job_id = resp.json()["data"]["job_id"]
        while True:
            job = httpx.get(f"{server}/v1/jobs/{job_id}", headers=auth, timeout=30).json()
            if job["status"] in ("Complete", "Failed"):
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    if job["status"] != "Complete":
        raise SystemExit(f"ingest failed: {job.get('error')}")
    return {"seconds": elapsed, "peak_rss": rss.peak, "child_rss": rss.child_peak, "updates": job["status_updates"]}


def start_server(work: Path, s3_url: str, admission_bytes: int) -> tuple[Proc, str]:
    env = {
        "MODELPORT_DATA_DIR": str(work / f"data-{admission_bytes}"),
        "MODELPORT_BOOTSTRAP_API_KEY": KEY,
        "MODELPORT_FETCH_ALLOW_HTTP": "true",
        "MODELPORT_FETCH_ALLOW": "localhost,127.0.0.1",
        "MODELPORT_WORKERS": "1",
        "MODELPORT_ADMISSION_MAX_BYTES": str(admission_bytes),
        "MODELPORT_BLOB_GC_GRACE_S": "0",
    }
    return start_modelport(env, work / f"server-{admission_bytes}.log", port=free_port())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1", help="comma-separated GiB sizes: 1 and/or 4")
    parser.add_argument("--formats", default="tar.gz,tar,zip")
    parser.add_argument("--with-forward", action="store_true", help="also time a 1 GiB ingest with the forward pass")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mp-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    moto, s3_url = start_moto(work / "moto.log")
    s3 = boto3.client(
        "s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="bench")
    server, url = start_server(work, s3_url, 0)
    rows = []
    try:
        for gib in [int(s) for s in args.sizes.split(",")]:
            model = work / f"model-{gib}"
            size = make_model(model, layers=8 if gib == 1 else 36)
            formats = args.formats.split(",") if gib == 1 else ["tar.gz"]
            for fmt in formats:
                archive = make_archive(model, fmt, work)
                s3.upload_file(str(archive), "bench", archive.name)
                presigned = s3.generate_presigned_url(
                    "get_object", Params={"Bucket": "bench", "Key": archive.name}, ExpiresIn=6 * 3600
                )
                archive_bytes = archive.stat().st_size
                for f in work.glob("model.*"):
                    f.unlink()
                mine = ours(url, server.popen.pid, presigned, f"bench-{gib}-{fmt.replace('.', '')}")
                row = {
                    "size": f"{gib} GiB",
                    "format": fmt,
                    "archive_bytes": archive_bytes,
                    "model_bytes": size,
                    "ours_s": mine["seconds"],
                    "peak_rss_mb": mine["peak_rss"] / 2**20,
                    "checker_rss_mb": mine["child_rss"] / 2**20,
                }
                if gib == 1:
                    row["curl_only_s"] = source_only(presigned)
                    row["baseline_s"] = baseline(presigned, fmt, work)
                    row["naive_s"] = naive(presigned, fmt, work)
                rows.append(row)
                print(json.dumps(row), flush=True)
                s3.delete_object(Bucket="bench", Key=archive.name)
            shutil.rmtree(model)
        if args.with_forward:
            rows.append(with_forward(work, s3, s3_url))
    finally:
        server.stop()
        moto.stop()
    print()
    print(report(rows))


def with_forward(work: Path, s3: Any, s3_url: str) -> dict[str, Any]:
    model = work / "model-fwd"
    make_model(model, layers=8)
    archive = make_archive(model, "tar.gz", work)
    s3.upload_file(str(archive), "bench", "fwd.tar.gz")
    presigned = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "bench", "Key": "fwd.tar.gz"}, ExpiresIn=6 * 3600
    )
    server, url = start_server(work, s3_url, 4 * 2**30)
    try:
        mine = ours(url, server.popen.pid, presigned, "bench-forward")
    finally:
        server.stop()
    admission = [u["message"] for u in mine["updates"] if u["status"] == "admitting"][-1]
    row = {
        "size": "1 GiB",
        "format": "tar.gz (with forward pass)",
        "archive_bytes": archive.stat().st_size,
        "ours_s": mine["seconds"],
        "peak_rss_mb": mine["peak_rss"] / 2**20,
        "checker_rss_mb": mine["child_rss"] / 2**20,
        "admission": admission,
    }
    print(json.dumps(row), flush=True)
    return row


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| size | format | archive | curl only | modelport | baseline | naive | vs baseline | vs naive "
        "| server peak RSS | checker peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mb = r.get("archive_bytes", 0) / 2**20
        if "baseline_s" in r:
            lines.append(
                f"| {r['size']} | {r['format']} | {mb:.0f} MiB | {r['curl_only_s']:.1f} s | "
                f"{r['ours_s']:.1f} s ({mb / r['ours_s']:.0f} MiB/s) | "
                f"{r['baseline_s']:.1f} s | {r['naive_s']:.1f} s | {r['baseline_s'] / r['ours_s']:.2f}x | "
                f"{r['naive_s'] / r['ours_s']:.2f}x | {r['peak_rss_mb']:.0f} MB | {r['checker_rss_mb']:.0f} MB |"
            )
        else:
            lines.append(
                f"| {r['size']} | {r['format']} | {mb:.0f} MiB | | {r['ours_s']:.1f} s | | | | | "
                f"{r['peak_rss_mb']:.0f} MB | {r['checker_rss_mb']:.0f} MB |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
