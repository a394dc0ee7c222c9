"""A Hugging Face hub-compatible HTTP server, enough for ``huggingface_hub``'s real client.

It serves model repos held in memory: repo info, the recursive file tree, and HEAD/GET on
``/{repo}/resolve/{revision}/{path}``, with the headers the client relies on (``X-Repo-Commit``,
``ETag``, sizes) and the error codes it maps to typed exceptions. Private repos need a bearer token.
Every request is recorded, so tests can check what was (not) downloaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Repo:
    files: dict[str, bytes]
    token: str | None = None  # private when set
    sha: str = field(default="")
    cdn: str | None = None  # when set, GETs of files redirect there, as the real hub does to its CDN

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(path.encode() + hashlib.sha256(self.files[path]).digest())
        self.sha = self.sha or digest.hexdigest()


@dataclass
class _Served:
    data: bytes
    seconds: float
    ranges: bool
    break_after: int | None
    breaks: int
    claim_size: int | None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, authorization)
        self.app = Starlette(
            routes=[
                Route("/api/models/{org}/{name}/tree/{revision}", self._tree),
                Route("/api/models/{org}/{name}/tree/{revision}/{path:path}", self._tree),
                Route("/api/models/{org}/{name}/revision/{revision:path}", self._info),
                Route("/api/models/{org}/{name}", self._info),
                Route("/{org}/{name}/resolve/{revision}/{path:path}", self._resolve, methods=["GET", "HEAD"]),
                Route("/files/{name}", self._file),
                Route("/redirect/{name}", self._redirect),
            ]
        )
        self.files: dict[str, _Served] = {}
        self.redirects: dict[str, str] = {}
        self.url = ""
        self._server: uvicorn.Server | None = None

    def add(self, repo_id: str, files: dict[str, bytes], token: str | None = None, cdn: str | None = None) -> Repo:
        self.repos[repo_id] = Repo(files, token, cdn=cdn)
        return self.repos[repo_id]

    def redirect(self, name: str, target: str) -> str:
        """A URL on this server that answers 302 to ``target``."""
        self.redirects[name] = target
        return f"{self.url.replace('127.0.0.1', 'localhost')}/redirect/{name}"

    async def _redirect(self, request: Request) -> Response:
        target = self.redirects.get(request.path_params["name"])
        return Response(status_code=302, headers={"Location": target}) if target else Response(status_code=404)

    def serve_file(
        self,
        name: str,
        data: bytes,
        *,
        seconds: float = 0.0,
        ranges: bool = True,
        break_after: int | None = None,
        breaks: int = 0,
        claim_size: int | None = None,
    ) -> str:
        """Serve ``data`` at ``/files/name``; returns the URL.

        ``seconds``: drip it out over about that long. ``ranges``: honour Range requests.
        ``break_after``/``breaks``: the first ``breaks`` responses drop the connection after that many
        bytes. ``claim_size``: announce this Content-Length instead of the true one.
        """
        self.files[name] = _Served(data, seconds, ranges, break_after, breaks, claim_size)
        # "localhost", not the hub's own 127.0.0.1 address: URLs on the hub's host are read as repos.
        return f"{self.url.replace('127.0.0.1', 'localhost')}/files/{name}"

    async def _file(self, request: Request) -> Response:
        served = self.files.get(request.path_params["name"])
        if served is None:
            return Response(status_code=404)
        self.requests.append((request.method, request.url.path, request.headers.get("range")))
        data, status, headers = (
            served.data,
            200,
            {"ETag": '"v1"', "Accept-Ranges": "bytes" if served.ranges else "none"},
        )
        wanted = request.headers.get("range", "")
        if served.ranges and wanted.startswith("bytes="):
            first, _, last = wanted[6:].partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(served.claim_size if served.claim_size and status == 200 else len(data))
        cut = None
        if served.breaks > 0 and served.break_after is not None and len(data) > served.break_after:
            served.breaks -= 1
            cut = served.break_after
        chunks = [data[i : i + 4096] for i in range(0, len(data), 4096)] or [b""]

        async def drip() -> AsyncIterator[bytes]:
            sent = 0
            for chunk in chunks:
                await asyncio.sleep(served.seconds / len(chunks))
                if cut is not None and sent + len(chunk) > cut:
                    yield chunk[: cut - sent]
                    raise ConnectionResetError("test server drops the connection")
                sent += len(chunk)
                yield chunk

        return StreamingResponse(drip(), status_code=status, headers=headers)

    def _repo(self, request: Request) -> Repo | Response:
        self.requests.append((request.method, request.url.path, request.headers.get("authorization")))
        repo = self.repos.get(f"{request.path_params['org']}/{request.path_params['name']}")
        revision = request.path_params.get("revision", "main")
        if repo is None or (repo.token and request.headers.get("authorization") != f"Bearer {repo.token}"):
            # The hub answers 401 for both missing and private repos, so it reveals nothing.
            return Response(
                status_code=401,
                headers={"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
        if revision not in ("main", repo.sha):
            return Response(
                status_code=404,
                headers={"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
            )
        return repo

    async def _info(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        repo_id = f"{request.path_params['org']}/{request.path_params['name']}"
        siblings = [{"rfilename": p, "size": len(b)} for p, b in sorted(repo.files.items())]
        body: dict[str, Any] = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.sha,
            "private": bool(repo.token),
            "siblings": siblings,
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
        return JSONResponse(body)

    async def _tree(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        prefix = request.path_params.get("path", "")
        entries = [
            {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
            for p, b in sorted(repo.files.items())
            if p.startswith(prefix)
        ]
        dirs = sorted({p.rsplit("/", 1)[0] for p in repo.files if "/" in p})
        entries += [{"type": "directory", "path": d, "oid": "0" * 40} for d in dirs]
        return JSONResponse(entries)

    async def _resolve(self, request: Request) -> Response:
        repo = self._repo(request)
        if isinstance(repo, Response):
            return repo
        data = repo.files.get(request.path_params["path"])
        if data is None:
            return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha})
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "Content-Length": str(len(data)),
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            return Response(status_code=200, headers=headers)
        if repo.cdn:
            return Response(status_code=302, headers={"Location": f"{repo.cdn}/{request.path_params['path']}"})
        return Response(data, headers=headers, media_type="application/octet-stream")

    def start(self, port: int) -> None:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        thread = threading.Thread(target=self._server.run, daemon=True)
        thread.start()
        while not self._server.started:
            threading.Event().wait(0.02)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._server:
            self._server.should_exit = True
