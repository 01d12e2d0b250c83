"""The Studio services behind the Annotate and Prompts tabs (issue 21: the tabs only lay out and bind), called
without Gradio: the page's queue with its skips, the view of one prompt, a submit's summary, stepping back, the
edit check, the API's save from JSON; a page of prompts, select all, the detail view, the import form."""
from __future__ import annotations

import json

import pytest


@pytest.fixture
def st(workspace):
    from neat_studio.studio import Studio

    s = Studio(workspace, model_spec="tiny")
    yield s
    s.close()


def _prompt(st, text, n=2):
    pid = st.store.add_prompts([{"text": text, "source": "t"}], actor="t")[0]
    rids = st.store.add_responses([{"prompt_id": pid, "text": f"{text} answer {i}", "origin": "policy"}
                                   for i in range(n)], actor="t")
    return pid, rids


def _shown(st, pid, who="ann"):
    return [r["id"] for r in st.annotation_item(pid, who, suggest=False)["responses"]]


# -- Annotate ------------------------------------------------------------------------------------------------------
def test_queue_next_keeps_the_page_skips_and_wraps_around(st):
    p1, _ = _prompt(st, "first?")
    p2, _ = _prompt(st, "second?")
    p3, _ = _prompt(st, "third?")
    # the page's empty fields mean "any", no order means the queue's
    assert st.queue_next("ann", [], tag="", split="", source="", search="", include_annotated=None,
                         order="") == {"item": p1, "skip": []}
    assert st.queue_next("ann", [p1]) == {"item": p2, "skip": [p1]}
    assert st.queue_next("ann", [p1], search="third") == {"item": p3, "skip": [p1]}
    assert st.queue_next("ann", [p1, p2, p3]) == {"item": None, "skip": [p1, p2, p3]}
    assert st.queue_next("ann", [p1, p2, p3], wrap=True) == {"item": p1, "skip": []}
    assert st.queue_next("ann", [], wrap=True, tag="nothing has it") == {"item": None, "skip": []}
    with pytest.raises(ValueError, match="unknown queue order 'nope'"):
        st.queue_next("ann", order="nope")


def test_annotation_page_gives_the_item_progress_and_history(st):
    p1, _ = _prompt(st, "first?")
    p2, _ = _prompt(st, "second?")
    page = st.annotation_page("ann", p1)
    assert page["item"]["prompt"]["id"] == p1 and sorted(page["item"]["responses"][i]["id"] for i in (0, 1)) == \
        sorted(_shown(st, p1))
    assert page["error"] == "" and page["recent"] == []
    assert page["progress"] == {"total": 2, "done": 0, "per_annotator": []}
    st.submit_ranking(p1, "ann", {rid: 1 for rid in _shown(st, p1)})
    page = st.annotation_page("ann", None)
    assert page["item"] is None and page["error"] == ""
    assert page["recent"] == [(f"{p1} · first?", p1)]
    assert page["progress"]["total"] == 2 and page["progress"]["done"] == 1
    assert [(a["annotator"], a["done"]) for a in page["progress"]["per_annotator"]] == [("ann", 1)]
    page = st.annotation_page("ann", "nope")
    assert page["item"] is None and page["error"] == "unknown prompt id 'nope'"
    assert st.annotation_page("bob", p2)["recent"] == []


def test_submit_ranking_summarises_the_ranking_by_view_position(st):
    pid, _ = _prompt(st, "three?", n=3)
    s = _shown(st, pid)
    r = st.submit_ranking(pid, "ann", {s[0]: 2, s[1]: 1, s[2]: 2})
    assert r["ranking"] == [[s[1]], [s[0], s[2]]] and r["shown"] == s
    assert r["summary"] == "#2  >  #1 = #3"
    assert st.submit_ranking(pid, "ann", {s[0]: 1, s[2]: 2}, flagged=True)["summary"] == "#1  >  #3 (flagged)"
    assert st.submit_ranking(pid, "ann", {s[0]: 1}, flagged=True)["summary"] == "(flag only)"
    assert st.submit_ranking(pid, "ann", {}, comment="later")["summary"] == "(comment / marks only)"


