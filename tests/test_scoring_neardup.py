import numpy as np
import pytest

from neat_studio.scoring.neardup import dedupe_indices, near_duplicates


def test_near_duplicates_constructed_vectors():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 384)).astype(np.float32)
    noisy = base[1] + 0.05 * rng.normal(size=384).astype(np.float32)  # near copy of row 1
    v = np.vstack([base, noisy[None], base[0][None] * 3.0])  # row 5 = row 0 scaled (cosine 1)
    pairs = near_duplicates(v, threshold=0.92)
    assert [(i, j) for i, j, _ in pairs] == [(0, 5), (1, 4)]
    assert all(s >= 0.92 for *_, s in pairs)
    assert pytest.approx(pairs[0][2], abs=1e-5) == 1.0
    assert dedupe_indices(v, 0.92) == [0, 1, 2, 3]


def test_dedupe_keeps_first_and_chains_through_dropped_rows():
    # b ~ a (0.95), c ~ b (0.95) but c !~ a (cos ~0.81): keep-first drops b, keeps c (its only dup was dropped)
    a = np.array([1.0, 0.0, 0.0])
    t = np.arccos(0.95)
    b = np.array([np.cos(t), np.sin(t), 0.0])
    c = np.array([np.cos(2 * t), np.sin(2 * t), 0.0])
    v = np.vstack([a, b, c])
    assert [(i, j) for i, j, _ in near_duplicates(v, 0.92)] == [(0, 1), (1, 2)]
    assert dedupe_indices(v, 0.92) == [0, 2]


def test_blockwise_matches_dense():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(50, 8)).astype(np.float32)
    v[30] = v[3] + 0.01
    v[41] = v[7] * 2
    dense = near_duplicates(v, 0.9, block=1000)
    small = near_duplicates(v, 0.9, block=7)
    assert [(i, j) for i, j, _ in dense] == [(i, j) for i, j, _ in small]
    assert (3, 30) in [(i, j) for i, j, _ in dense] and (7, 41) in [(i, j) for i, j, _ in dense]


def test_real_embeddings_paraphrase_vs_unrelated():
    from neat_studio.scoring.embeddings import Embedder

    texts = [
        "How do I bake a chocolate cake at home?",
        "How can I bake a chocolate cake at home?",          # 1: paraphrase of 0
        "What is the capital city of France?",
        "Which city is the capital of France?",              # 3: paraphrase of 2
        "how do i bake a chocolate cake at home",            # 4: case/punctuation copy of 0
        "Explain how photosynthesis works in plants.",       # 5: unrelated
        "Write a poem about the ocean at night.",
        "Write a short poem about the ocean at night.",      # 7: small edit of 6
        "Write a poem about the mountains in the morning.",  # 8: same task, different subject
    ]
    v = Embedder.get().encode(texts)
    pairs = {(i, j) for i, j, _ in near_duplicates(v, 0.92)}
    assert pairs == {(0, 1), (0, 4), (1, 4), (2, 3), (6, 7)}
    assert dedupe_indices(v, 0.92) == [0, 2, 5, 6, 8]
    sims = v @ v.T
    assert sims[0, 2] < 0.5 and sims[5, 6] < 0.5  # unrelated texts are far below the threshold


def test_near_duplicate_candidates_are_hidden_from_annotation(tmp_path):
    """A generated paraphrase of an earlier candidate is left out of the Annotate view (and so of snapshots);
    a human edit, however close, never is; the responses all stay in the store."""
    from neat_studio.config import Workspace
    from neat_studio.scoring.embeddings import embed_missing
    from neat_studio.studio import Studio

    with Studio(Workspace(tmp_path / "ws").ensure(), model_spec="tiny") as st:
        pid = st.store.add_prompts([{"text": "How do I make tea?", "source": "t"}], actor="t")[0]
        texts = ["Boil water, pour it over the tea leaves and let it steep for three minutes.",
                 "Boil water, pour it over the tea leaves, and let it steep for three minutes!",
                 "The stock market closed higher today after strong earnings reports."]
        ids = st.store.add_responses([{"prompt_id": pid, "text": t, "origin": "policy"} for t in texts], actor="t")
        edit = st.edit_response(ids[0], "Boil water, pour it over the tea leaves and let it steep for 3 minutes.",
                                actor="t")
        assert st.annotation_item(pid, "a")["hidden_duplicates"] == {}  # nothing embedded yet: nothing judged
        embed_missing(st.store, "response")
        item = st.annotation_item(pid, "a")
        assert set(item["hidden_duplicates"]) == {ids[1]} and item["hidden_duplicates"][ids[1]]["of"] == ids[0]
        assert {r["id"] for r in item["responses"]} == {ids[0], ids[2], edit}
        assert len(st.store.list_responses(pid)) == 4
        st.store.set_setting("near_duplicate_threshold", 0.999999, actor="t")  # configurable
        assert st.annotation_item(pid, "a")["hidden_duplicates"] == {}


def test_queue_skips_a_prompt_left_with_one_visible_candidate(tmp_path):
    """Hiding a near-duplicate can leave a prompt one visible candidate, which cannot be ranked: the queue passes
    over it instead of serving a prompt whose submit must fail."""
    from neat_studio.config import Workspace
    from neat_studio.scoring.embeddings import embed_missing
    from neat_studio.studio import Studio

    with Studio(Workspace(tmp_path / "ws").ensure(), model_spec="tiny") as st:
        dup, ok = st.store.add_prompts([{"text": "How do I make tea?", "source": "t"},
                                        {"text": "How do I make coffee?", "source": "t"}], actor="t")
        st.store.add_responses([{"prompt_id": dup, "text": t, "origin": "policy"} for t in (
            "Boil water, pour it over the tea leaves and let it steep for three minutes.",
            "Boil water, pour it over the tea leaves, and let it steep for three minutes!")], actor="t")
        st.store.add_responses([{"prompt_id": ok, "text": t, "origin": "policy"} for t in (
            "Grind the beans and brew them with hot water.", "Buy a coffee at the cafe on the corner.")], actor="t")
        assert st.next_prompt("a") == dup  # nothing embedded yet: both candidates count
        embed_missing(st.store, "response")
        assert len(st.annotation_item(dup, "a")["responses"]) == 1
        assert st.next_prompt("a") == ok
