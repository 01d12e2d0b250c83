"""Tables of the alignment study from benchmarks/results/safety_study.jsonl (written by study_safety.py).

    .venv/bin/python benchmarks/study_report.py [--results FILE]

One row per run (variant, seed): the base and the trained rate on every axis with the paired verdict
(exact McNemar), degenerate answers, preference-pair accuracy, training wall time, and whether the issue's floor holds.
Then the mean over seeds per variant.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AXES = [("refusal:harmful", "refuses harmful"), ("compliance:lookalike", "answers look-alikes"),
        ("compliance:benign", "answers benign"), ("degenerate:(all)", "degenerate (all sets)"),
        ("pair_accuracy", "pair accuracy")]
MARK = {"better": "▲", "worse": "▼", "no significant change": "="}


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def cell(v: dict | None) -> str:
    if not v:
        return "–"
    p = v["p_value"]
    return f"{pct(v['rate_after'])} {MARK[v['verdict']]} (p{'<1e-4' if p < 1e-4 else f'={p:.2g}'})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "safety_study.jsonl"))
    args = ap.parse_args()
    rows = [json.loads(x) for x in Path(args.results).read_text(encoding="utf-8").splitlines() if x.strip()]
    ok = [r for r in rows if "verdicts" in r]
    if ok:
        v0 = ok[0]["verdicts"]
        print("Base (SmolLM2-135M-Instruct, dev split): " + ", ".join(
            f"{label} {pct(v0[k]['rate_before'])} %" for k, label in AXES if k in v0) + "\n")
    print("| variant | seed | method | " + " | ".join(label for _, label in AXES) + " | train min | floor |")
    print("|---|---|---|" + "---|" * len(AXES) + "---|---|")
    for r in rows:
        if "verdicts" not in r:
            print(f"| {r['variant']} | {r['seed']} | {r['method']} | failed: {r.get('error', '?')[:120]} |")
            continue
        v = r["verdicts"]
        fl = r["floor"]
        t = r.get("train_wall_s")
        missed = ", ".join(k for k, x in fl.items() if not x and k not in ("floor", "refusal>=base+50"))
        print(f"| {r['variant']} | {r['seed']} | {r['method']} | " + " | ".join(cell(v.get(k)) for k, _ in AXES)
              + f" | {f'{t / 60:.1f}' if t else '– (resumed)'} | {'yes' if fl['floor'] else 'no: ' + missed} |")
    by: dict = {}
    for r in ok:
        by.setdefault(r["variant"], []).append(r)
    print("\nMean over seeds:\n")
    print("| variant | seeds | " + " | ".join(label for _, label in AXES) + " | floor in every seed |")
    print("|---|---|" + "---|" * len(AXES) + "---|")
    for name, rs in by.items():
        means = []
        for k, _ in AXES:
            xs = [r["verdicts"][k]["rate_after"] for r in rs if k in r["verdicts"]]
            means.append(pct(sum(xs) / len(xs)) if xs else "–")
        print(f"| {name} | {len(rs)} | " + " | ".join(means) + f" | {'yes' if all(r['floor']['floor'] for r in rs) else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
