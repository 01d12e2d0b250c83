"""Store: schema migrations, transactions, dedup, system prompt versions, annotations, listwise rows."""
import threading

import duckdb
import numpy as np
import pytest

from neat_studio.store import (EMBED_DIM, MIGRATIONS, SCHEMA_VERSION, SchemaError, Store, combine_rankings,
                               parse_ref)


@pytest.fixture
def st(tmp_path):
    s = Store(tmp_path / "studio.duckdb")
    yield s
    s.close()


def _prompt_with_responses(st, text="How do I bake bread?", n=3, origin="policy"):
    pid = st.add_prompts([{"text": text, "source": "test"}], actor="t")[0]
    rids = st.add_responses([{"prompt_id": pid, "text": f"answer {i} to {text}", "origin": origin}
                             for i in range(n)], actor="t")
    return pid, rids


def _table_count(st, table):
    with st._lock:
        return st._con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


# -- migrations ------------------------------------------------------------------------------------------------
def test_fresh_database_is_at_latest_schema_version(tmp_path):
    with Store(tmp_path / "a.duckdb") as s:
        assert s.schema_version == SCHEMA_VERSION == MIGRATIONS[-1][0]
        assert s.counts()["prompts"] == 0


def test_old_version_database_is_migrated_forward_and_keeps_data(tmp_path):
    path = tmp_path / "old.duckdb"
    with Store(path, migrations=MIGRATIONS[:1]) as old:
        assert old.schema_version == 1
        pid = old.add_prompts([{"text": "kept across migration"}], actor="t")[0]
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.get_prompt(pid)["text"] == "kept across migration"
        run_id = s.create_run("r1", "neat", {"lr": 1e-5}, actor="t")  # table added by migration 2
        assert s.get_run(run_id)["config"] == {"lr": 1e-5}


def test_extra_migration_is_applied_in_a_transaction(tmp_path):
    path = tmp_path / "m.duckdb"
    Store(path).close()
    extra = MIGRATIONS + [(SCHEMA_VERSION + 1, ["ALTER TABLE prompts ADD COLUMN note VARCHAR"])]
    with Store(path, migrations=extra) as s:
        assert s.schema_version == SCHEMA_VERSION + 1
    broken = MIGRATIONS + [(SCHEMA_VERSION + 1, ["ALTER TABLE prompts ADD COLUMN n2 VARCHAR", "NOT SQL AT ALL"])]
    path2 = tmp_path / "m2.duckdb"
    Store(path2).close()
    with pytest.raises(SchemaError, match="left at version"):
        Store(path2, migrations=broken)
    with Store(path2) as s:  # the failed migration rolled back completely
        assert s.schema_version == SCHEMA_VERSION
        cols = [r[0] for r in s._con.execute("SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'prompts'").fetchall()]
        assert "n2" not in cols


def test_newer_schema_version_gives_clear_error(tmp_path):
    path = tmp_path / "new.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_meta VALUES (99, now()::TIMESTAMP)")
    con.close()
    with pytest.raises(SchemaError, match=r"schema version 99, newer than this NEAT Studio supports"):
        Store(path)


def test_foreign_duckdb_file_is_refused(tmp_path):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE something (a INT)")
    con.close()
    with pytest.raises(SchemaError, match="not a NEAT Studio database"):
        Store(path)


# -- prompts ---------------------------------------------------------------------------------------------------
def test_prompt_dedup_merges_tags_and_keeps_id(st):
    a = st.add_prompts([{"text": "Tell me a joke", "tags": ["fun"], "source": "s1"}], actor="t")
    b = st.add_prompts([{"text": "  Tell me   a joke ", "tags": ["humour"], "source": "s2", "split": "dev"},
                        {"messages": [{"role": "user", "content": "Other"}]}], actor="t")
    assert b[0] == a[0]
    p = st.get_prompt(a[0])
    assert p["tags"] == ["fun", "humour"]
    assert p["source"] == "s1" and p["split"] == "train"  # first source and split are kept
    assert p["messages"] == [{"role": "user", "content": "Tell me a joke"}]
    assert st.count_prompts() == 2
    assert st.prompt_sources() == ["manual", "s1"]
    assert st.prompt_tags() == ["fun", "humour"]


