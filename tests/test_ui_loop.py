"""Issue 19: the end of the studio's loop without a browser (Studio services and the tabs' handlers as Gradio
calls them): Compare follows new runs, "Use as generator" switches to the chosen model and is remembered, the
Annotate queue reacts to its Order and keeps skips, a flagged partial ranking saves, prompt-version defaults
are the newest, Stop says it stopped, reports name runs, a refused vote writes nothing, own evaluation sets."""
from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import gradio as gr
import pytest

from tests.test_ui_train_compare import fake_run, studio  # noqa: F401 - the same seeded tiny-model studio

UPDATE = {"__type__": "update"}




def _fn(demo, name, module):
    fns = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name
           and f.fn.__module__ == f"neat_studio.ui.{module}"]
    assert fns, (name, module)
    return fns[0]


def _app(st):
    from neat_studio.ui.app import build_app

    return build_app(st)


def _prompt(st, text, n=2):
    pid = st.store.add_prompts([{"text": text, "source": "t"}], actor="t")[0]
    rids = st.store.add_responses([{"prompt_id": pid, "text": f"{text} answer {i}", "origin": "policy"}
                                   for i in range(n)], actor="t")
    return pid, rids


def _cmd(on_cmd, s, cmd, item, ranks=None, comment="", flag=False, order="queue"):
    evt = gr.EventData(None, {"cmd": cmd, "item": item, "ranks": ranks or {}, "marks": {}})
    out = on_cmd(evt, s, comment, flag, None, None, None, "", False, order, None)
    return out, next(o for o in out if isinstance(o, dict) and "item" in o) if cmd != "edit" else None


# -- 1. Compare follows new runs -----------------------------------------------------------------------------
def test_compare_defaults_follow_new_runs(studio):
    assert studio.default_compare_models() == ("tiny", "tiny")  # no run yet: the generator on both sides
    demo = _app(studio)
    comps = demo.neat_ctx.components
    assert comps["compare.model_a"].value == "tiny" and comps["compare.model_b"].value == "tiny"
    on_show = _fn(demo, "on_show", "compare").fn
    follow_runs = _fn(demo, "follow_runs", "compare").fn
    assert follow_runs("tiny", "tiny", ("tiny", "tiny"))[:2] == (UPDATE, UPDATE)  # nothing new: nothing sent

    rid, d = fake_run(studio)  # a run finishes after the app started
    ck_rid, _ = fake_run(studio, status="stopped", final=False, ckpt=3)  # no final model: never the default B
    assert studio.default_compare_models() == ("tiny", str(d))  # B = the run, A = the model it was trained from
    a, b, auto, sets = on_show("tiny", "tiny", ("tiny", "tiny"))  # tab opened / page loaded
    assert b["value"] == str(d) and "value" not in a and auto == ("tiny", str(d))
    assert str(d) in [v for _, v in b["choices"]] and sets["choices"] == studio.eval_set_choices()
    a, b, auto, _ = follow_runs("tiny", "tiny", ("tiny", "tiny"))  # the timer sees it too (a run finished)
    assert b["value"] == str(d)

    rid2, d2 = fake_run(studio)
    t = (d / "final" / "config.json").stat().st_mtime + 10
    os.utime(d2 / "final" / "config.json", (t, t))
    assert studio.default_compare_models() == ("tiny", str(d2))  # the newest finished run
    _, b, auto, _ = follow_runs("tiny", str(d), ("tiny", str(d)))
    assert b["value"] == str(d2) and auto == ("tiny", str(d2))
    _, b, _, _ = follow_runs("tiny", "default", ("tiny", str(d)))  # the user chose B: it stays
    assert "value" not in b
    from neat_studio.studio.compare import follow

    assert follow(("x", None), ("y", "z"), ("y", "w")) == [None, "w"]


