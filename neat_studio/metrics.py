"""Metrics that the studio shows: negative-prompt preview quality and inter-annotator agreement.

Pure library code (numpy only, no store, no UI) so every number can be unit-tested with exact values.

Preview metrics (one negative-prompt version, measured on one preview):
- undesirability: how bad the negative responses are. With a reward scorer: `normal_reward - negative_reward`
  averaged (positive = the negatives score worse). Without one: the refusal detector and the length ratio.
- distance: mean cosine distance between each negative response and the normal response(s) of its prompt.
- diversity: mean pairwise cosine distance among the negative responses (0 = all identical).
- refusal_share: share of negatives that are refusals (a refusal is not a useful "bad" example).
- leak_share: share of negatives that are near-copies of a normal answer of the same prompt (cosine similarity
  >= `leak_similarity`, or identical after whitespace/case normalisation): the negative prompt "leaked" nothing.

Agreement (rankings with ties, as ranks: lower = better, equal = tie):
- Kendall tau-b between two annotators on the responses both ranked.
- pairwise agreement: share of response pairs on which two annotators give the same relation (<, >, =).
"""
from __future__ import annotations

import itertools
import math
import re
from typing import Callable, Mapping, Sequence

import numpy as np

Embed = Callable[[list[str]], np.ndarray]

__all__ = ["cosine_similarity_matrix", "mean_pairwise_distance", "mean_distance_to_reference", "leak_flags",
           "preview_metrics", "kendall_tau_b", "pairwise_agreement", "ranking_to_ranks", "agreement_summary",
           "normalise_text", "PREVIEW_METRIC_KEYS"]

PREVIEW_METRIC_KEYS = ("n", "undesirability", "undesirability_source", "distance", "diversity", "refusal_share",
                       "leak_share", "mean_len_ratio")