def test_bad_row_in_multi_row_add_leaves_nothing(st):
    with pytest.raises(ValueError, match="prompt row 2"):
        st.add_prompts([{"text": "ok 1"}, {"text": "ok 2"}, {"text": "   "}], actor="t")
    assert st.count_prompts() == 0
    pid = st.add_prompts([{"text": "base"}], actor="t")[0]
    with pytest.raises(ValueError, match="unknown prompt id"):
        st.add_responses([{"prompt_id": pid, "text": "fine", "origin": "policy"},
                          {"prompt_id": "nope", "text": "orphan", "origin": "policy"}], actor="t")
    assert st.list_responses(pid) == []
    with pytest.raises(ValueError, match="invalid origin"):
        st.add_responses([{"prompt_id": pid, "text": "x", "origin": "policy"},
                          {"prompt_id": pid, "text": "y", "origin": "negative:bad name@1"}], actor="t")
    assert _table_count(st, "responses") == 0


def test_failure_inside_transaction_rolls_back_all_statements(st, monkeypatch):
    st.add_prompts([{"text": "before"}], actor="t")
    audit_before = _table_count(st, "audit_log")

    def boom(*a, **k):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(st, "_audit", boom)  # fails after the rows were inserted, inside the transaction
    with pytest.raises(RuntimeError, match="simulated"):
        st.add_prompts([{"text": f"new {i}"} for i in range(5)], actor="t")
    with pytest.raises(RuntimeError, match="simulated"):
        st.import_records([{"text": "imp", "source": "x", "responses": [
            {"text": "a", "origin": "dataset:chosen", "rank": 0}, {"text": "b", "origin": "dataset:rejected",
                                                                  "rank": 1}]}], actor="t")
    monkeypatch.undo()
    assert st.count_prompts() == 1
    assert _table_count(st, "responses") == 0 and _table_count(st, "annotations") == 0
    assert _table_count(st, "audit_log") == audit_before
    st.add_prompts([{"text": "after"}], actor="t")  # the connection is usable again
    assert st.count_prompts() == 2


def test_list_prompts_filters_status_and_order(st):
    pid1, r1 = _prompt_with_responses(st, "first question")
    pid2, _ = _prompt_with_responses(st, "second question")
    st.set_tags([pid2], ["x", "y"], actor="t")
    st.set_split([pid1], "test", actor="t")
    assert [p["id"] for p in st.list_prompts()] == [pid1, pid2]
    assert [p["id"] for p in st.list_prompts(order="newest")] == [pid2, pid1]
    assert [p["id"] for p in st.list_prompts(search="SECOND")] == [pid2]
    assert [p["id"] for p in st.list_prompts(search="%")] == []  # no LIKE wildcards from user text
    assert [p["id"] for p in st.list_prompts(tag="y")] == [pid2]
    assert [p["id"] for p in st.list_prompts(split="test")] == [pid1]
    st.save_annotation(pid1, "alice", [[r1[0]], [r1[1]]])
    assert [p["id"] for p in st.list_prompts(status="annotated")] == [pid1]
    assert [p["id"] for p in st.list_prompts(status="unannotated", annotator="alice")] == [pid2]
    assert [p["id"] for p in st.list_prompts(status="unannotated", annotator="bob")] == [pid1, pid2]
    assert st.count_prompts(status="annotated", annotator="alice") == 1
    st.add_prompts([{"text": "no responses yet"}], actor="t")
    assert st.count_prompts(min_responses=2) == 2 and st.count_prompts() == 3
    assert [p["id"] for p in st.list_prompts(min_responses=1, status="unannotated")] == [pid2]
    listed = st.list_prompts(limit=1, offset=1, min_responses=2)
    assert [p["id"] for p in listed] == [pid2] and listed[0]["n_responses"] == 3
    assert st.set_tags([pid2], ["x"], actor="t", mode="remove") == 1
    assert st.get_prompt(pid2)["tags"] == ["y"]
    with pytest.raises(ValueError, match="order"):
        st.list_prompts(order="id; DROP TABLE prompts")
    with pytest.raises(ValueError, match="split"):
        st.set_split([pid1], "holdout", actor="t")
    with pytest.raises(ValueError, match="unknown prompt"):
        st.set_tags([pid1, "missing"], ["z"], actor="t")
    assert st.get_prompt(pid1)["tags"] == []


