import hashlib
import json

import numpy as np
import pytest

from neat_studio.scoring.reward import (RewardScorer, ScorerConfig, build_pairset, embed_pairset, evaluate_scorer,
                                        list_scorers, ranking_from_scores, ranks_to_pairs, split_prompts,
                                        train_scorer)
from tests.conftest import shared


def test_ranks_to_pairs_ties_and_unranked():
    assert ranks_to_pairs([0, 1]) == [(0, 1)]
    assert sorted(ranks_to_pairs([1, 0, 1, 2])) == [(0, 3), (1, 0), (1, 2), (1, 3), (2, 3)]
    assert ranks_to_pairs([0, 0, 0]) == []
    assert ranks_to_pairs([0, None, 1]) == [(0, 2)]


def test_pairset_and_prompt_split():
    rows = [{"prompt": "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: What is 2+2?\n\nAssistant:",
             "chosen": "4", "rejected": "5"},
            {"prompt": [{"role": "user", "content": "what is 2+2?"}], "responses": ["four", "no", "4!"],
             "ranks": [0, 1, 0]},
            {"prompt": [{"role": "user", "content": "Name a colour"}], "responses": ["red", "blue"], "ranks": [0, 0]}]
    from neat_studio.scoring.datasets import rows_from_records

    ps = build_pairset(rows_from_records(rows))
    assert ps.prompts == ["What is 2+2?", "Name a colour"]  # last user turn; same normalised prompt merged
    assert ps.pairs.tolist() == [[0, 1], [2, 3], [4, 3]]
    assert ps.pair_prompt.tolist() == [0, 0, 0]
    m = split_prompts(100, 0.2, seed=3)
    assert m.sum() == 20 and np.array_equal(m, split_prompts(100, 0.2, seed=3))


def _fake_encode(texts):
    """Deterministic pseudo-embeddings; texts containing 'GOOD' share a direction the scorer must discover."""
    out = []
    good = np.random.default_rng(123).normal(size=384)
    for t in texts:
        seed = int.from_bytes(hashlib.sha1(t.encode()).digest()[:4], "big")
        v = np.random.default_rng(seed).normal(size=384)
        if "GOOD" in t:
            v = v + 3 * good
        out.append(v / np.linalg.norm(v))
    return np.asarray(out, dtype=np.float32)


def _synthetic_rows(n_prompts=120):
    rows = []
    for i in range(n_prompts):
        rows.append({"prompt": [{"role": "user", "content": f"question {i}"}],
                     "responses": [f"GOOD answer {i}", f"bad answer {i}", f"meh answer {i}", f"other GOOD {i}"],
                     "ranks": [0, 1, 1, 0]})
    return rows


def test_train_save_load_and_rank_synthetic(tmp_path):
    rows = _synthetic_rows()
    cfg = ScorerConfig(epochs=15)
    m = train_scorer(rows, tmp_path / "scorers", seed=1, dev_fraction=0.25, config=cfg, encode=_fake_encode)
    assert m["n_dev_prompts"] == 30 and m["n_train_prompts"] == 90
    assert m["n_dev_pairs"] == 30 * 4 and m["n_train_pairs"] == 90 * 4
    assert m["dev_acc"] >= 0.95, m
    path = tmp_path / "scorers" / m["scorer_version"]
    assert (path / "weights.npz").exists() and (path / "weights.npz").stat().st_size < 1_000_000
    meta = json.loads((path / "scorer.json").read_text())
    assert meta["scorer_version"] == m["scorer_version"] and meta["metrics"]["dev_acc"] == m["dev_acc"]
    sc = RewardScorer.load(path, encode=_fake_encode)
    s = sc.score(["question 7", "question 7"], ["GOOD answer 7", "bad answer 7"])
    assert s.shape == (2,) and s[0] > s[1]
    assert np.allclose(sc.score(["question 7"], ["GOOD answer 7"]), m["scorer"].score(["question 7"], ["GOOD answer 7"]))
    groups = sc.suggest_ranking("question 3", ["bad answer 3", "GOOD answer 3", "meh answer 3"], eps=0.0)
    assert groups[0] == [1] and sorted(groups[1] + (groups[2] if len(groups) > 2 else [])) == [0, 2]
    assert evaluate_scorer(sc, rows)["pairwise_acc"] >= 0.95
    # same data + seed -> same version; different seed -> different version
    m2 = train_scorer(rows, tmp_path / "scorers", seed=1, dev_fraction=0.25, config=ScorerConfig(epochs=15),
                      encode=_fake_encode)
    m3 = train_scorer(rows, None, seed=2, dev_fraction=0.25, config=ScorerConfig(epochs=15), encode=_fake_encode)
    assert m2["scorer_version"] == m["scorer_version"] != m3["scorer_version"]
    assert [s["scorer_version"] for s in list_scorers(tmp_path / "scorers")] == [m["scorer_version"]]
    with pytest.raises(ValueError):
        sc.score(["a"], ["b", "c"])


