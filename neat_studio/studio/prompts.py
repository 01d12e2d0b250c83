"""Prompts tab services: search, tag, split, detail. A mixin of Studio (see the package docstring)."""
from __future__ import annotations

from typing import Iterable

from .core import Progress


class PromptsMixin:
    # -- prompts -----------------------------------------------------------------------------------------
    def search_prompts(self, query: str = "", *, semantic: bool = False, tag=None, source=None, split=None,
                       status=None, annotator=None, limit: int = 100, offset: int = 0) -> dict:
        """Prompts for the Prompts tab. Text search = case-insensitive substring; semantic search ranks by
        cosine similarity of sentence embeddings (only prompts already embedded; see `embed_prompts`).

        Returns {"rows": [...], "total": int, "mode": "text" | "semantic", "note": str}."""
        filters = {"tag": tag or None, "source": source or None, "split": split or None,
                   "status": status or None, "annotator": annotator if status else None}
        query = (query or "").strip()
        if semantic and query:
            from ..scoring.embeddings import MODEL_ID, cosine_search, Embedder

            ids, mat = self.store.get_embeddings("prompt", MODEL_ID)
            if not ids:
                return {"rows": [], "total": 0, "mode": "semantic",
                        "note": "No prompt embeddings yet: compute them first (Prompts tab, 'Embeddings (semantic "
                                "search)', 'Compute missing prompt embeddings'; the app also embeds new prompts in "
                                "the background)."}
            allowed = None
            if any(v for k, v in filters.items() if k != "annotator"):
                n = self.store.count_prompts(**filters)
                allowed = {p["id"] for p in self.store.list_prompts(**filters, limit=max(n, 1))}
            if allowed is not None:
                keep = [i for i, pid in enumerate(ids) if pid in allowed]
                ids, mat = [ids[i] for i in keep], mat[keep]
            qv = Embedder.get().encode([query])[0]
            hits = cosine_search(qv, ids, mat, top_k=offset + limit)[offset:]
            got = self.store.get_prompts([h[0] for h in hits])
            rows = []
            for pid, sim in hits:
                if pid in got:
                    rows.append({**got[pid], "similarity": float(sim)})
            n_missing = len(self.store.missing_embeddings("prompt", MODEL_ID))
            note = f"{n_missing} prompt(s) not embedded yet." if n_missing else ""
            return {"rows": rows, "total": len(ids), "mode": "semantic", "note": note}
        rows = self.store.list_prompts(search=query or None, **filters, limit=limit, offset=offset,
                                       order="created")
        return {"rows": rows, "total": self.store.count_prompts(search=query or None, **filters),
                "mode": "text", "note": ""}

    def semantic_search_ready(self) -> dict:
        from ..scoring.embeddings import MODEL_ID

        ids, _ = self.store.get_embeddings("prompt", MODEL_ID)
        return {"embedded": len(ids), "missing": len(self.store.missing_embeddings("prompt", MODEL_ID))}

    def embed_prompts(self, actor: str = "local", progress: Progress = None) -> int:
        """Embed every prompt that has no vector yet (admin action; enables semantic search)."""
        from ..scoring.embeddings import embed_missing

        return embed_missing(self.store, "prompt", progress=progress, actor=actor)

    def prompt(self, prompt_id: str) -> dict | None:
        """One prompt (messages, text, tags, split, ...), or None for an unknown id."""
        return self.store.get_prompt(prompt_id)

    def prompt_responses(self, prompt_id: str) -> list[dict]:
        """Every response of a prompt (origin, text, ...)."""
        return self.store.list_responses(prompt_id)

    def prompt_tags(self) -> list[str]:
        return self.store.prompt_tags()

    def prompt_facets(self) -> dict:
        return {"tags": self.store.prompt_tags(), "sources": self.store.prompt_sources(),
                "splits": ["train", "dev", "test"]}

    def add_prompt(self, text: str, tags: Iterable[str] | None = None, split: str = "train",
                   system: str | None = None, actor: str = "local") -> dict:
        """Add one prompt by hand (source "manual"). Returns {"id", "existing": bool}."""
        from ..safety import check_prompt_text

        text = check_prompt_text(text).strip()
        if not text:
            raise ValueError("the prompt text is empty")
        system = check_prompt_text(system, "the system prompt") if system else system
        if split not in ("train", "dev", "test"):
            raise ValueError(f"split must be train, dev or test, got {split!r}")
        messages = ([{"role": "system", "content": system.strip()}] if system and system.strip() else []) + \
            [{"role": "user", "content": text}]
        from ..store import prompt_content_hash, normalise_messages

        pid = prompt_content_hash(normalise_messages({"messages": messages}))[:16]
        existing = self.store.get_prompt(pid) is not None
        ids = self.store.add_prompts([{"messages": messages, "source": "manual", "tags": list(tags or []),
                                       "split": split}], actor=actor)
        return {"id": ids[0], "existing": existing}

    def tag_prompts(self, prompt_ids: Iterable[str], tags: Iterable[str], mode: str = "add",
                    actor: str = "local") -> int:
        ids = [i for i in prompt_ids if i]
        if not ids:
            raise ValueError("select at least one prompt (click a row or give prompt ids)")
        tags = list(tags)
        if not tags and mode != "replace":
            raise ValueError(f"no tags given to {mode} (replace with no tags clears them)")
        return self.store.set_tags(ids, tags, actor=actor, mode=mode)

    def set_prompt_split(self, prompt_ids: Iterable[str], split: str, actor: str = "local") -> int:
        ids = [i for i in prompt_ids if i]
        if not ids:
            raise ValueError("select at least one prompt")
        return self.store.set_split(ids, split, actor=actor)