def test_sample_prompts_is_reproducible(st):
    st.add_prompts([{"text": f"p{i}", "tags": ["even" if i % 2 == 0 else "odd"]} for i in range(20)], actor="t")
    a = st.sample_prompts(5, seed=3)
    assert a == st.sample_prompts(5, seed=3) and len(set(a)) == 5
    evens = st.sample_prompts(100, seed=1, tag="even")
    assert len(evens) == 10 and all("even" in st.get_prompt(i)["tags"] for i in evens)


# -- system prompts --------------------------------------------------------------------------------------------
def test_system_prompt_versions_are_immutable(st):
    v1 = st.save_system_prompt("toxic", "negative", "Be rude.", {"temperature": 0.9, "k": 2}, author="ann")
    v1_again = st.save_system_prompt("toxic", "negative", "Be rude.", {"k": 2, "temperature": 0.9}, author="bob")
    v2 = st.save_system_prompt("toxic", "negative", "Be very rude.", {"temperature": 0.9, "k": 2}, author="ann")
    v3 = st.save_system_prompt("toxic", "negative", "Be very rude.", {"temperature": 1.0, "k": 2}, author="ann")
    assert (v1, v1_again, v2, v3) == (1, 1, 2, 3)
    one = st.get_system_prompt("toxic", 1)
    assert one["text"] == "Be rude." and one["params"] == {"temperature": 0.9, "k": 2} and one["author"] == "ann"
    assert one["parent_version"] is None and st.get_system_prompt("toxic", 2)["parent_version"] == 1
    assert st.get_system_prompt("toxic")["version"] == 3
    assert st.resolve_ref("toxic@2")["text"] == "Be very rude."
    assert st.resolve_ref("toxic")["version"] == 3
    assert [v["version"] for v in st.list_versions("toxic")] == [1, 2, 3]
    st.save_system_prompt("helpful", "positive", "Be kind.", None, author="ann")
    listed = st.list_system_prompts()
    assert [(p["name"], p["version"], p["n_versions"]) for p in listed] == [("helpful", 1, 1), ("toxic", 3, 3)]
    assert [p["name"] for p in st.list_system_prompts(kind="negative")] == ["toxic"]
    assert not any(n.startswith("update") for n in dir(st) if "system" in n)  # no UPDATE path exists
    with pytest.raises(ValueError, match="no version 9 .latest is 3"):
        st.resolve_ref("toxic@9")
    with pytest.raises(ValueError, match="no system prompt named 'ghost'"):
        st.resolve_ref("ghost")
    with pytest.raises(ValueError, match="invalid system prompt reference"):
        st.resolve_ref("toxic@v2")
    with pytest.raises(ValueError, match="is a negative prompt"):
        st.save_system_prompt("toxic", "positive", "Be nice.", None, author="ann")
    assert parse_ref("a.b-c@12") == ("a.b-c", 12)


@pytest.mark.parametrize("name", ["x'; DROP TABLE prompts;--", "", "-lead", "has space", "a" * 65, "x@1",
                                  "ünicode", None])
def test_bad_system_prompt_names_are_rejected(st, name):
    st.add_prompts([{"text": "still here"}], actor="t")
    with pytest.raises(ValueError, match="invalid system prompt name"):
        st.save_system_prompt(name, "negative", "text", None, author="ann")
    assert st.list_system_prompts() == []
    assert st.count_prompts() == 1


