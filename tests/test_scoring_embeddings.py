import threading

import numpy as np
import pytest

from neat_studio.scoring.embeddings import DIM, MODEL_ID, Embedder, cosine_search, embed_missing


@pytest.fixture(scope="module")
def emb():
    return Embedder.get()


def test_encode_shape_norm_and_cache(emb):
    texts = ["The cat sat on the mat.", "A completely different sentence about finance.", "The cat sat on the mat."]
    before = emb.n_encoded
    v = emb.encode(texts)
    assert v.shape == (3, DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(v[0], v[2])
    assert emb.n_encoded - before <= 2  # the duplicate inside the call is not re-run
    mid = emb.n_encoded
    v2 = emb.encode(list(reversed(texts)))
    assert emb.n_encoded == mid  # all cached: nothing embedded twice in-process
    assert np.array_equal(v2[::-1], v)
    assert emb.encode([]).shape == (0, DIM)
    assert Embedder.get() is emb


def test_lru_eviction_and_batching_consistency():
    e = Embedder(cache_size=2)
    a = e.encode(["alpha one", "beta two", "gamma three"], batch_size=2)
    assert e.cache_info()["entries"] == 2
    n = e.n_encoded
    e.encode(["gamma three"])
    assert e.n_encoded == n  # most recent entry kept
    e.encode(["alpha one"])
    assert e.n_encoded == n + 1  # evicted, so re-run
    b = Embedder(cache_size=10).encode(["alpha one", "beta two", "gamma three"], batch_size=1)
    assert np.allclose(a, b, atol=1e-5)


def test_thread_safe_concurrent_encode():
    e = Embedder()
    texts = [f"sentence number {i} about topic {i % 5}" for i in range(40)]
    results = {}

    def work(k):
        results[k] = e.encode(texts[k::4])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    serial = Embedder().encode(texts)
    for k in range(4):
        assert np.allclose(results[k], serial[k::4], atol=1e-5)


def test_cosine_search(emb):
    docs = ["How to bake bread at home", "Football match results from the weekend", "Recipe for sourdough loaf",
            "Stock market news today"]
    m = emb.encode(docs)
    q = emb.encode(["baking a loaf of bread"])[0]
    hits = cosine_search(q, ["bread", "football", "sourdough", "stocks"], m, top_k=2)
    assert {h[0] for h in hits} == {"bread", "sourdough"}
    assert hits[0][1] >= hits[1][1]
    assert cosine_search(q, ["bread", "football", "sourdough", "stocks"], m, top_k=1, exclude={"bread"})[0][0] == "sourdough"
    assert cosine_search(q, [], np.zeros((0, DIM), np.float32)) == []
    with pytest.raises(ValueError):
        cosine_search(q, ["a"], m)


class FakeStore:
    def __init__(self, items):
        self.items = dict(items)
        self.vecs = {}
        self.calls = []

    def missing_embeddings(self, kind, model_id):
        return [(i, t) for i, t in self.items.items() if (kind, i, model_id) not in self.vecs]

    def put_embeddings(self, kind, ids, vectors, model_id, actor="system"):
        self.calls.append((kind, list(ids), actor))
        for i, v in zip(ids, vectors):
            self.vecs[(kind, i, model_id)] = v
        return len(ids)


def test_embed_missing_never_reembeds():
    st = FakeStore({f"p{i}": f"prompt text {i}" for i in range(5)})
    seen = []
    assert embed_missing(st, "prompt", batch_size=2, chunk=2, progress=lambda d, t: seen.append((d, t))) == 5
    assert seen[-1] == (5, 5) and len(st.calls) == 3
    assert embed_missing(st, "prompt") == 0
    st.items["p9"] = "a new prompt"
    assert embed_missing(st, "prompt", actor="alice") == 1
    assert st.calls[-1] == ("prompt", ["p9"], "alice")
    assert all(k[2] == MODEL_ID for k in st.vecs)


def test_embed_missing_with_real_store(tmp_path):
    store_mod = pytest.importorskip("neat_studio.store")
    st = store_mod.Store(tmp_path / "s.duckdb")
    try:
        ids = st.add_prompts([{"messages": [{"role": "user", "content": f"question {i}"}], "source": "t"}
                              for i in range(3)], actor="t")
        assert embed_missing(st, "prompt") == 3
        assert embed_missing(st, "prompt") == 0
        got_ids, mat = st.get_embeddings("prompt", MODEL_ID)
        assert sorted(got_ids) == sorted(ids) and mat.shape == (3, DIM)
        qv = Embedder.get().encode(["question 1"])[0]
        assert cosine_search(qv, got_ids, mat, top_k=1)[0][1] > 0.99
    finally:
        st.close()


def test_background_embedding_catches_up_without_blocking(tmp_path):
    """New rows get vectors from the Studio's background embedder; an import returns before they exist."""
    import json
    import time

    from neat_studio.config import Workspace
    from neat_studio.scoring.embeddings import MODEL_ID
    from neat_studio.studio import Studio

    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"background prompt {i}"}) + "\n" for i in range(5)))
    with Studio(Workspace(tmp_path / "ws").ensure(), model_spec="tiny") as st:
        st.start_background_embedding(interval_s=0.5)
        st.import_file(f)
        deadline = time.time() + 120
        while st.store.missing_embeddings("prompt", MODEL_ID) and time.time() < deadline:
            time.sleep(0.5)
        ids, mat = st.store.get_embeddings("prompt", MODEL_ID)
        assert len(ids) == 5 and mat.shape == (5, 384)
        st.embed_soon()  # nothing new: nothing is embedded twice
        time.sleep(1.5)
        assert len(st.store.get_embeddings("prompt", MODEL_ID)[0]) == 5
    assert st._embed_thread is None  # close() stopped the thread
