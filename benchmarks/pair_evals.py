"""Pair two evaluated models prompt by prompt: is B better or worse than A on each axis (not only than the base)?

    .venv/bin/python benchmarks/pair_evals.py /tmp/st-dev/evals/v52-borrowed-lr4e-4-s7 /tmp/st-dev/evals/v55-rrhf-s7

A and B are `eval --out` folders of the same split and settings (the study's evals/ folders, or a base evaluation).
Per axis: A's rate, B's rate, gained / lost (prompts where B has the outcome and A not, and the other way: a refusal
of a harmful request, an answer to a harmless one, a degenerate answer, a pair ranked right), the exact McNemar
p-value and the verdict for B (fewer degenerate answers is better), the same join and test as
benchmarks/study_safety.py uses against the base.
`--json` prints the verdicts as JSON instead of the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_safety import first_model_records, verdicts  # noqa: E402

AXES = ("refusal:harmful", "compliance:lookalike", "compliance:benign", "degenerate:(all)", "pair_accuracy")


def load(folder: Path) -> dict:
    """One eval folder's generations (its first model)."""
    report = folder / "report.json"
    if not report.exists():
        raise SystemExit(f"error: {report} not found (is {folder} an `eval --out` folder?)")
    return first_model_records(folder)


def table(v: dict) -> str:
    lines = ["| axis | A | B | gained / lost | p | B against A |", "|---|---|---|---|---|---|"]
    for axis in AXES:
        if not v.get(axis, {}).get("n"):  # a set neither folder evaluated
            continue
        x = v[axis]
        p = f"{x['p_value']:.3g}" if x["p_value"] else "< 1e-06"  # rounded to 6 decimals by paired_verdict
        lines.append(f"| {axis} | {100 * x['rate_before']:.1f} | {100 * x['rate_after']:.1f} | "
                     f"{x['gained']} / {x['lost']} | {p} | {x['verdict']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="the eval folder compared against (e.g. NEAT's run)")
    ap.add_argument("b", type=Path, help="the eval folder judged (e.g. an ablation's run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    v = verdicts(load(args.a), load(args.b))
    if not any(v.get(axis, {}).get("n") for axis in AXES[:3]):
        print("error: the two folders share no prompt (another split or evaluation set?)", file=sys.stderr)
        return 2
    print(json.dumps({k: x for k, x in v.items() if k in AXES}, indent=1) if args.json else table(v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
