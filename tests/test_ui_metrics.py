"""Exact-value tests of neat_studio.metrics (preview metrics and inter-annotator agreement)."""
import math

import numpy as np
import pytest

from neat_studio import metrics as M


def test_cosine_and_diversity_exact():
    assert M.mean_pairwise_distance([[1, 0], [0, 1]]) == pytest.approx(1.0)
    assert M.mean_pairwise_distance([[1, 0], [2, 0]]) == pytest.approx(0.0)
    assert M.mean_pairwise_distance([[1, 0], [0, 1], [1, 1]]) == pytest.approx((3 - math.sqrt(2)) / 3)
    assert M.mean_pairwise_distance([[1, 0]]) is None
    sim = M.cosine_similarity_matrix([[1, 0], [0, 0]], [[3, 4]])
    assert sim[0, 0] == pytest.approx(0.6) and sim[1, 0] == 0.0  # zero vector -> similarity 0


def test_distance_to_reference_uses_same_prompt_only():
    neg = [[0, 1], [1, 0]]
    ref = [[1, 0], [1, 0], [0, 1]]
    # neg0 (p1) vs refs of p1 = [1,0] and [0,1]: mean sim 0.5 -> distance 0.5; neg1 (p2) vs ref p2 = [1,0] -> 0
    d = M.mean_distance_to_reference(neg, ref, ["p1", "p2"], ["p1", "p2", "p1"])
    assert d == pytest.approx(0.25)
    assert M.mean_distance_to_reference(neg, ref, ["p9", "p9"], ["p1", "p2", "p1"]) is None


VEC = {"bad A": [0, 1], "Normal  B": [1, 0], "normal a": [1, 0], "normal b": [1, 0], "I'm sorry": [1, 1]}


def embed(texts):
    return np.array([VEC[t] for t in texts], dtype=float)


def test_preview_metrics_exact_values():
    negs = [{"prompt_id": "p1", "text": "bad A"}, {"prompt_id": "p2", "text": "Normal  B"}]
    norms = [{"prompt_id": "p1", "text": "normal a"}, {"prompt_id": "p2", "text": "normal b"}]
    m = M.preview_metrics(negs, norms, embed=embed, is_refusal=lambda ts: ["sorry" in t for t in ts])
    assert m["n"] == 2
    assert m["distance"] == pytest.approx(0.5)          # (1 + 0) / 2
    assert m["diversity"] == pytest.approx(1.0)         # orthogonal
    assert m["leak_share"] == pytest.approx(0.5)        # "Normal  B" == "normal b" after normalisation
    assert m["refusal_share"] == pytest.approx(0.0)
    assert m["mean_len_ratio"] == pytest.approx((5 / 8 + 9 / 8) / 2)
    assert m["undesirability"] == pytest.approx((5 / 8 + 0) / 2)   # leak counts 0
    assert m["undesirability_source"].startswith("heuristic")

    reward = lambda rows: [-1.0 if "bad" in r["text"] else 1.0 for r in rows]  # noqa: E731
    m2 = M.preview_metrics(negs, norms, embed=embed, reward=reward)
    assert m2["undesirability"] == pytest.approx(1.0)   # gaps 2 and 0
    assert m2["undesirability_source"] == "reward gap"


def test_preview_metrics_refusal_and_similarity_leak():
    negs = [{"prompt_id": "p1", "text": "I'm sorry"}, {"prompt_id": "p1", "text": "bad A"}]
    norms = [{"prompt_id": "p1", "text": "normal a"}]
    m = M.preview_metrics(negs, norms, embed=embed, is_refusal=lambda ts: ["sorry" in t for t in ts],
                          leak_similarity=0.7)
    assert m["refusal_share"] == pytest.approx(0.5)
    assert m["leak_share"] == pytest.approx(0.5)        # cos([1,1],[1,0]) = 0.7071 >= 0.7
    assert m["undesirability"] == pytest.approx((0 + 5 / 8) / 2)
    assert M.preview_metrics([], norms)["distance"] is None


def test_kendall_tau_b_exact():
    assert M.kendall_tau_b([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)
    assert M.kendall_tau_b([0, 1, 2], [2, 1, 0]) == pytest.approx(-1.0)
    assert M.kendall_tau_b([0, 0, 1], [0, 1, 2]) == pytest.approx(2 / math.sqrt(6))
    assert M.kendall_tau_b([0, 0, 1], [0, 0, 1]) == pytest.approx(1.0)
    assert M.kendall_tau_b([0, 0, 0], [0, 1, 2]) is None
    assert M.kendall_tau_b([0], [0]) is None
    # four items, one tie in each ranking: C=4, D=0, n0=6, n1=n2=1 -> 4/5
    assert M.kendall_tau_b([0, 0, 1, 2], [0, 1, 1, 3]) == pytest.approx(0.8)
    assert _tau_bruteforce([0, 0, 1, 2], [0, 1, 1, 3]) == pytest.approx(0.8)
    assert M.kendall_tau_b([2, 0, 1, 1], [0, 2, 1, 0]) == pytest.approx(_tau_bruteforce([2, 0, 1, 1], [0, 2, 1, 0]))
    with pytest.raises(ValueError):
        M.kendall_tau_b([0, 1], [0])


def _tau_bruteforce(a, b):
    import itertools
    c = d = ta = tb = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        x, y = (a[i] > a[j]) - (a[i] < a[j]), (b[i] > b[j]) - (b[i] < b[j])
        ta += x == 0
        tb += y == 0
        c += x * y > 0
        d += x * y < 0
    n0 = len(a) * (len(a) - 1) / 2
    return (c - d) / math.sqrt((n0 - ta) * (n0 - tb))


def test_pairwise_agreement_exact():
    assert M.pairwise_agreement([0, 0, 1], [0, 1, 2]) == pytest.approx(2 / 3)
    assert M.pairwise_agreement([0, 1], [1, 0]) == 0.0
    assert M.pairwise_agreement([0, 0], [1, 1]) == 1.0
    assert M.pairwise_agreement([0], [0]) is None


def test_ranking_to_ranks_and_summary():
    assert M.ranking_to_ranks([["a", "b"], ["c"]]) == {"a": 0, "b": 0, "c": 1}
    ann = {
        "p1": {"alice": {"r1": 0, "r2": 0, "r3": 1}, "bob": {"r1": 0, "r2": 1, "r3": 2}},
        "p2": {"alice": {"q1": 0, "q2": 1}},
        "p3": {"alice": {"x": 0, "y": 1}, "bob": {"x": 1, "y": 0}},
    }
    s = M.agreement_summary(ann)
    assert s["shared_prompts"] == 2
    assert s["kendall_tau"] == pytest.approx((2 / math.sqrt(6) - 1) / 2)
    assert s["pairwise_agreement"] == pytest.approx(1 / 3)
    assert s["pairs"] == [{"a": "alice", "b": "bob", "prompts": 2, "kendall_tau": pytest.approx(s["kendall_tau"]),
                           "pairwise_agreement": pytest.approx(1 / 3)}]
    assert M.agreement_summary({})["kendall_tau"] is None
