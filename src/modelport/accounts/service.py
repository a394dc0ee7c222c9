"""Accounts and their API keys.

A key is ``mp-`` followed by 43 URL-safe characters (256 random bits). Only its sha256 is stored;
it is shown once, when created. The web console signs in with a key and then holds a session token
naming it (``sessions.py``), so the key itself never sits in a browser's cookie jar.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from modelport.accounts.sessions import SessionSigner
from modelport.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, PermissionDenied
from modelport.ids import new_id
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Account, ApiKey, utcnow

log = logging.getLogger(__name__)

KEY_PREFIX = "mp-"
KEY_NAME_MAX = 100
LAST_USED_EVERY = timedelta(minutes=1)  # how stale a key's "last used" may be: one write a minute at most
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,38}[a-z0-9]$|^[a-z0-9]$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account and the key they used."""

    account_id: str
    account_name: str
    key_id: str
    is_admin: bool = False


@dataclass(frozen=True)
class KeyInfo:
    id: str
    account_name: str
    hint: str
    revoked: bool
    created_at: datetime
    name: str = ""
    last_used_at: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey, account_name: str) -> KeyInfo:
        return cls(
            key.id, account_name, key.hint + "…", key.revoked_at is not None, key.created_at, key.name, key.last_used_at
        )


def key_name(name: str | None) -> str:
    """A key's name as stored: trimmed, at most ``KEY_NAME_MAX`` characters, nothing unprintable."""
    name = (name or "").strip()
    if len(name) > KEY_NAME_MAX or not name.isprintable():
        raise InvalidRequest(f"a key's name is at most {KEY_NAME_MAX} printable characters", param="name")
    return name


class AccountService:
    def __init__(self, db: Database, sessions: SessionSigner) -> None:
        self.db, self.sessions = db, sessions

    def create_account(self, name: str) -> str:
        if not ACCOUNT_NAME.match(name):
            raise InvalidRequest(
                "account names are 1-40 characters: lower-case letters, digits, '-' and '_'", param="name"
            )
        with self.db.session() as s:
            if s.scalar(select(Account.id).where(Account.name == name)):
                raise Conflict(f"account {name!r} already exists")
            account = Account(id=new_id("acct"), name=name)
            s.add(account)
        return account.id

    def create_key(
        self, account_name: str, *, key: str | None = None, create_account: bool = True, admin: bool = False
    ) -> str:
        """Make a key for the account (creating the account if asked) and return it in clear, once."""
        return self.issue_key(account_name, key=key, create_account=create_account, admin=admin)[1]

    def issue_key(
        self,
        account_name: str,
        *,
        key: str | None = None,
        create_account: bool = True,
        admin: bool = False,
        name: str | None = None,
    ) -> tuple[KeyInfo, str]:
        """``create_key``, also returning what ``list_keys`` will show of the new key."""
        name = key_name(name)
        key = key or KEY_PREFIX + secrets.token_urlsafe(32)
        with self.db.session() as s:
            account = s.scalar(select(Account).where(Account.name == account_name))
        if account is None:
            if not create_account:
                raise NotFound(f"no account named {account_name!r}")
            self.create_account(account_name)
        with self.db.session() as s:
            account = s.scalars(select(Account).where(Account.name == account_name)).one()
            account.is_admin = account.is_admin or admin
            row = ApiKey(
                id=new_id("key"),
                account_id=account.id,
                key_hash=hash_key(key),
                hint=key[:7],
                name=name,
                created_at=utcnow(),
            )
            s.add(row)
            info = KeyInfo.of(row, account.name)
        return info, key

    def bootstrap(self, account_name: str, key: str) -> bool:
        """Create the first account with a known key, but only into an empty database."""
        with self.db.session() as s:
            if s.scalar(select(func.count()).select_from(Account)):
                return False
        self.create_key(account_name, key=key, admin=True)
        return True

    def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(key)
        with self.db.read() as s:
            row = s.execute(select(ApiKey, Account).join(Account).where(ApiKey.key_hash == digest)).one_or_none()
        # compare_digest keeps the final check constant-time even though the lookup is by index.
        if row is None or not hmac.compare_digest(row[0].key_hash, digest) or row[0].revoked_at:
            raise AuthenticationError("invalid API key")
        return self._principal(*row)

    def _principal(self, key: ApiKey, account: Account) -> Principal:
        """Who calls with ``key`` (checked by the caller), noting the key as used."""
        self._used(key)
        return Principal(account.id, account.name, key.id, is_admin=account.is_admin)

    def _used(self, key: ApiKey) -> None:
        """Note that ``key`` was used now, at most once a minute: a request must not wait on more writes,
        and a database that is busy or read-only costs the date, never the request."""
        now = utcnow()
        if key.last_used_at is not None and now - key.last_used_at < LAST_USED_EVERY:
            return
        try:
            with self.db.session() as s:
                s.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
        except SQLAlchemyError as e:
            log.debug("could not note key %s as used: %s", key.id, e)

    # --- web console sessions: a signed token naming the key, checked against the key on every use ----
    def open_session(self, key: str) -> str:
        """A session token for a valid key; AuthenticationError otherwise."""
        return self.sessions.issue(self.authenticate(key).key_id)

    def authenticate_session(self, token: str | None) -> Principal:
        if not token:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        key_id = self.sessions.key_id(token)
        with self.db.read() as s:
            row = s.execute(select(ApiKey, Account).join(Account).where(ApiKey.id == key_id)).one_or_none()
        if row is None or row[0].revoked_at:  # a revoked key ends every session made with it
            raise AuthenticationError("the session's API key was revoked: sign in again")
        return self._principal(*row)

    def list_keys(self, account_name: str | None = None) -> list[KeyInfo]:
        query = select(ApiKey, Account).join(Account).order_by(ApiKey.created_at)
        if account_name:
            query = query.where(Account.name == account_name)
        with self.db.read() as s:
            return [KeyInfo.of(k, a.name) for k, a in s.execute(query)]

    def revoke_key(self, key_id: str, *, account_id: str | None = None) -> None:
        """Revoke a key; with ``account_id``, only one of that account's (others read as missing)."""
        with self.db.session() as s:
            key = s.get(ApiKey, key_id)
            if key is None or (account_id is not None and key.account_id != account_id):
                raise NotFound(f"no API key {key_id!r}")
            key.revoked_at = key.revoked_at or utcnow()

    # --- the same, on behalf of a caller: an account manages its own keys, an administrator any ------
    def create_key_as(self, who: Principal, account_name: str | None, name: str | None = None) -> tuple[KeyInfo, str]:
        if account_name in (None, who.account_name):
            return self.issue_key(who.account_name, name=name)
        self._require_admin(who, "create keys for another account")
        return self.issue_key(str(account_name), name=name)

    def list_keys_as(self, who: Principal, account_name: str | None = None) -> list[KeyInfo]:
        if who.is_admin:
            return self.list_keys(account_name)
        return self.list_keys(who.account_name) if account_name in (None, who.account_name) else []

    def revoke_key_as(self, who: Principal, key_id: str) -> None:
        self.revoke_key(key_id, account_id=None if who.is_admin else who.account_id)

    @staticmethod
    def _require_admin(who: Principal, action: str) -> None:
        if not who.is_admin:
            raise PermissionDenied(f"only an administrator can {action}")