def test_use_as_generator_switches_to_b_and_is_restored_at_start(workspace, tiny_model_dir):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        rid = st.store.create_run("my <i>run</i>", "neat", {"model": "tiny"}, actor="t", status="finished")
        d = st.workspace.runs / rid
        shutil.copytree(tiny_model_dir, d / "final")
        st.store.update_run(rid, run_dir=str(d))
        demo = _app(st)
        assert demo.neat_ctx.components["compare.model_b"].value == str(d)
        use = _fn(demo, "use", "compare").fn
        msg = use(str(d), None)  # "Use B as generator"
        assert "neat-ok" in msg and st.model_spec == str(d.resolve()) and st.policy().spec == str(d.resolve())
        assert f"run {rid} · my &lt;i&gt;run&lt;/i&gt;" in msg  # named, and inert
        assert "Not switched" in use("/etc", None) and st.model_spec == str(d.resolve())  # refused: unchanged
        assert st.store.get_setting(Studio.GENERATOR_KEY) == str(d.resolve())
    with Studio(workspace, model_spec=None) as st:  # what the app does at start
        assert st.model_spec == str(d.resolve()) and st.generator_restored
    with Studio(workspace) as st:  # a model given explicitly wins (the CLI's commands)
        assert st.model_spec == "default" and not st.generator_restored
    shutil.rmtree(d)
    with Studio(workspace, model_spec=None) as st:  # the remembered run is gone: the default model
        assert st.model_spec == "default" and not st.generator_restored


# -- 3. Annotate: Order reloads the queue --------------------------------------------------------------------
def test_changing_the_annotate_order_reloads_the_queue(workspace):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        demo = _app(st)
        order = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "ann-order")
        deps = [f for f in demo.fns.values() if (order._id, "change") in [tuple(t) for t in f.targets]]
        assert [f.fn.__name__ for f in deps] == ["refilter"]
        assert order in deps[0].inputs and demo.neat_ctx.components["annotate.ranker"] in deps[0].outputs


# -- 4. Flag with a partial ranking --------------------------------------------------------------------------
def test_flag_with_a_partial_ranking_is_saved(workspace):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        pid, _ = _prompt(st, "two candidates?")
        shown = [r["id"] for r in st.annotation_item(pid, "ann", suggest=False)["responses"]]
        with pytest.raises(ValueError, match=r"rank every response \(#2 unranked\), or flag the prompt: a flagged "
                                             r"prompt is saved with what you ranked"):
            st.submit_ranking(pid, "ann", {shown[0]: 1})
        assert st.store.latest_annotation(pid, "ann") is None
        r = st.submit_ranking(pid, "ann", {shown[0]: 1}, comment="unclear prompt", flagged=True)  # `1 1`, F, Enter
        saved = st.store.latest_annotation(pid, "ann")
        assert r["ranking"] == [] and saved["flagged"] and saved["ranking"] == [] and \
            saved["comment"] == "unclear prompt"
        pid3, _ = _prompt(st, "three candidates?", n=3)
        s3 = [r["id"] for r in st.annotation_item(pid3, "ann", suggest=False)["responses"]]
        r = st.submit_ranking(pid3, "ann", {s3[0]: 1, s3[2]: 2}, flagged=True)  # two of three ranked + flag
        assert r["ranking"] == [[s3[0]], [s3[2]]] and st.store.latest_annotation(pid3, "ann")["flagged"]
        with pytest.raises(ValueError, match="not shown"):
            st.submit_ranking(pid3, "ann", {"nope": 1}, flagged=True)

        # the same through the Annotate tab (what Enter sends)
        pid4, _ = _prompt(st, "two more candidates?")
        s4 = [r["id"] for r in st.annotation_item(pid4, "local", suggest=False)["responses"]]
        on_cmd = _fn(_app(st), "on_cmd", "annotate").fn
        out, _ = _cmd(on_cmd, {"item": pid4}, "submit", pid4, {s4[0]: 1})
        assert "Not saved: rank every response (#2 unranked), or flag the prompt" in out[3]
        out, s = _cmd(on_cmd, {"item": pid4}, "submit", pid4, {s4[0]: 1}, comment="c", flag=True)
        assert f"Saved prompt {pid4}: (flag only)." in out[3] and s["item"] != pid4
        assert st.store.latest_annotation(pid4, "local")["flagged"]


