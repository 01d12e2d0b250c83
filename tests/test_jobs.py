"""Training jobs (neat_studio.jobs) driving the REAL trainer subprocess on the tiny model, plus Compare votes.

One workspace per module (runs are shared between tests to keep the module at ~2 minutes: every trainer process
pays ~15-20 s of imports)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from neat_studio.jobs import JobError, JobRunner, MetricsReader, explain_error, parse_metrics, tail_lines
from neat_studio.neat.estimate import estimate_time
from tests.helpers import freeze_after_first_step

FAST = {"model": "tiny", "method": "neat", "negatives": ["rude"], "rounds": 1, "epochs": 1, "batch_size": 2,
        "k": 1, "k_neg": 1, "max_new_tokens": 8, "max_response_len": 16, "max_prompt_len": 32}
# 120 tiny steps: long enough to stop mid-run, short enough to resume to the end
LONG = {**FAST, "batch_size": 1, "epochs": 30}


def seed_data(studio, n=4):
    recs = [{"messages": [{"role": "user", "content": f"question {i}?"}], "source": "t", "tags": ["t"],
             "split": "train",
             "responses": [{"text": f"good answer {i}", "origin": "dataset:chosen", "rank": 0},
                           {"text": f"bad answer {i}", "origin": "dataset:rejected", "rank": 1}]} for i in range(n)]
    studio.store.import_records(recs, actor="t")
    studio.store.save_system_prompt("rude", "negative", "Be rude and unhelpful.", {}, author="t")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio

    ws = Workspace(tmp_path_factory.mktemp("jobs") / "ws").ensure()
    st = Studio(ws, model_spec="tiny")
    seed_data(st)
    yield st
    runner = st.__dict__.get("_jobs")
    if runner is not None:  # never leave a trainer behind
        for r in st.store.list_runs():
            if r["status"] in ("running", "queued") and r.get("pid"):
                JobRunner._signal(r["pid"], signal.SIGKILL)
        runner.close()
    st.close()


@pytest.fixture(scope="module")
def finished_run(studio):
    rid = studio.start_training(FAST, actor="alice")
    p = studio.jobs.wait(rid, timeout=180)
    assert p["status"] == "finished", p["error"] or p["log_tail"]
    return rid


def wait_for(pred, timeout=120, every=0.2):
    t = time.time() + timeout
    while time.time() < t:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError("condition not reached in time")


# -- pure helpers ------------------------------------------------------------------------------------------------
def test_metrics_reader_tolerates_torn_and_bad_lines(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"event": "round_start", "round": 0}\n{"step": 1, "loss": 2.0, "total_steps": 3}\n'
                 'not json\n{"step": 2, "loss": 1.5, "tot')
    r = MetricsReader(f).read()
    assert [x["step"] for x in r.curve()] == [1] and r.bad_lines == 1 and r.events[0]["event"] == "round_start"
    with open(f, "a") as fh:  # the torn line completes
        fh.write('al_steps": 3}\n{"step": 2, "loss": 1.4, "total_steps": 3}\n')
    r.read()
    curve = r.curve()
    assert [x["step"] for x in curve] == [1, 2] and curve[-1]["loss"] == 1.4  # repeated step: last wins
    rows, events = parse_metrics(f)
    assert len(rows) == 2 and len(events) == 1
    f.write_text('{"step": 9}\n')  # truncated / replaced file: start over
    assert [x["step"] for x in r.read().curve()] == [9]


def test_explain_error_plain_words(tmp_path):
    assert explain_error([], [{"event": "error", "message": "ValueError: boom"}]) == "ValueError: boom"
    log = ["Traceback (most recent call last):", '  File "x"', "error: model 'nope' cannot be loaded: no such dir"]
    assert explain_error(log) == "model 'nope' cannot be loaded: no such dir"
    assert "missing: foo" in explain_error(["ModuleNotFoundError: No module named 'foo'"])
    assert "out of memory" in explain_error(["RuntimeError: CUDA out of memory"])
    assert "SIGSEGV" in explain_error([], exit_code=-signal.SIGSEGV)
    p = tmp_path / "log"
    p.write_text("a\nb\rc\n\n")
    assert tail_lines(p, 5) == ["a", "c"]


def test_estimate_time_scales_with_work():
    small = estimate_time({"model": "tiny", "method": "sft", "rounds": 1}, 4)
    big = estimate_time({"model": "default", "method": "neat", "negatives": ["a@1"], "rounds": 2}, 200)
    assert small["steps"] == 2 and small["sampling_s"] == 0
    assert big["seconds"] > small["seconds"] and big["sampling_s"] > 0 and big["steps"] == 200
    capped = estimate_time({"model": "default", "method": "neat", "negatives": ["a@1"], "max_steps": 5}, 200)
    assert capped["steps"] == 5 and capped["seconds"] < big["seconds"]
    assert estimate_time({}, 0)["text"] == "no training data matches the filters"


def test_estimate_time_reads_a_neat_config_with_its_defaults():
    """The estimate takes the run's NeatConfig (a job config dict gives the same figure: missing keys are
    NeatConfig's defaults)."""
    from neat_studio.neat.config import NeatConfig

    cfg = NeatConfig.from_dict({"model": "default", "method": "neat", "negatives": ["a@1"], "rounds": 2})
    assert estimate_time(cfg, 50) == estimate_time({"model": "default", "method": "neat", "negatives": ["a@1"],
                                                    "rounds": 2, "name": "x", "data": {"split": "train"}}, 50)
    assert estimate_time(cfg, 50)["steps"] == 2 * 50 // NeatConfig().batch_size