def test_previous_annotated_steps_back_through_the_history(st):
    pids = [_prompt(st, f"question {i}?")[0] for i in range(3)]
    for pid in pids:  # saved oldest -> newest
        st.submit_ranking(pid, "ann", {rid: 1 for rid in _shown(st, pid)})
    assert st.previous_annotated("ann", None) == pids[2]  # not in the history: the newest
    assert st.previous_annotated("ann", "elsewhere") == pids[2]
    assert st.previous_annotated("ann", pids[2]) == pids[1]
    assert st.previous_annotated("ann", pids[1]) == pids[0]
    assert st.previous_annotated("ann", pids[0]) is None
    assert st.previous_annotated("bob", None) is None


def test_editable_response_only_for_the_prompt_shown(st):
    p1, r1 = _prompt(st, "first?")
    p2, _ = _prompt(st, "second?")
    got = st.editable_response(r1[0], p1)
    assert (got["id"], got["prompt_id"], got["text"]) == (r1[0], p1, "first? answer 0")
    assert st.editable_response(r1[0], p2) is None
    assert st.editable_response("nope", p1) is None
    assert st.editable_response(None, p1) is None


def test_save_ranking_json_checks_everything_before_writing(st):
    pid, (a, b) = _prompt(st, "first?")
    r = st.save_ranking_json(f"  {pid} ", "ann", json.dumps([[b], [a]]), json.dumps({a: "neg"}), "fine")
    saved = st.store.latest_annotation(pid, "ann")
    assert r == {"annotation_id": saved["id"], "prompt_id": pid}
    assert (saved["ranking"], saved["marks"], saved["comment"]) == ([[b], [a]], {a: "neg"}, "fine")
    assert st.save_ranking_json(pid, "bob", "", "", "unclear")["prompt_id"] == pid  # "" = no ranking, no marks
    assert (st.store.latest_annotation(pid, "bob")["ranking"], st.store.latest_annotation(pid, "bob")["marks"]) == \
        ([], {})
    before = st.store.counts()["annotations"]
    with pytest.raises(ValueError, match="marks must be a JSON object"):
        st.save_ranking_json(pid, "ann", json.dumps([[a, b]]), json.dumps([a]), "")
    with pytest.raises(ValueError):  # not JSON
        st.save_ranking_json(pid, "ann", "[[", "", "")
    with pytest.raises(ValueError, match="comment contains a control character"):
        st.save_ranking_json(pid, "ann", json.dumps([[a, b]]), "", "bell\x07")
    with pytest.raises(ValueError, match="prompt id"):
        st.save_ranking_json("  ", "ann", json.dumps([[a, b]]), "", "")
    assert st.store.counts()["annotations"] == before


# -- Prompts -------------------------------------------------------------------------------------------------------
def test_browse_prompts_pages_and_statuses(st):
    p1, _ = _prompt(st, "first?")
    p2, _ = _prompt(st, "second?")
    p3, _ = _prompt(st, "third?")
    res = st.browse_prompts(page_size=2)
    assert [r["id"] for r in res["rows"]] == [p1, p2]
    assert (res["total"], res["mode"], res["note"], res["page"], res["pages"]) == (3, "text", "", 0, 2)
    assert [r["id"] for r in st.browse_prompts(page=1, page_size=2)["rows"]] == [p3]
    past = st.browse_prompts(page=2, page_size=2)
    assert past["rows"] == [] and past["page"] == 2
    back = st.browse_prompts(page=2, page_size=2, back_if_empty=True)  # paging forward off the end
    assert [r["id"] for r in back["rows"]] == [p3] and back["page"] == 1
    assert st.browse_prompts(page=-1, page_size=2)["page"] == 0
    assert st.browse_prompts("nothing like it", page_size=2)["pages"] == 1
    st.submit_ranking(p2, "ann", {rid: 1 for rid in _shown(st, p2)})
    ids = {s: [r["id"] for r in st.browse_prompts(status=s, user="ann")["rows"]]
           for s in ("annotated:me", "unannotated:me", "annotated", "unannotated")}
    assert ids == {"annotated:me": [p2], "unannotated:me": [p1, p3], "annotated": [p2], "unannotated": [p1, p3]}
    assert [r["id"] for r in st.browse_prompts(status="annotated:me", user="bob")["rows"]] == []
    assert [r["id"] for r in st.browse_prompts(status="unannotated", user="bob")["rows"]] == [p1, p3]


