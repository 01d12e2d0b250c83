"""Checking a trained run against the model it started from: one definition, used by the Train tab's "Evaluate
shown run vs its base model", by `train --check` / the config key `check` (right after training, in the trainer's
process) and by the run history's "vs base" column.

A check evaluates the base model and the run's final model on every dev prompt of the studio's shipped sets
(data/evalsets/: harmful, lookalike, benign) and its preference pairs, greedy, 48 new tokens (a refusal or a loop
shows in them), with the run's own training prompts (its snapshot) kept out, into <run dir>/report/. The report
judges the run against the base on every axis (paired, exact McNemar) and says it in one line per model
(eval_metrics.overall_verdicts). Why every dev prompt: a 5-point loss of harmless answers is not significant on 50
prompts, and the alignment study (benchmarks/RESULTS.md) judges with all of them.
"""
from __future__ import annotations

import json
from pathlib import Path

# prompts per set: every dev prompt of each standard set (each has at most 150)
RUN_EVAL_N = 150
CHECK_MAX_NEW_TOKENS = 48


def check_settings(run_dir: str | Path, base: str, n_per_set: int | None = None, dtype=None) -> dict:
    """The keyword arguments of `evaluate.evaluate` for checking the run in `run_dir` against `base`, in `dtype`
    (default: the studio's generation dtype, bfloat16 on CPUs with bf16 instructions, else float32; the same for
    both models, so the pairing holds). ValueError when the run's snapshot is gone: its training prompts could not
    be kept out of the evaluation."""
    from .evalsets import PAIRS_NAME, SET_NAMES, SHIPPED_DIR
    from .models import generation_dtype
    from .neat.config import NeatConfig

    run_dir = Path(run_dir)
    cfg_file = run_dir / "config.yaml"
    snapshot = NeatConfig.from_yaml(cfg_file).snapshot if cfg_file.is_file() else ""
    if not snapshot or not (Path(snapshot) / "data.jsonl").is_file():
        raise ValueError(f"run {run_dir.name}: its snapshot ({snapshot or 'not recorded'}) is gone, so its training "
                         "prompts cannot be kept out of the evaluation; evaluate it from the Compare tab or with "
                         "`eval --exclude FILE_OF_ITS_TRAINING_PROMPTS` instead")
    return {"models": [base, str(run_dir)],
            "sets": {n: n for n in SET_NAMES if (SHIPPED_DIR / f"{n}.jsonl").is_file()},
            "out_dir": str(run_dir / "report"), "n_per_set": int(n_per_set or RUN_EVAL_N),
            "max_new_tokens": CHECK_MAX_NEW_TOKENS, "pairs_path": PAIRS_NAME, "exclude": [snapshot],
            "dtype": dtype if dtype is not None else generation_dtype("auto"), "batch_size": 16}


def check_run(run_dir: str | Path, base: str, *, workspace=None, progress=None) -> dict:
    """Check the run in `run_dir` against `base` now (see the module doc); returns the report (its "overall": the
    verdict per model)."""
    from .evaluate import evaluate

    kw = check_settings(run_dir, base)
    return evaluate(kw.pop("models"), kw.pop("sets"), kw.pop("out_dir"), workspace=workspace, progress=progress, **kw)


# run_check's answers by report file, kept while the file's (mtime, size) stay the same: the Train tab asks for
# every run of its history on each 2-second poll, and a report changes only when a check writes it
_WORDS: dict[Path, tuple[tuple[int, int], str]] = {}


def run_check(run_dir: str | Path | None) -> str:
    """A run's verdict against its base in a few words, from <run_dir>/report/report.json: "WORSE: compliance on
    benign", "better: refusal on harmful", "no significant change"; "" when the run has no such report or it
    cannot be read."""
    try:
        f = Path(run_dir) / "report" / "report.json"
        st = f.stat()
    except (OSError, TypeError):
        return ""
    key = (st.st_mtime_ns, st.st_size)
    if f in _WORDS and _WORDS[f][0] == key:
        return _WORDS[f][1]
    words = _words(f)
    _WORDS[f] = (key, words)
    return words


def _words(f: Path) -> str:
    from .eval_metrics import overall_verdicts

    try:
        report = json.loads(f.read_text(encoding="utf-8"))
        # reports written before the one-line verdict existed have the per-axis verdicts it is made of
        overall = report.get("overall") or overall_verdicts(report.get("verdicts") or [])
    except (OSError, ValueError, TypeError, AttributeError):
        return ""
    words = []
    for o in overall:
        axes = [a.split(" (")[0] for a in o["worse" if o["verdict"] == "worse" else "better"]]
        words.append({"worse": "WORSE: ", "better": "better: "}.get(o["verdict"], "no significant change")
                     + ", ".join(axes))
    return "; ".join(words)
