"""Prompts: add, get, list and count with filters, tags, splits, sampling. A mixin of Store (see the package
docstring)."""
from __future__ import annotations

from typing import Iterable
import random
import uuid

import pyarrow as pa

from .core import _dumps, _iso, _loads, _now, _req_str, normalise_messages, normalise_tags, prompt_content_hash
from .schema import IMPORT_PREFIX, SPLITS


class PromptsMixin:
    # -- prompts ------------------------------------------------------------------------------------------
    _PROMPT_SCHEMA = pa.schema([("id", pa.string()), ("seq", pa.int64()), ("messages", pa.string()),
                                ("text", pa.string()), ("content_hash", pa.string()), ("source", pa.string()),
                                ("tags", pa.list_(pa.string())), ("split", pa.string()),
                                ("created_at", pa.timestamp("us")), ("created_by", pa.string())])

    @staticmethod
    def _prepare_prompt(row: dict) -> dict:
        if not isinstance(row, dict):
            raise ValueError(f"a prompt row must be a dict, got {type(row).__name__}")
        messages = normalise_messages(row)
        split = row.get("split") or "train"
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        source = row.get("source") or "manual"
        if not isinstance(source, str):
            raise ValueError(f"source must be a string, got {source!r}")
        h = prompt_content_hash(messages)
        return {"id": h[:16], "messages": messages, "text": messages[-1]["content"], "content_hash": h,
                "source": source, "tags": normalise_tags(row.get("tags")), "split": split}

    def _add_prompts_tx(self, con, prepared: list[dict], actor: str) -> tuple[list[str], int, int, int]:
        """Insert new prompts, merge tags into existing ones (which keep their split). Returns (ids, n_added,
        n_tags_merged, n_split_kept: existing prompts whose stored split differs from the one given now)."""
        by_hash: dict[str, dict] = {}
        for p in prepared:
            if p["content_hash"] in by_hash:
                q = by_hash[p["content_hash"]]
                q["tags"] = sorted(set(q["tags"]) | set(p["tags"]))
            else:
                by_hash[p["content_hash"]] = dict(p)
        existing: dict[str, tuple[str, list[str], str]] = {}
        if by_hash:
            view = f"_hashes_{uuid.uuid4().hex}"
            con.register(view, pa.table({"h": list(by_hash)}))
            try:
                for h, pid, tags, split in con.execute(
                        f"SELECT p.content_hash, p.id, p.tags, p.split FROM prompts p JOIN {view} v "
                        f"ON p.content_hash = v.h").fetchall():
                    existing[h] = (pid, list(tags or []), split)
            finally:
                con.unregister(view)
        new = [p for h, p in by_hash.items() if h not in existing]
        n_merged = 0
        for h, (pid, old_tags, _) in existing.items():
            merged = sorted(set(old_tags) | set(by_hash[h]["tags"]))
            if merged != sorted(old_tags):
                con.execute("UPDATE prompts SET tags = ? WHERE id = ?", [merged, pid])
                n_merged += 1
        if new:
            seq0, now, actor = self._next_seq(con, "prompts", len(new)), _now(), _req_str(actor, "actor")
            self._bulk_insert(con, "prompts", self._PROMPT_SCHEMA, {
                "id": [p["id"] for p in new], "seq": [seq0 + i for i in range(len(new))],
                "messages": [_dumps(p["messages"]) for p in new], "text": [p["text"] for p in new],
                "content_hash": [p["content_hash"] for p in new], "source": [p["source"] for p in new],
                "tags": [p["tags"] for p in new], "split": [p["split"] for p in new],
                "created_at": [now] * len(new), "created_by": [actor] * len(new)})
        ids = [existing[p["content_hash"]][0] if p["content_hash"] in existing else p["id"] for p in prepared]
        kept = sum(1 for h, (_, _, sp) in existing.items() if by_hash[h].get("split", sp) != sp)
        return ids, len(new), n_merged, kept

    def add_prompts(self, rows: list[dict], actor: str) -> list[str]:
        """Add prompts (`messages` or `text`, `source`, `tags`, `split`) in one transaction; one id per row.
        A prompt already stored (same normalised content) keeps its id, split and source; its tags are merged."""
        prepared = []
        for i, r in enumerate(rows):
            try:
                prepared.append(self._prepare_prompt(r))
            except ValueError as e:
                raise ValueError(f"prompt row {i}: {e}") from None
        with self._tx() as con:
            ids, added, merged, _ = self._add_prompts_tx(con, prepared, actor)
            self._audit(con, actor, "add_prompts", "prompt", ids[0] if len(ids) == 1 else None,
                        {"rows": len(rows), "added": added, "tags_merged": merged, "ids": ids[:20]})
        return ids

    @staticmethod
    def _prompt_out(r: dict) -> dict:
        r = dict(r)
        r["messages"] = _loads(r["messages"])
        r["tags"] = sorted(r.get("tags") or [])
        r["created_at"] = _iso(r["created_at"])
        r.pop("seq", None)
        return r

    def get_prompt(self, prompt_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM prompts WHERE id = ?", [prompt_id])
        return self._prompt_out(rows[0]) if rows else None

    def get_prompts(self, prompt_ids: Iterable[str]) -> dict[str, dict]:
        """{id: prompt} for the ids that exist."""
        ids = list(prompt_ids)
        rows = self._rows("SELECT * FROM prompts WHERE list_contains(?::VARCHAR[], id)", [ids]) if ids else []
        return {r["id"]: self._prompt_out(r) for r in rows}

    _ORDERS = {"created": "p.seq ASC", "newest": "p.seq DESC", "text": "p.text ASC, p.seq ASC",
               "responses": "n_responses DESC, p.seq ASC"}

    def _prompt_where(self, search=None, tag=None, source=None, split=None, status=None,
                      annotator=None, min_responses=None) -> tuple[str, list]:
        where, params = ["TRUE"], []
        if min_responses:
            where.append("(SELECT count(*) FROM responses r WHERE r.prompt_id = p.id) >= ?")
            params.append(int(min_responses))
        if search:
            where.append("contains(lower(p.text), lower(?))")
            params.append(str(search))
        if tag:
            where.append("list_has_any(p.tags, ?::VARCHAR[])")
            params.append([tag] if isinstance(tag, str) else list(tag))
        if source:
            where.append("p.source = ?")
            params.append(source)
        if split:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            where.append("p.split = ?")
            params.append(split)
        if status:
            if annotator:
                who, who_p = "a.annotator = ?", [annotator]
            else:
                who, who_p = f"NOT starts_with(a.annotator, '{IMPORT_PREFIX}')", []
            if status == "annotated":
                where.append(f"EXISTS (SELECT 1 FROM annotations a WHERE a.prompt_id = p.id AND {who})")
            elif status == "unannotated":
                where.append(f"NOT EXISTS (SELECT 1 FROM annotations a WHERE a.prompt_id = p.id AND {who})")
            elif status == "flagged":
                where.append("EXISTS (SELECT 1 FROM annotations a WHERE a.prompt_id = p.id AND a.flagged "
                             f"AND {who})")
            else:
                raise ValueError(f"status must be 'annotated', 'unannotated' or 'flagged', got {status!r}")
            params += who_p
        return " AND ".join(where), params

    def list_prompts(self, search: str | None = None, tag: str | list[str] | None = None,
                     source: str | None = None, split: str | None = None, status: str | None = None,
                     annotator: str | None = None, limit: int = 50, offset: int = 0,
                     order: str = "created", min_responses: int | None = None) -> list[dict]:
        """Prompts matching all filters, with `n_responses` and `n_annotators` (human). `search`: substring of
        the last user turn (case-insensitive). `tag`: any of. `status`: 'annotated' | 'unannotated' | 'flagged'
        (by `annotator` if given, else by any human). `order`: created | newest | text | responses."""
        if order not in self._ORDERS:
            raise ValueError(f"order must be one of {sorted(self._ORDERS)}, got {order!r}")
        where, params = self._prompt_where(search, tag, source, split, status, annotator, min_responses)
        sql = f"""SELECT p.*,
            (SELECT count(*) FROM responses r WHERE r.prompt_id = p.id) AS n_responses,
            (SELECT count(DISTINCT a.annotator) FROM annotations a WHERE a.prompt_id = p.id
               AND NOT starts_with(a.annotator, '{IMPORT_PREFIX}')) AS n_annotators
            FROM prompts p WHERE {where} ORDER BY {self._ORDERS[order]} LIMIT ? OFFSET ?"""
        return [self._prompt_out(r) for r in self._rows(sql, params + [int(limit), int(offset)])]

    def count_prompts(self, search=None, tag=None, source=None, split=None, status=None, annotator=None,
                      min_responses=None) -> int:
        """Number of prompts `list_prompts` would return with the same filters and no limit."""
        where, params = self._prompt_where(search, tag, source, split, status, annotator, min_responses)
        return self._one(f"SELECT count(*) FROM prompts p WHERE {where}", params)

    def set_tags(self, prompt_ids: Iterable[str], tags: Iterable[str] | str, actor: str,
                 mode: str = "replace") -> int:
        """Set (`replace`), `add` or `remove` tags on prompts in one transaction. Returns the number changed."""
        if mode not in ("replace", "add", "remove"):
            raise ValueError(f"mode must be replace, add or remove, got {mode!r}")
        tags = normalise_tags(tags)
        ids = list(dict.fromkeys(prompt_ids))
        with self._tx() as con:
            current = dict(con.execute("SELECT id, tags FROM prompts WHERE list_contains(?::VARCHAR[], id)",
                                       [ids]).fetchall()) if ids else {}
            missing = [i for i in ids if i not in current]
            if missing:
                raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
            changed = 0
            for pid in ids:
                old = sorted(current[pid] or [])
                new = tags if mode == "replace" else (
                    sorted(set(old) | set(tags)) if mode == "add" else sorted(set(old) - set(tags)))
                if new != old:
                    con.execute("UPDATE prompts SET tags = ? WHERE id = ?", [new, pid])
                    changed += 1
            self._audit(con, actor, f"tags_{mode}", "prompt", ids[0] if len(ids) == 1 else None,
                        {"ids": ids[:50], "n": len(ids), "tags": tags, "changed": changed})
        return changed

    def set_split(self, prompt_ids: Iterable[str], split: str, actor: str) -> int:
        """Move prompts to a split (train/dev/test) in one transaction. Returns the number changed."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        ids = list(dict.fromkeys(prompt_ids))
        with self._tx() as con:
            current = dict(con.execute("SELECT id, split FROM prompts WHERE list_contains(?::VARCHAR[], id)",
                                       [ids]).fetchall()) if ids else {}
            missing = [i for i in ids if i not in current]
            if missing:
                raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
            todo = [i for i in ids if current[i] != split]
            if todo:
                con.execute("UPDATE prompts SET split = ? WHERE list_contains(?::VARCHAR[], id)", [split, todo])
            self._audit(con, actor, "set_split", "prompt", ids[0] if len(ids) == 1 else None,
                        {"ids": ids[:50], "n": len(ids), "split": split, "changed": len(todo)})
        return len(todo)

    def prompt_sources(self) -> list[str]:
        return [r["source"] for r in self._rows("SELECT DISTINCT source FROM prompts ORDER BY source")]

    def prompt_tags(self) -> list[str]:
        return [r["t"] for r in self._rows("SELECT DISTINCT unnest(tags) AS t FROM prompts ORDER BY t")]

    def sample_prompts(self, n: int, seed: int = 0, tag: str | list[str] | None = None,
                       split: str | None = None, source: str | None = None) -> list[str]:
        """n prompt ids drawn without replacement, reproducible for a given seed and data."""
        where, params = self._prompt_where(tag=tag, split=split, source=source)
        ids = [r["id"] for r in self._rows(f"SELECT p.id FROM prompts p WHERE {where} ORDER BY p.id", params)]
        return random.Random(seed).sample(ids, min(int(n), len(ids)))
