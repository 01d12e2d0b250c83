"""Near-duplicate detection over sentence embeddings (cosine similarity, blockwise so memory stays bounded).

Default threshold 0.92 on all-MiniLM-L6-v2 vectors: close paraphrases and copies with small edits score above
it; texts that merely share a topic score well below (see tests/test_scoring_neardup.py).
"""
from __future__ import annotations

import numpy as np

from .embeddings import normalise

DEFAULT_THRESHOLD = 0.92


def near_duplicates(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                    block: int = 1024) -> list[tuple[int, int, float]]:
    """All pairs (i, j, sim) with i < j and cosine(v_i, v_j) >= threshold, sorted by (i, j)."""
    v = normalise(np.asarray(vectors, dtype=np.float32))
    n = len(v)
    out: list[tuple[int, int, float]] = []
    for s in range(0, n, block):
        e = min(n, s + block)
        sims = v[s:e] @ v[s:].T  # rows s..e against columns s..n
        # keep only the strict upper triangle (global j > global i)
        rows, cols = np.nonzero(sims >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i, j = s + r, s + c
            if j > i:
                out.append((i, j, float(sims[r, c])))
    out.sort(key=lambda t: (t[0], t[1]))
    return out


def dedupe_indices(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """Indices to keep, in order: a row is dropped when it is a near-duplicate of an earlier KEPT row.

    (Greedy keep-first: if b duplicates a and c duplicates only b, c is kept because b was dropped.)
    """
    n = len(vectors)
    earlier: dict[int, list[int]] = {}
    for i, j, _ in near_duplicates(vectors, threshold):
        earlier.setdefault(j, []).append(i)
    kept = np.ones(n, dtype=bool)
    for j in range(n):
        if any(kept[i] for i in earlier.get(j, ())):
            kept[j] = False
    return [i for i in range(n) if kept[i]]
