"""Web console sessions: a signed token naming an API key, never the key itself.

A token is ``s1.<key id>.<expiry, unix seconds>.<nonce>.<HMAC-SHA256 of the rest>``, signed with a
secret kept in ``<data dir>/session-secret`` (32 random bytes, created once, mode 0600; every process
on one data dir shares it). The server keeps no session rows: a token is good until its expiry while
its key is live, so revoking the key ends every session made with it
(``AccountService.authenticate_session`` looks the key up on each request).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from contextlib import suppress
from pathlib import Path

from modelport.errors import AuthenticationError

VERSION = "s1"
SECRET_FILE = "session-secret"


def load_or_create_secret(path: Path) -> bytes:
    """The secret in ``path``, made on first use. Written to a private temporary file and linked into
    place, so concurrent first starts (server and worker) agree on one secret and none reads a torn file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
        try:
            with suppress(FileExistsError):  # another process made it first: use theirs
                os.link(temporary, path)
        finally:
            temporary.unlink()
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 32:
        raise ValueError(f"{path} must hold at least 32 bytes as hex; delete it to have a new one made")
    return secret


class SessionSigner:
    """Issues and checks session tokens; ``now`` (unix seconds) is for tests."""

    def __init__(self, secret: bytes, ttl_s: float) -> None:
        self._secret, self.ttl_s = secret, ttl_s

    @classmethod
    def in_dir(cls, data_dir: Path, ttl_s: float) -> SessionSigner:
        return cls(load_or_create_secret(data_dir / SECRET_FILE), ttl_s)

    def issue(self, key_id: str, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + self.ttl_s)
        body = f"{VERSION}.{key_id}.{expires}.{secrets.token_urlsafe(12)}"  # the nonce: each sign-in its own
        return f"{body}.{self._sign(body)}"

    def key_id(self, token: str, now: float | None = None) -> str:
        """The key a live, untampered token names; AuthenticationError otherwise."""
        body, _, signature = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != VERSION or not hmac.compare_digest(self._sign(body), signature):
            raise AuthenticationError("invalid session: sign in again")
        _, key_id, expires, _ = parts
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            raise AuthenticationError("the session has expired: sign in again")
        return key_id

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
