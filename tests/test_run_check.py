"""`check`: a finished run evaluated against the model it started from, right after training (tiny model, the
shipped sets), its verdict logged and shown; a check that cannot run leaves the trained run as it is."""
import json
import shutil

from tests.test_neat_trainer import make_snapshot, read_metrics, toy_rows


def _train(tiny_model_dir, snap, out, ws, *extra):
    from neat_studio.neat.cli import main

    return main(["--snapshot", str(snap), "--model", str(tiny_model_dir), "--negative", "rude@1", "--out", str(out),
                 "--workspace", str(ws), "--set", "k=1", "--set", "k_neg=1", "--set", "rounds=1",
                 "--set", "batch_size=2", "--set", "max_new_tokens=4", "--set", "max_response_len=16",
                 "--set", "dtype=fp32", *extra])


def test_check_after_training_writes_the_report_and_logs_the_verdict(tiny_model_dir, tmp_path, monkeypatch,
                                                                     capsys):
    from neat_studio import run_check
    from neat_studio.eval_metrics import overall_text
    from neat_studio.evalsets import training_prompts
    from neat_studio.jobs import JobRunner

    monkeypatch.setattr(run_check, "RUN_EVAL_N", 3)  # 3 dev prompts per set: the tiny model is the point here
    snap = make_snapshot(tmp_path / "snap", toy_rows())
    out = tmp_path / "run"
    assert _train(tiny_model_dir, snap, out, tmp_path / "ws", "--set", "check=true") == 0
    result = json.loads(capsys.readouterr().out)
    ev = [e for e in read_metrics(out) if e.get("event")]
    names = [e["event"] for e in ev]
    # the check runs after the run has finished (its outcome stays "finished" whatever the check says)
    assert names.index("finished") < names.index("check_start") < names.index("check") == len(names) - 1
    assert ev[names.index("check_start")]["base"] == str(tiny_model_dir)
    rep = json.loads((out / "report" / "report.json").read_text())
    assert [m["spec"] for m in rep["models"]] == [str(tiny_model_dir), str(out)]  # the base first
    assert set(rep["sets"]) == {"harmful", "lookalike", "benign"} and all(s["n"] == 3 for s in rep["sets"].values())
    assert rep["config"]["split"] == "dev" and rep["config"]["max_new_tokens"] == 48 and rep["config"]["n_pairs"] == 3
    assert rep["config"]["exclude"] == [str(snap)]
    assert rep["config"]["n_training_prompts_excluded_against"] == len(training_prompts(snap))
    (o,) = rep["overall"]
    check = ev[-1]
    assert check["worse"] == (o["verdict"] == "worse") and check["report"] == str(out / "report" / "report.md")
    assert check["verdict"] == [f"{o['model']}: {overall_text(o)}"]
    assert result["check"] == {k: check[k] for k in ("worse", "verdict", "report")}
    assert "## Verdict against the base" in (out / "report" / "report.md").read_text()
    words = {"worse": "WORSE: ", "better": "better: "}.get(o["verdict"], "no significant change")
    assert run_check.run_check(out).startswith(words)  # the run history's "vs base"
    # what the Train tab says while a check runs
    assert JobRunner._phase("running", [{"step": 3}], ev[:names.index("check_start") + 1], None) == (
        f"trained; checking the final model against {tiny_model_dir} on every dev prompt")


def test_a_check_that_cannot_run_leaves_the_finished_run(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from neat_studio.neat import cli

    snap = make_snapshot(tmp_path / "snap", toy_rows())
    out = tmp_path / "run"
    real = cli.check_finished_run

    def snapshot_gone(run_dir, base, ws):
        shutil.rmtree(snap)  # e.g. deleted while the run trained: its prompts could not be kept out of the check
        return real(run_dir, base, ws)

    monkeypatch.setattr(cli, "check_finished_run", snapshot_gone)
    assert _train(tiny_model_dir, snap, out, tmp_path / "ws", "--set", "check=true") == 0
    captured = capsys.readouterr()
    assert "warning: the run finished, but its check against" in captured.err and "is gone" in captured.err
    assert json.loads(captured.out)["status"] == "finished"
    last = read_metrics(out)[-1]
    assert last["event"] == "check_failed" and "its snapshot" in last["message"]
    assert (out / "final" / "config.json").exists() and not (out / "report").exists()


def test_no_check_unless_asked_and_the_recipes_ask(tiny_model_dir, tmp_path, capsys):
    from neat_studio.neat.recipes import recipe

    snap = make_snapshot(tmp_path / "snap", toy_rows())
    out = tmp_path / "run"
    assert _train(tiny_model_dir, snap, out, tmp_path / "ws") == 0
    assert "check" not in json.loads(capsys.readouterr().out)
    events = {e.get("event") for e in read_metrics(out)}
    assert not events & {"check_start", "check", "check_failed"} and not (out / "report").exists()
    assert recipe("safety")["config"]["check"] is True and recipe("safety-pp-lora")["config"]["check"] is True
    assert recipe("cpu")["config"]["check"] is True  # the Train tab starts from it: a run is checked by default