@pytest.mark.parametrize("kind,text,params,msg", [
    ("evil", "t", None, "kind"), ("negative", "  ", None, "must not be empty"),
    ("negative", "t", {"temperature": -1}, "out of range"), ("negative", "t", {"top_p": 0}, "out of range"),
    ("negative", "t", {"k": 1.5}, "integer"), ("negative", "t", {"beam": 2}, "unknown generation parameter"),
    ("negative", "t", {"max_new_tokens": True}, "integer"),
])
def test_bad_system_prompt_fields_are_rejected(st, kind, text, params, msg):
    with pytest.raises(ValueError, match=msg):
        st.save_system_prompt("ok", kind, text, params, author="ann")
    assert st.counts()["system_prompt_versions"] == 0


# -- responses and annotations ---------------------------------------------------------------------------------
def test_response_dedup_and_edit_keeps_original(st):
    pid, rids = _prompt_with_responses(st, n=2)
    again = st.add_responses([{"prompt_id": pid, "text": "answer 0 to How do I bake bread?", "origin": "policy"},
                              {"prompt_id": pid, "text": "answer 0 to How do I bake bread?",
                               "origin": "negative:toxic@1"}], actor="t")
    assert again[0] == rids[0] and again[1] not in rids
    assert len(st.list_responses(pid)) == 3
    new_id = st.edit_response(rids[0], "A better answer.", actor="alice")
    assert st.get_response(rids[0])["text"] == "answer 0 to How do I bake bread?"
    edited = st.get_response(new_id)
    assert edited["origin"] == "human" and edited["parent_response_id"] == rids[0]
    assert edited["created_by"] == "alice" and edited["prompt_id"] == pid
    assert len(st.list_responses(pid)) == 4
    with pytest.raises(ValueError, match="identical"):
        st.edit_response(rids[1], "answer 1 to How do I bake bread?", actor="alice")
    with pytest.raises(ValueError, match="unknown response"):
        st.edit_response("nope", "x", actor="alice")


def test_ranking_with_ties_round_trips_to_listwise_ranks(st):
    pid, (a, b, c) = _prompt_with_responses(st)
    st.save_annotation(pid, "alice", [[a], [b, c]], marks={a: "pos", c: "neg"}, comment="fine")
    ann = st.latest_annotation(pid, "alice")
    assert ann["ranking"] == [[a], [b, c]] and ann["marks"] == {a: "pos", c: "neg"} and ann["comment"] == "fine"
    rows = st.listwise_rows()
    assert len(rows) == 1
    row = rows[0]
    assert row["response_ids"] == [a] + sorted([b, c])
    assert row["ranks"] == [0, 1, 1]
    assert row["annotators"] == ["alice"]
    assert set(row) == {"prompt_id", "prompt", "responses", "ranks", "origins", "response_ids", "annotators",
                        "split", "tags"}
    assert row["prompt"] == [{"role": "user", "content": "How do I bake bread?"}]
    assert row["responses"][0] == "answer 0 to How do I bake bread?" and row["origins"] == ["policy"] * 3
    assert row["split"] == "train" and row["tags"] == []


def test_two_annotators_are_combined_by_mean_group_index(st):
    pid, (a, b, c) = _prompt_with_responses(st)
    st.save_annotation(pid, "alice", [[a], [b], [c]])
    st.save_annotation(pid, "bob", [[b], [a], [c]])
    row = st.listwise_rows()[0]
    # means: a=0.5, b=0.5, c=2 -> dense [0, 0, 1]
    assert dict(zip(row["response_ids"], row["ranks"])) == {a: 0, b: 0, c: 1}
    assert row["annotators"] == ["alice", "bob"]
    # a: (0+1)/2 = .5, b: (1+1)/2 = 1, c: (2+0)/2 = 1
    assert combine_rankings([[[a], [b], [c]], [[c], [a, b]]]) == [[a], sorted([b, c])]


