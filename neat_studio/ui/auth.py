"""Optional login for the web studio: users and roles from a file or the environment, bcrypt-hashed passwords.

Users file (JSON or YAML), either form:

    {"users": [{"username": "alice", "password_hash": "$2b$12$...", "role": "admin"},
               {"username": "bob",   "password_hash": "$2b$12$...", "role": "annotator"}]}
    {"alice": {"password_hash": "$2b$12$...", "role": "admin"}}

Environment (used when no file is given): `NEAT_STUDIO_USERS="alice:$2b$12$...:admin,bob:$2b$12$...:annotator"`
(or `NEAT_STUDIO_AUTH_FILE=/path/users.yaml`). Plain-text passwords are refused: only bcrypt hashes are accepted.
Make a hash with `python -m neat_studio.ui.auth hash` (reads the password from stdin / a prompt).

Roles: `admin` (edit prompts and library, guidelines, imports, snapshots, training, accounts) and `annotator`
(annotate only). Without auth configured the studio has no login: each browser annotates under a name it chooses
once (ui/common.browser_name), with the admin role.

`serve --auth` keeps the accounts in the studio's store (StoreAuth): the users file / NEAT_STUDIO_USERS only seed
it; on a store without accounts the first admin is created with a one-time password printed once. Admins add,
disable, re-role and reset accounts in the Admin tab (one-time passwords, changed at first login). Failed logins
are limited per user name and per address (LoginLimiter: refused without a bcrypt check past the limit), sessions
expire (ExpiringTokens) and end when an account is disabled.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from ..accounts import CLIENT_ADDRESS, LoginLimiter, StoreAuth, _dummy_hash, one_time_password
from ..accounts import hash_password as _hash_password

__all__ = ["CLIENT_ADDRESS", "ExpiringTokens", "LoginGuard", "LoginLimiter", "StoreAuth", "UserDB", "hash_password",
           "load_auth", "one_time_password"]

ROLES = ("admin", "annotator")
LOCAL_USER = "local"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_BCRYPT = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")


class AuthConfigError(ValueError):
    pass


def hash_password(password: str, rounds: int = 12) -> str:
    """A bcrypt hash (accounts.hash_password), with this module's error for an empty password."""
    if not password:
        raise AuthConfigError("empty password")
    return _hash_password(password, rounds)


@dataclass
class UserDB:
    """username -> (bcrypt hash, role). `check(username, password)` is what gradio's `auth=` calls."""

    users: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self):
        for name, (h, role) in self.users.items():
            if not _USERNAME.match(name):
                raise AuthConfigError(f"invalid username {name!r}")
            if role not in ROLES:
                raise AuthConfigError(f"user {name!r}: role must be one of {ROLES}, not {role!r}")
            if not _BCRYPT.match(h or ""):
                raise AuthConfigError(f"user {name!r}: password must be a bcrypt hash ($2b$...), "
                                      "make one with `python -m neat_studio.ui.auth hash`")
        if not self.users:
            raise AuthConfigError("auth configured but no users defined")

    def check(self, username: str, password: str) -> bool:
        entry = self.users.get((username or "").strip())
        if entry is None:
            # spend the same time as a real check so user names cannot be probed by timing
            bcrypt.checkpw(b"x", _dummy_hash())
            return False
        try:
            return bcrypt.checkpw((password or "").encode("utf-8"), entry[0].encode("ascii"))
        except ValueError:
            return False

    __call__ = check

    def role(self, username: str | None) -> str | None:
        e = self.users.get(username or "")
        return e[1] if e else None

    @property
    def usernames(self) -> list[str]:
        return sorted(self.users)

    def must_change(self, username: str | None) -> bool:
        return False

    def active(self, username: str | None) -> bool:
        return (username or "") in self.users


def _parse_mapping(data) -> dict[str, tuple[str, str]]:
    if isinstance(data, dict) and "users" in data:
        data = data["users"]
    users: dict[str, tuple[str, str]] = {}
    if isinstance(data, list):
        for i, u in enumerate(data):
            if not isinstance(u, dict) or "username" not in u:
                raise AuthConfigError(f"users[{i}]: expected an object with username, password_hash, role")
            if "password" in u and "password_hash" not in u:
                raise AuthConfigError(f"user {u['username']!r}: plain-text passwords are not accepted; "
                                      "store password_hash (bcrypt)")
            users[str(u["username"])] = (str(u.get("password_hash", "")), str(u.get("role", "annotator")))
    elif isinstance(data, dict):
        for name, u in data.items():
            if not isinstance(u, dict):
                raise AuthConfigError(f"user {name!r}: expected an object with password_hash and role")
            if "password" in u and "password_hash" not in u:
                raise AuthConfigError(f"user {name!r}: plain-text passwords are not accepted; "
                                      "store password_hash (bcrypt)")
            users[str(name)] = (str(u.get("password_hash", "")), str(u.get("role", "annotator")))
    else:
        raise AuthConfigError("users file: expected a list or a mapping of users")
    return users