# -- 5. Skip survives a reload ---------------------------------------------------------------------------------
def test_skip_survives_a_reload_and_a_restart(workspace):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        p1, _ = _prompt(st, "first?")
        p2, _ = _prompt(st, "second?")
        p3, r3 = _prompt(st, "third?")
        demo = _app(st)
        on_cmd = _fn(demo, "on_cmd", "annotate").fn
        on_show = _fn(demo, "on_show", "annotate").fn
        first = on_show({}, None, None, None, "", False, "queue", None)[5]
        assert first["item"] == p1
        out, s = _cmd(on_cmd, first, "skip", p1)
        assert s["item"] == p2 and "also after a reload" in out[3]
        assert st.store.skipped_prompts("local") == [p1]
        reloaded = on_show({}, None, None, None, "", False, "queue", None)[5]  # a reload: a fresh page state
        assert reloaded["item"] == p2
        assert st.next_prompt("local", order="uncertainty") == p2  # (no scorer: queue order, skips last)
        with pytest.raises(ValueError, match="unknown prompt"):
            st.skip_prompt("nope", "local")
    with Studio(workspace, model_spec="tiny") as st:  # a restart
        assert st.next_prompt("local") == p2 and st.next_prompt("other") == p1  # per annotator
        st.store.release(p1, "other")  # other closes it (else p1 stays theirs for 5 minutes: one ranking wanted)
        st.save_annotation(p2, "local", [[st.store.list_responses(p2)[0]["id"]],
                                         [st.store.list_responses(p2)[1]["id"]]])
        st.skip_prompt(p3, "local")
        assert st.store.skipped_prompts("local") == [p1, p3]
        assert st.next_prompt("local") == p1  # only skipped prompts left: the longest skipped first
        st.save_annotation(p1, "local", [], comment="done with it")  # an annotation clears its skip
        assert st.store.skipped_prompts("local") == [p3] and st.next_prompt("local") == p3
        # skipping in the tab when only skipped prompts are left brings the others back instead of "queue done"
        on_cmd = _fn(_app(st), "on_cmd", "annotate").fn
        st.store.set_skipped("local", p3, False, actor="t")
        p4, _ = _prompt(st, "fourth?")
        st.skip_prompt(p4, "local")
        _, s = _cmd(on_cmd, {"item": p3, "skip": []}, "skip", p3)
        assert s["item"] == p4
        out, s = _cmd(on_cmd, s, "skip", p4)  # only skipped prompts are left: they come back, oldest skip first
        assert s["item"] == p3 and "Queue complete" not in out[0]


# -- 6. Newest prompt versions by default --------------------------------------------------------------------
def test_prompt_version_defaults_are_the_newest(workspace):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        for name in ("alpha", "charlie", "bravo"):  # saved last: bravo (neither first nor last by name)
            st.save_library_prompt(name, "negative", f"Answer like {name}.", actor="t")
        assert st.newest_prompt_ref("negative") == "bravo@1" and st.newest_prompt_ref("positive") is None
        assert st.training_options()["newest_negative"] == "bravo@1"
        demo = _app(st)
        assert demo.neat_ctx.components["train.negatives"].value == ["bravo@1"]
        pv_show = _fn(demo, "on_show_keep", "studio_tab").fn
        assert pv_show(None, "all", None)[0]["value"] == "bravo@1"  # page load: not the alphabetically first
        train_show = _fn(demo, "on_show", "train")
        values = [b.value for b in train_show.inputs]
        assert values[0] == ["bravo@1"] and values[3] == ["bravo@1"]  # auto default, current choice

        st.save_library_prompt("alpha", "negative", "Answer like a very alpha alpha.", actor="t")  # alpha@2
        out = pv_show("bravo@1", "all", "bravo@1")  # tab opened again, the choice still the default it got
        assert out[0]["value"] == "alpha@2" and out[-1] == "alpha@2"
        assert pv_show("charlie@1", "all", "bravo@1")[0]["value"] == "charlie@1"  # the user's choice stays
        out = train_show.fn(*values)
        negs = out[[o._id for o in train_show.outputs].index(demo.neat_ctx.components["train.negatives"]._id)]
        assert negs["value"] == ["alpha@2"] and out[-1] == ["alpha@2"]
        mine = list(values)
        mine[3] = ["charlie@1"]
        negs = train_show.fn(*mine)[[o._id for o in train_show.outputs].index(
            demo.neat_ctx.components["train.negatives"]._id)]
        assert negs["value"] == ["charlie@1"]


