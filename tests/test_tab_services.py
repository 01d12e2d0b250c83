"""Issue 21: what the Negative Prompt Studio, Data and Admin tabs decide is a Studio service (studio/preview.py,
studio/core.py), called here without Gradio: form values in, exact choices, tables and messages out."""
from __future__ import annotations

import pytest


@pytest.fixture
def st(workspace):
    from neat_studio.studio import Studio

    s = Studio(workspace, model_spec="tiny")
    yield s
    s.close()


EDITED = {"name": " curt ", "kind": "negative", "ref": "", "text": "Be curt.", "tags": ["tone", "test"],
          "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 32.0, "k": 2.0}


# -- Negative Prompt Studio: the library editor ------------------------------------------------------------------
def test_the_library_editor_saves_loads_and_guards_unsaved_changes(st):
    from neat_studio.studio.preview import EDITOR_NEW

    r = st.save_library_editor(EDITED, actor="t")
    assert r == {"ref": "curt@1", "version": 1, "created": True, "name": "curt", "message": "Saved curt@1."}
    assert st.library_version("curt")["params"] == {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 32, "k": 2}
    again = st.save_library_editor({**EDITED, "tags": ["test", "tone"]}, actor="t")
    assert again["created"] is False and again["message"] == ("No change from curt@1: text and parameters are "
                                                              "identical, nothing was saved.")
    st.save_library_editor({**EDITED, "text": "Be very curt.", "max_new_tokens": None, "k": None}, actor="t")
    assert st.library_version("curt", 2)["params"] == {"temperature": 0.8, "top_p": 0.9}
    with pytest.raises(ValueError):
        st.save_library_editor({**EDITED, "name": "bad name!"}, actor="t")

    loaded = st.library_editor_values("curt", 1)
    assert loaded == {"name": "curt", "kind": "negative", "ref": "curt@1", "text": "Be curt.", "tags": ["test", "tone"],
                      "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 32, "k": 2}
    assert st.library_editor_values("curt")["ref"] == "curt@2"
    assert {k: v for k, v in st.library_editor_values("curt").items() if k in ("max_new_tokens", "k")} == \
        {"max_new_tokens": 128, "k": 1}  # what the version lacks: the editor's defaults
    assert st.library_editor_values("nobody") is None
    empty = st.library_editor_empty()
    assert empty == {"name": "", "kind": "negative", "ref": "", "text": "", "tags": [], "temperature": 0.9,
                     "top_p": 0.95, "max_new_tokens": 128, "k": 1}

    # unsaved changes: warned once per target; nothing to lose, no warning
    assert st.library_editor_warning(empty, EDITOR_NEW, None) is None
    assert st.library_editor_warning(loaded, "toxic", None) is None
    draft = {**loaded, "text": "Be curt. (draft)"}
    assert st.library_editor_warning(draft, "toxic", None) == (
        "The editor has unsaved changes. Save them as a new version, or click toxic again to discard them.")
    assert st.library_editor_warning(draft, "toxic", "toxic") is None  # the second click discards
    assert st.library_editor_warning(draft, EDITOR_NEW, "toxic") == (
        "The editor has unsaved changes. Save them as a new version, or click New system prompt again to discard "
        "them.")
    assert st.library_editor_warning({**empty, "text": "typed"}, EDITOR_NEW, None) is not None
    assert st.library_editor_warning({**draft, "ref": "gone@9"}, "toxic", None) is not None  # unknown: any text


def test_the_library_versions_and_their_diff(st):
    st.save_library_prompt("curt", "negative", "Be curt.", {"k": 1}, actor="t")
    one = st.library_version_choices("curt")
    assert [v["version"] for v in one["versions"]] == [1]
    assert (one["choices"], one["from"], one["to"]) == (["1"], "1", "1")
    st.save_library_prompt("curt", "negative", "Be very curt.", {"k": 2, "top_p": 0.5}, actor="t")
    st.save_library_prompt("curt", "negative", "Be very, very curt.", {"k": 2, "top_p": 0.5}, actor="t")
    three = st.library_version_choices("curt")
    assert [v["version"] for v in three["versions"]] == [3, 2, 1]  # newest first
    assert (three["choices"], three["from"], three["to"]) == (["1", "2", "3"], "2", "3")
    assert st.library_version_choices("") == {"versions": [], "choices": [], "from": None, "to": None}

    d = st.library_version_diff("curt", "1", "2")
    assert (d["from"]["ref"], d["to"]["ref"]) == ("curt@1", "curt@2")
    assert d["param_changes"] == ["k: 1 → 2", "top_p: None → 0.5"]
    assert d["raw"] == st.library_diff("curt", 1, 2) and "+Be very curt." in d["raw"]
    assert st.library_version_diff("curt", "2", "3")["param_changes"] == []
    assert st.library_version_diff("curt", None, "2") is None and st.library_version_diff("", "1", "2") is None
    with pytest.raises(ValueError, match="curt has no version 7"):
        st.library_version_diff("curt", "1", "7")


# -- Negative Prompt Studio: the preview -------------------------------------------------------------------------
def test_the_preview_pickers_keep_a_users_choice_and_follow_the_newest(st):
    for name in ("alpha", "bravo"):
        st.save_library_prompt(name, "negative", f"Answer like {name}.", actor="t")
    st.save_library_prompt("kind", "positive", "Be kind.", actor="t")
    ch = st.preview_choices(None, None)
    assert ch == {"negative": ["alpha@1", "bravo@1"], "positive": ["kind@1"], "tags": st.prompt_tags(),
                  "newest": "bravo@1", "value": "bravo@1"}
    assert st.preview_choices("alpha@1", "bravo@1")["value"] == "alpha@1"  # the user's choice stays
    assert st.preview_choices("bravo@1", "bravo@1")["value"] == "bravo@1"
    st.save_library_prompt("alpha", "negative", "Answer like a very alpha alpha.", actor="t")
    assert st.preview_choices("bravo@1", "bravo@1")["value"] == "alpha@2"  # the default follows the newest
    assert st.preview_choices("gone@3", None)["value"] == "alpha@2"


def test_a_preview_from_the_form_says_what_happens(st):
    pids = [st.add_prompt(f"Tell me about tea number {i}.", actor="t")["id"] for i in range(2)]
    st.save_library_prompt("rude", "negative", "Be rude.", {"max_new_tokens": 2}, actor="t")
    st.save_library_prompt("kind", "positive", "Be kind.", actor="t")
    with pytest.raises(ValueError, match=r"^Choose a negative prompt version first\.$"):
        next(st.preview_events("", ids=pids))
    with pytest.raises(ValueError, match="give at least one prompt id"):
        next(st.preview_events("rude@1", mode="manual", ids=[]))
    events = list(st.preview_events("rude@1", normal_ref="(no system prompt)", seed="5", mode="manual",
                                    ids=[pids[1], pids[0]], actor="t"))
    assert events[0] == {"stage": "start", "rows": [], "done": 0, "total": 2, "seed": 5,
                         "normal": "(no system prompt)", "ref": "rude@1",
                         "message": "Generating 2 prompt(s) with seed 5…"}
    rows = [e for e in events if e["stage"] == "row"]
    assert [(e["done"], [r["prompt_id"] for r in e["rows"]]) for e in rows] == [(1, [pids[1]]), (2, pids[::-1])]
    done = events[-1]
    pv = st.get_preview("rude@1")
    assert done["stage"] == "done" and done["preview"] == pv and pv["normal_ref"] is None and pv["seed"] == 5
    assert (done["done"], done["total"], done["ref"], done["normal"]) == (2, 2, "rude@1", "(no system prompt)")
    assert done["message"] == (f"Preview of rude@1 saved (seed 5, model {pv['model_id']}). Re-run with the same "
                               "seed and prompts to reproduce it; 'Add to pool' makes these responses annotation "
                               "candidates.")
    assert st.preview_comparison()[0]["normal"] == "(no system prompt)"

    # the pool takes it; without a preview, the form says what to do first
    with pytest.raises(ValueError, match=r"^Run a preview first \(the pool takes the latest finished preview\)\.$"):
        st.pool_preview("", actor="t")
    assert st.pool_preview("rude@1", actor="t") == (
        "Added 4 new candidate response(s) for 2 prompt(s) (0 were already in the pool). Origins: negative:rude@1 "
        "and the normal side.")

    # a normal side that is not a positive prompt: refused once the preview itself starts
    gen = st.preview_events("rude@1", normal_ref="rude@1", mode="manual", ids=pids)
    assert next(gen)["stage"] == "start"
    with pytest.raises(ValueError, match="the normal side takes a positive prompt"):
        next(gen)
    assert next(st.preview_events("rude@1", normal_ref="kind@1", mode="manual", ids=pids))["normal"] == "kind@1"


def test_stop_says_how_far_the_preview_got(st):
    pids = [st.add_prompt(f"Tell me a long story number {i}.", actor="t")["id"] for i in range(3)]
    st.save_library_prompt("rude", "negative", "Be rude.", {"max_new_tokens": 400, "temperature": 1.0}, actor="t")
    assert st.stop_preview_message("nobody") is None
    gen = st.run_preview("rude@1", pids, seed=1, run_key="sess")
    assert next(gen)[0] == "rows"
    assert st.stop_preview_message("sess") == (
        "Preview stopped: 0 of 3 prompt(s) finished generating; nothing was saved (a preview is saved, and can be "
        "added to the pool, once it completes).")
    assert list(gen) == []
    for _ in st.run_preview("rude@1", pids[:1], params={"max_new_tokens": 2}, seed=1, run_key="sess"):
        pass
    assert st.stop_preview_message("sess") is None  # finished: nothing to stop


# -- Data tab ----------------------------------------------------------------------------------------------------
def test_the_data_overview_tables(st):
    from neat_studio.studio.core import snapshot_counts_text

    pid = st.add_prompt("Which is best?", actor="t")["id"]
    ids = st.store.add_responses([{"prompt_id": pid, "text": t, "origin": "policy"} for t in "abc"], actor="t")
    st.save_annotation(pid, "alice", [[ids[0]], [ids[1]], [ids[2]]])
    st.save_annotation(pid, "bob", [[ids[1]], [ids[0]], [ids[2]]])
    other = st.add_prompt("And this one?", actor="t")["id"]
    st.store.add_responses([{"prompt_id": other, "text": t, "origin": "policy"} for t in "de"], actor="t")
    until = st.store.lease(other, "carol")
    st.set_annotations_per_prompt(2, actor="t")
    last = {p["annotator"]: p["last_at"][:19].replace("T", " ") for p in st.store.annotator_progress()}

    o = st.data_overview()
    assert o["counts"] == st.counts() and o["agreement"] == st.agreement() and o["overlap"] == 2
    assert o["annotators"] == [["alice", "1", "2", "1", "0", last["alice"]], ["bob", "1", "2", "1", "0", last["bob"]]]
    assert o["pairs"] == [["alice", "bob", "1", pytest.approx(1 / 3), pytest.approx(2 / 3)]]
    # 2 rankable prompts x 2 rankings each, shared by 3 people: 2 each (rounded up)
    assert o["shares"] == [["alice", "1", "2", "0"], ["bob", "1", "2", "0"], ["carol", "0", "2", "1"]]
    assert o["leases"] == [[other, "carol", str(until)[11:19]]]
    assert o["snapshots"] == []

    msg = st.snapshot_form("train", [], False, True, actor="t")
    snap = st.snapshots(1)[0]
    counts = "1 prompt(s) (train 1), 3 response(s), 2 ranked pair(s), 1 ranked by people"
    assert snapshot_counts_text(snap["counts"]) == counts
    assert msg == (f"Snapshot {snap['id']} created (sha256 {snap['sha256'][:16]}…; {counts}). Training reads it "
                   f"from {st.workspace.snapshots / snap['id']}.")
    assert st.snapshot_rows() == st.data_overview()["snapshots"] == [
        [snap["id"], snap["created_at"][:19].replace("T", " "), "1", snap["sha256"][:16]]]
    with pytest.raises(ValueError):
        st.snapshot_form("train", ["no-such-tag"], True, False, actor="t")


def test_the_data_forms_overlap_and_exports(st):
    assert st.save_overlap_form(3.0, actor="t") == ("Each prompt now wants 3 ranking(s) before it leaves everyone's "
                                                     "queue.")
    assert st.annotations_per_prompt() == 3
    with pytest.raises(ValueError, match="whole number from 1 to 20, got 2.5"):
        st.save_overlap_form(2.5, actor="t")
    with pytest.raises(ValueError, match="got 21"):
        st.save_overlap_form(21, actor="t")
    assert st.annotations_per_prompt() == 3

    pid = st.add_prompt("Rank these", actor="t")["id"]
    ids = st.store.add_responses([{"prompt_id": pid, "text": t, "origin": "policy"} for t in ("good", "bad")],
                                 actor="t")
    st.save_annotation(pid, "alice", [[ids[0]], [ids[1]]])
    r = st.export_form("trl", "", False, None, actor="t")
    assert r["message"] == f"Wrote 1 pairs (TRL string format: plain text prompts) to {r['path']}"
    r = st.export_form("trl", "train", True, "conversational", actor="t")
    assert r["message"] == (f"Wrote 1 pairs (TRL conversational format: prompt = messages, chosen / rejected = one "
                            f"assistant message) to {r['path']}")
    r = st.export_form("listwise", "dev", False, "conversational", actor="t")
    assert r["message"] == f"Wrote 0 rows to {r['path']}" and r["format"] == "listwise"
    with pytest.raises(ValueError, match="unknown TRL format"):
        st.export_form("trl", "", False, "xml", actor="t")


def test_backup_in_the_workspace(st):
    r = st.backup_in_workspace("bk.duckdb", True, actor="t")
    out = st.workspace.root.resolve() / "backups" / "bk.duckdb"
    assert (r["path"], r["parquet_dir"]) == (str(out), str(out.parent / "bk-parquet"))
    assert out.is_file() and (out.parent / "bk-parquet").is_dir()
    assert st.backup_in_workspace("plain.duckdb", False, actor="t")["parquet_dir"] is None
    assert not (out.parent / "plain-parquet").exists()
    with pytest.raises(ValueError, match="inside its workspace"):
        st.backup_in_workspace("/tmp/elsewhere.duckdb", False, actor="t")


# -- Admin tab ---------------------------------------------------------------------------------------------------
def test_account_actions(st):
    from neat_studio.studio.core import account_action

    auth = st.accounts()
    assert auth.ensure_admin()
    r = account_action(auth, "add", " eve ", "annotator", actor="admin")
    assert r["username"] == "eve" and len(r["password"]) >= 10 and auth.must_change("eve")
    assert account_action(auth, "role", "eve", "admin", actor="admin") == {"username": "eve",
                                                                          "message": "eve is now admin."}
    assert auth.role("eve") == "admin"
    assert account_action(auth, "disable", "eve", "admin", actor="admin") == {
        "username": "eve", "message": "eve is disabled (signed out everywhere)."}
    assert not auth.active("eve")
    assert account_action(auth, "enable", "eve", "admin", actor="admin") == {"username": "eve",
                                                                            "message": "eve is enabled."}
    assert auth.active("eve")
    r = account_action(auth, "reset", "eve", "admin", actor="admin")
    assert set(r) == {"username", "password"} and auth.must_change("eve")
    with pytest.raises(ValueError, match="you cannot disable your own account"):
        account_action(auth, "disable", "admin", "admin", actor="admin")
    assert auth.active("admin")
    with pytest.raises(ValueError, match="unknown account action"):
        account_action(auth, "delete", "eve", "admin", actor="admin")
    with pytest.raises(ValueError):
        account_action(auth, "add", "eve", "annotator", actor="admin")  # exists already