def test_latest_annotation_per_annotator_counts(st):
    pid, (a, b, c) = _prompt_with_responses(st)
    first = st.save_annotation(pid, "alice", [[a], [b], [c]])
    second = st.save_annotation(pid, "alice", [[c], [b]])
    assert [h["id"] for h in st.annotation_history(pid, "alice")] == [first, second]
    assert st.latest_annotation(pid, "alice")["id"] == second
    assert [x["id"] for x in st.latest_annotations(pid)] == [second]
    row = st.listwise_rows()[0]
    assert row["response_ids"] == [c, b] and row["ranks"] == [0, 1]  # a is in no counted ranking: left out
    st.save_annotation(pid, "alice", [], comment="b reads oddly", marks={b: "neg"})
    assert st.listwise_rows()[0]["response_ids"] == [c, b]  # a comment or marks alone keep her ranking
    with pytest.raises(ValueError, match="at least two responses"):
        st.save_annotation(pid, "alice", [[a]])  # one response has nothing to be ranked against
    st.save_annotation(pid, "alice", [], flagged=True, comment="prompt is unclear")
    assert st.listwise_rows() == []  # alice withdrew her ranking
    assert st.listwise_rows(min_responses=1) == []
    prog = st.annotator_progress()
    assert len(prog) == 1
    assert (prog[0]["annotator"], prog[0]["done"], prog[0]["annotations"], prog[0]["flagged_ever"]) == \
        ("alice", 1, 4, 1)


@pytest.mark.parametrize("ranking,msg", [
    ("a", "list of groups"), ([["ZZ"]], "does not belong"), ([["A"], []], "group 1 is empty"),
    ([["A"], ["A"]], "appears twice"), (["A"], "must be a list of response ids"), ([], "empty annotation"),
])
def test_annotation_validation_errors_write_nothing(st, ranking, msg):
    pid, (a, b, c) = _prompt_with_responses(st)
    other_pid, (x, *_) = _prompt_with_responses(st, "another prompt")
    ranking = [[{"A": a, "ZZ": x}.get(i, i) for i in g] if isinstance(g, list) else {"A": a}.get(g, g)
               for g in ranking] if isinstance(ranking, list) else ranking
    with pytest.raises(ValueError, match=msg):
        st.save_annotation(pid, "alice", ranking)
    assert _table_count(st, "annotations") == 0


def test_annotation_other_validation(st):
    pid, (a, b, c) = _prompt_with_responses(st)
    with pytest.raises(ValueError, match="mark for"):
        st.save_annotation(pid, "alice", [[a]], marks={a: "great"})
    with pytest.raises(ValueError, match="unknown prompt"):
        st.save_annotation("nope", "alice", [[a]])
    with pytest.raises(ValueError, match="reserved for imports"):
        st.save_annotation(pid, "import:x", [[a]])
    with pytest.raises(ValueError, match="annotator"):
        st.save_annotation(pid, "  ", [[a]])
    assert _table_count(st, "annotations") == 0


def test_next_in_queue(st):
    p1, r1 = _prompt_with_responses(st, "q1")
    _single, _ = _prompt_with_responses(st, "only one response", n=1)
    p3, r3 = _prompt_with_responses(st, "q3")
    assert st.next_in_queue("alice") == p1
    assert st.next_in_queue("alice", skip_ids=[p1]) == p3
    st.save_annotation(p1, "alice", [[r1[0]], [r1[1]]])
    assert st.next_in_queue("alice") == p3
    assert st.next_in_queue("bob") == p1
    st.save_annotation(p3, "alice", [[r3[0]], [r3[1]]])
    assert st.next_in_queue("alice") is None
    assert st.next_in_queue("alice", include_annotated=True) == p1
    assert st.next_in_queue("alice", min_responses=1, skip_ids=[]) == _single


