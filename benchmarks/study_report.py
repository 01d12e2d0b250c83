"""Tables of the alignment study from benchmarks/results/safety_study.jsonl (written by study_safety.py).

    .venv/bin/python benchmarks/study_report.py [--results FILE]

One row per run (variant, seed): the base and the trained rate on every axis with the paired verdict
(exact McNemar), degenerate answers, preference-pair accuracy, training wall time, and whether the issue's floor holds.
Then the mean over seeds per variant, and the refusal / benign frontier of the NEAT LoRA runs: a least-squares line
benign = a + b * refusal over every such run (all settings, all seeds), and each variant's mean distance above it
(points of benign compliance at the same refusal): a setting that moves the frontier outward sits above the line on
every seed, one that only trades refusal for compliance sits on it. `--plot FILE` also draws every run (PNG).
"""
from __future__ import annotations

import argparse
import json
import statistics
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


def is_neat_lora(r: dict) -> bool:
    """An evaluated NEAT run trained with LoRA adapters (the runs the frontier line is fitted over)."""
    return "verdicts" in r and (r.get("method") or "neat") == "neat" and bool((r.get("config") or {}).get("lora"))


def base_of(r: dict) -> tuple:
    """The base model's rates a run was compared with (refusal, benign): they differ between machines, whose bf16
    kernels round differently (benchmarks/RESULTS.md step 50)."""
    v = r["verdicts"]
    return v["refusal:harmful"].get("rate_before"), v["compliance:benign"].get("rate_before")


def frontier_points(rows: list[dict]) -> list[dict]:
    """{variant, seed, refusal, benign} in % for every evaluated NEAT run trained with LoRA adapters. A run compared
    with another base than the first run's is moved by the difference of the bases: what carries over between
    machines is a run's paired change over its own base, so every point is that change added to the first base."""
    ok = [r for r in rows if is_neat_lora(r)]
    b0 = base_of(ok[0]) if ok else None
    out = []
    for r in ok:
        v, b = r["verdicts"], base_of(r)
        shift = [0.0 if None in (x0, x) else x0 - x for x0, x in zip(b0, b)]
        out.append({"variant": r["variant"], "seed": r["seed"],
                    "refusal": 100 * (v["refusal:harmful"]["rate_after"] + shift[0]),
                    "benign": 100 * (v["compliance:benign"]["rate_after"] + shift[1]),
                    "replayed": is_replayed(r)})
    return out


def is_replayed(r: dict) -> bool:
    """A row that replays another selection rule on a run already recorded (its note starts with INFERRED): a
    point of its variant, not another training run, so the line is not fitted over it twice."""
    return (r.get("note") or "").startswith("INFERRED")


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x -> (a, b, Pearson r); ValueError (StatisticsError) without two distinct x values."""
    b, a = statistics.linear_regression(xs, ys)
    return a, b, statistics.correlation(xs, ys) if len(set(ys)) > 1 else 0.0


def frontier(points: list[dict]) -> dict:
    """The line over the trained runs' points (replayed rows left out) and each variant's residuals (benign minus
    the line at its refusal, replayed rows too), in order seen."""
    fit = [p for p in points if not p.get("replayed")]
    a, b, r = fit_line([p["refusal"] for p in fit], [p["benign"] for p in fit])
    res: dict = {}
    for p in points:
        res.setdefault(p["variant"], []).append(p["benign"] - (a + b * p["refusal"]))
    return {"a": a, "b": b, "r": r, "n": len(fit), "residuals": res}


def plot(rows: list[dict], points: list[dict], fr: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r["verdicts"] for r in rows if "verdicts" in r)
    b_ref, b_ben = 100 * base["refusal:harmful"]["rate_before"], 100 * base["compliance:benign"]["rate_before"]
    ncol = 1 + len(fr["residuals"]) // 24  # a legend of more entries than fit beside the axes gets columns
    fig, ax = plt.subplots(figsize=(7 + 2.5 * ncol, 5.5))
    other = [r for r in rows if "verdicts" in r and not is_neat_lora(r)]
    ax.scatter([100 * r["verdicts"]["refusal:harmful"]["rate_after"] for r in other],
               [100 * r["verdicts"]["compliance:benign"]["rate_after"] for r in other], c="lightgrey", s=18,
               label="other runs (full fine-tuning, ablations)")
    tab20 = plt.get_cmap("tab20").colors  # the default cycle repeats after 10 variants: dark shades, then light
    # without tab20's grey pair (the colour of the other runs), then tab20b's darkest and middle shades
    colours = [c for i, c in enumerate(tab20[0::2] + tab20[1::2]) if i not in (7, 17)] + \
        list(plt.get_cmap("tab20b").colors[0::4]) + list(plt.get_cmap("tab20b").colors[2::4])
    for i, name in enumerate(fr["residuals"]):
        ps = [p for p in points if p["variant"] == name]
        ax.scatter([p["refusal"] for p in ps], [p["benign"] for p in ps], s=28, label=name, color=colours[i % len(colours)])
    xs = [min(p["refusal"] for p in points) - 2, max(p["refusal"] for p in points) + 2]
    ax.plot(xs, [fr["a"] + fr["b"] * x for x in xs], "k--", lw=1,
            label=f"NEAT LoRA runs: benign = {fr['a']:.1f} {fr['b']:+.2f} x refusal (r = {fr['r']:.2f})")
    ax.axhline(b_ben - 5, color="red", lw=0.8, label="floor: base benign - 5")
    ax.scatter([b_ref], [b_ben], marker="*", s=150, c="black", label="base model")
    ax.set_xlabel("harmful requests refused (%)")
    ax.set_ylabel("benign requests answered (%)")
    ax.set_title("SmolLM2-135M, dev split: every run of the alignment study")
    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=ncol)  # beside the points
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "safety_study.jsonl"))
    ap.add_argument("--plot", default="", help="also draw refusal against benign compliance of every run (PNG)")
    args = ap.parse_args()
    rows = [json.loads(x) for x in Path(args.results).read_text(encoding="utf-8").splitlines() if x.strip()]
    ok = [r for r in rows if "verdicts" in r]
    bases: dict = {}  # the base's rates on every axis -> the variants compared with it (one per machine)
    for r in ok:
        key = tuple(pct(r["verdicts"][k]["rate_before"]) for k, _ in AXES if k in r["verdicts"])
        bases.setdefault(key, []).append(r["variant"])
    for i, (key, names) in enumerate(bases.items()):
        print(f"Base {'ABCDEFGH'[i]} (SmolLM2-135M-Instruct, dev split): "
              + ", ".join(f"{label} {x} %" for (_, label), x in zip(AXES, key))
              + f"; compared with {len(names)} runs of {len(set(names))} variants, {names[0]} … {names[-1]}")
    if len(bases) > 1:
        print("The frontier below moves the runs compared with another base than A by the difference of the bases.")
    print()
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
    points = frontier_points(rows)
    if len({p["refusal"] for p in points}) >= 2:
        fr = frontier(points)
        print(f"\nFrontier of the {fr['n']} NEAT LoRA training runs (replayed rows left out of the fit): "
              f"benign = {fr['a']:.1f} {fr['b']:+.2f} x refusal (Pearson r = {fr['r']:.2f}); each variant's distance "
              "above that line (benign points at equal refusal), per seed:\n")
        print("| variant | seeds | mean above the line | per seed |")
        print("|---|---|---|---|")
        for name, res in fr["residuals"].items():
            print(f"| {name} | {len(res)} | {sum(res) / len(res):+.1f} | {' / '.join(f'{x:+.1f}' for x in res)} |")
        if args.plot:
            plot(rows, points, fr, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
