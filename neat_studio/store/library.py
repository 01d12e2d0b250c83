"""The system-prompt library: versioned negative and positive prompts, references name@version. A mixin of Store (see
the package docstring)."""
from __future__ import annotations

from typing import Iterable

from .core import _dumps, _first, _iso, _loads, _now, _req_str, _validate_params, normalise_tags, parse_ref
from .schema import NAME_RE, SYSTEM_KINDS


class LibraryMixin:
    # -- system prompts -----------------------------------------------------------------------------------
    @staticmethod
    def _sp_out(r: dict) -> dict:
        r = dict(r)
        r["params"] = _loads(r["params"]) or {}
        r["tags"] = sorted(r.get("tags") or [])
        r["created_at"] = _iso(r["created_at"])
        r["ref"] = f"{r['name']}@{r['version']}"
        return r

    def save_system_prompt(self, name: str, kind: str, text: str, params: dict | None, author: str,
                           tags: Iterable[str] | None = None) -> int:
        """Save a new immutable version (latest + 1) and return its number. If text and params equal the
        latest version's, that version is returned and nothing is written."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"invalid system prompt name {name!r}: use 1-64 letters, digits, '_', '.', '-', "
                             "starting with a letter or digit")
        if kind not in SYSTEM_KINDS:
            raise ValueError(f"kind must be 'negative' or 'positive', got {kind!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("system prompt text must not be empty")
        params = _validate_params(params)
        tags = normalise_tags(tags)
        author = _req_str(author, "author")
        with self._tx() as con:
            latest = _first(con.execute("SELECT version, kind, text, params FROM system_prompts WHERE name = ? "
                                        "ORDER BY version DESC LIMIT 1", [name]))
            if latest:
                if latest[1] != kind:
                    raise ValueError(f"system prompt {name!r} is a {latest[1]} prompt; choose another name for "
                                     f"a {kind} prompt")
                if latest[2] == text and (_loads(latest[3]) or {}) == params:
                    return latest[0]
            version = (latest[0] + 1) if latest else 1
            con.execute("INSERT INTO system_prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [name, version, kind, text, _dumps(params), tags, author, _now(),
                         latest[0] if latest else None])
            self._audit(con, author, "save_system_prompt", "system_prompt", f"{name}@{version}",
                        {"kind": kind, "params": params, "chars": len(text)})
        return version

    def get_system_prompt(self, name: str, version: int | None = None) -> dict | None:
        if version is None:
            rows = self._rows("SELECT * FROM system_prompts WHERE name = ? ORDER BY version DESC LIMIT 1", [name])
        else:
            rows = self._rows("SELECT * FROM system_prompts WHERE name = ? AND version = ?", [name, int(version)])
        return self._sp_out(rows[0]) if rows else None

    def resolve_ref(self, ref: str) -> dict:
        """"name@v" or "name" (latest) -> the system prompt dict; ValueError if it does not exist."""
        name, version = parse_ref(ref)
        sp = self.get_system_prompt(name, version)
        if sp is None:
            latest = self.get_system_prompt(name)
            if latest is None:
                known = [p["name"] for p in self.list_system_prompts()]
                raise ValueError(f"no system prompt named {name!r} (known: {', '.join(known[:20]) or 'none'})")
            raise ValueError(f"system prompt {name!r} has no version {version} (latest is {latest['version']})")
        return sp

    def list_system_prompts(self, kind: str | None = None) -> list[dict]:
        """Latest version of each name (with `n_versions`), sorted by name."""
        sql = """SELECT s.*, count(*) OVER (PARTITION BY s.name) AS n_versions FROM system_prompts s
                 WHERE (? IS NULL OR s.kind = ?)
                 QUALIFY row_number() OVER (PARTITION BY s.name ORDER BY s.version DESC) = 1 ORDER BY s.name"""
        return [self._sp_out(r) for r in self._rows(sql, [kind, kind])]

    def list_versions(self, name: str) -> list[dict]:
        return [self._sp_out(r) for r in self._rows(
            "SELECT * FROM system_prompts WHERE name = ? ORDER BY version", [name])]

    def all_system_prompt_versions(self) -> list[dict]:
        """Every version of every system prompt (name, version order): what a snapshot freezes."""
        return [self._sp_out(r) for r in self._rows("SELECT * FROM system_prompts ORDER BY name, version")]

    def newest_system_prompt(self, kind: str | None = None) -> dict | None:
        """The most recently saved version (of `kind`, or of any kind), or None when the library has none."""
        rows = self._rows("SELECT * FROM system_prompts WHERE (? IS NULL OR kind = ?) "
                          "ORDER BY created_at DESC, version DESC, name LIMIT 1", [kind, kind])
        return self._sp_out(rows[0]) if rows else None