# -- import ----------------------------------------------------------------------------------------------------
def _records():
    return [
        {"messages": [{"role": "user", "content": "How to pick a lock?"}], "source": "hh:test", "tags": ["harmless"],
         "split": "train", "responses": [{"text": "I can't help with that.", "origin": "dataset:chosen", "rank": 0},
                                          {"text": "Use a tension wrench.", "origin": "dataset:rejected", "rank": 1}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "Tell me a fact"}], "source": "hh:test", "tags": [], "split": "dev",
         "responses": [{"text": "Water boils at 100 C at sea level.", "origin": "dataset:chosen", "rank": 0},
                       {"text": "No.", "origin": "dataset:rejected", "rank": 1},
                       {"text": "unranked candidate", "origin": "dataset", "rank": None}]},
        {"text": "A plain prompt without responses", "source": "hh:test", "responses": []},
    ]


def test_import_is_one_transaction_and_idempotent(st):
    rep = st.import_records(_records(), actor="t")
    assert rep == {"records": 3, "prompts_added": 3, "prompts_existing": 0, "tags_merged": 0, "split_kept": 0,
                   "responses_added": 5, "responses_existing": 0, "annotations_added": 2, "pairs_unranked": 0,
                   "nothing_new": False}
    again = st.import_records(_records(), actor="t")
    assert again == {"records": 3, "prompts_added": 0, "prompts_existing": 3, "tags_merged": 0, "split_kept": 0,
                     "responses_added": 0, "responses_existing": 5, "annotations_added": 0, "pairs_unranked": 0,
                     "nothing_new": True}
    assert st.counts()["prompts"] == 3 and st.counts()["responses"] == 5 and st.counts()["imported_rankings"] == 2
    rows = st.listwise_rows()
    assert len(rows) == 2
    by_text = {r["prompt"][-1]["content"]: r for r in rows}
    lock = by_text["How to pick a lock?"]
    assert lock["responses"] == ["I can't help with that.", "Use a tension wrench."]
    assert lock["ranks"] == [0, 1] and lock["origins"] == ["dataset:chosen", "dataset:rejected"]
    assert lock["annotators"] == ["import:hh:test"] and lock["tags"] == ["harmless"]
    fact = by_text["Tell me a fact"]
    assert fact["split"] == "dev" and len(fact["responses"]) == 2  # the unranked candidate is left out
    assert st.listwise_rows(include_imported=False) == []
    assert st.listwise_rows(split="dev")[0]["prompt_id"] == fact["prompt_id"]
    # a bad record anywhere: nothing of the file is written
    bad = _records() + [{"text": "new one"}, {"text": "broken", "responses": [{"text": "x", "origin": "dataset",
                                                                              "rank": -1}]}]
    with pytest.raises(ValueError, match="import record 4: response 0: rank"):
        st.import_records(bad, actor="t")
    assert st.count_prompts() == 3


