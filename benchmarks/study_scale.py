"""Scale what a trained study run changed, and write the model that gives (weight interpolation / extrapolation).

    .venv/bin/python benchmarks/study_scale.py --workdir /tmp/st-s --run v64a-shipped-s0 --scale 1.5 \\
        --as v70-shipped-x1.5-s0
    .venv/bin/python benchmarks/study_scale.py --workdir /tmp/st-s --run v64a-shipped-s0 --run v64a-shipped-s1 \\
        --scale 1 --as v77-soup2-s0

`runs/NAME/final` = W_start + scale * (W_run - W_start) for every weight: scale 1 is the run's own model, 0 the
starting model, between them an interpolation (WiSE-FT, Wortsman et al. 2022) and above 1 an extrapolation along the
training direction (ExPO, Zheng et al. 2024, "Weak-to-strong extrapolation expedites alignment"). A LoRA run changes
only its adapted matrices, so this is the kept step's adapter at `scale` times its alpha. The run's config.yaml,
wall_s.txt and metrics.jsonl are copied beside it (the "selected" event gains `scale` and `scaled_from`), so that
`study_safety.py --variant PREFIX --seeds N` (NAME = PREFIX-sN) evaluates it like any run (mark its note INFERRED).
With several `--run`s (runs of the same starting model, e.g. two seeds), W_run - W_start is the mean of their changes:
scale 1 is their uniform "model soup" (Wortsman et al. 2022), scale k the sum of k runs' changes (task arithmetic);
the first run's config and metrics are the ones copied.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_replay.write_run


def scaled_state(start: dict, trained: dict | list[dict], scale: float) -> tuple[dict, int]:
    """start + scale * mean_i(trained_i - start), per tensor, in float32; also how many tensors differ."""
    runs = trained if isinstance(trained, list) else [trained]
    out, changed = {}, 0
    for name, w0 in start.items():
        for t in runs:
            if t[name].shape != w0.shape:
                raise SystemExit(f"{name}: shape {tuple(t[name].shape)} in a run, {tuple(w0.shape)} in the starting "
                                 "model")
        if any(not bool((t[name] == w0).all()) for t in runs):
            changed += 1
            delta = sum(t[name].float() - w0.float() for t in runs) / len(runs)
            out[name] = (w0.float() + scale * delta).to(w0.dtype)
        else:
            out[name] = w0
    return out, changed


def main() -> int:
    import torch
    import yaml
    from safetensors.torch import load_file

    from neat_studio.config import Workspace
    from neat_studio.models import load_model
    from study_replay import write_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--run", required=True, action="append",
                    help="a trained run's folder name under WORKDIR/runs (repeat to average several runs' changes)")
    ap.add_argument("--scale", type=float, required=True)
    ap.add_argument("--as", dest="as_name", required=True, help="write runs/NAME")
    args = ap.parse_args()
    work = Path(args.workdir)
    runs, dest = [work / "runs" / r for r in args.run], work / "runs" / args.as_name
    run = runs[0]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lm = load_model(cfg.get("model", "default"), workspace=Workspace(work / "ws"), dtype=torch.float32)
    model = lm.model
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained = []
    for r in runs:
        t = load_file(str(r / "final" / "model.safetensors"))
        # tied weights (lm_head = embed_tokens) are saved once; the state dict names both
        trained.append({k: t.get(k, t.get("model.embed_tokens.weight")) for k in start})
    state, changed = scaled_state(start, trained, args.scale)
    model.load_state_dict(state)
    marks = dict(scale=args.scale, scaled_from=str(run) if len(runs) == 1 else [str(r) for r in runs])
    final = write_run(run, dest, model, lm.tokenizer, lambda ev: ev.update(marks), marks)
    print(f"wrote {final}: {changed} of {len(start)} tensors changed by {len(runs)} run(s), scaled by {args.scale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