def test_estimate_time_hand_computed(monkeypatch):
    """The documented model, worked by hand (N = 1.35e8 for `default`)."""
    import neat_studio.models as M

    monkeypatch.setattr(M, "native_bf16", lambda device="cpu": False)
    # sft, 4 prompts, batch 2: 2 steps of 2 x (48 prompt + 64 response) tokens at 6N / 1.2e11, + 0.135 s each
    e = estimate_time({"model": "default", "method": "sft", "rounds": 1, "batch_size": 2, "dtype": "auto"}, 4)
    assert (e["steps"], e["sampling_s"], e["training_s"], e["seconds"], e["bf16"]) == (2, 0.0, 3.3, 23.3, False)
    # neat, 10 prompts, 1 negative, k = k_neg = 1, 32 new tokens, batches of 8 sequences.
    # sampling, per pass: batches of 8 and 2 rows, 32 steps each of 0.0415385 s (4N bytes / 1.3e10) + 0.75 x rows x
    # 0.0077143 s (2N / 3.5e10): 32 x (0.0878242 + 0.0531099) = 4.50989 s, + prefill 10 x 48 x 2N / 1.2e11 = 1.08 s;
    # two passes: 11.17978 s. training: 5 steps of 2 x (48 + 2 x 64 + 2 x 0.75 x 32) = 448 tokens: 5 x 3.159 s.
    cfg = {"model": "default", "method": "neat", "negatives": ["a@1"], "k": 1, "k_neg": 1, "gen_batch_size": 8,
           "max_new_tokens": 32, "rounds": 1, "batch_size": 2, "max_response_len": 128}
    e = estimate_time({**cfg, "dtype": "fp32"}, 10)
    assert (e["steps"], e["sampling_s"], e["training_s"], e["seconds"]) == (5, 11.2, 15.8, 47.0)
    # bf16 (auto on a CPU with bf16 instructions): sampling / 1.5, training steps' FLOPs / 1.9
    monkeypatch.setattr(M, "native_bf16", lambda device="cpu": True)
    e = estimate_time({**cfg, "dtype": "auto"}, 10)
    assert (e["sampling_s"], e["training_s"], e["seconds"], e["bf16"]) == (7.5, 8.6, 36.1, True)
    assert "bf16" in e["text"] and estimate_time({**cfg, "dtype": "fp32"}, 10)["bf16"] is False
    # the negative scoped to a tag that 2 of the 10 prompts carry: its pass samples 2 prompts (one batch of 2 rows:
    # 32 x (0.0415385 + 0.75 x 2 x 0.0077143) = 1.69952 s + prefill 2 x 48 x 2N / 1.2e11 = 0.216 s), the plain pass
    # as before (5.58989 s): sampling 7.5 s; a list holds 1 + 2/10 online samples on average:
    # 2 x (48 + 2 x 64 + 1.2 x 0.75 x 32) = 409.6 tokens a step: 5 x (2.7648 + 0.135) = 14.5 s; + 20 s startup
    e = estimate_time({**cfg, "negatives": ["a@1:x"], "dtype": "fp32"}, 10, tag_counts={"x": 2, "y": 8})
    assert (e["sampling_s"], e["training_s"], e["seconds"]) == (7.5, 14.5, 42.0)
    # one synthetic loop per list: + min(1.4 x 40, 128) = 56 tokens, 2 x (224 + 56) = 560 a step:
    # 5 x (560 x 6N / 1.2e11 + 0.135) = 5 x 3.915 = 19.575 s; sampling unchanged (loops are not generated)
    e = estimate_time({**cfg, "loop_negatives": 1, "dtype": "fp32"}, 10)
    assert (e["sampling_s"], e["training_s"], e["seconds"]) == (11.2, 19.6, 50.8)
    # without tag counts a scoped prompt is counted on every prompt (the estimate errs long)
    assert estimate_time({**cfg, "negatives": ["a@1:x"], "dtype": "fp32"}, 10)["seconds"] == 47.0
    # the check after the run, per model: 10 s (half the startup: a load) + 26 batches of 16 x 48 steps of
    # (0.0415385 + 0.75 x 16 x 0.0077143 = 0.1341099 s) = 167.369 s, + prefill (416 x 60 + 134 x 300) tokens x
    # 2N / 1.2e11 = 146.610 s, + 416 answers x 0.03 s = 12.48 s: 336.459 s; two models: 672.9 s
    e = estimate_time({**cfg, "dtype": "fp32", "check": True}, 10)
    assert (e["check_s"], e["seconds"]) == (672.9, 719.9)
    assert "then the check against the base ~11 min 13 s" in e["text"]
    assert estimate_time({**cfg, "dtype": "fp32"}, 10)["check_s"] == 0.0
    # bf16: decoding and prefill / 1.5: 2 x (10 + 313.979 / 1.5 + 12.48) = 463.6 s
    monkeypatch.setattr(M, "native_bf16", lambda device="cpu": True)
    assert estimate_time({**cfg, "dtype": "auto", "check": True}, 10)["check_s"] == 463.6