def test_import_merges_duplicate_prompts_and_humans_override(st):
    recs = [{"text": "Q", "source": "ds", "responses": [{"text": "c1", "origin": "dataset:chosen", "rank": 0},
                                                        {"text": "r1", "origin": "dataset:rejected", "rank": 1}]},
            {"text": "Q", "source": "ds", "responses": [{"text": "c2", "origin": "dataset:chosen", "rank": 0},
                                                        {"text": "r2", "origin": "dataset:rejected", "rank": 1}]}]
    rep = st.import_records(recs, actor="t")
    assert rep["prompts_added"] == 1 and rep["responses_added"] == 4 and rep["annotations_added"] == 1
    # one ranking c1=c2 > r1=r2 would also state c1>r2 and c2>r1, which no record gave: the second pair is left
    # unranked (its responses are stored, for a human to rank) and reported
    assert rep["pairs_unranked"] == 1
    row = st.listwise_rows()[0]
    assert dict(zip(row["responses"], row["ranks"])) == {"c1": 0, "r1": 1}
    assert len(st.list_responses(row["prompt_id"])) == 4
    assert st.import_records(recs[:1], actor="t")["nothing_new"] is True
    # pairs that one ranking states exactly are merged: c1>r1 then c1>c3 (c1 > r1 = c3) ...
    more = [{"text": "Q", "source": "ds", "responses": [{"text": "c1", "origin": "dataset:chosen", "rank": 0},
                                                         {"text": "c3", "origin": "dataset:rejected", "rank": 1}]}]
    assert st.import_records(more, actor="t")["pairs_unranked"] == 0
    assert dict(zip(*(st.listwise_rows()[0][k] for k in ("responses", "ranks")))) == {"c1": 0, "r1": 1, "c3": 1}
    # ... a contradiction (r1 > c1) is not
    back = [{"text": "Q", "source": "ds", "responses": [{"text": "r1", "origin": "dataset:rejected", "rank": 0},
                                                         {"text": "c1", "origin": "dataset:chosen", "rank": 1}]}]
    assert st.import_records(back, actor="t")["pairs_unranked"] == 1
    row = st.listwise_rows()[0]
    assert dict(zip(row["responses"], row["ranks"])) == {"c1": 0, "r1": 1, "c3": 1}
    ids = {r["text"]: r["id"] for r in st.list_responses(row["prompt_id"])}
    st.save_annotation(row["prompt_id"], "alice", [[ids["r2"]], [ids["c1"]]])
    human = st.listwise_rows()[0]
    assert human["responses"] == ["r2", "c1"] and human["ranks"] == [0, 1] and human["annotators"] == ["alice"]
    assert st.listwise_rows(annotated_only=True)[0]["annotators"] == ["alice"]


# -- concurrency -----------------------------------------------------------------------------------------------
def test_concurrent_annotations_are_all_saved_exactly_once(st):
    pid, rids = _prompt_with_responses(st, n=4)
    saved: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(k):
        try:
            for j in range(50):
                order = rids[(k + j) % 4:] + rids[:(k + j) % 4]
                aid = st.save_annotation(pid, f"annotator{k}", [[order[0]], order[1:3], [order[3]]],
                                         comment=f"{k}-{j}")
                with lock:
                    saved.append(aid)
                if j % 10 == 0:  # readers interleave with the writers
                    assert st.get_prompt(pid)["id"] == pid
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(saved) == 400 and len(set(saved)) == 400
    with st._lock:
        ids = [r[0] for r in st._con.execute("SELECT id FROM annotations").fetchall()]
        comments = {r[0] for r in st._con.execute("SELECT comment FROM annotations").fetchall()}
    assert sorted(ids) == sorted(saved)
    assert comments == {f"{k}-{j}" for k in range(8) for j in range(50)}
    latest = st.latest_annotations(pid)
    assert sorted(a["annotator"] for a in latest) == [f"annotator{k}" for k in range(8)]
    assert all(a["comment"].endswith("-49") for a in latest)
    assert st.counts()["annotations"] == 400 and st.counts()["annotators"] == 8


# -- runs, vectors, settings, audit ----------------------------------------------------------------------------
def test_runs_lifecycle(st):
    rid = st.create_run("first", "neat", {"lr": 1e-5}, actor="t", snapshot_id="abc123abc123")
    assert st.get_run(rid)["status"] == "created" and st.active_run() is None
    run = st.update_run(rid, status="running", pid=1234, run_dir="/tmp/r")
    assert run["pid"] == 1234 and run["started_at"] is not None and st.active_run()["id"] == rid
    with pytest.raises(RuntimeError, match="one training run at a time"):
        st.create_run("second", "dpo", {}, actor="t", require_idle=True)
    done = st.update_run(rid, status="finished", final_metrics={"rank_acc": 0.75})
    assert done["finished_at"] is not None and done["final_metrics"] == {"rank_acc": 0.75}
    assert st.active_run() is None
    with pytest.raises(ValueError, match="unknown run field"):
        st.update_run(rid, **{"status = 'x' --": 1})
    with pytest.raises(ValueError, match="status"):
        st.update_run(rid, status="exploded")
    assert [r["id"] for r in st.list_runs()] == [rid]


