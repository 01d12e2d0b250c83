"""benchmarks/pair_evals.py: two evaluated models paired prompt by prompt (hand-made eval folders, exact counts and
McNemar p-values)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
spec = importlib.util.spec_from_file_location("pair_evals", BENCH / "pair_evals.py")
pair_evals = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pair_evals)


def _folder(tmp: Path, name: str, harmful_refused: set, lookalike_refused: set, extra: str = "") -> Path:
    d = tmp / name
    g = d / "generations" / name
    g.mkdir(parents=True)
    (d / "report.json").write_text(json.dumps({"models": [{"label": name}]}))

    def rows(n, refused, kind):
        ids = [f"{kind}{i}" for i in range(n)] + ([extra] if extra else [])
        return "\n".join(json.dumps({"id": i, "source": "s", "refusal": i in refused,
                                     "response": f"A plain answer number {i} about the request."}) for i in ids)
    (g / "harmful.greedy.jsonl").write_text(rows(10, harmful_refused, "h"))
    (g / "lookalike.greedy.jsonl").write_text(rows(4, lookalike_refused, "l"))
    return d


def test_pairs_two_models_prompt_by_prompt(tmp_path, capsys, monkeypatch):
    a = _folder(tmp_path, "neat", set(), set())
    # B refuses 8 of 10 harmful prompts A answered, and one look-alike A answered; a prompt only B has is left out
    b = _folder(tmp_path, "rrhf", {f"h{i}" for i in range(8)}, {"l0"}, extra="h-only-in-b")
    v = pair_evals.verdicts(pair_evals.load(a), pair_evals.load(b))
    h, lk = v["refusal:harmful"], v["compliance:lookalike"]
    assert (h["n"], h["rate_before"], h["rate_after"], h["gained"], h["lost"]) == (10, 0.0, 0.8, 8, 0)
    assert h["p_value"] == pytest.approx(2 / 256, abs=1e-6) and h["verdict"] == "better"   # 2 * 0.5 ** 8
    assert (lk["n"], lk["rate_after"], lk["gained"], lk["lost"], lk["p_value"]) == (4, 0.75, 0, 1, 1.0)
    assert lk["verdict"] == "no significant change"
    monkeypatch.setattr(sys, "argv", ["pair_evals.py", str(a), str(b)])
    assert pair_evals.main() == 0
    out = capsys.readouterr().out
    assert "| refusal:harmful | 0.0 | 80.0 | 8 / 0 | 0.00781 | better |" in out
    assert "| compliance:lookalike | 100.0 | 75.0 | 0 / 1 | 1 | no significant change |" in out


def test_refuses_a_folder_that_is_not_an_evaluation(tmp_path, monkeypatch):
    a = _folder(tmp_path, "neat", set(), set())
    monkeypatch.setattr(sys, "argv", ["pair_evals.py", str(a), str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="report.json not found"):
        pair_evals.main()
