"""Backup while the store is in use, restore, and the round trip."""
import threading

import numpy as np
import pytest

from neat_studio.store import SchemaError, Store


def _fill(s, n=30):
    ids = s.add_prompts([{"text": f"prompt {i}", "source": "t", "tags": ["x"]} for i in range(n)], actor="a")
    for pid in ids:
        rids = s.add_responses([{"prompt_id": pid, "text": f"r{j} of {pid}", "origin": "policy"} for j in range(3)],
                               actor="a")
        s.save_annotation(pid, "ann", [[rids[0]], [rids[1], rids[2]]])
    s.put_embeddings("prompt", ids[:2], np.ones((2, 384), dtype=np.float32), "m")
    return ids


def test_backup_restore_round_trip(tmp_path):
    db = tmp_path / "studio.duckdb"
    with Store(db) as s:
        ids = _fill(s)
        s.save_system_prompt("toxic", "negative", "be rude", None, author="a")
        rows_before = s.listwise_rows()
        rep = s.backup(tmp_path / "bk.duckdb", parquet_dir=tmp_path / "pq")
        assert rep["counts"]["prompts"] == 30 and rep["counts"]["annotations"] == 30
        assert (tmp_path / "pq" / "schema.sql").exists() and list((tmp_path / "pq").glob("*.parquet"))
        # work after the backup ...
        s.add_prompts([{"text": "later", "source": "t"}], actor="a")
        with pytest.raises(ValueError, match="already exists"):
            s.backup(tmp_path / "bk.duckdb")
    out = Store.restore(tmp_path / "bk.duckdb", db)
    assert out["previous_kept_as"] and out["counts"]["prompts"] == 30
    with Store(db) as s:
        assert s.count_prompts() == 30 and s.listwise_rows() == rows_before
        assert s.resolve_ref("toxic@1")["text"] == "be rude"
        got, vec = s.get_embeddings("prompt", "m")
        assert sorted(got) == sorted(ids[:2]) and vec.shape == (2, 384)
    with Store(out["previous_kept_as"]) as old:  # nothing lost: the replaced file is kept
        assert old.count_prompts() == 31


def test_backup_is_consistent_under_concurrent_writes(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        pid = s.add_prompts([{"text": "p", "source": "t"}], actor="a")[0]
        rids = s.add_responses([{"prompt_id": pid, "text": f"r{j}", "origin": "policy"} for j in range(2)], actor="a")
        stop = threading.Event()

        def writer():
            while not stop.is_set():
                s.save_annotation(pid, "w", [[rids[0]], [rids[1]]])

        t = threading.Thread(target=writer)
        t.start()
        try:
            reps = [s.backup(tmp_path / f"b{i}.duckdb") for i in range(3)]
        finally:
            stop.set()
            t.join()
        for r in reps:
            with Store(r["path"]) as b:  # every copy opens cleanly and matches its own counts
                assert b.counts()["annotations"] == r["counts"]["annotations"]


def test_restore_refuses_foreign_file(tmp_path):
    import duckdb

    bad = tmp_path / "other.duckdb"
    con = duckdb.connect(str(bad))
    con.execute("CREATE TABLE t (x INT)")
    con.close()
    with pytest.raises(SchemaError):
        Store.restore(bad, tmp_path / "studio.duckdb")
    assert not (tmp_path / "studio.duckdb").exists()
