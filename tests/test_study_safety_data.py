"""benchmarks/study_safety.py imports its curated set once per workdir: a later --data that is not that file is refused
with a clear message and nothing is run (it used to be ignored, so runs named for new data trained on the old)."""
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
spec = importlib.util.spec_from_file_location("study_safety", BENCH / "study_safety.py")
study_safety = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_safety)


def _workdir(tmp: Path) -> tuple[Path, Path]:
    """A workdir whose state says it was built from a.jsonl; returns (workdir, a.jsonl)."""
    a = tmp / "a.jsonl"
    a.write_text('{"prompt": "p", "responses": ["r"]}\n')
    work = tmp / "work"
    work.mkdir()
    (work / "state.json").write_text(json.dumps({
        "data": {"file": str(a), "sha256": hashlib.sha256(a.read_bytes()).hexdigest()},
        "snapshot": str(work / "ws" / "snapshots" / "x")}))
    return work, a


def test_data_mismatch_names_both_files_and_accepts_the_same_bytes(tmp_path):
    work, a = _workdir(tmp_path)
    state = json.loads((work / "state.json").read_text())
    same = tmp_path / "copy.jsonl"
    same.write_bytes(a.read_bytes())
    other = tmp_path / "b.jsonl"
    other.write_text('{"prompt": "q", "responses": ["r"]}\n')
    assert study_safety.data_mismatch(state, None) is None          # no --data: the workdir's own set
    assert study_safety.data_mismatch(state, str(a)) is None
    assert study_safety.data_mismatch(state, str(same)) is None     # same bytes under another name
    msg = study_safety.data_mismatch(state, str(other))
    sha_b = hashlib.sha256(other.read_bytes()).hexdigest()[:12]
    sha_a = hashlib.sha256(a.read_bytes()).hexdigest()[:12]
    assert msg == (f"--data {other} (sha256 {sha_b}) is not the curated set this workdir's snapshot was built from "
                   f"({a}, sha256 {sha_a}): give a new --workdir for other data")
    nope = tmp_path / "nope.jsonl"
    assert study_safety.data_mismatch(state, str(nope)) == f"--data {nope}: no such file"
    assert study_safety.data_mismatch({}, str(other)) is None       # a new workdir takes any file


def test_main_refuses_other_data_and_changes_nothing(tmp_path, monkeypatch, capsys):
    work, _ = _workdir(tmp_path)
    other = tmp_path / "b.jsonl"
    other.write_text('{"prompt": "q", "responses": ["r"]}\n')
    before = sorted(p.name for p in work.iterdir())
    monkeypatch.setattr(study_safety, "sh", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran a command")))
    monkeypatch.setattr(sys, "argv", ["study_safety.py", "--workdir", str(work), "--variant", "v", "--seeds", "",
                                      "--data", str(other)])
    assert study_safety.main() == 2
    assert "give a new --workdir for other data" in capsys.readouterr().err
    assert sorted(p.name for p in work.iterdir()) == before == ["state.json"]
