"""Optional login for the web studio: users and roles from a file or the environment, bcrypt-hashed passwords.

Users file (JSON or YAML), either form:

    {"users": [{"username": "alice", "password_hash": "$2b$12$...", "role": "admin"},
               {"username": "bob",   "password_hash": "$2b$12$...", "role": "annotator"}]}
    {"alice": {"password_hash": "$2b$12$...", "role": "admin"}}

Environment (used when no file is given): `NEAT_STUDIO_USERS="alice:$2b$12$...:admin,bob:$2b$12$...:annotator"`
(or `NEAT_STUDIO_AUTH_FILE=/path/users.yaml`). Plain-text passwords are refused: only bcrypt hashes are accepted.
Make a hash with `python -m neat_studio.ui.auth hash` (reads the password from stdin / a prompt).

Roles: `admin` (edit prompts and library, guidelines, imports, snapshots, training) and `annotator` (annotate only).
Without auth configured the studio runs for a single local user `local` with the admin role.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

ROLES = ("admin", "annotator")
LOCAL_USER = "local"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_BCRYPT = re.compile(r"^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$")


class AuthConfigError(ValueError):
    pass


_DUMMY: bytes | None = None


def _dummy_hash() -> bytes:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = bcrypt.hashpw(b"not-a-user", bcrypt.gensalt(12))
    return _DUMMY


def hash_password(password: str, rounds: int = 12) -> str:
    if not password:
        raise AuthConfigError("empty password")
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


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