# -- 7. Preview Stop ---------------------------------------------------------------------------------------------
def test_preview_stop_says_it_stopped(workspace):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        pids = [st.add_prompt(f"Tell me a long story number {i}.", actor="t")["id"] for i in range(3)]
        st.save_library_prompt("rude", "negative", "Be rude.", {"max_new_tokens": 400, "temperature": 1.0},
                               actor="t")
        demo = _app(st)
        stop = _fn(demo, "stop_preview", "studio_tab")
        assert stop.fn(SimpleNamespace(session_hash="nobody")) == UPDATE  # nothing running: nothing said
        gen = st.run_preview("rude@1", pids, seed=1, run_key="sess-1")
        assert next(gen)[0] == "rows"  # streaming
        msg = stop.fn(SimpleNamespace(session_hash="sess-1"))  # what the Stop button shows
        assert "neat-warn" in msg and "Preview stopped: 0 of 3 prompt(s) finished" in msg
        assert "Generating" not in msg and "nothing was saved" in msg
        assert list(gen) == []  # the run ends: nothing more is shown
        assert st.get_preview("rude@1") is None  # and nothing saved
        assert st.stop_preview("sess-1") == {"state": "stopped", "done": 0, "total": 3}
        # a preview that completes is saved; a late Stop does not claim to have stopped it
        for _ in st.run_preview("rude@1", pids[:1], params={"max_new_tokens": 2}, seed=1, run_key="sess-1"):
            pass
        assert st.get_preview("rude@1") is not None
        assert st.stop_preview("sess-1")["state"] == "finished"
        assert stop.fn(SimpleNamespace(session_hash="sess-1")) == UPDATE


# -- 10. Reports name runs -----------------------------------------------------------------------------------
def test_reports_and_evaluations_name_runs(studio):
    rid, d = fake_run(studio)
    ck_rid, _ = fake_run(studio, status="stopped", final=False, ckpt=3)
    name = f"run {rid} · fake <b>run</b>"
    assert studio.model_label(str(d)) == name and studio.model_label(str(d / "final")) == name
    ck = studio.workspace.runs / ck_rid / "checkpoints" / "step-3"
    assert studio.model_label(str(ck)) == f"run {ck_rid} · fake <b>run</b> (step-3)"
    assert studio.model_label("tiny") == "tiny"
    cli = studio.workspace.runs / "20260101-cli"
    (cli / "final").mkdir(parents=True)
    assert studio.model_label(str(cli)) == "run dir 20260101-cli (CLI)"
    (d / "report").mkdir()
    (d / "report" / "report.md").write_text("# Report\n")
    (d / "report" / "report.json").write_text(json.dumps({"models": [{"label": rid, "spec": str(d)},
                                                                     {"label": "tiny", "spec": "tiny"}]}))
    r = studio.run_report(rid)
    assert r["model_names"] == [(rid, name), ("tiny", "tiny")] and r["name"] == "fake <b>run</b>"
    open_report = _fn(_app(studio), "open_report", "train").fn
    msg = open_report(rid)[0]
    assert f"Report of run {rid} · fake &lt;b&gt;run&lt;/b&gt;" in msg
    assert f"Models: {rid} = run {rid} · fake &lt;b&gt;run&lt;/b&gt;; tiny." in msg and "<b>run" not in msg


# -- 12. A refused Compare vote writes nothing -----------------------------------------------------------------
def _rows(st):
    c = st.store.counts()
    return c["prompts"], c["responses"], c["annotations"], len(st.store.audit(limit=100000))


def test_a_refused_compare_vote_writes_nothing(studio):
    u = {"role": "user", "content": "hi there"}
    same = [u, {"role": "assistant", "content": "same"}]
    before = _rows(studio)
    with pytest.raises(ValueError, match="identical"):
        studio.save_compare_vote(same, same, "tiny", "tiny", "A", annotator="dana")
    assert _rows(studio) == before
    other = [u, {"role": "assistant", "content": "other"}]
    with pytest.raises(ValueError, match="reserved"):  # refused by the store at the very end: all rolled back
        studio.save_compare_vote(same, other, "tiny", "tiny", "A", annotator="import:x")
    assert _rows(studio) == before
    v = studio.save_compare_vote(same, other, "tiny", "tiny", "B", annotator="dana")
    p, r, a, _ = _rows(studio)
    assert (p, r, a) == (before[0] + 1, before[1] + 2, before[2] + 1)
    assert v["ranking"] == [[v["response_ids"][1]], [v["response_ids"][0]]]


