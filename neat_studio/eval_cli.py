"""`python -m neat_studio eval`: evaluate models on prompt sets, or build the set files.

    python -m neat_studio eval --model default --model RUN_DIR [--set harmful=path ...] [--pairs path] [--n 50]
                               [--split dev|test|all] [--out DIR] [--scorer DIR] [--sampled] [--exclude SNAPSHOT]
    python -m neat_studio eval --build-sets OUT_DIR [--exclude SNAPSHOT_DIR] [--source harmful=path ...]

Without --set, the standard sets harmful, lookalike and benign (and pairs, unless --no-pairs) are read from the
files the studio ships, data/evalsets/ (dev split unless --split says otherwise). --data-root rebuilds them from a
public data folder instead (developers; --build-sets reads ../shared/data unless told).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class _Bars:
    """One tqdm bar per stage; a new stage closes the previous bar."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.bar = tqdm(desc=stage, total=total, unit="it", file=sys.stderr, leave=False)
            self.stage = stage
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _pairs_arg(items, what: str) -> dict:
    out: dict[str, list[str]] = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"{what} must look like NAME=PATH, not {it!r}")
        name, path = it.split("=", 1)
        out.setdefault(name.strip(), []).append(path.strip())
    return out


def _default_out(models: list[str], workspace) -> Path:
    """The last model that is a run directory gets the report under its report/; otherwise the workspace exports."""
    for spec in reversed(models):
        p = Path(spec)
        if p.is_dir() and ((p / "final").is_dir() or (p / "metrics.jsonl").exists()):
            return p / "report"
    return Path(workspace.exports) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_eval(args) -> int:
    from . import evalsets

    if args.build_sets:
        sources = _pairs_arg(args.source, "--source")
        names = list(sources) or None
        m = evalsets.build_sets(args.build_sets, sources or None, exclude=args.exclude or [],
                                data_root=args.data_root, names=names)
        print(json.dumps({name: {k: s[k] for k in ("path", "total", "removed_overlap_with_training", "by_split")}
                          for name, s in m["sets"].items()}, indent=2))
        return 0

    from .config import Workspace
    from .evaluate import evaluate
    from .eval_metrics import overall_line

    ws = Workspace.from_env(getattr(args, "workspace", None))
    models = args.model or ["default"]
    sets_arg = _pairs_arg(args.set, "--set")
    if any(len(v) > 1 for v in sets_arg.values()):
        raise ValueError("each --set name may be given once")
    sets = {k: v[0] for k, v in sets_arg.items()} or {n: n for n in evalsets.SET_NAMES}
    pairs = args.pairs
    if pairs is None and not args.set and not args.no_pairs:
        pairs = evalsets.PAIRS_NAME
    out = Path(args.out) if args.out else _default_out(models, ws)
    bars = _Bars(enabled=not args.quiet)
    try:
        report = evaluate(models, sets, out, n_per_set=args.n, greedy=not args.sampled_only,
                          sampled=args.sampled or args.sampled_only, temperature=args.temperature, top_p=args.top_p,
                          seed=args.seed, max_new_tokens=args.max_new_tokens, scorer_path=args.scorer,
                          pairs_path=pairs, n_pairs=args.n_pairs,
                          split=None if (args.split or "dev") == "all" else (args.split or "dev"),
                          split_user_files=args.split is not None,
                          exclude=args.exclude or [], batch_size=args.batch_size, workspace=ws,
                          data_root=args.data_root, dtype=args.dtype, pair_max_length=args.pair_max_length,
                          progress=bars)
    finally:
        bars.close()
    verdict = [overall_line(o) for o in report["overall"]]
    print(json.dumps({"out": str(out), "report": str(out / "report.md"), "summary": report["summary"],
                      "verdict": verdict, "warnings": report["warnings"]}, indent=2, default=str))
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "eval", help="evaluate models: refusal, over-refusal, reward, ranking accuracy, win rate (or --build-sets)",
        description=__doc__, formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    s.add_argument("--model", action="append",
                   help="model spec (repeatable; first = A in comparisons): default, tiny, a path or a run dir")
    s.add_argument("--set", action="append", metavar="NAME=PATH",
                   help="prompt set (repeatable): a set JSONL, a dataset file, or a standard name "
                        "(harmful, lookalike, benign). Default: the three standard sets")
    s.add_argument("--pairs", help="preference pairs (JSONL prompt/chosen/rejected, snapshot dir, or 'pairs')")
    s.add_argument("--no-pairs", action="store_true", help="skip ranking accuracy when using the default sets")
    s.add_argument("--n", type=int, default=50, help="prompts per set (stratified by source, seeded)")
    s.add_argument("--n-pairs", type=int, help="preference pairs (default: --n)")
    s.add_argument("--split", choices=["dev", "test", "all"], default=None,
                   help="hash split of the prompts (default: dev for the standard sets and files written by "
                        "--build-sets, all of your own files; given explicitly, it applies to every set; "
                        "use test once, for final numbers)")
    s.add_argument("--out", help="report folder (default: RUN_DIR/report or <workspace>/exports/eval-<time>)")
    s.add_argument("--scorer", help="reward scorer directory (enables mean reward and win rate)")
    s.add_argument("--sampled", action="store_true", help="also evaluate sampled decoding (greedy is always on)")
    s.add_argument("--sampled-only", action="store_true", help="sampled decoding only")
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"],
                   help="model dtype (default float32; bfloat16 is faster on CPUs with bf16 instructions)")
    s.add_argument("--pair-max-length", type=int,
                   help="cap on prompt+response tokens for pair log-probs (prompt cut from the left)")
    s.add_argument("--exclude", action="append",
                   help="training prompts to keep out of the eval (snapshot dir or file; repeatable)")
    s.add_argument("--data-root", help="rebuild the standard sets from this public data folder instead of reading "
                                         "data/evalsets/ (developers; --build-sets defaults to ../shared/data)")
    s.add_argument("--build-sets", metavar="OUT_DIR", help="write set files (harmful, lookalike, benign, pairs) "
                                                           "+ manifest.json to OUT_DIR and exit")
    s.add_argument("--source", action="append", metavar="NAME=PATH",
                   help="with --build-sets: source file for a set (repeatable; default: the standard sources)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_eval)
