"""Active-learning helpers: which prompts to show an annotator next, and how far the scorer is from a human.

- `uncertainty(scores_per_prompt)`: margin between the two best scores of each prompt (small = the scorer
  cannot tell its top two apart = worth a human look). NaN for prompts with fewer than two responses.
- `disagreement(scorer_ranking, human_ranking)`: normalised Kendall tau distance between two rankings given as
  groups (best first; items in one group are tied), over the items both rankings contain.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np


def margin(scores: Sequence[float]) -> float:
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    return float(s[0] - s[1]) if len(s) >= 2 else float("nan")


def uncertainty(scores_per_prompt: Sequence[Sequence[float]]) -> np.ndarray:
    """Top-1 minus top-2 score for each prompt (float64 array; NaN where a prompt has < 2 responses)."""
    return np.asarray([margin(s) for s in scores_per_prompt], dtype=np.float64)


def most_uncertain(scores_per_prompt: Sequence[Sequence[float]], k: int) -> list[int]:
    """Indices of the k prompts with the smallest margin (prompts with < 2 responses are never chosen)."""
    u = uncertainty(scores_per_prompt)
    idx = [i for i in np.argsort(u, kind="stable") if not np.isnan(u[i])]
    return [int(i) for i in idx[:k]]


def _rank_map(groups: Sequence[Sequence[Hashable]]) -> dict:
    out = {}
    for g, items in enumerate(groups):
        for it in items:
            if it in out:
                raise ValueError(f"item {it!r} appears twice in a ranking")
            out[it] = g
    return out


def disagreement(scorer_ranking: Sequence[Sequence[Hashable]], human_ranking: Sequence[Sequence[Hashable]]) -> float:
    """Kendall tau distance in [0, 1] between two group rankings, over their common items.

    For every unordered pair of common items: 1 if the rankings order it oppositely, 0.5 if exactly one of them
    ties it, 0 otherwise; divided by the number of pairs. 0 = same order, 1 = reversed. NaN with < 2 common items.
    """
    a, b = _rank_map(scorer_ranking), _rank_map(human_ranking)
    common = [x for x in a if x in b]
    n = len(common)
    if n < 2:
        return float("nan")
    ra = np.asarray([a[x] for x in common], dtype=np.int64)
    rb = np.asarray([b[x] for x in common], dtype=np.int64)
    da = np.sign(ra[:, None] - ra[None, :])
    db = np.sign(rb[:, None] - rb[None, :])
    iu = np.triu_indices(n, k=1)
    da, db = da[iu], db[iu]
    discord = ((da * db) < 0).sum()
    half = ((da == 0) ^ (db == 0)).sum()
    return float((discord + 0.5 * half) / len(da))