# -- vector helpers -------------------------------------------------------------------------------------------
def _as_2d(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    return a


def cosine_similarity_matrix(a, b) -> np.ndarray:
    """Cosine similarity between the rows of `a` (n x d) and `b` (m x d); a zero vector has similarity 0."""
    a, b = _as_2d(a), _as_2d(b)
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    a = np.divide(a, na, out=np.zeros_like(a), where=na > 0)
    b = np.divide(b, nb, out=np.zeros_like(b), where=nb > 0)
    return np.clip(a @ b.T, -1.0, 1.0)


def mean_pairwise_distance(x) -> float | None:
    """Mean cosine distance (1 - similarity) over all unordered pairs of rows; None with fewer than 2 rows."""
    x = _as_2d(x)
    n = x.shape[0]
    if n < 2:
        return None
    sim = cosine_similarity_matrix(x, x)
    iu = np.triu_indices(n, k=1)
    return float(np.mean(1.0 - sim[iu]))


def mean_distance_to_reference(neg, ref, neg_groups: Sequence, ref_groups: Sequence) -> float | None:
    """Mean over negatives of the cosine distance to the *mean similarity* of the references of the same group.

    `neg_groups[i]` / `ref_groups[j]` are the prompt ids of row i of `neg` / row j of `ref`. Negatives whose prompt
    has no reference are left out; None if none is left."""
    neg, ref = _as_2d(neg), _as_2d(ref)
    if neg.shape[0] == 0 or ref.shape[0] == 0:
        return None
    sim = cosine_similarity_matrix(neg, ref)
    ref_groups = list(ref_groups)
    out = []
    for i, g in enumerate(neg_groups):
        cols = [j for j, rg in enumerate(ref_groups) if rg == g]
        if cols:
            out.append(1.0 - float(np.mean(sim[i, cols])))
    return float(np.mean(out)) if out else None


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").strip().lower())


def leak_flags(neg_texts: Sequence[str], neg_groups: Sequence, ref_texts: Sequence[str], ref_groups: Sequence,
               sim: np.ndarray | None = None, leak_similarity: float = 0.9) -> list[bool]:
    """A negative leaks when it is (nearly) the normal answer of its prompt: identical after normalisation, or
    cosine similarity >= `leak_similarity` to one of that prompt's references (`sim` = negatives x references)."""
    flags = []
    norm_ref = [normalise_text(t) for t in ref_texts]
    for i, (t, g) in enumerate(zip(neg_texts, neg_groups)):
        cols = [j for j, rg in enumerate(ref_groups) if rg == g]
        leak = any(normalise_text(t) == norm_ref[j] for j in cols)
        if not leak and sim is not None and cols:
            leak = bool(np.max(sim[i, cols]) >= leak_similarity - 1e-12)
        flags.append(leak)
    return flags


def preview_metrics(negatives: Sequence[Mapping], normals: Sequence[Mapping], *, embed: Embed | None = None,
                    is_refusal: Callable[[list[str]], Sequence[bool]] | None = None,
                    reward: Callable[[list[Mapping]], Sequence[float]] | None = None,
                    leak_similarity: float = 0.9) -> dict:
    """Metrics for one negative-prompt preview.

    `negatives` / `normals`: rows `{"prompt_id", "text"}` (plus whatever `reward` needs, e.g. "prompt").
    `embed(texts) -> (n, d)`; `is_refusal(texts) -> [bool]`; `reward(rows) -> [float]` (higher = better).
    Every argument is optional; a metric that cannot be computed is None.
    """
    neg_texts = [r["text"] for r in negatives]
    ref_texts = [r["text"] for r in normals]
    neg_g = [r["prompt_id"] for r in negatives]
    ref_g = [r["prompt_id"] for r in normals]
    out: dict = {k: None for k in PREVIEW_METRIC_KEYS}
    out["n"] = len(neg_texts)
    if not neg_texts:
        return out
    # length ratio: negative length / mean normal length of the same prompt
    ratios = []
    for t, g in zip(neg_texts, neg_g):
        lens = [len(rt) for rt, rg in zip(ref_texts, ref_g) if rg == g]
        if lens and np.mean(lens) > 0:
            ratios.append(len(t) / float(np.mean(lens)))
    out["mean_len_ratio"] = float(np.mean(ratios)) if ratios else None

    sim = None
    if embed is not None:
        e_neg = np.asarray(embed(neg_texts), dtype=np.float64)
        out["diversity"] = mean_pairwise_distance(e_neg)
        if ref_texts:
            e_ref = np.asarray(embed(ref_texts), dtype=np.float64)
            sim = cosine_similarity_matrix(e_neg, e_ref)
            out["distance"] = mean_distance_to_reference(e_neg, e_ref, neg_g, ref_g)
    if ref_texts:
        out["leak_share"] = float(np.mean(leak_flags(neg_texts, neg_g, ref_texts, ref_g, sim, leak_similarity)))
    refusals = None
    if is_refusal is not None:
        refusals = [bool(x) for x in is_refusal(neg_texts)]
        out["refusal_share"] = float(np.mean(refusals))
    if reward is not None and normals:
        r_neg = [float(x) for x in reward(list(negatives))]
        r_ref = [float(x) for x in reward(list(normals))]
        gaps = []
        for rv, g in zip(r_neg, neg_g):
            refs = [x for x, rg in zip(r_ref, ref_g) if rg == g]
            if refs:
                gaps.append(float(np.mean(refs)) - rv)
        if gaps:
            out["undesirability"] = float(np.mean(gaps))
            out["undesirability_source"] = "reward gap"
    if out["undesirability"] is None and refusals is not None:
        # no scorer: a negative is "undesirable" when it is not a refusal and not a leak; longer answers that
        # say something count more than empty ones (length ratio capped at 1).
        leaks = leak_flags(neg_texts, neg_g, ref_texts, ref_g, sim, leak_similarity) if ref_texts else \
            [False] * len(neg_texts)
        vals = []
        for i, t in enumerate(neg_texts):
            if refusals[i] or leaks[i]:
                vals.append(0.0)
                continue
            lens = [len(rt) for rt, rg in zip(ref_texts, ref_g) if rg == neg_g[i]]
            ratio = len(t) / float(np.mean(lens)) if lens and np.mean(lens) > 0 else (1.0 if t.strip() else 0.0)
            vals.append(min(1.0, ratio))
        out["undesirability"] = float(np.mean(vals))
        out["undesirability_source"] = "heuristic (no refusal, no leak, length)"
    return out


# -- agreement ------------------------------------------------------------------------------------------------
def ranking_to_ranks(ranking: Sequence[Sequence[str]]) -> dict[str, int]:
    """`[[a, b], [c]]` (groups best first) -> `{a: 0, b: 0, c: 1}`."""
    ranks: dict[str, int] = {}
    for gi, group in enumerate(ranking):
        for rid in group:
            ranks[rid] = gi
    return ranks


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rank vectors of equal length (ties allowed).

    tau_b = (C - D) / sqrt((n0 - n1) (n0 - n2)), n0 = n(n-1)/2, n1/n2 = tied pairs in a/b.
    None when undefined (fewer than 2 items, or one side ties everything)."""
    if len(a) != len(b):
        raise ValueError("rank vectors must have the same length")
    n = len(a)
    if n < 2:
        return None
    conc = disc = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(n), 2):
        sa, sb = _sign(a[i] - a[j]), _sign(b[i] - b[j])
        if sa == 0:
            ties_a += 1
        if sb == 0:
            ties_b += 1
        if sa and sb:
            if sa == sb:
                conc += 1
            else:
                disc += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - ties_a) * (n0 - ties_b))
    if denom == 0:
        return None
    return (conc - disc) / denom


def pairwise_agreement(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Share of item pairs on which both rankings agree on the relation (better, worse or tie)."""
    if len(a) != len(b):
        raise ValueError("rank vectors must have the same length")
    pairs = list(itertools.combinations(range(len(a)), 2))
    if not pairs:
        return None
    same = sum(_sign(a[i] - a[j]) == _sign(b[i] - b[j]) for i, j in pairs)
    return same / len(pairs)


def agreement_summary(annotations: Mapping[str, Mapping[str, Mapping[str, int]]]) -> dict:
    """Agreement over prompts ranked by more than one annotator.

    `annotations[prompt_id][annotator] = {response_id: rank}` (latest annotation of each annotator).
    Only responses ranked by both annotators of a pair count. Returns
    `{"shared_prompts", "pairs": [{"a", "b", "prompts", "kendall_tau", "pairwise_agreement"}],
      "kendall_tau", "pairwise_agreement"}` where the overall numbers are means over (prompt, annotator pair)
    comparisons with a defined value."""
    pair_stats: dict[tuple[str, str], dict] = {}
    all_tau, all_pa = [], []
    shared = 0
    for pid, by_ann in annotations.items():
        anns = sorted(a for a, r in by_ann.items() if r)
        if len(anns) < 2:
            continue
        shared += 1
        for x, y in itertools.combinations(anns, 2):
            common = sorted(set(by_ann[x]) & set(by_ann[y]))
            if len(common) < 2:
                continue
            ra = [by_ann[x][r] for r in common]
            rb = [by_ann[y][r] for r in common]
            st = pair_stats.setdefault((x, y), {"prompts": 0, "tau": [], "pa": []})
            st["prompts"] += 1
            tau, pa = kendall_tau_b(ra, rb), pairwise_agreement(ra, rb)
            if tau is not None:
                st["tau"].append(tau)
                all_tau.append(tau)
            if pa is not None:
                st["pa"].append(pa)
                all_pa.append(pa)
    pairs = [{"a": x, "b": y, "prompts": st["prompts"],
              "kendall_tau": float(np.mean(st["tau"])) if st["tau"] else None,
              "pairwise_agreement": float(np.mean(st["pa"])) if st["pa"] else None}
             for (x, y), st in sorted(pair_stats.items())]
    return {"shared_prompts": shared, "pairs": pairs,
            "kendall_tau": float(np.mean(all_tau)) if all_tau else None,
            "pairwise_agreement": float(np.mean(all_pa)) if all_pa else None}
