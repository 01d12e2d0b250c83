"""Library services: versioned system prompts (negative and positive). A mixin of Studio (see the package docstring)."""
from __future__ import annotations

from typing import Iterable


class LibraryMixin:
    # -- system prompt library ---------------------------------------------------------------------------
    def save_library_prompt(self, name: str, kind: str, text: str, params: dict | None = None,
                            tags: Iterable[str] | None = None, actor: str = "local") -> dict:
        """Save a new immutable version. Returns {"ref", "version", "created": bool} (created=False when the
        text and params equal the latest version: nothing is written)."""
        name = (name or "").strip()
        before = self.store.get_system_prompt(name) if name else None
        v = self.store.save_system_prompt(name, kind, text, params, author=actor, tags=list(tags or []))
        created = before is None or before["version"] != v
        return {"ref": f"{name}@{v}", "version": v, "created": created}

    def newest_prompt_ref(self, kind: str) -> str | None:
        """`name@version` of the system prompt version of `kind` saved last (what the preview and Train choose
        by default), or None when the library has none."""
        sp = self.store.newest_system_prompt(kind)
        return sp["ref"] if sp else None

    def library_list(self, kind: str | None = None) -> list[dict]:
        """Each system prompt's latest version (`kind`: negative | positive | None for both)."""
        return self.store.list_system_prompts(kind=kind)

    def library_refs(self) -> dict[str, list[str]]:
        """{"negative": [name@version, ...], "positive": [...]}: every version, for the pickers."""
        allv = self.store.all_system_prompt_versions()
        return {k: [v["ref"] for v in allv if v["kind"] == k] for k in ("negative", "positive")}

    def library_versions(self, name: str) -> list[dict]:
        """Every version of `name`, oldest first ([] for no name)."""
        return self.store.list_versions(name) if name else []

    def library_version(self, name: str, version: int | None = None) -> dict | None:
        """One version of `name` (None = the latest), or None when there is no such version."""
        return self.store.get_system_prompt(name, version)

    def resolve_library_ref(self, ref: str) -> dict:
        """`name@version` or `name` -> that version; ValueError for an unknown one."""
        return self.store.resolve_ref(ref)

    def library_diff(self, name: str, a: int | None, b: int | None) -> str:
        from ..library import diff_versions

        return diff_versions(self.store, name, a, b)

    def _require_prompts(self, ids: list[str]) -> dict:
        """{id: prompt} for every id, or one ValueError naming the unknown ones (nothing is done then)."""
        found = self.store.get_prompts(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
        return found
