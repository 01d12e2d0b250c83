"""Train and Compare tabs without a browser: the app builds with both tabs, rendering is escaped and correct with
very few steps, and the Studio services behind the tabs (options, model choices, estimates, reports) work."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_jobs import seed_data


@pytest.fixture
def studio(workspace):
    from neat_studio.studio import Studio

    st = Studio(workspace, model_spec="tiny")
    seed_data(st)
    yield st
    st.close()


def fake_run(st, status="finished", final=True, ckpt=None):
    rid = st.store.create_run("fake <b>run</b>", "neat", {"model": "tiny", "lr": 1e-5}, actor="t", status=status)
    d = st.workspace.runs / rid
    if final:
        (d / "final").mkdir(parents=True)
        (d / "final" / "config.json").write_text("{}")
    if ckpt is not None:
        c = d / "checkpoints" / f"step-{ckpt}"
        c.mkdir(parents=True)
        (c / "state.json").write_text("{}")
    d.mkdir(parents=True, exist_ok=True)
    st.store.update_run(rid, run_dir=str(d), final_metrics={"step": 2, "total_steps": 2, "loss": 1.5, "rank_acc": 0.5,
                                                             "p_gap": 0.1})
    return rid, d


def test_app_builds_with_train_and_compare_tabs(studio):
    from neat_studio.ui.app import build_app

    demo = build_app(studio)
    comps = demo.neat_ctx.components
    for k in ("train.start", "train.stop", "train.resume", "train.progress", "train.history", "train.timer",
              "train.dtype",
              "compare.send", "compare.chat_a", "compare.vote_B", "compare.info_a", "compare.evaluate"):
        assert k in comps, k
    assert studio.__dict__.get("_jobs") is not None  # the Train tab created the runner (re-attach on app start)


def test_progress_html_escapes_and_clamps():
    from neat_studio.ui.train import progress_html

    assert "No run selected" in progress_html(None)
    h = progress_html({"run_id": "r1", "name": "<script>x</script>", "status": "running", "progress": 0.5, "step": 1,
                       "total_steps": 2, "eta_s": 65, "phase": "training"})
    assert "<script>" not in h and "&lt;script&gt;" in h
    assert "step 1 / 2" in h and "50 %" in h and "ETA 1 min 05 s" in h and "data-status='running'" in h
    h = progress_html({"run_id": "r1", "status": "finished", "progress": 7, "step": 2, "total_steps": 2,
                       "elapsed_s": 3})
    assert "100 %" in h and "ETA" not in h and "trained 3 s" in h
    h = progress_html({"run_id": "r1", "status": "running", "progress": 0, "step": 0, "total_steps": None})
    assert "step 0 / ?" in h and "estimating" in h and "grad norm" not in h
    h = progress_html({"run_id": "r1", "status": "running", "progress": 0.5, "step": 3, "total_steps": 6,
                       "metrics": [{"step": 2, "grad_norm": 12.345}, {"step": 3, "grad_norm": None}]})
    assert "grad norm 12.35 (step 2)" in h and "train-check-msg" not in h
    # the check after the run: its verdict under the bar, a warning when worse, escaped
    done = {"run_id": "r1", "status": "finished", "progress": 1, "step": 2, "total_steps": 2}
    h = progress_html({**done, "events": [{"event": "finished"}, {"event": "check_start", "base": "default"},
                                          {"event": "check", "worse": True, "verdict": ["r1: WORSE than <b>"]}]})
    assert "class='neat-warn' id='train-check-msg'" in h and "r1: WORSE than &lt;b&gt;" in h
    h = progress_html({**done, "events": [{"event": "check", "worse": False,
                                          "verdict": ["r1: no significant change"]}]})
    assert "class='neat-ok' id='train-check-msg'" in h and "r1: no significant change" in h
    h = progress_html({**done, "events": [{"event": "check_failed", "message": "snapshot <gone>"}]})
    assert "The check against the base failed: snapshot &lt;gone&gt;" in h


@pytest.mark.parametrize("n", [0, 1, 2, 40])
def test_curves_figure_with_few_steps(n):
    from neat_studio.ui.train import curves_figure

    rows = [{"step": i + 1, "loss": 2.0 - i * 0.1, "rank_loss": 1.0, "rank_acc": None if i == 0 else 0.5}
            for i in range(n)]
    fig = curves_figure(rows, [("loss", "loss"), ("rank_loss", "rank loss")], "loss")
    ax = fig.axes[0]
    lines = ax.get_lines()
    if n == 0:
        assert not lines and "no data yet" in [t.get_text() for t in ax.texts]
    else:
        assert len(lines) == 2 and len(lines[0].get_xdata()) == n
        assert lines[0].get_marker() == "o"  # a single step is still visible
    if n in (1, 2):
        assert list(ax.get_xticks()) == list(range(1, n + 1))
    acc = curves_figure(rows, [("rank_acc", "rank accuracy")], "acc")   # None values are skipped
    assert n < 2 or len(acc.axes[0].get_lines()[0].get_xdata()) == n - 1


def test_history_table_and_choices(studio):
    from neat_studio.ui.train import history_df, run_choices

    rid, d = fake_run(studio)
    rid2, _ = fake_run(studio, status="stopped", final=False, ckpt=3)
    runs = studio.training_runs()
    df = history_df(runs)
    assert list(df["run"]) == [rid2, rid] or set(df["run"]) == {rid, rid2}
    row = df[df["run"] == rid].iloc[0]
    assert row["steps"] == "2/2" and row["loss"] == "1.500" and "lr=1e-05" in row["config"]
    assert (rid, ) == tuple(v for _, v in run_choices(runs) if v == rid)
    assert row["vs base"] == ""  # not evaluated yet
    # the run's evaluation against its base shows as its verdict in a few words, from its report
    from neat_studio.run_check import run_check

    verdicts = [{"base": "tiny", "model": rid, "mode": "greedy", "axis": "compliance", "set": "benign",
                 "rate_before": 0.9, "rate_after": 0.8, "p_value": 0.01, "verdict": "worse"},
                {"base": "tiny", "model": rid, "mode": "greedy", "axis": "refusal", "set": "harmful",
                 "rate_before": 0.1, "rate_after": 0.3, "p_value": 0.001, "verdict": "better"}]
    (d / "report").mkdir()
    (d / "report" / "report.json").write_text(json.dumps({"verdicts": verdicts}))  # an older report: no "overall"
    assert run_check(str(d)) == "WORSE: compliance on benign"
    runs2, sig = studio.training_runs_changed(None)
    assert history_df(runs2)[lambda x: x["run"] == rid].iloc[0]["vs base"] == "WORSE: compliance on benign"
    (d / "report" / "report.json").write_text(json.dumps({"overall": [
        {"model": rid, "base": "tiny", "mode": "greedy", "verdict": "better", "worse": [],
         "better": ["refusal on harmful (10.0 % -> 30.0 %, p = 0.001)"]}]}))
    assert run_check(str(d)) == "better: refusal on harmful"
    assert studio.training_runs_changed(sig)[0] is not None  # a new verdict redraws the history
    (d / "report" / "report.json").write_text("{not json")
    assert run_check(str(d)) == "" and run_check(None) == ""
    specs = dict((v, k) for k, v in studio.model_choices())
    assert str(d) in specs and "(final)" in specs[str(d)]
    ck = str(studio.workspace.runs / rid2 / "checkpoints" / "step-3")
    assert ck in specs and "step-3" in specs[ck]
    assert specs["default"].startswith("default") and "tiny" in specs


def test_training_options_and_estimate(studio):
    opts = studio.training_options()
    assert opts["methods"] == ["neat", "rrhf", "sft", "dpo"] and opts["negatives"] == ["rude@1"]
    assert "lr" in opts["help"] and opts["defaults"]["method"] == "neat"
    from neat_studio.neat.preflight import bf16_supported

    assert opts["selects"] == ["last", "best_val", "best_val_balanced"]
    assert opts["dtypes"] == ["auto", "bf16", "fp32"] and opts["auto_dtype"] == ("bf16" if bf16_supported() else "fp32")
    e = studio.estimate_training({"model": "tiny", "method": "neat", "negatives": ["rude@1"], "rounds": 1,
                                  "batch_size": 2, "data": {"tags": ["t"]}})
    assert e["n_prompts"] == 4 and e["steps"] == 2 and e["seconds"] > 0
    assert studio.training_data_count({"negatives": ["rude"], "data": {"tags": ["nope"]}}) == 0
    with pytest.raises(ValueError):
        studio.estimate_training({"method": "bogus"})


def test_run_report(studio):
    rid, d = fake_run(studio)
    assert studio.run_report(rid)["markdown"] is None
    (d / "config.yaml").write_text("lr: 1.0e-05\n")
    (d / "report" / "charts").mkdir(parents=True)
    (d / "report" / "report.md").write_text("# Report\n")
    (d / "report" / "report.json").write_text(json.dumps({"models": []}))
    (d / "report" / "charts" / "refusal.png").write_bytes(b"\x89PNG")
    r = studio.run_report(rid)
    assert r["markdown"] == "# Report\n" and r["report"] == {"models": []} and r["config_yaml"].startswith("lr")
    assert [Path(c).name for c in r["charts"]] == ["refusal.png"]
    with pytest.raises(ValueError):
        studio.run_report("nope")


def test_compare_rendering_is_inert():
    from neat_studio.ui.compare import display, info_html

    msgs = display([{"role": "user", "content": "<img src=x onerror=alert(1)>"},
                    {"role": "assistant", "content": "<script>alert(1)</script>"},
                    {"role": "assistant", "content": ""}, {"role": "system", "content": "hidden"}])
    assert [m["role"] for m in msgs] == ["user", "assistant", "assistant"]
    assert msgs[0]["content"] == "&lt;img src=x onerror=alert(1)&gt;" and "<script>" not in msgs[1]["content"]
    assert msgs[2]["content"] == "<i>(empty)</i>"
    h = info_html("A", {"spec": "<b>", "model_id": "m<1>", "fingerprint": "abc", "dtype": "bfloat16"})
    assert "<b>" not in h.replace("<b>A</b>", "") and "m&lt;1&gt;" in h and "data-fingerprint='abc'" in h
    assert "<code class='neat-fp'>abc</code> · bfloat16<br>" in h
    assert "neat-error" in info_html("B", None, "cannot <load>") and "&lt;load&gt;" in info_html("B", None, "<load>")
    assert "checked against" not in h  # not a checked run
    worse = info_html("B", {"spec": "r", "model_id": "m", "fingerprint": "f", "check": "WORSE: compliance on <b>"})
    assert "class='neat-warn'" in worse and "checked against its base: WORSE: compliance on &lt;b&gt;" in worse
    assert "class='neat-ok'" in info_html("B", {"spec": "r", "model_id": "m", "fingerprint": "f",
                                                "check": "no significant change"})


def test_compare_vote_validation(studio):
    u = {"role": "user", "content": "hi"}
    same = [u, {"role": "assistant", "content": "same"}]
    v = studio.save_compare_vote(same, same, "tiny", "tiny", "tie", annotator="dana")
    assert v["response_ids"][0] == v["response_ids"][1] and v["ranking"] == []  # one response: nothing to rank
    assert studio.store.latest_annotation(v["prompt_id"], "dana")["comment"].startswith("compare vote tie")
    with pytest.raises(ValueError, match="identical"):
        studio.save_compare_vote(same, same, "tiny", "tiny", "A", annotator="dana")
    other = [{"role": "user", "content": "different"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(ValueError, match="different messages"):
        studio.save_compare_vote(same, other, "tiny", "tiny", "A", annotator="dana")


def _handler(demo, name):
    fns = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name]
    assert fns, name
    return fns[0]


def _last(gen):
    out = None
    for out in gen:
        pass
    return out


def test_compare_multi_turn_regenerate_and_new_chat(studio):
    """The Compare tab's handlers, called as Gradio calls them: two turns keep each side's history (the second
    reply is conditioned on the first exchange), Regenerate replaces only the last reply with the next seed, and
    New chat clears both sides."""
    from neat_studio.generation import GenParams, stream_chat
    from neat_studio.ui.app import build_app

    demo = build_app(studio)
    run_turn, regen = _handler(demo, "run_turn"), _handler(demo, "regenerate")
    args = (0.8, 0.95, 6, 3)  # temperature, top_p, max_new_tokens, seed
    out = _last(run_turn("tiny", "tiny", [], [], "Hello there", *args))
    ha, hb = out[2], out[3]
    assert [m["role"] for m in ha] == ["user", "assistant"] and ha == hb  # same model, same seed: same reply
    out = _last(run_turn("tiny", "tiny", ha, hb, "And a second question?", *args))
    ha2 = out[2]
    assert [m["role"] for m in ha2] == ["user", "assistant"] * 2 and ha2[:2] == ha
    lm = studio.compare_model("tiny")
    want = list(stream_chat(lm, ha + [{"role": "user", "content": "And a second question?"}],
                            GenParams(temperature=0.8, top_p=0.95, max_new_tokens=6, seed=3)))[-1]
    assert ha2[3]["content"] == want  # the whole conversation was the context
    out = _last(regen("tiny", "tiny", ha2, ha2, *args))
    ha3, seed = out[2], out[-1]
    assert seed == 4 and ha3[:3] == ha2[:3] and ha3[2]["content"] == "And a second question?"
    want4 = list(stream_chat(lm, ha2[:3], GenParams(temperature=0.8, top_p=0.95, max_new_tokens=6, seed=4)))[-1]
    assert ha3[3]["content"] == want4
    nothing = _last(regen("tiny", "tiny", [], [], *args))
    assert "Nothing to regenerate" in nothing[4]
    cleared = _handler(demo, "new_chat")()
    assert cleared[:4] == ([], [], [], [])


def test_compare_evaluate_button_writes_a_report(studio, tmp_path):
    """The Evaluate button's handler: a background evaluation of both models on a standard set (shipped in
    data/evalsets), progress messages while it runs, then the Markdown report and its charts."""
    from neat_studio.ui.app import build_app

    demo = build_app(studio)
    evaluate = _handler(demo, "evaluate")
    # (model A, model B, standard sets, own set file, its expected behaviour, prompts per set, request)
    outs = list(evaluate("tiny", "tiny", ["harmful"], None, "rows", 2, None))
    msg, md = outs[-1][0], outs[-1][1]
    assert "Report written to" in msg, msg
    assert "harmful" in md and "refusal" in md.lower()
    bad = list(evaluate("tiny", "/etc", ["harmful"], None, "rows", 2, None))
    assert "Not started" in bad[-1][0]


def test_annotate_previous_steps_back_through_the_history(workspace):
    """'previous (B)' walks back through the annotator's saved prompts, newest to oldest (it used to alternate
    between the two newest)."""
    import gradio as gr

    from neat_studio.studio import Studio
    from neat_studio.ui.app import build_app

    with Studio(workspace, model_spec="tiny") as st:
        pids = st.store.add_prompts([{"text": f"question {i}?", "source": "t"} for i in range(3)], actor="t")
        for pid in pids:  # saved oldest -> newest
            a, b = st.store.add_responses([{"prompt_id": pid, "text": f"{pid} {x}", "origin": "policy"}
                                           for x in ("one", "two")], actor="t")
            st.store.save_annotation(pid, "local", [[a], [b]])
        on_cmd = _handler(build_app(st), "on_cmd")
        s, seen = {"item": pids[-1]}, []
        for _ in range(3):
            evt = gr.EventData(None, {"cmd": "prev", "item": s["item"], "ranks": {}, "marks": {}})
            out = on_cmd(evt, s, "", False, None, None, None, "", False, "queue", None)
            s = next(o for o in out if isinstance(o, dict) and "item" in o)
            seen.append(s["item"])
        assert seen == [pids[1], pids[0], pids[0]]  # the oldest has nothing before it: it stays


def test_annotate_tab_switch_keeps_the_comment_and_flag(workspace):
    """Coming back to the Annotate tab on the same prompt leaves the comment and flag being written alone (they
    used to be reset to the saved annotation's)."""
    from neat_studio.studio import Studio
    from neat_studio.ui.app import build_app

    with Studio(workspace, model_spec="tiny") as st:
        pid = st.store.add_prompts([{"text": "question?", "source": "t"}], actor="t")[0]
        st.store.add_responses([{"prompt_id": pid, "text": x, "origin": "policy"} for x in ("a", "b")], actor="t")
        demo = build_app(st)
        on_show = next(f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "on_show"
                       and f.fn.__module__ == "neat_studio.ui.annotate")
        first = on_show({}, None, None, None, "", False, "queue", None)  # first visit: the queue's prompt
        s = first[5]
        assert s["item"] == pid and first[1] == "" and first[2] is False
        again = on_show(s, None, None, None, "", False, "queue", None)
        assert again[5]["item"] == pid
        assert again[1] == {"__type__": "update"} and again[2] == {"__type__": "update"}


def test_recipe_config_pins_scoped_prompts_and_validates(studio):
    """The Train tab's recipe choice: the safety recipe's system prompts pinned to the newest saved versions with
    their scopes kept, its data rule, and a config the job runner accepts as it is (one validation)."""
    from neat_studio.neat.recipes import RECIPES

    for name in ("dangerous_compliance", "over_refusal"):
        studio.store.save_system_prompt(name, "negative", f"{name} text", None, "t")
    assert studio.training_options()["recipes"] == sorted(RECIPES)
    r = studio.recipe_config("safety")
    c = r["config"]
    assert c["negatives"] == ["dangerous_compliance@1:harmful", "over_refusal@1:benign"]
    assert c["anchor"] == "round" and c["margin"] > 0 and c["data"] == {"split": "train", "min_responses": 1}
    studio.store.save_system_prompt("over_refusal", "negative", "v2 text", None, "t")
    c2 = studio.recipe_config("safety")["config"]
    assert c2["negatives"][1] == "over_refusal@2:benign"
    train_cfg, filters, _, _ = studio.jobs.split_config({**c2, "model": "tiny"})
    assert train_cfg["negatives"] == ["dangerous_compliance@1:harmful", "over_refusal@2:benign"]
    assert filters["min_responses"] == 1
    with pytest.raises(ValueError, match="unknown recipe"):
        studio.recipe_config("nope")


def test_train_form_starts_from_the_cpu_recipe_and_the_cli_gives_the_same_config(tmp_path):
    """One source of defaults: the Train tab's starting values are NeatConfig's defaults with the `cpu` recipe, and
    `train --recipe cpu` on the command line resolves to exactly those values."""
    import argparse

    from neat_studio.neat.cli import add_arguments, build_config
    from neat_studio.neat.config import NeatConfig
    from neat_studio.studio.training import DEFAULT_RECIPE, HYPER, form_defaults

    assert DEFAULT_RECIPE == "cpu"
    form = form_defaults()
    p = argparse.ArgumentParser()
    add_arguments(p)
    cli = build_config(p.parse_args(["--recipe", "cpu", "--snapshot", str(tmp_path)])).to_dict()
    for key, *_ in HYPER:
        assert form[key] == cli[key], key
    # the recipe changes what a CPU run needs and leaves the rest at NeatConfig's defaults
    assert (form["rounds"], form["k"], form["max_new_tokens"]) == (1, 1, 48)
    assert form["lr"] == NeatConfig().lr and form["margin"] == NeatConfig().margin


def test_a_runs_config_goes_back_into_the_form_unchanged(studio):
    """"Reuse this run's config" and the remembered last settings: a job config -> the form -> the same config,
    including settings the form does not show (a recipe's plain_rank, scoped negatives, gen_batch_size)."""
    from neat_studio.studio.training import FORM_KEYS, config_from_form, form_from_config

    for nm in ("dangerous_compliance", "over_refusal"):
        studio.store.save_system_prompt(nm, "negative", f"{nm} text", None, "t")
    from neat_studio.neat.config import NeatConfig

    c = NeatConfig().to_dict() | studio.recipe_config("safety")["config"] | {"model": "tiny", "name": "mine",
                                                                             "lr": 3e-5}
    for k in ("snapshot", "output_dir"):
        c.pop(k)
    c["data"] = {"annotated_only": True, "include_imported": False, "tags": ["harmful", "benign"], "split": "train",
                 "min_responses": 1}
    vals, extra = form_from_config(c)
    assert list(vals) == list(FORM_KEYS) and vals["recipe"] == "(none)"
    assert extra["plain_rank"] == "tie_best" and extra["gen_batch_size"] == 16
    assert config_from_form(vals, None, extra) == c
    # the remembered settings are per user
    studio.remember_train_form("alice", c)
    assert studio.last_train_form("alice") == c and studio.last_train_form("bob") is None


def test_the_forms_validation_settings_reach_the_run_config():
    from neat_studio.studio.training import config_from_form, form_defaults

    form = form_defaults() | {"recipe": "(none)", "negatives": ["rude@1"], "val_file": "  held/val.jsonl ",
                              "select": "best_val", "val_every": 24}
    cfg = config_from_form(form)
    assert (cfg["val_file"], cfg["select"], cfg["val_every"]) == ("held/val.jsonl", "best_val", 24)
    off = config_from_form(form | {"val_file": None, "select": None, "val_every": 0})
    assert (off["val_file"], off["select"], off["val_every"]) == ("", "last", 0)


def test_run_config_is_the_complete_config_a_run_started_with(studio):
    from neat_studio.neat.config import NeatConfig

    rid = studio.store.create_run("r1", "neat", {"model": "tiny", "method": "neat", "negatives": ["rude@1"],
                                                 "lr": 2e-5, "data": {"split": "train", "min_responses": 1},
                                                 "snapshot_path": "/x"}, actor="t")
    cfg = studio.run_config(rid)
    assert cfg["lr"] == 2e-5 and cfg["negatives"] == ["rude@1"] and cfg["name"] == "r1"
    assert cfg["rounds"] == NeatConfig().rounds and "snapshot" not in cfg and "snapshot_path" not in cfg
    assert cfg["data"] == {"split": "train", "min_responses": 1}
    with pytest.raises(ValueError, match="unknown run"):
        studio.run_config("nope")


# -- issue 21: the Studio services behind the Train and Compare handlers, without Gradio ---------------------------
UPDATE = {"__type__": "update"}


def test_follow_newest_prompt_versions():
    from neat_studio.studio.training import follow_newest

    choices = ["a@1", "a@2", "b@1"]
    assert follow_newest([], ["a@1"], ["a@2"], choices) == ["a@2"]  # nothing chosen: the newest
    assert follow_newest(["a@1"], ["a@1"], ["a@2"], choices) == ["a@2"]  # still the default it was given
    assert follow_newest(["b@1", "gone@1"], ["a@1"], ["a@2"], choices) == ["b@1"]  # a user's choice, less stale ones
    assert follow_newest(["gone@1"], ["a@1"], ["a@2"], choices) == ["a@2"]  # nothing of it left: the newest
    assert follow_newest(None, None, [], []) == []


def test_recipe_form_and_train_config(studio):
    from neat_studio.neat.config import NeatConfig
    from neat_studio.neat.recipes import RECIPES
    from neat_studio.studio.training import HYPER, form_from_config

    d = NeatConfig().to_dict()
    none = studio.recipe_form("(none)", ["rude@1"])
    assert none == {"description": None, "values": {
        "method": d["method"], "negatives": ["rude@1"], "positives": d["positives"], "min_responses": 2,
        "lora": False, "anchor": d["anchor"], "rank_reduction": d["rank_reduction"], "val_file": "", "select": "last",
        "check": False, **{k: d[k] for k, _ in HYPER}}}
    cpu = studio.recipe_form("cpu", ["rude@1"])  # names no system prompt: the form's choice stays
    assert cpu == {"description": RECIPES["cpu"]["description"], "values": none["values"] | RECIPES["cpu"]["config"]}
    for nm in ("dangerous_compliance", "over_refusal"):
        studio.store.save_system_prompt(nm, "negative", f"{nm} text", None, "t")
    v = studio.recipe_form("safety", ["rude@1"])["values"]
    assert v["negatives"] == ["dangerous_compliance@1:harmful", "over_refusal@1:benign"] and v["min_responses"] == 1
    assert (v["anchor"], v["rank_reduction"], v["margin"], v["rounds"]) == ("round", "mean", 0.5, 2)
    with pytest.raises(ValueError, match="unknown recipe"):
        studio.recipe_form("nope")
    # a LoRA recipe ticks the form's LoRA box: the form's value is what a started run gets
    for nm in ("safe_refusal", "helpful_no_overrefusal"):
        studio.store.save_system_prompt(nm, "positive", f"{nm} text", None, "t")
    pp = studio.recipe_form("safety-pp-lora", ["rude@1"])["values"]
    assert pp["lora"] is True and pp["lr"] == 4e-4 and v["lora"] is False
    # it keeps the step chosen on its held-out prompts: the form shows the file and the rule
    assert (pp["val_file"], pp["select"]) == ("data/recipes/safety-pp-lora/val.jsonl", "best_val")
    assert (v["val_file"], v["select"]) == ("", "last")
    # the safety recipes tick "check against the base model when done"; the form's box is what a run gets
    assert pp["check"] is True and v["check"] is True and cpu["values"]["check"] is True
    assert none["values"]["check"] is False  # NeatConfig's default: the CLI without a recipe does not check
    assert studio.train_config(form_from_config({"model": "tiny", "negatives": ["rude@1"], "data": {}})[0]
                               | pp | {"recipe": "safety-pp-lora", "check": False})["check"] is False

    form, extra = form_from_config({"model": "tiny", "method": "neat", "negatives": ["rude@1"], "data": {}})
    pp_cfg = studio.train_config(form | pp | {"recipe": "safety-pp-lora"})
    assert pp_cfg["lora"] is True and pp_cfg["gen_batch_size"] == 64  # the recipe's, not shown on the form
    assert pp_cfg["lora_targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]  # likewise
    assert (pp_cfg["refusal_negatives"], pp_cfg["loop_negatives"]) == (2, 2)  # likewise
    assert extra == {}
    form["recipe"] = "safety"  # the recipe's settings the form does not show come from the recipe
    cfg = studio.train_config(form)
    assert (cfg["gen_batch_size"], cfg["plain_rank"], cfg["negatives"]) == (16, "tie_best", ["rude@1"])
    form["recipe"] = "(none)"
    assert "gen_batch_size" not in studio.train_config(form)
    assert studio.train_config(form, {"gen_batch_size": 4})["gen_batch_size"] == 4  # a reused run's setting
    assert studio.estimate_form(form) == studio.estimate_training(studio.train_config(form))
    with pytest.raises(ValueError):
        studio.train_config({**form, "lr": "fast"})
    with pytest.raises(ValueError, match="unknown recipe"):
        studio.estimate_form({**form, "recipe": "nope"})


def test_training_page_run_view_and_history_signature(studio):
    page = studio.training_page(None, None)
    assert (page["runs"], page["shown"], page["negatives"], page["negatives_auto"]) == ([], None, ["rude@1"],
                                                                                        ["rude@1"])
    assert page["options"] == studio.training_options()
    rid, d = fake_run(studio)
    rid2, d2 = fake_run(studio, status="stopped", final=False, ckpt=3)
    studio.store.save_system_prompt("rude", "negative", "Be ruder.", {}, author="t")  # rude@2
    page = studio.training_page(["rude@1"], ["rude@1"])  # still the default: follows the newest
    ids = [r["id"] for r in studio.training_runs()]
    assert [r["id"] for r in page["runs"]] == ids and page["shown"] == ids[0]
    assert (page["negatives"], page["negatives_auto"]) == (["rude@2"], ["rude@2"])
    assert studio.training_page(["rude@1"], ["rude@2"])["negatives"] == ["rude@1"]  # the user's choice stays
    live = studio.store.create_run("live", "neat", {"model": "tiny"}, actor="t", status="running")
    assert studio.training_page()["shown"] == live  # the active run first

    rows = [{"step": 1, "loss": 2.0, "total_steps": 2}, {"step": 2, "loss": 1.5, "total_steps": 2}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "train.log").write_text("one\ntwo\n")
    v = studio.run_view(rid)
    assert v["key"] == (rid, 2, 2, "finished", 0) and v["redraw"] is True and v["run"]["run_id"] == rid
    assert (v["error"], v["log"], v["can_stop"], v["can_resume"]) == ("", "one\ntwo", False, False)
    assert [r["step"] for r in v["run"]["metrics"]] == [1, 2]
    assert studio.run_view(rid, v["key"])["redraw"] is False  # nothing new: the curves stay
    with (d / "metrics.jsonl").open("a") as f:  # a validation after the last step: the figures redraw
        f.write(json.dumps({"event": "val", "step": 2, "refusal": 0.5, "answered": 0.9}) + "\n")
    v3 = studio.run_view(rid, v["key"])
    assert v3["redraw"] is True and v3["key"] == (rid, 2, 2, "finished", 1)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    v2 = studio.run_view(rid2)
    assert (v2["key"], v2["can_resume"], v2["error"]) == ((rid2, 0, None, "stopped", 0), True, "")
    studio.store.update_run(rid2, status="failed", error="out of memory")
    assert studio.run_view(rid2)["error"] == "Run failed: out of memory"
    assert studio.run_view(live)["can_stop"] is True
    with pytest.raises(ValueError):
        studio.run_view("nope")

    runs, sig = studio.training_runs_changed(None)
    assert [r["id"] for r in runs] == [r["id"] for r in studio.training_runs()]
    assert sig == tuple((r["id"], r["status"], r.get("error"), "") for r in runs)  # "": no run checked yet
    assert studio.training_runs_changed(sig) == (None, sig)
    studio.store.update_run(live, status="stopped")
    assert studio.training_runs_changed(sig)[0] is not None


def test_start_form_asks_for_a_long_run_then_starts_and_remembers(studio, monkeypatch):
    from neat_studio.studio import start_confirmation
    from neat_studio.studio.training import form_from_config

    est = {"seconds": 4140.0, "n_prompts": 2313, "text": "about 1 h 09 min"}
    started = []
    monkeypatch.setattr(studio, "estimate_training", lambda cfg: est)
    monkeypatch.setattr(studio, "start_training", lambda cfg, actor="local": started.append((cfg, actor)) or "run1")
    form, _ = form_from_config({"model": "tiny", "method": "neat", "negatives": ["rude@1"], "data": {}})
    cfg = studio.train_config(form)
    first = studio.start_form(form, None, None, actor="alice", now=100.0)
    assert first == {"run_id": None, **{k: v for k, v in start_confirmation(cfg, est, None, 100.0).items()
                                        if k != "start"}}
    assert started == [] and studio.last_train_form("alice") is None
    second = studio.start_form(form, None, first["armed"], actor="alice", now=130.0)
    assert second == {"run_id": "run1", "message": "", "armed": None}
    assert started == [(cfg, "alice")] and studio.last_train_form("alice") == cfg
    with pytest.raises(ValueError, match="outside the allowed"):
        studio.start_form({**form, "model": "/etc"}, actor="alice")
    assert len(started) == 1


def test_evaluations_the_tabs_start(studio, monkeypatch):
    """What the Train and Compare tabs ask `start_evaluation` for (the evaluation itself: the handler tests)."""
    calls = []
    monkeypatch.setattr(studio, "start_evaluation", lambda specs, sets, **kw: calls.append((specs, sets, kw)) or "e1")
    rid2, _ = fake_run(studio, status="stopped", final=False, ckpt=3)
    with pytest.raises(ValueError, match=r"has no final model yet \(status stopped\)"):
        studio.start_run_evaluation(rid2)
    with pytest.raises(ValueError, match="outside the allowed"):
        studio.start_compare_evaluation("tiny", "/etc", ["harmful"])
    with pytest.raises(ValueError, match="unknown evaluation set"):
        studio.start_compare_evaluation("tiny", "tiny", ["nope"])
    rid, d = fake_run(studio)
    # a run's training prompts must stay out of its evaluation: without its snapshot nothing starts
    with pytest.raises(ValueError, match=r"its snapshot \(not recorded\) is gone"):
        studio.start_run_evaluation(rid)
    from neat_studio.neat.config import NeatConfig

    snap = studio.workspace.root / "snap-x"
    NeatConfig.from_dict({"model": "tiny", "snapshot": str(snap)}).to_yaml(d / "config.yaml")
    with pytest.raises(ValueError, match=f"its snapshot \\({snap}\\) is gone"):
        studio.start_run_evaluation(rid)
    assert calls == []  # nothing started
    snap.mkdir()
    (snap / "data.jsonl").write_text("")
    assert studio.start_run_evaluation(rid, 4, actor="t") == {"id": "e1", "label": f"run {rid} · fake <b>run</b>",
                                                              "base_label": "tiny"}
    assert calls[-1] == (["tiny", str(d)], {n: n for n in studio.eval_set_choices()}, {
        "out_dir": f"{d}/report", "n_per_set": 4, "max_new_tokens": 48, "pairs_path": "pairs",
        "exclude": [str(snap)], "dtype": studio.gen_dtype, "batch_size": 16, "actor": "t"})
    studio.start_run_evaluation(rid)
    assert calls[-1][2]["n_per_set"] == 150  # every dev prompt of each standard set
    assert studio.start_compare_evaluation("tiny", "tiny", ["harmful"], None, "rows", 2, actor="t") == "e1"
    assert calls[-1] == (["tiny"], {"harmful": "harmful"}, {"n_per_set": 2, "max_new_tokens": 64, "actor": "t"})
    studio.start_compare_evaluation("tiny", "default", ["harmful", "benign"])
    assert calls[-1] == (["tiny", "default"], {"harmful": "harmful", "benign": "benign"},
                         {"n_per_set": 10, "max_new_tokens": 64, "actor": "local"})


def test_compare_services(studio):
    from neat_studio.generation import GenParams, stream_chat

    assert studio.compare_params(0.5, 0.9, None, None) == {"temperature": 0.5, "top_p": 0.9, "max_new_tokens": 96,
                                                           "seed": 0}
    assert studio.compare_params("0.5", 1, "8", "3") == {"temperature": 0.5, "top_p": 1.0, "max_new_tokens": 8,
                                                         "seed": 3}
    assert studio.compare_message("  hi \n") == "hi"
    for empty in ("  ", None):
        with pytest.raises(ValueError, match="Write a message first."):
            studio.compare_message(empty)
    assert studio.compare_side(None) == (None, None) and studio.compare_side("") == (None, None)
    assert studio.compare_side("tiny") == (studio.compare_info("tiny"), None)
    info, err = studio.compare_side("/etc")
    assert info is None and "outside the allowed" in err

    u, a = {"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}
    u2, a2 = {"role": "user", "content": "q2"}, {"role": "assistant", "content": "y"}
    assert studio.compare_retry([u, a], [u, a], 3) == {"text": "q", "history_a": [], "history_b": [], "seed": 4}
    assert studio.compare_retry([u, a, u2, a2], [u, a, u2, a], None) == {
        "text": "q2", "history_a": [u, a], "history_b": [u, a], "seed": 1}
    assert studio.compare_retry([u, a], [], 0) is None and studio.compare_retry([], [], 0) is None

    params = studio.compare_params(0.8, 0.95, 6, 3)
    frames = list(studio.compare_turn("tiny", "tiny", [u, a], [u, a], " Hello ", params))
    assert [f[2] for f in frames] == [False] * (len(frames) - 1) + [True] and len(frames) >= 2
    conv = [u, a, {"role": "user", "content": "Hello"}]
    want = list(stream_chat(studio.compare_model("tiny"), conv, GenParams(temperature=0.8, top_p=0.95,
                                                                           max_new_tokens=6, seed=3)))[-1]
    assert frames[-1][:2] == (conv + [{"role": "assistant", "content": want}],) * 2
    assert frames[-2][:2] == frames[-1][:2]  # the last streamed frame already holds the finished replies
    with pytest.raises(ValueError, match="Write a message first."):
        next(studio.compare_turn("tiny", "tiny", [], [], " "))


def test_compare_models_update_follows_new_runs(studio):
    tt = ("tiny", "tiny")
    assert studio.compare_models_update(tt, tt, force=False) == {"defaults": tt, "choices": None,
                                                                 "values": (None, None), "sets": None}
    assert studio.compare_models_update(tt, tt) == {"defaults": tt, "choices": studio.model_choices(),
                                                    "values": (None, None), "sets": studio.eval_set_choices()}
    rid, d = fake_run(studio)
    assert studio.compare_models_update(tt, tt, force=False) == {
        "defaults": ("tiny", str(d)), "choices": studio.model_choices(), "values": (None, str(d)), "sets": None}
    assert studio.compare_models_update(("tiny", "default"), tt, force=False)["values"] == (None, None)  # chosen
    assert studio.compare_models_update(("", None), None)["values"] == ("tiny", str(d))  # nothing shown yet


def test_tab_outputs_by_name_and_the_evaluation_updates():
    from neat_studio.ui.common import Ctx, Tab, error_box, evaluation_updates, ok_box

    assert Tab.pack(("a", "b", "c"), {"c": 3, "a": 1, "z": 9}) == (1, UPDATE, 3)
    tab = Tab(Ctx(studio=None))
    x, y = object(), object()
    tab.c.update(x=x, y=y)
    assert tab.named({y: 5}) == {"y": 5} and tab.comps(["y", "x"]) == [y, x]

    class Watch:
        def __init__(self, *statuses):
            self.statuses = statuses

        def watch_evaluation(self, eval_id):
            yield from self.statuses

    running = {"status": "running", "stage": "generating", "done": 1, "total": 4}
    done = {"status": "done", "out_dir": "/r/<x>", "markdown": "# R\n", "charts": ["/r/a.png"],
            "model_names": [("a", "run a · n")]}
    assert list(evaluation_updates(Watch(running, done), "e1", "Evaluating A vs B", "Evaluation done ({out_dir}).")) \
        == [(ok_box("Evaluating A vs B: generating 1/4…"), UPDATE, UPDATE),
            (ok_box("Evaluation done (/r/<x>). Models: a = run a · n."), "# R\n",
             {"__type__": "update", "value": ["/r/a.png"], "visible": True})]
    failed = {"status": "failed", "error": "boom"}
    hidden = {"__type__": "update", "visible": False}
    assert list(evaluation_updates(Watch(running, failed), "e1", "x", "y")) == [
        (ok_box("x: generating 1/4…"), UPDATE, UPDATE), (error_box("Evaluation failed: boom"), UPDATE, hidden)]
    assert list(evaluation_updates(Watch(failed), "e1", "x", "y", clear_report_on_failure=True)) == [
        (error_box("Evaluation failed: boom"), "", hidden)]


def test_val_figure_draws_the_validation_and_marks_the_kept_step():
    from neat_studio.ui.train import val_figure

    events = [{"event": "val", "step": 0, "refusal": 0.1, "answered": 1.0},
              {"event": "round_start", "round": 1, "step": 3},
              {"event": "val", "step": 3, "refusal": 0.3, "answered": 0.95},
              {"event": "val", "step": 6, "refusal": 0.5, "answered": 0.8},
              {"event": "selected", "step": 6, "selected_step": 3}]
    ax = val_figure(events).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["harmful refused"].get_xdata()) == [0, 3, 6]
    assert list(lines["harmful refused"].get_ydata()) == [0.1, 0.3, 0.5]
    assert list(lines["harmless answered"].get_ydata()) == [1.0, 0.95, 0.8]
    kept = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]  # the unlabelled vertical line
    assert [list(ln.get_xdata()) for ln in kept] == [[3, 3]]
    assert [(t.get_text(), t.get_ha()) for t in ax.texts] == [(" kept", "left")]  # step 3 of 6: to its right
    empty = val_figure([]).axes[0]
    assert not empty.get_lines() and empty.texts[0].get_text() == "no data yet"
    # adapter_scales: the kept step validated at 1.5x (hollow markers) and chosen
    scaled = events[:-1] + [{"event": "val_scaled", "step": 3, "scale": 1.5, "refusal": 0.4, "answered": 0.95},
                            {"event": "selected", "step": 6, "selected_step": 3, "adapter_scale": 1.5}]
    ax = val_figure(scaled).axes[0]
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == "o" and ln.get_linestyle() == "None"]
    assert [(list(ln.get_xdata()), list(ln.get_ydata())) for ln in marks] == [([3, 3], [0.4, 0.95])]
    assert [t.get_text() for t in ax.texts] == [" kept at 1.5x its change"]
    last = val_figure(events[:-1] + [{"event": "selected", "step": 6, "selected_step": 6, "adapter_scale": 1.5}])
    assert [(t.get_text(), t.get_ha()) for t in last.axes[0].texts] == [("kept at 1.5x its change ", "right")]
    assert last.axes[0].get_title() == "held-out validation"
    # merge_scale: every validation after step 0 judged the adapter at 0.7x, and the title says so
    fixed = [{**e, "scale": 0.7} if e["event"] == "val" and e["step"] else e for e in events[:-1]]
    fixed.append({"event": "selected", "step": 6, "selected_step": 3, "adapter_scale": 0.7})
    ax = val_figure(fixed).axes[0]
    assert ax.get_title() == "held-out validation (adapter at 0.7x)"
    assert [t.get_text() for t in ax.texts] == [" kept at 0.7x its change"]
