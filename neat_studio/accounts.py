"""Accounts kept in the studio's store: what a login checks (with rate limits), one-time passwords, the admin's
actions. The web app plugs StoreAuth into gradio's `auth=` (ui/auth.py adds the web layer: client addresses,
expiring sessions, no API schema before login)."""
from __future__ import annotations

import contextvars
import secrets
import threading
import time
from collections import deque

import bcrypt

# the address of the login request being checked (set by ui/auth.LoginGuard, read by StoreAuth.check)
CLIENT_ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("neat_client_address", default=None)
_DUMMY: bytes | None = None


def _dummy_hash() -> bytes:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = bcrypt.hashpw(b"not-a-user", bcrypt.gensalt(12))
    return _DUMMY


def hash_password(password: str, rounds: int = 12) -> str:
    if not password:
        raise ValueError("empty password")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


def one_time_password() -> str:
    """A random password shown once (admin resets, the first admin): 16 characters, ~95 bits."""
    return secrets.token_urlsafe(12)


class LoginLimiter:
    """Failed logins per user name and per address in a sliding window: past the limit, attempts are refused
    without a bcrypt check until the window has room again (a flood costs no CPU). At most `parallel` bcrypt
    checks run at once; more concurrent attempts are refused at once."""

    def __init__(self, per_user: int = 5, per_address: int = 20, window_s: float = 900.0, parallel: int = 2,
                 clock=time.monotonic):
        self.per_user, self.per_address, self.window_s = per_user, per_address, window_s
        self.clock = clock
        self._fails: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(parallel)

    def _recent(self, key: str) -> deque:
        q = self._fails.setdefault(key, deque())
        now = self.clock()
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, username: str, address: str | None) -> bool:
        with self._lock:
            if len(self._recent(f"u:{username.lower()}")) >= self.per_user:
                return True
            return address is not None and len(self._recent(f"a:{address}")) >= self.per_address

    def failed(self, username: str, address: str | None) -> None:
        with self._lock:
            self._recent(f"u:{username.lower()}").append(self.clock())
            if address is not None:
                self._recent(f"a:{address}").append(self.clock())

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._fails.pop(f"u:{username.lower()}", None)

    def slot(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()


class StoreAuth:
    """Accounts kept in the studio's store (store/users.py): what gradio's `auth=` calls, with rate limiting,
    disabled accounts and one-time passwords that must be changed at first login. Same interface as UserDB."""

    def __init__(self, store, limiter: LoginLimiter | None = None, session_s: float = 12 * 3600):
        self.store = store
        self.limiter = limiter or LoginLimiter()
        self.session_s = session_s

    # what gradio calls
    def check(self, username: str, password: str) -> bool:
        username, address = (username or "").strip(), CLIENT_ADDRESS.get()
        if not username or self.limiter.blocked(username, address) or not self.limiter.slot():
            return False
        try:
            u = self.store.get_user(username)
            if u is None or u["disabled"]:
                bcrypt.checkpw(b"x", _dummy_hash())  # same time as a real check: names cannot be probed
                ok = False
            else:
                try:
                    ok = bcrypt.checkpw((password or "").encode("utf-8"), u["password_hash"].encode("ascii"))
                except ValueError:
                    ok = False
        finally:
            self.limiter.release()
        if ok:
            self.limiter.succeeded(username)
        else:
            self.limiter.failed(username, address)
        return ok

    __call__ = check

    def role(self, username: str | None) -> str | None:
        u = self.store.get_user(username) if username else None
        return u["role"] if u and not u["disabled"] else None

    def active(self, username: str | None) -> bool:
        u = self.store.get_user(username) if username else None
        return bool(u) and not u["disabled"]

    def must_change(self, username: str | None) -> bool:
        u = self.store.get_user(username) if username else None
        return bool(u and u["must_change"])

    @property
    def usernames(self) -> list[str]:
        return [u["username"] for u in self.store.list_users()]

    @property
    def users(self) -> dict:
        return {u["username"]: u for u in self.store.list_users()}

    # accounts
    def list_users(self) -> list[dict]:
        """Every account without its hash."""
        return self.store.list_users()

    def count(self) -> int:
        return self.store.count_users()

    def set_role(self, username: str, role: str, actor: str) -> None:
        self.store.update_user(username, actor=actor, role=role)

    def set_disabled(self, username: str, disabled: bool, actor: str) -> None:
        """Disable (sessions end at once: ui/auth.ExpiringTokens asks `active`) or enable an account."""
        self.store.update_user(username, actor=actor, disabled=bool(disabled))

    def seed(self, db, actor: str = "system") -> int:
        """Add the users of a users file / NEAT_STUDIO_USERS that the store does not have (their own hashes,
        no forced change). Returns how many were added."""
        n = 0
        for name, (h, role) in db.users.items():
            if self.store.get_user(name) is None:
                self.store.add_user(name, role, h, must_change=False, actor=actor)
                n += 1
        return n

    def ensure_admin(self, actor: str = "system") -> str | None:
        """On a store without accounts: create `admin` with a one-time password and return it (else None)."""
        if self.store.count_users():
            return None
        pw = one_time_password()
        self.store.add_user("admin", "admin", hash_password(pw), must_change=True, actor=actor)
        return pw

    def add_user(self, username: str, role: str, actor: str) -> str:
        """A new account with a one-time password (returned, shown once; changed at first login)."""
        pw = one_time_password()
        self.store.add_user(username, role, hash_password(pw), must_change=True, actor=actor)
        return pw

    def reset_password(self, username: str, actor: str) -> str:
        pw = one_time_password()
        self.store.update_user(username, actor=actor, password_hash=hash_password(pw), must_change=True)
        return pw

    def change_password(self, username: str, old: str, new: str) -> None:
        """The user's own change (first login, or any time): the old password must match; the new one 10+
        characters and different. ValueError otherwise, nothing changed."""
        u = self.store.get_user(username)
        if u is None or u["disabled"]:
            raise ValueError("unknown or disabled account")
        try:
            ok = bcrypt.checkpw((old or "").encode("utf-8"), u["password_hash"].encode("ascii"))
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("the current password is wrong")
        if len(new or "") < 10:
            raise ValueError("the new password needs at least 10 characters")
        if new == old:
            raise ValueError("the new password must differ from the current one")
        self.store.update_user(username, actor=username, password_hash=hash_password(new), must_change=False)
