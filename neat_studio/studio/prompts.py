"""Prompts tab services: search, tag, split, detail. A mixin of Studio (see the package docstring)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

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

    def browse_prompts(self, query: str = "", *, semantic: bool = False, tag=None, source=None, split=None,
                       status=None, user=None, page: int = 0, page_size: int = 50, back_if_empty: bool = False) -> dict:
        """One page of `search_prompts` for the Prompts tab. `status` as search_prompts takes it, or ending in
        ":me" for that status by `user` ("annotated:me", "unannotated:me"); `page` counts from 0 (below 0: 0).
        With `back_if_empty` (paging forward), a page past the end gives the one before it. Returns
        search_prompts's dict plus "page" (the page shown) and "pages" (at least 1)."""
        mine = bool(status) and status.endswith(":me")
        status, who = (status.split(":")[0], user) if mine else (status, None)

        def search(pg: int) -> dict:
            return self.search_prompts(query, semantic=bool(semantic), tag=tag, source=source, split=split,
                                       status=status, annotator=who, limit=page_size, offset=pg * page_size)

        page = max(0, int(page))
        res = search(page)
        if back_if_empty and not res["rows"] and page > 0:
            page -= 1
            res = search(page)
        return {**res, "page": page, "pages": max(1, (res["total"] + page_size - 1) // page_size)}

    def select_prompts(self, query: str = "", *, limit: int, **search) -> dict:
        """The ids of the first `limit` prompts of a search (`browse_prompts`'s filters): {"ids", "total", "more"
        (a text search matched more than `limit`; a semantic one ranks them all, so never)}."""
        res = self.browse_prompts(query, page=0, page_size=limit, **search)
        ids = [r["id"] for r in res["rows"]]
        return {"ids": ids, "total": res["total"], "more": res["total"] > len(ids) and res["mode"] != "semantic"}

    def embedding_note(self) -> str:
        """How many prompts are embedded and missing, in words (or why embeddings are unavailable)."""
        try:
            s = self.semantic_search_ready()
            return f"{s['embedded']} prompt(s) embedded, {s['missing']} missing."
        except Exception as e:  # noqa: BLE001 - a note on the page, never a broken tab
            return f"Embeddings unavailable: {e}"

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

    def prompt_detail(self, prompt_id: str) -> dict | None:
        """{"prompt", "responses"} of one prompt (the Prompts tab's detail view), or None for an unknown id."""
        p = self.prompt(prompt_id)
        return None if p is None else {"prompt": p, "responses": self.prompt_responses(prompt_id)}

    def known_prompt_id(self, value) -> str:
        """A prompt id chosen or pasted on a page, stripped; ValueError when it is empty or unknown."""
        pid = (value or "").strip()
        if not pid:
            raise ValueError("Choose or paste a prompt id.")
        if self.prompt(pid) is None:
            raise ValueError(f"Unknown prompt id {pid!r}.")
        return pid

    def import_upload(self, path, fmt: str = "auto", *, prompt_column: str = "prompt", split: str = "",
                      tags: Iterable[str] = (), actor: str = "local",
                      progress: Callable[[float, str], None] | None = None) -> dict:
        """The Prompts tab's import form: `import_file` in the form's words (terms="ui"), `split` and `tags` ("" /
        none: the file's own) for every row; progress(fraction, what) while it runs, then (1.0, "done"). Returns
        {"report", "summary" (the report in words), "warning" (about long prompts, or "")}. ValueError, nothing
        imported, for no file or a bad one (the message names the file by its own name, not the upload's path)."""
        from ..store import pairs_unranked_note
        from .core import long_prompts_note

        if not path:
            raise ValueError("Choose a file first.")
        kw = {"prompt_column": (prompt_column or "prompt").strip()}
        if split:
            kw["split"] = split
        if tags:
            kw["tags"] = list(tags)
        try:
            report = self.import_file(path, fmt or "auto", actor=actor, terms="ui", progress=progress, **kw)
        except (ValueError, OSError) as e:  # DataFormatError is a ValueError
            raise ValueError(f"{str(e).replace(str(path), Path(str(path)).name)}. Nothing was imported.") from None
        if progress is not None:
            progress(1.0, "done")
        note = pairs_unranked_note(report.get("pairs_unranked", 0))
        summary = "Imported: " + ", ".join(f"{k} {v}" for k, v in report.items() if not isinstance(v, (bool, list)))
        return {"report": report, "summary": summary + (f". {note}" if note else ""),
                "warning": long_prompts_note(report.get("long_prompt_ids") or [])}

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
