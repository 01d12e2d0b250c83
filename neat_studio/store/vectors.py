"""Vectors: embeddings per item and model, and reward scores per response. A mixin of Store (see the package
docstring)."""
from __future__ import annotations

from typing import Sequence
import uuid

import numpy as np
import pyarrow as pa

from .core import _now, _req_str
from .schema import EMBED_DIM, EMBED_KINDS


class VectorsMixin:
    # -- embeddings and scores ----------------------------------------------------------------------------
    def put_embeddings(self, kind: str, ids: Sequence[str], vectors: np.ndarray, model_id: str,
                       actor: str = "system") -> int:
        """Store (replace) float32 vectors (n x 384) for prompts or responses. Returns n."""
        if kind not in EMBED_KINDS:
            raise ValueError(f"kind must be 'prompt' or 'response', got {kind!r}")
        vec = np.asarray(vectors, dtype=np.float32)
        ids = [str(i) for i in ids]
        if vec.ndim != 2 or vec.shape[1] != EMBED_DIM or vec.shape[0] != len(ids):
            raise ValueError(f"vectors must have shape ({len(ids)}, {EMBED_DIM}), got {vec.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in put_embeddings")
        if not np.isfinite(vec).all():
            raise ValueError("vectors contain NaN or infinity")
        model_id = _req_str(model_id, "model_id")
        if not ids:
            return 0
        schema = pa.schema([("kind", pa.string()), ("item_id", pa.string()), ("model_id", pa.string()),
                            ("vector", pa.list_(pa.float32(), EMBED_DIM)), ("created_at", pa.timestamp("us"))])
        tbl = pa.table({"kind": [kind] * len(ids), "item_id": ids, "model_id": [model_id] * len(ids),
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), EMBED_DIM),
                        "created_at": pa.array([_now()] * len(ids), pa.timestamp("us"))}, schema=schema)
        with self._tx() as con:
            view = f"_emb_{uuid.uuid4().hex}"
            con.register(view, tbl)
            try:
                con.execute(f"INSERT OR REPLACE INTO embeddings SELECT kind, item_id, model_id, vector, created_at "
                            f"FROM {view}")
            finally:
                con.unregister(view)
            self._audit(con, actor, "put_embeddings", "embedding", None, {"kind": kind, "model_id": model_id,
                                                                          "n": len(ids)})
        return len(ids)

    def get_embeddings(self, kind: str, model_id: str, ids: Sequence[str] | None = None
                       ) -> tuple[list[str], np.ndarray]:
        """(ids, float32 array n x 384). With `ids`: those stored, in the order asked (missing ones omitted)."""
        with self._lock:
            self._check_open()
            sql = "SELECT item_id, vector FROM embeddings WHERE kind = ? AND model_id = ?"
            params: list = [kind, model_id]
            if ids is not None:
                sql += " AND list_contains(?::VARCHAR[], item_id)"
                params.append([str(i) for i in ids])
            tbl = self._con.sql(sql + " ORDER BY item_id", params=params).to_arrow_table()
        got = tbl.column("item_id").to_pylist()
        mat = (np.asarray(tbl.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(-1, EMBED_DIM)
               if got else np.zeros((0, EMBED_DIM), np.float32))
        if ids is not None:
            pos = {i: k for k, i in enumerate(got)}
            order = [pos[str(i)] for i in ids if str(i) in pos]
            return [got[k] for k in order], mat[order]
        return got, mat

    def missing_embeddings(self, kind: str, model_id: str) -> list[tuple[str, str]]:
        """[(id, text)] of prompts (last user turn) or responses without a vector for `model_id`."""
        if kind not in EMBED_KINDS:
            raise ValueError(f"kind must be 'prompt' or 'response', got {kind!r}")
        table = "prompts" if kind == "prompt" else "responses"
        rows = self._rows(f"""SELECT t.id, t.text FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM embeddings e
                              WHERE e.kind = ? AND e.model_id = ? AND e.item_id = t.id) ORDER BY t.seq""",
                          [kind, model_id])
        return [(r["id"], r["text"]) for r in rows]

    def put_scores(self, response_ids: Sequence[str], scores: Sequence[float], scorer_version: str,
                   actor: str = "system") -> int:
        """Store (replace) one score per response for a scorer version. Returns n."""
        ids = [str(i) for i in response_ids]
        vals = [float(s) for s in scores]
        if len(ids) != len(vals):
            raise ValueError(f"{len(ids)} ids but {len(vals)} scores")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in put_scores")
        if not all(np.isfinite(vals)):
            raise ValueError("scores contain NaN or infinity")
        scorer_version = _req_str(scorer_version, "scorer_version")
        if not ids:
            return 0
        schema = pa.schema([("response_id", pa.string()), ("scorer_version", pa.string()),
                            ("score", pa.float64()), ("created_at", pa.timestamp("us"))])
        tbl = pa.table({"response_id": ids, "scorer_version": [scorer_version] * len(ids), "score": vals,
                        "created_at": pa.array([_now()] * len(ids), pa.timestamp("us"))}, schema=schema)
        with self._tx() as con:
            view = f"_scores_{uuid.uuid4().hex}"
            con.register(view, tbl)
            try:
                con.execute(f"INSERT OR REPLACE INTO scores SELECT response_id, scorer_version, score, created_at "
                            f"FROM {view}")
            finally:
                con.unregister(view)
            self._audit(con, actor, "put_scores", "score", None, {"scorer_version": scorer_version, "n": len(ids)})
        return len(ids)

    def get_scores(self, scorer_version: str, response_ids: Sequence[str] | None = None) -> dict[str, float]:
        sql, params = "SELECT response_id, score FROM scores WHERE scorer_version = ?", [scorer_version]
        if response_ids is not None:
            sql += " AND list_contains(?::VARCHAR[], response_id)"
            params.append([str(i) for i in response_ids])
        return {r["response_id"]: r["score"] for r in self._rows(sql, params)}
