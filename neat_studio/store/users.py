"""Accounts: users, roles and bcrypt password hashes (hashing and checking live in ui/auth.py; the store never sees
a password). A mixin of Store (see the package docstring). Audit entries never hold a hash."""
from __future__ import annotations

import re

from .core import _first, _iso, _now, _req_str

USER_ROLES = ("admin", "annotator")
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
BCRYPT_RE = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")


def _check(username: str, role: str | None = None, password_hash: str | None = None) -> None:
    if not USERNAME_RE.match(username or ""):
        raise ValueError(f"invalid username {username!r}: 1-64 letters, digits or _ . @ - (starting with a letter "
                         "or digit)")
    if role is not None and role not in USER_ROLES:
        raise ValueError(f"role must be one of {', '.join(USER_ROLES)}, not {role!r}")
    if password_hash is not None and not BCRYPT_RE.match(password_hash):
        raise ValueError("a password must be stored as a bcrypt hash")


class UsersMixin:
    # -- users --------------------------------------------------------------------------------------------
    @staticmethod
    def _user_out(r: dict) -> dict:
        r = dict(r)
        for k in ("created_at", "updated_at"):
            r[k] = _iso(r[k])
        return r

    def add_user(self, username: str, role: str, password_hash: str, *, must_change: bool = True,
                 actor: str) -> None:
        """A new account. ValueError (nothing written) for a taken or invalid name, role or hash."""
        username = (username or "").strip()
        _check(username, role, password_hash)
        with self._tx() as con:
            if _first(con.execute("SELECT count(*) FROM users WHERE lower(username) = lower(?)", [username]))[0]:
                raise ValueError(f"user {username!r} exists already")
            now = _now()
            con.execute("INSERT INTO users VALUES (?, ?, ?, false, ?, ?, ?, ?)",
                        [username, password_hash, role, bool(must_change), now, _req_str(actor, "actor"), now])
            self._audit(con, actor, "add_user", "user", username, {"role": role, "must_change": bool(must_change)})

    def get_user(self, username: str) -> dict | None:
        """{username, password_hash, role, disabled, must_change, created_at, created_by, updated_at} or None."""
        rows = self._rows("SELECT * FROM users WHERE username = ?", [(username or "").strip()])
        return self._user_out(rows[0]) if rows else None

    def list_users(self) -> list[dict]:
        """Every account without its hash, by name."""
        return [self._user_out({k: v for k, v in r.items() if k != "password_hash"})
                for r in self._rows("SELECT * FROM users ORDER BY lower(username)")]

    def count_users(self) -> int:
        return int(self._one("SELECT count(*) FROM users"))

    def update_user(self, username: str, *, actor: str, role: str | None = None, disabled: bool | None = None,
                    password_hash: str | None = None, must_change: bool | None = None) -> dict:
        """Change an account's role, disabled flag or password hash. The last enabled admin cannot be disabled or
        made an annotator (nobody could administer the studio). ValueError, nothing written, otherwise."""
        _check(username, role, password_hash)
        with self._tx() as con:
            cur = _first(con.execute("SELECT role, disabled FROM users WHERE username = ?", [username]))
            if cur is None:
                raise ValueError(f"unknown user {username!r}")
            was_admin = cur[0] == "admin" and not cur[1]
            loses = (role is not None and role != "admin") or disabled is True
            if was_admin and loses and _first(con.execute(
                    "SELECT count(*) FROM users WHERE role = 'admin' AND NOT disabled AND username <> ?",
                    [username]))[0] == 0:
                raise ValueError(f"{username} is the last admin: make someone else an admin first")
            sets, params, detail = [], [], {}
            for col, v in (("role", role), ("disabled", disabled), ("password_hash", password_hash),
                           ("must_change", must_change)):
                if v is not None:
                    sets.append(f"{col} = ?")
                    params.append(v)
                    detail[col] = "(changed)" if col == "password_hash" else v
            if not sets:
                raise ValueError("nothing to change")
            con.execute(f"UPDATE users SET {', '.join(sets)}, updated_at = ? WHERE username = ?",
                        params + [_now(), username])
            self._audit(con, actor, "update_user", "user", username, detail)
        return self.get_user(username)
