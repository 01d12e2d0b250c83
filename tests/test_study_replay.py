"""benchmarks/study_replay.py: a step choice replayed on recorded validation answers, on all held-out prompts or
only the first N (val-wide.jsonl starts with val.jsonl's rows), with hand-counted values."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "study_replay", Path(__file__).resolve().parents[1] / "benchmarks" / "study_replay.py")
study_replay = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_replay)

REFUSE = "I'm sorry, but I can't help with that."
ANSWER = "Sure. Slice the onion thinly, then fry it in a little oil until golden."
LOOP = "go go go go go go go go go go go go go go"


def _write(run: Path, step: int, harmful: list[str], harmless: list[str]) -> None:
    recs = ([{"prompt": f"h{i}", "harmful": True, "answer": a} for i, a in enumerate(harmful)]
            + [{"prompt": f"b{i}", "harmful": False, "answer": a} for i, a in enumerate(harmless)])
    (run / "val").mkdir(parents=True, exist_ok=True)
    (run / "val" / f"answers-step-{step}.json").write_text(json.dumps(recs))


def test_history_on_all_rows_and_on_the_first_rows(tmp_path):
    from neat_studio.neat.validation import choose

    # rows: 2 harmful, then 4 harmless; --rows 4 sees the 2 harmful and the first 2 harmless
    _write(tmp_path, 0, [ANSWER, ANSWER], [ANSWER, ANSWER, ANSWER, ANSWER])
    _write(tmp_path, 24, [REFUSE, ANSWER], [ANSWER, ANSWER, ANSWER, REFUSE])
    _write(tmp_path, 120, [REFUSE, REFUSE], [ANSWER, REFUSE, LOOP, ANSWER])  # numeric order, not 120 < 24
    _write(tmp_path, 120, [REFUSE, REFUSE], [REFUSE] * 4)
    (tmp_path / "val/answers-step-120.json").rename(tmp_path / "val/answers-step-120-x1.5.json")  # adapter_scales:
    _write(tmp_path, 120, [REFUSE, REFUSE], [ANSWER, REFUSE, LOOP, ANSWER])  # not a step of the history
    full = study_replay.history(tmp_path, None)
    assert [m["step"] for m in full] == [0, 24, 120]
    assert [(m["refusal"], m["answered"], m["degenerate"]) for m in full] == [
        (0.0, 1.0, 0.0), (0.5, 0.75, 0.0), (1.0, 0.75, pytest.approx(1 / 6))]
    first = study_replay.history(tmp_path, 4)
    assert [(m["refusal"], m["answered"], m["n_harmless"]) for m in first] == [(0.0, 1.0, 2), (0.5, 1.0, 2),
                                                                              (1.0, 0.5, 2)]
    # tolerance 0.3 on all rows: 120 answers 0.75 >= 0.7 and loops 1/6 <= 0.3, refuses the most -> 120; on the
    # first 4 rows 120 answers 0.5 < 0.7 -> 24; tolerance 0.1: both later steps answer 0.75 < 0.9 -> the start
    assert choose(full, 0.3)["step"] == 120
    assert choose(first, 0.3)["step"] == 24
    assert choose(full, 0.1)["step"] == 0


def test_scaled_state_moves_each_changed_weight_by_the_scale():
    import torch

    spec = importlib.util.spec_from_file_location(
        "study_scale", Path(__file__).resolve().parents[1] / "benchmarks" / "study_scale.py")
    study_scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_scale)
    start = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([5.0])}
    trained = {"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([5.0])}
    out, changed = study_scale.scaled_state(start, trained, 1.5)
    assert changed == 1 and out["a"].tolist() == [2.5, 2.0] and out["b"] is start["b"]
    assert study_scale.scaled_state(start, trained, 0.5)[0]["a"].tolist() == [1.5, 2.0]  # halfway back
    with pytest.raises(SystemExit, match="shape"):
        study_scale.scaled_state(start, {**trained, "b": torch.tensor([5.0, 1.0])}, 1.5)
    # two runs: the mean of their changes (a soup), and at scale 2 their sum
    other = {"a": torch.tensor([1.0, 4.0]), "b": torch.tensor([5.0])}
    soup, changed = study_scale.scaled_state(start, [trained, other], 1.0)
    assert changed == 1 and soup["a"].tolist() == [1.5, 3.0] and soup["b"] is start["b"]
    assert study_scale.scaled_state(start, [trained, other], 2.0)[0]["a"].tolist() == [2.0, 4.0]
