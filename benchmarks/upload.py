"""Direct-upload benchmark: a ~1 GiB model sent to a live `modelport serve`, three ways: its archive by
Nebius' multipart `POST /v0/models/upload`, and by the resumable API (`modelport models upload`'s
client, 64 MiB parts), each followed by `POST /v1/models` from the file id until the job is Complete;
and its folder by Together 3.1.1's `tg models upload` (the v2 protocol: 20 MiB parts by signed URLs,
16 files and 256 parts at once) until its revision is validated, then `tg models download` of it.

It reports the time to send, the time to Complete, and the server's peak resident memory (RSS) while
receiving, against a baseline from the same run: `curl` uploading the same file to the same server's
resumable part route as one raw body (the transfer cost on loopback, with no modelport logic).

    .venv/bin/python benchmarks/upload.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from ingest import KEY, RssSampler, make_archive, make_model  # noqa: E402
from tests.e2e.conftest import together_venv  # noqa: E402
from tests.support.procs import free_port, start_modelport  # noqa: E402

from modelport.cli.client import Client  # noqa: E402
from modelport.cli.upload import upload_file  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}


def wait_job(url: str, job_id: str) -> dict[str, Any]:
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=AUTH).json())["status"] not in ("Complete", "Failed"):
        time.sleep(0.1)
    return dict(job)


def ingest(url: str, name: str, file_id: str) -> float:
    started = time.monotonic()
    body = {"model_name": name, "model_source": file_id}
    job_id = httpx.post(f"{url}/v1/models", headers=AUTH, json=body, timeout=60).json()["data"]["job_id"]
    job = wait_job(url, job_id)
    if job["status"] != "Complete":
        raise SystemExit(f"{name} failed: {job['status_updates'][-1]}")
    return time.monotonic() - started


def multipart(url: str, pid: int, archive: Path) -> dict[str, Any]:
    with RssSampler(pid) as rss:
        started = time.monotonic()
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-H",
                f"Authorization: {AUTH['Authorization']}",
                "-F",
                f"file=@{archive}",
                f"{url}/v0/models/upload",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        sent = time.monotonic() - started
    file_id = json.loads(out.stdout)["id"]
    return {"send_s": sent, "peak_rss": rss.peak, "ingest_s": ingest(url, "via-multipart", file_id)}


def resumable(url: str, pid: int, archive: Path) -> dict[str, Any]:
    with RssSampler(pid) as rss:
        started = time.monotonic()
        file_id = upload_file(Client(url, KEY, timeout=600), archive)
        sent = time.monotonic() - started
    return {"send_s": sent, "peak_rss": rss.peak, "ingest_s": ingest(url, "via-resumable", file_id)}


def baseline(url: str, archive: Path) -> float:
    """curl sending the file as one raw body to a part route sized for it (accepted, then discarded)."""
    import hashlib

    size = archive.stat().st_size
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    body = {"filename": "b", "bytes": size, "sha256": digest, "part_size": size}
    upload = httpx.post(f"{url}/api/v1/uploads", headers=AUTH, json=body).json()
    started = time.monotonic()
    subprocess.run(
        [
            "curl",
            "-sS",
            "-H",
            f"Authorization: {AUTH['Authorization']}",
            "-H",
            f"X-Part-SHA256: {digest}",
            "-T",
            str(archive),
            f"{url}/api/v1/uploads/{upload['id']}/parts/1",
        ],
        capture_output=True,
        check=True,
    )
    elapsed = time.monotonic() - started
    httpx.delete(f"{url}/api/v1/uploads/{upload['id']}", headers=AUTH)
    return elapsed


def together(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TOGETHER_BASE_URL": url,
        "TOGETHER_API_KEY": KEY,
        "TOGETHER_TELEMETRY_DISABLED": "1",
        "TOGETHER_DISABLE_VERSION_CHECK": "1",
    }
    tg = together_venv("3.1.1") / "bin" / "tg"
    return subprocess.run([str(tg), *args, "--json"], env=env, capture_output=True, text=True, check=True)


def v2(url: str, pid: int, model: Path, work: Path) -> dict[str, Any]:
    """``tg models upload`` of the folder, its revision validated, then ``tg models download`` of it."""
    project = httpx.get(f"{url}/v3/whoami", headers=AUTH).json()["project"]["id"]
    created = httpx.post(f"{url}/v2/projects/{project}/models", headers=AUTH, json={"name": "via-v2"}).json()
    with RssSampler(pid) as rss:
        started = time.monotonic()
        out = together("models", "upload", created["id"], str(model), "--project", project, url=url)
        sent = time.monotonic() - started
    revision = json.loads(out.stdout)["revisionId"]
    listing = f"{url}/v2/projects/{project}/models/{created['id']}/revisions"
    while (r := httpx.get(listing, headers=AUTH).json()["data"][0])["validationStatus"].endswith("PENDING"):
        time.sleep(0.1)
    if not r["validationStatus"].endswith("SUCCESS") or r["revisionId"] != revision:
        raise SystemExit(f"the v2 upload failed: {r}")
    validated = time.monotonic() - started - sent
    started = time.monotonic()
    together("models", "download", created["id"], str(work / "downloaded"), "--project", project, url=url)
    return {"send_s": sent, "peak_rss": rss.peak, "ingest_s": validated, "download_s": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mp-upload-bench-"))
    size = make_model(work / "model", layers=8)
    archive = make_archive(work / "model", "tar", work)
    env = {
        "MODELPORT_DATA_DIR": str(work / "data"),
        "MODELPORT_BOOTSTRAP_API_KEY": KEY,
        "MODELPORT_WORKERS": "1",
        "MODELPORT_ADMISSION_MAX_BYTES": "0",  # structure checks only: the figures are about moving bytes
        "MODELPORT_UPLOAD_PART_MAX_BYTES": str(4 * 2**30),  # lets the baseline send the file as one part
    }
    proc, url = start_modelport(env, work / "server.log", port=free_port())
    try:
        idle = RssSampler(proc.popen.pid).proc.memory_info().rss
        base = baseline(url, archive)
        rows = {
            "multipart": multipart(url, proc.popen.pid, archive),
            "resumable": resumable(url, proc.popen.pid, archive),
            "v2 (tg)": v2(url, proc.popen.pid, work / "model", work),
        }
    finally:
        proc.stop()
    gib = archive.stat().st_size / 2**30
    print(f"archive: {gib:.2f} GiB (.tar, model files {size / 2**30:.2f} GiB); server RSS idle {idle / 2**20:.0f} MiB")
    print(f"baseline: curl raw PUT of the whole file: {base:.1f} s ({gib / base:.2f} GiB/s)")
    for name, r in rows.items():
        print(
            f"{name}: sent in {r['send_s']:.1f} s ({r['send_s'] / base:.2f}x baseline), job Complete "
            f"{r['ingest_s']:.1f} s later; server peak RSS while receiving {r['peak_rss'] / 2**20:.0f} MiB"
        )
        if "download_s" in r:
            print(f"{name}: downloaded in {r['download_s']:.1f} s ({r['download_s'] / base:.2f}x baseline)")


if __name__ == "__main__":
    main()
