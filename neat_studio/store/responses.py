"""Responses: add, list, get, edit (an edit is a new response; the original is kept). A mixin of Store (see the package
docstring)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from .core import _dumps, _first, _iso, _loads, _now, _req_str, _response_id, _text_hash
from .schema import ORIGIN_RE


class ResponsesMixin:
    # -- responses ----------------------------------------------------------------------------------------
    _RESPONSE_SCHEMA = pa.schema([("id", pa.string()), ("seq", pa.int64()), ("prompt_id", pa.string()),
                                  ("text", pa.string()), ("text_hash", pa.string()), ("origin", pa.string()),
                                  ("model_id", pa.string()), ("params", pa.string()), ("seed", pa.int64()),
                                  ("parent_response_id", pa.string()), ("created_at", pa.timestamp("us")),
                                  ("created_by", pa.string())])

    @staticmethod
    def _prepare_response(r: dict) -> dict:
        if not isinstance(r, dict):
            raise ValueError(f"a response row must be a dict, got {type(r).__name__}")
        text, origin = r.get("text"), r.get("origin")
        if not isinstance(text, str):
            raise ValueError(f"response text must be a string, got {type(text).__name__}")
        if not isinstance(origin, str) or not ORIGIN_RE.match(origin):
            raise ValueError(f"invalid origin {origin!r}: expected policy, human, dataset[:x], "
                             "negative:<name>@<v>, positive:<name>@<v> or compare:<model_id>")
        if not isinstance(r.get("prompt_id"), str):
            raise ValueError("response row needs a prompt_id")
        seed = r.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        params = r.get("params")
        if params is not None and not isinstance(params, dict):
            raise ValueError("response params must be a dict or None")
        th = _text_hash(text)
        return {"id": _response_id(r["prompt_id"], origin, th), "prompt_id": r["prompt_id"], "text": text,
                "text_hash": th, "origin": origin, "model_id": r.get("model_id"),
                "params": None if params is None else _dumps(params), "seed": None if seed is None else int(seed),
                "parent_response_id": r.get("parent_response_id")}

    def _add_responses_tx(self, con, prepared: list[dict], actor: str) -> tuple[list[str], int]:
        pids = sorted({p["prompt_id"] for p in prepared})
        if pids:
            found = {r[0] for r in con.execute("SELECT id FROM prompts WHERE list_contains(?::VARCHAR[], id)",
                                               [pids]).fetchall()}
            missing = [p for p in pids if p not in found]
            if missing:
                raise ValueError(f"unknown prompt id(s) for responses: {', '.join(missing[:5])}")
        ids = list(dict.fromkeys(p["id"] for p in prepared))
        existing = {r[0] for r in con.execute("SELECT id FROM responses WHERE list_contains(?::VARCHAR[], id)",
                                              [ids]).fetchall()} if ids else set()
        new, seen = [], set(existing)
        for p in prepared:
            if p["id"] not in seen:
                seen.add(p["id"])
                new.append(p)
        if new:
            seq0, now, actor = self._next_seq(con, "responses", len(new)), _now(), _req_str(actor, "actor")
            cols = {k: [p[k] for p in new] for k in ("id", "prompt_id", "text", "text_hash", "origin", "model_id",
                                                      "params", "seed", "parent_response_id")}
            cols.update(seq=[seq0 + i for i in range(len(new))], created_at=[now] * len(new),
                        created_by=[actor] * len(new))
            self._bulk_insert(con, "responses", self._RESPONSE_SCHEMA, cols)
        return [p["id"] for p in prepared], len(new)

    def add_responses(self, rows: list[dict], actor: str) -> list[str]:
        """Add candidate responses (prompt_id, text, origin, model_id, params, seed) in one transaction; one id
        per row. Ids are deterministic in (prompt, origin, text): an identical response returns the stored id."""
        prepared = []
        for i, r in enumerate(rows):
            try:
                prepared.append(self._prepare_response(r))
            except ValueError as e:
                raise ValueError(f"response row {i}: {e}") from None
        with self._tx() as con:
            ids, added = self._add_responses_tx(con, prepared, actor)
            self._audit(con, actor, "add_responses", "response", ids[0] if len(ids) == 1 else None,
                        {"rows": len(rows), "added": added, "ids": ids[:20]})
        return ids

    @staticmethod
    def _resp_out(r: dict) -> dict:
        r = dict(r)
        r["params"] = _loads(r["params"])
        r["created_at"] = _iso(r["created_at"])
        r.pop("seq", None)
        r.pop("text_hash", None)
        return r

    def list_responses(self, prompt_id: str) -> list[dict]:
        return [self._resp_out(r) for r in self._rows(
            "SELECT * FROM responses WHERE prompt_id = ? ORDER BY seq", [prompt_id])]

    def get_response(self, response_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM responses WHERE id = ?", [response_id])
        return self._resp_out(rows[0]) if rows else None

    def edit_response(self, response_id: str, new_text: str, actor: str) -> str:
        """Store a human edit as a new response (origin 'human', parent_response_id = the original, which stays).
        Returns the new id (or the id of an identical human response of that prompt)."""
        if not isinstance(new_text, str) or not new_text.strip():
            raise ValueError("the edited response must not be empty")
        with self._tx() as con:
            orig = _first(con.execute("SELECT prompt_id, text FROM responses WHERE id = ?", [response_id]))
            if orig is None:
                raise ValueError(f"unknown response id {response_id!r}")
            if orig[1].strip() == new_text.strip():
                raise ValueError("the edited text is identical to the original response")
            prepared = self._prepare_response({"prompt_id": orig[0], "text": new_text, "origin": "human",
                                               "parent_response_id": response_id})
            ids, added = self._add_responses_tx(con, [prepared], actor)
            self._audit(con, actor, "edit_response", "response", ids[0],
                        {"parent": response_id, "prompt_id": orig[0], "added": added})
        return ids[0]