def test_train_rejects_rows_without_pairs():
    with pytest.raises(ValueError):
        train_scorer([{"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "ranks": [0, 0]}],
                     None, encode=_fake_encode)


def test_ranking_from_scores_groups_ties():
    assert ranking_from_scores([0.0, 2.0, 1.95, -1.0], eps=0.1) == [[1, 2], [0], [3]]
    assert ranking_from_scores([0.0, 2.0, 1.95, -1.0], eps=0.0) == [[1], [2], [0], [3]]
    assert ranking_from_scores([1.0, 1.0], eps=0.0) == [[0, 1]]


# -- real data (../shared/data) -------------------------------------------------------------------------------------
# Embedding is the expensive part (2 CPU cores); each subset is embedded once per module and the features reused.

@pytest.fixture(scope="module")
def hh_subset():
    from neat_studio.scoring.datasets import load_hh_pairs

    rows = load_hh_pairs(shared("derived", "hh_rlhf_harmless_test_pairs.jsonl"))[:1000]
    return rows, embed_pairset(build_pairset(rows))


@pytest.fixture(scope="module")
def coconot_subset():
    from neat_studio.scoring.datasets import load_coconot_pref

    rows = load_coconot_pref(shared("coconot", "coconot_pref.jsonl"))[:COCONOT_N]
    return rows, embed_pairset(build_pairset(rows))


COCONOT_N = 300


def test_scorer_beats_chance_on_heldout_hh_pairs(hh_subset, tmp_path):
    """First 1000 HH-RLHF harmless test pairs, split 50/50 BY PROMPT, seed 0. Measured dev accuracy 0.608
    (seeds 0-4: 0.592-0.622); on all 2,308 pairs with an 80/20 split: 0.633 mean over 5 seeds (0.607-0.664)."""
    rows, feats = hh_subset
    m = train_scorer(rows, tmp_path, seed=0, dev_fraction=0.5, features=feats)
    assert m["n_dev_pairs"] >= 450 and m["n_train_pairs"] >= 450
    assert m["dev_acc"] >= 0.56, m
    # reload from disk: the saved scorer reproduces the reported dev accuracy on the prompt-held-out pairs
    ps = build_pairset(rows)
    dev_pairs = ps.pairs[split_prompts(len(ps.prompts), 0.5, 0)[ps.pair_prompt]]
    sc = RewardScorer.load(m["path"])
    from neat_studio.scoring.reward import pairwise_accuracy

    assert round(pairwise_accuracy(sc.forward(feats), dev_pairs), 4) == m["dev_acc"]
    assert len(dev_pairs) == m["n_dev_pairs"]


def test_scorer_on_coconot_over_refusal_pairs(coconot_subset):
    """CoCoNot preference pairs (comply with benign look-alike prompts > over-refuse / weaker answer).
    First 300 pairs split 50/50 by prompt, seed 0: measured 0.879 (seeds 0-4: 0.865-0.893); all 927 pairs with an
    80/20 split: 0.883 mean over 5 seeds (0.864-0.898)."""
    rows, feats = coconot_subset
    m = train_scorer(rows, None, seed=0, dev_fraction=0.5, features=feats)
    assert m["n_dev_pairs"] >= 120
    assert m["dev_acc"] >= COCONOT_BOUND, m


COCONOT_BOUND = 0.80


def test_store_round_trip_listwise_rows_to_scores(tmp_path):
    """Train on the store's listwise rows (import rankings), write scores back with put_scores, read them."""
    store_mod = pytest.importorskip("neat_studio.store")
    from neat_studio.scoring.reward import score_store_rows

    st = store_mod.Store(tmp_path / "s.duckdb")
    try:
        recs = [{"messages": [{"role": "user", "content": f"question {i}"}], "source": "test", "tags": [],
                 "split": "train",
                 "responses": [{"text": f"GOOD answer {i}", "origin": "dataset:chosen", "rank": 0},
                               {"text": f"bad answer {i}", "origin": "dataset:rejected", "rank": 1}]}
                for i in range(40)]
        st.import_records(recs, actor="test")
        rows = st.listwise_rows()
        assert len(rows) == 40 and all(r["ranks"] == [0, 1] for r in rows)
        m = train_scorer(rows, tmp_path / "scorers", seed=0, dev_fraction=0.25, config=ScorerConfig(epochs=20),
                         encode=_fake_encode)
        assert m["dev_acc"] >= 0.9
        assert score_store_rows(st, m["scorer"], rows) == 80
        got = st.get_scores(m["scorer_version"])
        assert len(got) == 80
        for r in rows:
            a, b = (got[i] for i in r["response_ids"])
            assert a > b
    finally:
        st.close()
