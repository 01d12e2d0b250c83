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
    assert "grad norm 12.35 (step 2)" in h


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
    from neat_studio.ui.train import DEFAULT_RECIPE, HYPER, form_defaults

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
    from neat_studio.ui.train import FORM_KEYS, config_from_form, form_from_config

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
    assert len(vals) == len(FORM_KEYS) and dict(zip(FORM_KEYS, vals))["recipe"] == "(none)"
    assert extra["plain_rank"] == "tie_best" and extra["gen_batch_size"] == 16
    assert config_from_form(vals, None, extra) == c
    # the remembered settings are per user
    studio.remember_train_form("alice", c)
    assert studio.last_train_form("alice") == c and studio.last_train_form("bob") is None


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
