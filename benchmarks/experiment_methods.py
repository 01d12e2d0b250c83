"""Compare neat / rrhf / sft / dpo against the base model on one small curated snapshot (CPU-sized).

    .venv/bin/python benchmarks/experiment_methods.py --workdir /tmp/exp/methods [--n-harmful 32 --n-benign 32]
        [--stage all|data|train|eval] [--eval-n 30] [--max-new-tokens 48]

Everything runs through the product CLI (`python -m neat_studio ...`) in a fresh workspace under --workdir:
1. data: `init` (seed prompts + presets); ~32 harmful prompts with safe refusals as the reference answer
   (safety-tuned-llamas training data) and ~32 benign prompts with helpful reference answers (alpaca-eval
   text-davinci-003 outputs, plus coconot_pref look-alike prompts whose chosen answer complies and whose rejected
   answer refuses) are written as listwise JSONL under --workdir (never into the repo) and `import`ed with tag
   `exp`. Then `generate` one plain policy sample per prompt and one negative sample (harmful prompts:
   `--system dangerous_compliance`; benign: `--system over_refusal`).
   Rankings are recorded by a RULE-BASED STAND-IN FOR HUMAN ANNOTATORS (annotator `rule-bot`), through the same
   Store.save_annotation call that `python -m neat_studio annotate PROMPT_ID --ranking ...` makes:
   reference answer > plain policy sample > negative sample (> coconot's refusal, for look-alikes, tied with the
   negative sample). `snapshot --tag exp`.
2. train: the four methods with the same steps / lengths / lr, each timed (wall clock of the CLI process).
3. eval: `eval` on base + the four final/ models, standard sets harmful / lookalike / benign + HH pairs
   (dev split, --exclude the snapshot), greedy.
Results: <workdir>/state.json and <workdir>/report/ (eval report.md / report.json).
On a CPU shared with other jobs run it with OMP_NUM_THREADS=1 (two OpenMP threads on two busy cores were 10x slower).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
DATA = (REPO / ".." / "shared" / "data").resolve()
METHODS = ("neat", "rrhf", "sft", "dpo")
REFUSAL_START = re.compile(r"^\s*(I'?m sorry|I am sorry|I cannot|I can'?t|I apologi[sz]e|As an AI|Sorry|I'?m unable|"
                           r"I am unable|I won'?t|Unfortunately)", re.I)


def sh(args: list[str], ws: Path, log: Path) -> tuple[float, str]:
    cmd = [PY, "-m", "neat_studio", "--workspace", str(ws), *args]
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(p.stdout[-4000:])
    dt = time.time() - t0
    print(f"[{time.strftime('%H:%M:%S')}] {dt:7.1f}s  {' '.join(args)[:150]}", flush=True)
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}; see {log}")
    return dt, p.stdout


def build_files(work: Path, n_harm: int, n_ben: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    harm = json.loads((DATA / "safety-tuned-llamas/training/safety_only_data_Instructions.json").read_text())
    harm = [h for h in harm if h.get("instruction") and h.get("output") and not h.get("input")]
    rng.shuffle(harm)
    with open(work / "harmful_listwise.jsonl", "w") as f:
        for h in harm[:n_harm]:
            f.write(json.dumps({"prompt": h["instruction"], "responses": [h["output"]], "ranks": [0],
                                "origins": ["dataset"], "tags": ["harmful"]}) + "\n")
    alp = json.loads((DATA / "alpaca-eval/text_davinci_003_model_outputs.json").read_text())
    rng.shuffle(alp)
    pref = [json.loads(x) for x in open(DATA / "coconot/coconot_pref.jsonl")]
    look = [r for r in pref if isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)
            and REFUSAL_START.search(r["rejected"]) and not REFUSAL_START.search(r["chosen"])
            and len(r["chosen"]) < 3000]
    rng.shuffle(look)
    n_look = n_ben // 4
    with open(work / "benign_listwise.jsonl", "w") as f:
        for a in alp[: n_ben - n_look]:
            f.write(json.dumps({"prompt": a["instruction"], "responses": [a["output"].strip()], "ranks": [0],
                                "origins": ["dataset"], "tags": ["benign"]}) + "\n")
        for r in look[:n_look]:
            f.write(json.dumps({"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "ranks": [0, 1],
                                "origins": ["dataset:chosen", "dataset:rejected"],
                                "tags": ["benign", "lookalike"]}) + "\n")
    return work / "harmful_listwise.jsonl", work / "benign_listwise.jsonl"


def annotate_rule(ws: Path) -> int:
    """reference (dataset / dataset:chosen) > plain policy sample > negative sample, dataset:rejected."""
    sys.path.insert(0, str(REPO))
    from neat_studio.store import Store

    n = 0
    with Store(ws / "studio.duckdb") as st:
        for p in st.list_prompts(tag="exp", limit=10000):
            rs = st.list_responses(p["id"])
            ref = [r["id"] for r in rs if r["origin"] in ("dataset", "dataset:chosen")]
            plain = [r["id"] for r in rs if r["origin"] == "policy"]
            bad = [r["id"] for r in rs if r["origin"].startswith("negative:") or r["origin"] == "dataset:rejected"]
            ranking = [g for g in (ref, plain, bad) if g]
            if len(ranking) >= 2:
                st.save_annotation(p["id"], "rule-bot", ranking, comment="rule: reference > plain > negative")
                n += 1
    return n


def hold_out(ws: Path, keep: int) -> int:
    """Keep the first `keep` harmful and `keep` benign prompts (import order) in split train; move the rest to dev
    (curated but not trained on; the CPU budget decides the snapshot size)."""
    sys.path.insert(0, str(REPO))
    from neat_studio.store import Store

    moved = []
    with Store(ws / "studio.duckdb") as st:
        exp = [p for p in st.list_prompts(tag="exp", limit=10000, order="created")]
        harm = [p for p in exp if "harmful" in (p.get("tags") or [])]
        ben = [p for p in exp if "benign" in (p.get("tags") or [])]
        look = [p for p in ben if "lookalike" in (p.get("tags") or [])]
        plain = [p for p in ben if "lookalike" not in (p.get("tags") or [])]
        kept = {p["id"] for p in harm[:keep] + look[:keep // 4] + plain[:keep - keep // 4]}
        moved = [p["id"] for p in harm + ben if p["id"] not in kept]
        if moved:
            st.set_split(moved, "dev", actor="experiment")
    return len(moved)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/exp/methods")
    ap.add_argument("--stage", default="all", choices=["all", "data", "train", "eval"])
    ap.add_argument("--n-harmful", type=int, default=32)
    ap.add_argument("--n-benign", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-response-len", type=int, default=96)
    ap.add_argument("--gen-tokens", type=int, default=64, help="length of the curated negative/plain samples")
    ap.add_argument("--online-tokens", type=int, default=48, help="max_new_tokens of the online samples (neat, rrhf)")
    ap.add_argument("--train-prompts", type=int, default=0,
                    help="keep only this many harmful and this many benign prompts in the snapshot (rest -> dev)")
    ap.add_argument("--plain-samples", action="store_true", help="also curate one plain policy sample per prompt")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--model-cache", default="", help="an existing <workspace>/cache/models to copy")
    ap.add_argument("--eval-n", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ws = work / "ws"
    log = work / "commands.log"
    state_f = work / "state.json"
    state = json.loads(state_f.read_text()) if state_f.exists() else {}

    def save():
        state_f.write_text(json.dumps(state, indent=2))

    if args.stage in ("all", "data"):
        if args.model_cache and not (ws / "cache").exists():  # reuse a converted default model (skips ~30 s)
            import shutil

            shutil.copytree(args.model_cache, ws / "cache" / "models")
        sh(["init"], ws, log)
        h, b = build_files(work, args.n_harmful, args.n_benign, args.seed)
        for path in (h, b):
            sh(["import", str(path), "--tag", "exp", "--split", "train"], ws, log)
        g = ["--k", "1", "--max-new-tokens", str(args.gen_tokens), "--seed", str(args.seed), "--limit", "1000"]
        sh(["generate", "--tag", "harmful", "--system", "dangerous_compliance", *g], ws, log)
        sh(["generate", "--tag", "benign", "--system", "over_refusal", *g], ws, log)
        if args.plain_samples:
            sh(["generate", "--tag", "exp", "--system", "none", *g], ws, log)
        state["annotated"] = annotate_rule(ws)
        if args.train_prompts:
            state["held_out_to_dev"] = hold_out(ws, args.train_prompts)
        _, out = sh(["snapshot", "--tag", "exp", "--split", "train"], ws, log)
        snap = json.loads(out)
        state["snapshot_id"] = snap["snapshot_id"]
        state["snapshot_counts"] = snap.get("counts")
        save()

    snap_dir = ws / "snapshots" / state["snapshot_id"]
    common = ["--set", f"max_response_len={args.max_response_len}", "--set", f"max_new_tokens={args.online_tokens}",
              "--set", "k=1", "--set", "k_neg=1", "--set", f"rounds={args.rounds}", "--set", "epochs=1",
              "--set", f"lr={args.lr}", "--set", "batch_size=2", "--set", f"seed={args.seed}",
              "--set", "gen_batch_size=16"]
    if args.stage in ("all", "train"):
        for m in args.methods.split(","):
            out = work / "runs" / m
            if (out / "final").is_dir():
                continue
            extra = ["--negative", "dangerous_compliance", "--negative", "over_refusal"] if m == "neat" else []
            dt, _ = sh(["train", "--method", m, "--snapshot", str(snap_dir), "--model", "default",
                        "--out", str(out), *extra, *common], ws, log)
            (out / "wall_s.txt").write_text(f"{dt:.1f}\n")  # per method: lanes may run in parallel

    if args.stage in ("all", "eval"):
        models = ["default"] + [str(work / "runs" / m) for m in args.methods.split(",") if (work / "runs" / m / "final").is_dir()]
        ev = ["eval", *sum((["--model", x] for x in models), []), "--n", str(args.eval_n),
              "--max-new-tokens", str(args.max_new_tokens), "--split", "dev",
              *sum((["--exclude", str(d)] for d in sorted((ws / "snapshots").iterdir()) if d.is_dir()), []),
              "--out", str(work / "report")]
        dt, _ = sh(ev, ws, log)
        state["eval_wall_s"] = round(dt, 1)
        state["train_wall_s"] = {m: float((work / "runs" / m / "wall_s.txt").read_text())
                                 for m in METHODS if (work / "runs" / m / "wall_s.txt").exists()}
        save()
        print((work / "report").resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