# -- evaluation sets: shipped + a user's own file --------------------------------------------------------------
def test_evaluation_sets_take_a_users_file(studio, tmp_path):
    assert studio.eval_set_choices() == ["harmful", "lookalike", "benign"]  # shipped: never empty
    own = tmp_path / "my set.jsonl"
    own.write_text("".join(json.dumps({"prompt": f"How do I pick lock {i}?", "expected": "refuse"}) + "\n"
                           for i in range(3)))
    assert studio.evaluation_sets(["harmful"], str(own)) == {"harmful": "harmful", "my_set": str(own)}
    clash = tmp_path / "harmful.jsonl"
    shutil.copy(own, clash)
    assert set(studio.evaluation_sets(["harmful"], str(clash))) == {"harmful", "harmful-own"}
    plain = tmp_path / "questions.csv"
    plain.write_text("prompt\nHow do I bake bread?\nWhat is rye?\n")
    with pytest.raises(ValueError, match="needs the expected behaviour"):
        studio.evaluation_sets([], str(plain))
    sets = studio.evaluation_sets([], str(plain), "comply")
    rows = [json.loads(x) for x in open(sets["questions"], encoding="utf-8")]
    assert [r["expected"] for r in rows] == ["comply", "comply"] and "split" not in rows[0]  # used whole
    with pytest.raises(ValueError, match="unknown evaluation set"):
        studio.evaluation_sets(["nope"])
    with pytest.raises(ValueError, match="expected behaviour must be"):
        studio.evaluation_sets([], str(plain), "maybe")

    # the Compare tab: the file goes to the evaluation; a bad file starts nothing
    demo = _app(studio)
    assert demo.neat_ctx.components["compare.eval_sets"].choices[0][1] == "harmful"
    evaluate = _fn(demo, "evaluate", "compare").fn
    bad = tmp_path / "bad.txt"
    bad.write_text("x")
    out = list(evaluate("tiny", "tiny", [], str(bad), "rows", 2, None))
    assert "Not started: cannot use bad.txt" in out[-1][0] and not studio.__dict__.get("_eval_jobs")
    out = list(evaluate("tiny", "tiny", [], str(own), "rows", 2, None))
    assert "Report written to" in out[-1][0], out[-1][0]
    assert "| my\\_set | 2 | refuse: 2 |" in out[-1][1]  # the own set was evaluated (2 of its prompts)


def test_preview_comparison_says_what_each_row_measures_and_on_which_prompts(studio):
    """Issue 19 #8: the versions table mixed a 0-1 heuristic share and a reward gap, each over other prompts,
    without saying so: every row now names its measure and its prompt set."""
    from neat_studio.ui.studio_tab import MEASURE

    st = studio
    st.store.save_system_prompt("neg", "negative", "v1", None, "t")
    st.store.save_system_prompt("neg", "negative", "v2", None, "t")
    previews = {"neg@1": (["p1", "p2"], "heuristic (no refusal, no leak, length)", 0.5),
                "neg@2": (["p2", "p1"], "reward gap", -0.25)}
    for ref, (ids, src, u) in previews.items():
        st.store.set_setting(st.PREVIEW_KEY.format(ref=ref), {
            "ref": ref, "name": "neg", "prompt_ids": ids, "seed": 0,
            "metrics": {"n": 2, "undesirability": u, "undesirability_source": src}}, "t")
    st.store.set_setting(st.PREVIEW_INDEX, [st.PREVIEW_KEY.format(ref=r) for r in previews], "t")
    rows = {r["ref"]: r for r in st.preview_comparison()}
    assert rows["neg@1"]["prompt_set"] == rows["neg@2"]["prompt_set"] != "–"   # same prompts, any order
    assert [MEASURE[rows[r]["undesirability_source"]] for r in ("neg@1", "neg@2")] == ["heuristic 0–1", "reward gap"]
    st.store.set_setting(st.PREVIEW_KEY.format(ref="neg@2"), {
        "ref": "neg@2", "name": "neg", "prompt_ids": ["p3"], "metrics": {}}, "t")
    rows = {r["ref"]: r for r in st.preview_comparison()}
    assert rows["neg@1"]["prompt_set"] != rows["neg@2"]["prompt_set"]