def load_users_file(path: str | Path) -> UserDB:
    path = Path(path)
    if not path.exists():
        raise AuthConfigError(f"users file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - report any parse error the same way
        raise AuthConfigError(f"cannot parse users file {path}: {e}") from e
    return UserDB(_parse_mapping(data))


def parse_users_env(value: str) -> UserDB:
    users = {}
    for item in [x.strip() for x in value.split(",") if x.strip()]:
        parts = item.split(":")
        if len(parts) != 3:
            raise AuthConfigError("NEAT_STUDIO_USERS entries must be username:bcrypt_hash:role")
        users[parts[0]] = (parts[1], parts[2])
    return UserDB(users)


def load_auth(auth_file: str | Path | None = None, environ: dict | None = None) -> UserDB | None:
    """The configured users, or None when no auth is configured (single local user)."""
    env = os.environ if environ is None else environ
    if auth_file:
        return load_users_file(auth_file)
    if env.get("NEAT_STUDIO_AUTH_FILE"):
        return load_users_file(env["NEAT_STUDIO_AUTH_FILE"])
    if env.get("NEAT_STUDIO_USERS"):
        return parse_users_env(env["NEAT_STUDIO_USERS"])
    return None


# -- the web layer of accounts (neat_studio/accounts.py keeps them) -------------------------------------------


class ExpiringTokens(dict):
    """gradio's session table (token -> user name) whose sessions end after `ttl_s` or when the account is
    disabled (`active(user)` False): gradio looks sessions up with `.get` and `in`."""

    def __init__(self, initial: dict, ttl_s: float, active=None, clock=time.monotonic):
        super().__init__(initial)
        self.ttl_s, self.active, self.clock = ttl_s, active, clock
        self.issued = {t: clock() for t in initial}

    def __setitem__(self, token, user):
        self.issued[token] = self.clock()
        super().__setitem__(token, user)

    def _live(self, token) -> bool:
        if not super().__contains__(token):
            return False
        user = super().get(token)
        if self.clock() - self.issued.get(token, 0) > self.ttl_s or (self.active and not self.active(user)):
            super().pop(token, None)
            self.issued.pop(token, None)
            return False
        return True

    def get(self, token, default=None):
        return super().get(token, default) if self._live(token) else default

    def __contains__(self, token):
        return self._live(token)


SESSION_S = 12 * 3600  # a session's length when the auth backend does not say
_API_INFO = re.compile(rb"<script>window\.gradio_api_info = .*?;</script>", re.S)


def _signed_in(scope, tokens) -> bool:
    """Does the request carry a live session cookie of this app?"""
    from http.cookies import CookieError, SimpleCookie

    raw = b"; ".join(v for k, v in scope.get("headers") or [] if k == b"cookie").decode("latin-1")
    if not raw or tokens is None:
        return False
    try:
        c = SimpleCookie()
        c.load(raw)
    except CookieError:
        return False
    return any(k.startswith("access-token") and m.value in tokens for k, m in c.items())


class LoginGuard:
    """ASGI middleware: remembers the client address of each request (for StoreAuth's per-address limit), puts
    the app's session table under ExpiringTokens once, and keeps the API schema out of the page a visitor gets
    before signing in (gradio embeds `window.gradio_api_info` in it while /gradio_api/info answers 401)."""

    def __init__(self, app, auth=None):
        self.app, self.auth = app, auth

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        client = scope.get("client")
        CLIENT_ADDRESS.set(client[0] if client else None)
        outer = scope.get("app")
        tokens = getattr(outer, "tokens", None)
        if self.auth is not None and tokens is not None and not isinstance(tokens, ExpiringTokens):
            # a users-file UserDB has no session length of its own: the accounts' default
            outer.tokens = tokens = ExpiringTokens(tokens, getattr(self.auth, "session_s", SESSION_S),
                                                   getattr(self.auth, "active", None))
        if scope.get("method") != "GET" or _signed_in(scope, tokens):
            return await self.app(scope, receive, send)
        held: dict = {}

        async def strip_schema(message):
            if message["type"] == "http.response.start":
                ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                if not ctype.startswith(b"text/html"):
                    return await send(message)
                held["start"], held["body"] = message, b""
                return
            if "start" not in held:
                return await send(message)
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            body = _API_INFO.sub(b"<script>window.gradio_api_info = {};</script>", held["body"])
            start = held["start"]
            start["headers"] = [(k, v) for k, v in start.get("headers") or [] if k != b"content-length"] + \
                [(b"content-length", str(len(body)).encode())]
            await send(start)
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, strip_schema)


def main(argv=None) -> int:
    import getpass

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["hash"]:
        print("usage: python -m neat_studio.ui.auth hash   (password from stdin or prompt)", file=sys.stderr)
        return 2
    pw = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else getpass.getpass("password: ")
    print(hash_password(pw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