def test_embeddings_and_scores(st):
    pid, rids = _prompt_with_responses(st)
    vecs = np.random.default_rng(0).standard_normal((3, EMBED_DIM)).astype(np.float32)
    assert st.missing_embeddings("response", "m1") == [(r, st.get_response(r)["text"]) for r in rids]
    st.put_embeddings("response", rids, vecs, "m1")
    ids, got = st.get_embeddings("response", "m1", ids=[rids[2], rids[0], "missing"])
    assert ids == [rids[2], rids[0]] and np.array_equal(got, vecs[[2, 0]])
    st.put_embeddings("response", rids[:1], vecs[1:2], "m1")  # replace
    assert np.array_equal(st.get_embeddings("response", "m1", ids=rids[:1])[1], vecs[1:2])
    assert st.missing_embeddings("response", "m1") == [] and len(st.missing_embeddings("prompt", "m1")) == 1
    all_ids, mat = st.get_embeddings("response", "m1")
    assert sorted(all_ids) == sorted(rids) and mat.shape == (3, EMBED_DIM) and mat.dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        st.put_embeddings("response", rids, vecs[:, :10], "m1")
    st.put_scores(rids, [0.5, -1.0, 2.0], "rm-1")
    assert st.get_scores("rm-1") == {rids[0]: 0.5, rids[1]: -1.0, rids[2]: 2.0}
    assert st.get_scores("rm-1", rids[1:2]) == {rids[1]: -1.0} and st.get_scores("rm-2") == {}


def test_settings_and_audit(st):
    assert st.get_setting("guidelines", "none") == "none"
    st.set_setting("guidelines", {"text": "v1"}, actor="lead")
    st.set_setting("guidelines", {"text": "v2"}, actor="lead")
    assert st.get_setting("guidelines") == {"text": "v2"}
    last = st.audit(1)[0]
    assert last["actor"] == "lead" and last["action"] == "set_setting" and last["entity_id"] == "guidelines"
    assert last["detail"] == {"old": {"text": "v1"}, "new": {"text": "v2"}}  # nothing is lost
    st.log_event("alice", "export", "file", "x.jsonl", {"rows": 3})
    assert st.audit(1, actor="alice")[0]["detail"] == {"rows": 3}
    with pytest.raises(ValueError, match="actor"):
        st.set_setting("k", 1, actor="")


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as s:
        pid, rids = _prompt_with_responses(s)
        s.save_annotation(pid, "alice", [[rids[1]], [rids[0]]])
        s.save_system_prompt("toxic", "negative", "x", None, author="a")
    with Store(path) as s:
        assert s.listwise_rows()[0]["response_ids"] == [rids[1], rids[0]]
        assert s.resolve_ref("toxic@1")["text"] == "x"
    assert s.closed


def test_two_store_objects_on_one_file_share_lock_and_counters(tmp_path):
    path = tmp_path / "shared.duckdb"
    a, b = Store(path), Store(path)
    try:
        assert a._lock is b._lock
        pid, rids = _prompt_with_responses(a)
        ids = [s.save_annotation(pid, f"u{i}", [[rids[0]], [rids[1]]]) for i, s in enumerate([a, b, a, b])]
        assert len(set(ids)) == 4 and a.counts()["annotations"] == 4 == b.counts()["annotations"]
    finally:
        a.close()
        b.close()


def test_second_process_gets_a_clear_locked_error(tmp_path):
    import subprocess
    import sys

    from neat_studio.config import REPO_ROOT

    path = tmp_path / "locked.duckdb"
    with Store(path):
        code = ("import sys; from neat_studio.store import Store, StoreLockedError\n"
                "try:\n    Store(sys.argv[1])\nexcept StoreLockedError as e:\n    print('LOCKED', e)\n")
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                             cwd=REPO_ROOT, timeout=60)
    assert out.stdout.startswith("LOCKED the studio database"), out.stderr[-500:]
    assert "open in another process" in out.stdout