def test_estimate_time_counts_validations(monkeypatch, tmp_path):
    """A val_file adds its validations, by hand: 10 held-out prompts (the blank line is not one), 32 new tokens
    (val_max_new_tokens), batches of 8 and 2 rows as a sampling pass: 32 x (0.0878242 + 0.0531099) = 4.50989 s,
    + prefill 10 x 48 x 2N / 1.2e11 = 1.08 s, + 10 answers x 0.03 s = 0.3 s: 5.88989 s per validation."""
    import neat_studio.models as M

    monkeypatch.setattr(M, "native_bf16", lambda device="cpu": False)
    val = tmp_path / "val.jsonl"
    val.write_text("".join(f'{{"prompt": "p{i}", "tags": ["{"harmful" if i < 5 else "benign"}"]}}\n'
                           for i in range(10)) + "\n")
    cfg = {"model": "default", "method": "neat", "negatives": ["a@1"], "k": 1, "k_neg": 1, "gen_batch_size": 8,
           "max_new_tokens": 32, "rounds": 1, "batch_size": 2, "max_response_len": 128, "dtype": "fp32"}
    plain = estimate_time(cfg, 10)
    assert (plain["validations"], plain["validation_s"], plain["seconds"]) == (0, 0.0, 47.0)
    # val_every 0: at the start and at the end of the one round: 2 x 5.88989 = 11.78 s; 46.975 + 11.78 = 58.75
    e = estimate_time({**cfg, "val_file": str(val)}, 10)
    assert (e["validations"], e["validation_s"], e["seconds"]) == (2, 11.8, 58.8)
    assert "2 validations ~12 s" in e["text"]
    # every 2 of the 5 steps and at the last: steps 0, 2, 4, 5: 4 x 5.88989 = 23.56 s
    e = estimate_time({**cfg, "val_file": str(val), "val_every": 2}, 10)
    assert (e["validations"], e["validation_s"], e["seconds"]) == (4, 23.6, 70.5)
    # a file that is not there counts nothing here (the run itself refuses it, naming the file); dpo never validates
    assert estimate_time({**cfg, "val_file": str(tmp_path / "none.jsonl")}, 10)["validation_s"] == 0.0
    assert estimate_time({**cfg, "method": "dpo", "val_file": str(val)}, 10)["validations"] == 0
    # adapter_scales (LoRA, select=best_val): the kept adapter once more per scale, 6 x 5.88989 = 35.34 s
    scaled = {**cfg, "val_file": str(val), "val_every": 2, "lora": True, "select": "best_val",
              "adapter_scales": [1.5, 0.5]}
    assert (estimate_time(scaled, 10)["validations"], estimate_time(scaled, 10)["validation_s"]) == (6, 35.3)
    assert estimate_time({**scaled, "select": "last"}, 10)["validations"] == 4  # not used without a choice


