"""DPO baseline (TRL DPOTrainer) on the same snapshot; sft/rrhf are trainer modes (tested in test_neat_trainer)."""
import json

from neat_studio.neat.dpo_trainer import dpo_pairs
from tests.test_neat_trainer import cfg_for, make_snapshot, read_metrics, toy_rows


def test_dpo_pairs_from_rankings_with_ties():
    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}], "responses": ["A", "B", "C", "D"],
           "ranks": [0, 2, 2, 5], "origins": ["h"] * 4}
    pairs = dpo_pairs([row, {**row, "responses": ["only"], "ranks": [0], "origins": ["h"]}])
    got = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]
    # B and C tie: no pair between them; the single-response row gives none
    assert got == [("A", "B"), ("A", "C"), ("A", "D"), ("B", "D"), ("C", "D")]
    assert pairs[0]["prompt"] == row["prompt"] and pairs[0]["chosen"][0]["role"] == "assistant"


def test_dpo_baseline_two_steps(tiny_model_dir, tmp_path):
    from neat_studio.models import load_model
    from neat_studio.neat.trainer import train

    snap = make_snapshot(tmp_path / "snap", toy_rows())
    out = tmp_path / "dpo"
    res = train(cfg_for(tiny_model_dir, snap, out, method="dpo", negatives=[], max_steps=2, lr=1e-3))
    assert res["status"] == "finished" and res["step"] == 2
    m = read_metrics(out)
    steps = [x for x in m if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2] and all(x["total_steps"] == 2 for x in steps)
    assert {"rank_acc", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "eta_s", "sft_loss", "p_gap"} <= set(steps[0])
    assert all(x["grad_norm"] > 0 for x in steps)  # TRL's pre-clip norm, the same field the NEAT trainer logs
    assert steps[0]["loss"] == steps[0]["rank_loss"] and 0.69 < steps[0]["loss"] < 0.7  # log 2 at the start
    assert [x["event"] for x in m if "event" in x] == ["round_start", "finished"]
    assert (out / "config.yaml").exists() and (out / "snapshot.sha256").exists()
    info = json.loads((out / "final" / "neat_training.json").read_text())
    assert info["method"] == "dpo" and info["pairs"] == 6 and info["steps"] == 2
    trained = load_model(str(out))
    base = load_model(str(tiny_model_dir))
    assert trained.fingerprint != base.fingerprint


def test_dpo_stop_and_resume(tiny_model_dir, tmp_path):
    from neat_studio.neat.trainer import train

    snap = make_snapshot(tmp_path / "snap", toy_rows())
    out = tmp_path / "dpo"
    res = train(cfg_for(tiny_model_dir, snap, out, method="dpo", negatives=[], max_steps=2, lr=1e-3), stop_after=1)
    assert res["status"] == "stopped" and res["step"] == 1
    assert (out / "checkpoints" / "step-1" / "state.json").exists() and not (out / "final").exists()
    res = train(None, resume=out)
    assert res["status"] == "finished" and res["step"] == 2
    m = read_metrics(out)
    assert [x["step"] for x in m if "loss" in x] == [1, 2]
    assert [x["event"] for x in m if "event" in x] == ["round_start", "checkpoint", "stopped", "finished"]
