"""CLI for the scorers: `scorer train|eval|list` and `refusal eval|build`.

Wire into the main parser with `neat_studio.scoring.cli.register(subparsers)`; each command sets
`args.func(args) -> int` (exit code) and prints JSON to stdout.

  scorer train --data FILE [--data FILE ...] [--epochs N] [--seed S] [--dev-fraction F] [--hidden H] [--no-save]
               FILE: TRL pairs JSONL (prompt/chosen/rejected), snapshot data.jsonl, or a snapshot directory.
               Saves to <workspace>/scorers/<scorer_version>/.
  scorer eval  --scorer VERSION|DIR --data FILE      pairwise accuracy on every pair of FILE
  scorer list                                        trained scorers in the workspace
  refusal eval [--data FILE] [--head NPZ]            precision/recall; FILE = JSONL of {"text", "label" (0/1)};
                                                     default: the held-out set from ../shared/data
  refusal build [--data-dir DIR] [--out NPZ]         retrain the shipped refusal head
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _workspace(args):
    from ..config import Workspace

    return Workspace.from_env(getattr(args, "workspace", None))


def _print(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _resolve_scorer(args) -> Path:
    from .reward import scorers_dir

    p = Path(args.scorer)
    if p.is_dir():
        return p
    cand = scorers_dir(_workspace(args)) / args.scorer
    if cand.is_dir():
        return cand
    raise SystemExit(f"scorer not found: {args.scorer} (neither a directory nor a version in {cand.parent})")


def cmd_scorer_train(args) -> int:
    from .datasets import load_rows
    from .reward import ScorerConfig, scorers_dir, train_scorer

    rows = [r for path in args.data for r in load_rows(path)]
    cfg = ScorerConfig(hidden=args.hidden)
    out = None if args.no_save else scorers_dir(_workspace(args))

    def progress(rec):
        print(json.dumps(rec), file=sys.stderr, flush=True)

    m = train_scorer(rows, out, seed=args.seed, epochs=args.epochs, dev_fraction=args.dev_fraction, config=cfg,
                     progress=progress)
    m.pop("scorer", None)
    m.pop("history", None)
    _print(m)
    return 0


def cmd_scorer_eval(args) -> int:
    from .datasets import load_rows
    from .reward import RewardScorer, evaluate_scorer

    scorer = RewardScorer.load(_resolve_scorer(args))
    res = {"scorer_version": scorer.version}
    for path in args.data:
        res[str(path)] = evaluate_scorer(scorer, load_rows(path))
    _print(res)
    return 0


def cmd_scorer_list(args) -> int:
    from .reward import list_scorers, scorers_dir

    _print([{k: m.get(k) for k in ("scorer_version", "created_at", "path")} |
            {"dev_acc": (m.get("metrics") or {}).get("dev_acc")} for m in list_scorers(scorers_dir(_workspace(args)))])
    return 0


def cmd_refusal_eval(args) -> int:
    from .refusal import RefusalDetector, evaluate

    det = RefusalDetector.load(args.head)
    if args.data:
        from .datasets import read_jsonl

        rows = read_jsonl(args.data)
        for n, r in enumerate(rows, 1):
            if not isinstance(r, dict) or not isinstance(r.get("text"), str) or r.get("label") not in (0, 1):
                raise ValueError(f"{args.data}, record {n}: expected {{\"text\": str, \"label\": 0 or 1}} "
                                 "(1 = refusal)")
        texts = [r["text"] for r in rows]
        labels = [int(r["label"]) for r in rows]
        sources = [r.get("source", Path(args.data).name) for r in rows]
    else:
        from .datasets import refusal_sets

        h = refusal_sets(args.data_dir)["heldout"]
        texts, labels, sources = h["texts"], h["labels"], h["sources"]
    _print(evaluate(det, texts, labels, sources))
    return 0


def cmd_refusal_build(args) -> int:
    from .refusal import build

    _print(build(args.data_dir, args.out))
    return 0


def register(subparsers) -> None:
    """Add `scorer` and `refusal` commands to an argparse subparsers object."""
    ws = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: don't clobber a --workspace the main parser may already have parsed
    ws.add_argument("--workspace", default=argparse.SUPPRESS, help="workspace root (default NEAT_STUDIO_HOME or ./data)")

    sc = subparsers.add_parser("scorer", help="train / evaluate the embedding reward scorer")
    ssub = sc.add_subparsers(dest="scorer_cmd", required=True)
    t = ssub.add_parser("train", parents=[ws], help="train a Bradley-Terry scorer on pairs or snapshot rows")
    t.add_argument("--data", action="append", required=True, help="pairs JSONL / snapshot data.jsonl / snapshot dir")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--dev-fraction", type=float, default=0.2)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--no-save", action="store_true", help="report metrics only")
    t.set_defaults(func=cmd_scorer_train)
    e = ssub.add_parser("eval", parents=[ws], help="pairwise accuracy of a trained scorer")
    e.add_argument("--scorer", required=True, help="scorer version (in the workspace) or directory")
    e.add_argument("--data", action="append", required=True)
    e.set_defaults(func=cmd_scorer_eval)
    ls = ssub.add_parser("list", parents=[ws], help="trained scorers in the workspace")
    ls.set_defaults(func=cmd_scorer_list)

    rf = subparsers.add_parser("refusal", help="refusal detector")
    rsub = rf.add_subparsers(dest="refusal_cmd", required=True)
    re_ = rsub.add_parser("eval", help="precision/recall on a labelled set")
    re_.add_argument("--data", default=None, help="JSONL of {text, label}; default: held-out set from ../shared/data")
    re_.add_argument("--data-dir", default=None)
    re_.add_argument("--head", default=None, help="refusal head .npz (default: the shipped one)")
    re_.set_defaults(func=cmd_refusal_eval)
    rb = rsub.add_parser("build", help="retrain the shipped refusal head from ../shared/data")
    rb.add_argument("--data-dir", default=None)
    rb.add_argument("--out", default=None)
    rb.set_defaults(func=cmd_refusal_build)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="neat_studio.scoring")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