def test_bad_config_is_refused_before_anything_is_recorded(studio):
    n = len(studio.store.list_runs())
    with pytest.raises(ValueError, match="negative"):
        studio.start_training({**FAST, "negatives": []}, actor="alice")
    with pytest.raises(ValueError):
        studio.start_training({**FAST, "negatives": ["no-such-prompt"]}, actor="alice")
    with pytest.raises(ValueError, match="nothing to snapshot"):
        studio.start_training({**FAST, "tags": ["no-such-tag"]}, actor="alice")
    assert len(studio.store.list_runs()) == n


# -- the real trainer --------------------------------------------------------------------------------------------
def test_two_step_run_finishes_with_metrics(studio, finished_run):
    p = studio.training_status(finished_run)
    assert p["status"] == "finished" and p["progress"] == 1.0 and p["error"] is None
    assert [r["step"] for r in p["metrics"]] == [1, 2] and p["total_steps"] == 2
    for k in ("loss", "rank_loss", "rank_acc", "p_gap", "eta_s"):
        assert k in p["metrics"][-1]
    assert any(e["event"] == "finished" for e in p["events"])
    run = studio.store.get_run(finished_run)
    assert run["finished_at"] and run["started_at"] and run["snapshot_id"]
    assert run["final_metrics"]["step"] == 2 and run["final_metrics"]["final"].endswith("final")
    assert run["config"]["negatives"] == ["rude@1"]  # refs pinned to a version
    d = Path(run["run_dir"])
    assert d == studio.workspace.runs / finished_run and (d / "final" / "config.json").exists()
    assert (d / "train.log").exists() and "launches" in (d / "train.log").read_text()
    hist = studio.training_runs()
    assert hist[0]["id"] == finished_run and hist[0]["duration_s"] > 0
    assert any(spec == str(d) for _, spec in studio.model_choices())


def test_studio_launches_the_run_with_its_config_yaml_as_the_cli_writes_it(studio, finished_run, capsys):
    """One file launches a run: the studio writes RUN_DIR/config.yaml and starts `train --config` on it; the CLI
    with the same settings prints the identical file."""
    from neat_studio.cli import main

    d = studio.workspace.runs / finished_run
    argv = json.loads((d / "studio_launch.json").read_text())["argv"]
    assert argv[-3:] == ["train", "--config", str(d / "config.yaml")] and "--set" not in argv
    written = (d / "config.yaml").read_text()
    snap = studio.store.get_run(finished_run)["config"]["snapshot_path"]
    cli = ["--workspace", str(studio.workspace.root), "train", "--snapshot", snap, "--out", str(d),
           "--method", "neat", "--model", "tiny", "--negative", "rude@1", "--show-config"]
    for k, v in FAST.items():
        if k not in ("model", "method", "negatives"):
            cli += ["--set", f"{k}={v}"]
    capsys.readouterr()
    assert main(cli) == 0
    assert capsys.readouterr().out == written


def test_a_prepared_run_dir_starts_once(tmp_path):
    """`train --config RUN_DIR/config.yaml` may start in the folder the studio prepared, never in one that ran."""
    from neat_studio.neat.config import NeatConfig
    from neat_studio.neat.rundir import holds_run, prepared_for

    d = tmp_path / "run"
    d.mkdir()
    cfg = NeatConfig.from_dict({"snapshot": str(tmp_path / "snap"), "output_dir": str(d), "model": "tiny"})
    cfg.to_yaml(d / "config.yaml")
    assert holds_run(d) and prepared_for(d, cfg)
    other = NeatConfig.from_dict({**cfg.to_dict(), "lr": 1e-3})
    assert not prepared_for(d, other)  # a different config never reuses the folder
    (d / "metrics.jsonl").write_text('{"event": "error", "phase": "preflight", "message": "x"}\n')
    assert prepared_for(d, cfg)  # a failed preflight did not start it
    (d / "metrics.jsonl").write_text('{"event": "round_start", "round": 0}\n')
    assert not prepared_for(d, cfg)  # it started
    (d / "metrics.jsonl").unlink()
    (d / "checkpoints" / "step-1").mkdir(parents=True)
    assert not prepared_for(d, cfg)