def test_select_prompts_says_when_there_are_more(st):
    pids = [_prompt(st, f"zebra {i}?")[0] for i in range(3)]
    _prompt(st, "other")
    assert st.select_prompts("zebra", limit=2) == {"ids": pids[:2], "total": 3, "more": True}
    assert st.select_prompts("zebra", limit=5) == {"ids": pids, "total": 3, "more": False}
    assert st.select_prompts("zebra", limit=5, split="dev") == {"ids": [], "total": 0, "more": False}


def test_prompt_detail_and_known_prompt_id(st):
    pid, rids = _prompt(st, "first?")
    d = st.prompt_detail(pid)
    assert d["prompt"]["id"] == pid and d["prompt"]["messages"] == [{"role": "user", "content": "first?"}]
    assert [(r["id"], r["origin"], r["text"]) for r in d["responses"]] == \
        [(rids[0], "policy", "first? answer 0"), (rids[1], "policy", "first? answer 1")]
    assert st.prompt_detail("nope") is None
    assert st.known_prompt_id(f"  {pid}\n") == pid
    for value, message in (("", "Choose or paste a prompt id."), (None, "Choose or paste a prompt id."),
                           ("nope", "Unknown prompt id 'nope'.")):
        with pytest.raises(ValueError) as e:
            st.known_prompt_id(value)
        assert str(e.value) == message


def test_embedding_note(st, monkeypatch):
    _prompt(st, "first?")
    _prompt(st, "second?")
    assert st.embedding_note() == "0 prompt(s) embedded, 2 missing."

    def broken():
        raise RuntimeError("no model")

    monkeypatch.setattr(st, "semantic_search_ready", broken)
    assert st.embedding_note() == "Embeddings unavailable: no model"


def test_import_upload_reports_in_words_with_progress(st, tmp_path):
    up = tmp_path / "upload-3f2a"
    up.mkdir()
    f = up / "questions.jsonl"
    f.write_text("".join(json.dumps({"q": t}) + "\n" for t in ("one?", "two?")), encoding="utf-8")
    calls = []
    r = st.import_upload(str(f), "auto", prompt_column=" q ", split="dev", tags=["t1"], actor="t",
                         progress=lambda x, what: calls.append((x, what)))
    assert calls == [(0.1, "reading and validating the file"), (0.6, "writing 2 record(s)"), (1.0, "done")]
    assert r["report"]["prompts_added"] == 2 and r["warning"] == ""
    assert r["summary"] == ("Imported: records 2, prompts_added 2, prompts_existing 0, tags_merged 0, split_kept 0, "
                            "responses_added 0, responses_existing 0, annotations_added 0, pairs_unranked 0, "
                            "long_prompts 0")
    assert sorted((p["text"], p["split"], p["tags"]) for p in st.store.list_prompts()) == \
        [("one?", "dev", ["t1"]), ("two?", "dev", ["t1"])]
    # the file's own split and no tags when the form leaves them empty
    g = up / "more.jsonl"
    g.write_text(json.dumps({"prompt": "three?", "split": "test"}) + "\n", encoding="utf-8")
    st.import_upload(str(g))
    assert [(p["split"], p["tags"]) for p in st.store.list_prompts(search="three")] == [("test", [])]
    # errors name the file as the user knows it (not the upload's path); nothing is imported
    with pytest.raises(ValueError) as e:
        st.import_upload(str(f), "auto")  # no "prompt" column
    assert str(e.value).startswith("questions.jsonl, line 1: missing prompt column 'prompt'")
    assert "'Prompt column (plain files)' field" in str(e.value) and str(e.value).endswith(". Nothing was imported.")
    with pytest.raises(ValueError) as e:
        st.import_upload(str(up / "gone.jsonl"))
    assert str(up) not in str(e.value) and "gone.jsonl" in str(e.value)
    assert str(e.value).endswith(". Nothing was imported.")
    with pytest.raises(ValueError, match="^Choose a file first.$"):
        st.import_upload(None)
    assert st.store.count_prompts() == 3
