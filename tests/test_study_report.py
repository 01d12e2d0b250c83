"""benchmarks/study_report.py's frontier: the least-squares line over the NEAT LoRA runs and each variant's distance
above it (hand-computed values)."""
import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "study_report", Path(__file__).resolve().parents[1] / "benchmarks" / "study_report.py")
study_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_report)


def _row(variant, seed, refusal, benign, method="neat", lora=True):
    v = {"refusal:harmful": {"rate_after": refusal}, "compliance:benign": {"rate_after": benign},
         "compliance:lookalike": {"rate_after": 0.98}}
    return {"variant": variant, "seed": seed, "method": method, "config": {"lora": lora}, "verdicts": v}


def test_fit_line_exact():
    # x 10 20 30, y 91 79 70: mean 20 / 80, Sxy = -110 + 0 - 100 = -210, Sxx = 200, Syy = 222
    a, b, r = study_report.fit_line([10, 20, 30], [91, 79, 70])
    assert b == pytest.approx(-1.05) and a == pytest.approx(101.0)
    assert r == pytest.approx(-210 / (200 * 222) ** 0.5)
    with pytest.raises(ValueError):
        study_report.fit_line([5, 5], [1, 2])


def test_frontier_only_neat_lora_runs_and_residuals_per_variant():
    rows = [_row("a", 0, 0.10, 0.91), _row("a", 1, 0.30, 0.70), _row("b", 0, 0.20, 0.79),
            _row("rrhf", 0, 0.50, 0.60, method="rrhf"), _row("full", 0, 0.40, 0.50, lora=False),
            {"variant": "x", "seed": 0, "method": "neat", "error": "RuntimeError: failed"}]
    pts = study_report.frontier_points(rows)
    assert [(p["variant"], p["seed"]) for p in pts] == [("a", 0), ("a", 1), ("b", 0)]
    fr = study_report.frontier(pts)
    assert fr["n"] == 3 and fr["a"] == pytest.approx(101.0) and fr["b"] == pytest.approx(-1.05)
    # residuals: 91 - 90.5, 70 - 69.5, 79 - 80
    assert fr["residuals"]["a"] == pytest.approx([0.5, 0.5]) and fr["residuals"]["b"] == pytest.approx([-1.0])


def test_frontier_moves_runs_on_another_base_by_the_bases_difference():
    """Runs compared with another base (another machine's rounding) enter the frontier as their paired change added
    to the first run's base: 0.920 after 0.928 on base B is 0.936 - 0.008 = 92.8 % on base A's scale."""
    def on_base(variant, refusal, benign, ref0, ben0):
        r = _row(variant, 0, refusal, benign)
        r["verdicts"]["refusal:harmful"]["rate_before"] = ref0
        r["verdicts"]["compliance:benign"]["rate_before"] = ben0
        return r
    rows = [on_base("a", 0.20, 0.90, 0.16, 0.936), on_base("b", 0.25, 0.92, 0.15, 0.928)]
    pts = study_report.frontier_points(rows)
    assert [p["refusal"] for p in pts] == pytest.approx([20.0, 26.0])   # 0.25 + (0.16 - 0.15)
    assert [p["benign"] for p in pts] == pytest.approx([90.0, 92.8])    # 0.92 + (0.936 - 0.928)
    # rows without the base's rates (older records) are not moved
    assert study_report.frontier_points([_row("c", 0, 0.3, 0.8)])[0]["benign"] == pytest.approx(80.0)


def test_frontier_fits_the_line_over_trained_runs_only():
    """A replayed row (another selection rule on a recorded run, note INFERRED ...) gets its residual but does not
    count in the fit: the same three points as above plus a replayed one far off the line give the same line."""
    replay = _row("c", 0, 0.50, 0.20)
    replay["note"] = "INFERRED from run a-s1: another rule replayed on its history"
    pts = study_report.frontier_points([_row("a", 0, 0.10, 0.91), _row("a", 1, 0.30, 0.70),
                                        _row("b", 0, 0.20, 0.79), replay])
    assert [p["replayed"] for p in pts] == [False, False, False, True]
    fr = study_report.frontier(pts)
    assert fr["n"] == 3 and fr["a"] == pytest.approx(101.0) and fr["b"] == pytest.approx(-1.05)
    assert fr["residuals"]["c"] == pytest.approx([20 - (101.0 - 1.05 * 50)])  # 20 - 48.5 = -28.5