def test_second_start_refused_stop_and_resume(studio, finished_run):
    rid = studio.start_training(LONG, actor="alice")
    with pytest.raises(JobError, match=rid):
        studio.start_training(FAST, actor="bob")
    with pytest.raises(JobError, match="already running"):
        studio.resume_training(rid, actor="alice")
    # frozen (alive) at its first step: a fast machine cannot finish the 120 steps before Stop lands
    pid = freeze_after_first_step(studio.store, rid)
    try:
        p = studio.training_status(rid)
        assert p["status"] == "running" and 0 < p["progress"] < 1 and p["eta_s"] is not None
        studio.stop_training(rid, actor="alice")
        assert studio.training_status(rid)["stopping"]
    finally:
        os.kill(pid, signal.SIGCONT)
    p = studio.jobs.wait(rid, timeout=120)
    assert p["status"] == "stopped", p["log_tail"]
    assert any(e["event"] == "stopped" for e in p["events"]) and p["checkpoint"]
    stopped_at = p["step"]
    assert 0 < stopped_at < p["total_steps"]
    assert any(a["action"] == "stop_run" for a in studio.store.audit(entity="run"))

    studio.resume_training(rid, actor="alice")
    assert studio.store.get_run(rid)["status"] == "running" and studio.store.get_run(rid)["error"] is None
    p = studio.jobs.wait(rid, timeout=180)
    assert p["status"] == "finished", p["error"] or p["log_tail"]
    assert p["step"] == p["total_steps"] and p["progress"] == 1.0
    assert [r["step"] for r in p["metrics"]] == list(range(1, p["total_steps"] + 1))
    assert any(e["event"] == "resumed" for e in p["events"])
    with pytest.raises(JobError, match="finished"):
        studio.resume_training(rid, actor="alice")


def test_vanished_process_is_marked_failed_on_reattach(studio, finished_run):
    from neat_studio.studio import Studio

    rid = studio.start_training(LONG, actor="alice")
    pid = studio.store.get_run(rid)["pid"]
    # the app goes away (its supervisor stops), then the trainer dies while nobody watches
    studio.jobs.close()
    time.sleep(1.0)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not studio.jobs._procs.get(rid) or studio.jobs._procs[rid].poll() is not None, timeout=30)
    assert studio.store.get_run(rid)["status"] == "running"  # nobody recorded anything
    studio.__dict__["_jobs"] = None  # a new app process: a fresh runner re-attaches
    runner = studio.jobs
    run = studio.store.get_run(rid)
    assert run["status"] == "failed" and "process vanished" in run["error"]
    assert runner.poll(rid)["error"].startswith("process vanished")
    assert isinstance(studio, Studio)


def test_reattach_keeps_a_live_trainer(studio, finished_run):
    rid = studio.start_training(LONG, actor="alice")
    studio.jobs.close()
    studio.__dict__["_jobs"] = None
    runner = JobRunner(studio)
    out = runner.reattach()
    assert {"run_id": rid, "action": "reattached", "status": "running"} in out
    studio.__dict__["_jobs"] = runner
    runner.stop(rid, actor="alice")   # a re-attached (not our child) trainer still stops cleanly
    p = runner.wait(rid, timeout=120)
    assert p["status"] == "stopped"


def test_pid_reuse_is_not_our_trainer(studio, finished_run):
    """A run marked running whose pid belongs to some other process is closed, not re-attached."""
    rid = studio.store.create_run("ghost", "neat", {}, actor="t", status="running",
                                  run_dir=str(studio.workspace.runs / "ghost"))
    studio.store.update_run(rid, pid=os.getpid())  # alive, but it is pytest, not a trainer
    out = JobRunner(studio).reattach()
    assert {"run_id": rid, "action": "closed", "status": "failed"} in out
    assert "process vanished" in studio.store.get_run(rid)["error"]


def test_failing_run_shows_its_error_and_store_stays_consistent(studio, finished_run):
    rid = studio.start_training({**FAST, "model": "/no/such/model-dir"}, actor="alice")
    p = studio.jobs.wait(rid, timeout=120)
    assert p["status"] == "failed"
    # the trainer's preflight error event gives the reason in plain words
    assert "/no/such/model-dir" in p["error"] and "cannot be loaded" in p["error"]
    run = studio.store.get_run(rid)
    assert run["error"] == p["error"] and run["finished_at"] and studio.store.active_run() is None
    with pytest.raises(JobError, match="no checkpoint"):
        studio.resume_training(rid, actor="alice")
    # the workspace is free again
    assert studio.jobs.active() is None


