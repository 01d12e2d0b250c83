"""Replay another step choice on a study run that is already trained, and make the model it would have kept.

    .venv/bin/python benchmarks/study_replay.py --workdir /tmp/neat-study-v47 --run v47-wideval-s5 \\
        --rows 120 --tolerance 0.05 --select best_val [--as v47-val120-s5]

The one-thread study runs are deterministic (benchmarks/RESULTS.md step 67), so a rule applied to a run's recorded
validation answers (val/answers-step-N.json) keeps the step a rerun with that rule would keep. `--rows N` uses only
the first N held-out prompts of the run's val file (val-wide.jsonl starts with val.jsonl's 120), so one run answers
for both sets. Prints the choice; with `--as NAME` it also writes `runs/NAME/` in the same workdir: `final/` is the
starting model with that step's LoRA adapter (checkpoints/step-N, the run needs save_every = val_every and
keep_checkpoints=0) merged in as the trainer merges it, beside the run's config.yaml, wall_s.txt and metrics.jsonl
(its "selected" event naming that step), so that `study_safety.py --variant PREFIX --seeds N` (NAME = PREFIX-sN)
evaluates it like any run (mark its note INFERRED).

`--rows` is an approximation of a run with the shorter file: greedy answers depend on which prompts share a batch
(padding), and the first 120 rows decoded among 200 are not exactly what val.jsonl's own batches give (RESULTS step
70: the starting model's answers loop on 5 of those 120 prompts, on 7 in val.jsonl's batches). A merged step's model
is the trainer's bit for bit (checked against a run's own final/).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def history(run: Path, rows: int | None) -> list[dict]:
    """The validation history recomputed from the recorded answers, on the first `rows` prompts (None: all)."""
    from neat_studio.neat.validation import ValPrompt, val_metrics
    from neat_studio.scoring.refusal import is_refusal

    out = []
    files = sorted((f for f in (run / "val").glob("answers-step-*.json") if f.stem.split("-")[-1].isdigit()),
                   key=lambda p: int(p.stem.split("-")[-1]))  # not answers-step-N-xS (adapter_scales)
    for f in files:
        recs = json.loads(f.read_text(encoding="utf-8"))[:rows]
        prompts = [ValPrompt(r["prompt"], r["harmful"]) for r in recs]
        texts = [r["answer"] for r in recs]
        out.append({"step": int(f.stem.split("-")[-1]), **val_metrics(prompts, texts, is_refusal(texts))})
    return out


def merge_step(run: Path, kept: dict, dest: Path, workspace: Path) -> None:
    """dest/final = the run's starting model with the kept step's adapter (checkpoints/step-N) merged (step 0: the
    starting model)."""
    import torch
    import yaml
    from peft import PeftModel

    from neat_studio.config import Workspace
    from neat_studio.models import load_model

    step = kept["step"]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lm = load_model(cfg.get("model", "default"), workspace=Workspace(workspace), dtype=torch.float32)
    model = lm.model
    if step:
        ck = run / "checkpoints" / f"step-{step}"
        if not (ck / "adapter_model.safetensors").exists():
            raise SystemExit(f"{ck} has no adapter (train with save_every=val_every, keep_checkpoints=0)")
        from neat_studio.neat.sampling import adapters_scaled

        peft = PeftModel.from_pretrained(model, ck)
        with adapters_scaled(peft, float(cfg.get("merge_scale") or 1.0)):  # a merge_scale run keeps it scaled
            model = peft.merge_and_unload()
    def selected(ev: dict) -> None:  # the "selected" event says which step this folder holds (and that it was replayed)
        ev.update(selected_step=step, replayed_from=str(run), trained_selected_step=ev.get("selected_step"),
                  **{k: kept[k] for k in ("refusal", "answered", "degenerate")})

    write_run(run, dest, model, lm.tokenizer, selected, dict(selected_step=step, replayed_from=str(run)))


def write_run(run: Path, dest: Path, model, tokenizer, on_selected, info_update: dict) -> Path:
    """dest/ as a run folder the study evaluates: the run's config.yaml and wall_s.txt, its metrics.jsonl with the
    "selected" event changed in place by `on_selected(event)`, and final/ = `model` + `tokenizer` with the run's
    neat_training.json updated by `info_update`. Returns dest/final."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "wall_s.txt"):
        if (run / name).exists():
            shutil.copy2(run / name, dest / name)
    lines = []
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        ev = json.loads(line) if line.strip() else None
        if ev and ev.get("event") == "selected":
            on_selected(ev)
            line = json.dumps(ev)
        lines.append(line)
    (dest / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    final = dest / "final"
    shutil.rmtree(final, ignore_errors=True)
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    info = json.loads((run / "final" / "neat_training.json").read_text())
    info.update(info_update)
    (final / "neat_training.json").write_text(json.dumps(info, indent=2))
    return final


def main() -> int:
    from neat_studio.neat.validation import choose

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--run", required=True, help="a run's folder name under WORKDIR/runs")
    ap.add_argument("--rows", type=int, default=None, help="only the first N held-out prompts (default: all)")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--select", default="best_val", choices=["best_val", "best_val_balanced"])
    ap.add_argument("--as", dest="as_name", default=None, help="write runs/NAME with the kept step's model")
    args = ap.parse_args()
    work = Path(args.workdir)
    run = work / "runs" / args.run
    hist = history(run, args.rows)
    kept = choose(hist, args.tolerance, args.select)
    for m in hist:
        print(f"step {m['step']:4d}: refusal {m['refusal']:.3f} answered {m['answered']:.3f} "
              f"degenerate {m['degenerate']:.3f} (n {m['n_harmful']}/{m['n_harmless']})"
              + ("  <- kept" if m is kept else ""))
    if args.as_name:
        merge_step(run, kept, work / "runs" / args.as_name, work / "ws")
        print(f"wrote {work / 'runs' / args.as_name / 'final'} (step {kept['step']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