def test_stop_escalates_to_sigkill(studio, finished_run, monkeypatch):
    """A trainer that ignores SIGTERM is killed after the timeout and the kill is recorded."""
    rid = studio.start_training(LONG, actor="alice")
    pid = freeze_after_first_step(studio.store, rid)  # a hung trainer: it cannot handle SIGTERM
    try:
        studio.jobs.stop(rid, actor="alice", timeout=1.0)
        p = studio.jobs.wait(rid, timeout=60)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert p["status"] == "stopped" and "SIGKILL" in p["error"]
    assert any(a["action"] == "kill_run" for a in studio.store.audit(entity="run"))


# -- compare -----------------------------------------------------------------------------------------------------
def test_compare_fingerprints_and_vote_flow_into_export(studio, finished_run, tmp_path):
    run_dir = studio.store.get_run(finished_run)["run_dir"]
    base, trained = studio.compare_info("tiny"), studio.compare_info(run_dir)
    assert base["fingerprint"] != trained["fingerprint"]
    assert studio.compare_info("tiny")["fingerprint"] == base["fingerprint"]
    assert studio.compare_info(str(Path(run_dir) / "final"))["fingerprint"] == trained["fingerprint"]
    assert trained["check"] == "" == base["check"]  # not checked yet; a checked run says its verdict beside it
    (Path(run_dir) / "report").mkdir(exist_ok=True)
    (Path(run_dir) / "report" / "report.json").write_text(json.dumps({"overall": [
        {"model": "r", "base": "tiny", "mode": "greedy", "verdict": "no significant change", "worse": [],
         "better": []}]}))
    assert studio.compare_info(str(Path(run_dir) / "final"))["check"] == "no significant change"
    shutil.rmtree(Path(run_dir) / "report")

    params = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 6, "seed": 3}
    outs = list(studio.compare_stream("tiny", run_dir, [], [], "Hello <b>there</b>", params))
    ta, tb = outs[-1]
    assert outs and isinstance(ta, str) and isinstance(tb, str)
    # same model + same seed on both sides -> same text
    same = list(studio.compare_stream("tiny", "tiny", [], [], "Hello <b>there</b>", params))[-1]
    assert same[0] == same[1]
    ta, tb = ta or "(empty a)", tb or "(empty b)"
    if ta == tb:
        tb += " (b)"
    user = {"role": "user", "content": "Hello <b>there</b>"}
    ha, hb = [user, {"role": "assistant", "content": ta}], [user, {"role": "assistant", "content": tb}]
    v = studio.save_compare_vote(ha, hb, "tiny", run_dir, "B", annotator="carol", params=params)
    a, b = v["response_ids"]
    assert v["ranking"] == [[b], [a]]
    resp = {r["id"]: r for r in studio.store.list_responses(v["prompt_id"])}
    assert resp[a]["origin"] == f"compare:{base['model_id']}" and resp[b]["origin"].startswith("compare:")
    assert resp[b]["params"]["fingerprint"] == trained["fingerprint"]
    assert resp[b]["params"]["dtype"] == str(studio.gen_dtype).removeprefix("torch.")
    rows = {r["prompt_id"]: r for r in studio.store.listwise_rows()}
    row = rows[v["prompt_id"]]
    assert row["annotators"] == ["carol"] and row["ranks"][row["response_ids"].index(b)] == 0
    out = tmp_path / "pairs.jsonl"
    n = studio.export("trl", out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    dumps = [json.dumps(x, ensure_ascii=False) for x in lines]  # model text may hold any character
    assert n >= 1 and any(tb in d and ta in d for d in dumps)

    bad = studio.save_compare_vote(ha, hb, "tiny", run_dir, "both_bad", annotator="carol")
    assert bad["marks"] == {a: "neg", b: "neg"} and bad["ranking"] == [[a, b]]
    with pytest.raises(ValueError):
        studio.save_compare_vote(ha, hb, "tiny", run_dir, "maybe", annotator="carol")
    with pytest.raises(ValueError, match="nothing to vote"):
        studio.save_compare_vote([], [], "tiny", run_dir, "A", annotator="carol")
