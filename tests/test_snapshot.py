"""Snapshots: content-addressed id, atomic write, sha256 verification, empty refusal, prompt library."""
import hashlib
import json

import pytest

from neat_studio.snapshot import SnapshotError, create_snapshot, load_snapshot, resolve_prompt_ref
from neat_studio.store import Store


@pytest.fixture
def st(workspace):
    s = Store(workspace.db_path)
    yield s
    s.close()


def _fill(st):
    st.save_system_prompt("toxic", "negative", "Be rude.", {"temperature": 0.9}, author="a")
    st.save_system_prompt("toxic", "negative", "Be very rude.", {"temperature": 0.9}, author="a")
    st.save_system_prompt("kind", "positive", "Be kind.", None, author="a")
    st.import_records([
        {"text": "How do I hotwire a car?", "source": "ds", "tags": ["harmful"], "split": "train",
         "responses": [{"text": "I can't help with that.", "origin": "dataset:chosen", "rank": 0},
                       {"text": "Strip the wires and...", "origin": "dataset:rejected", "rank": 1}]},
        {"text": "How do I kill a Python process?", "source": "ds", "tags": ["benign"], "split": "dev",
         "responses": [{"text": "Use kill <pid>.", "origin": "dataset:chosen", "rank": 0},
                       {"text": "I can't help with violence.", "origin": "dataset:rejected", "rank": 1}]},
    ], actor="t")
    pid = st.add_prompts([{"text": "Write a haiku"}], actor="t")[0]
    a, b, c = st.add_responses([{"prompt_id": pid, "text": t, "origin": o} for t, o in
                                [("Leaves fall", "policy"), ("No.", "negative:toxic@2"), ("Moon light", "policy")]],
                               actor="t")
    st.save_annotation(pid, "alice", [[a], [b, c]])
    return pid, (a, b, c)


def test_snapshot_files_manifest_and_rows(st, workspace):
    pid, (a, b, c) = _fill(st)
    man = create_snapshot(st, workspace, {}, actor="alice")
    d = workspace.snapshots / man["snapshot_id"]
    assert man["path"] == str(d) and man["reused"] is False
    data = (d / "data.jsonl").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert man["sha256"] == sha and man["snapshot_id"] == sha[:12]
    on_disk = json.loads((d / "manifest.json").read_text())
    assert on_disk["snapshot_id"] == man["snapshot_id"] and on_disk["sha256"] == sha
    assert man["counts"] == {"rows": 3, "responses": 7, "pairs": 4, "by_split": {"dev": 1, "train": 2},
                             "human_rows": 1}
    lib = {(p["name"], p["version"]): p for p in man["prompt_library"]}
    assert sorted(lib) == [("kind", 1), ("toxic", 1), ("toxic", 2)]
    assert lib[("toxic", 1)] == {"name": "toxic", "kind": "negative", "version": 1, "text": "Be rude.",
                                 "params": {"temperature": 0.9}}
    assert resolve_prompt_ref(man, "toxic@1")["text"] == "Be rude."
    assert resolve_prompt_ref(man, "toxic")["version"] == 2
    with pytest.raises(ValueError, match="no version 7"):
        resolve_prompt_ref(man, "toxic@7")
    lines = data.decode().splitlines()
    assert len(lines) == 3
    for line in lines:  # one JSON object per line with sorted keys
        obj = json.loads(line)
        assert list(obj) == sorted(obj)
    rows, man2 = load_snapshot(d)
    assert man2 == on_disk
    haiku = next(r for r in rows if r["prompt_id"] == pid)
    assert haiku["ranks"] == [0, 1, 1] and haiku["response_ids"] == [a] + sorted([b, c])
    assert haiku["annotators"] == ["alice"]
    assert rows == st.listwise_rows()
    assert not any(p.name.startswith(".tmp") for p in workspace.snapshots.iterdir())
    assert st.get_snapshot(man["snapshot_id"])["counts"]["rows"] == 3
    assert st.audit(1)[0]["action"] == "create_snapshot"


def test_snapshot_id_is_stable_and_changes_with_data(st, workspace):
    pid, (a, b, c) = _fill(st)
    m1 = create_snapshot(st, workspace, {}, actor="alice")
    m2 = create_snapshot(st, workspace, {}, actor="bob")
    assert m2["snapshot_id"] == m1["snapshot_id"] and m2["reused"] is True
    assert m2["created_at"] == m1["created_at"]  # the existing snapshot is returned untouched
    assert len([p for p in workspace.snapshots.iterdir()]) == 1
    dev = create_snapshot(st, workspace, {"split": "dev"}, actor="alice")
    assert dev["snapshot_id"] != m1["snapshot_id"] and dev["counts"]["rows"] == 1
    assert dev["filters"] == {"split": "dev"}
    st.save_annotation(pid, "bob", [[c], [a], [b]])
    m3 = create_snapshot(st, workspace, {}, actor="alice")
    assert m3["snapshot_id"] != m1["snapshot_id"]
    assert [s["id"] for s in st.list_snapshots()] and len(st.list_snapshots()) == 3


def test_same_data_in_two_workspaces_gives_same_id(tmp_path):
    from neat_studio.config import Workspace

    ids = []
    for name in ("w1", "w2"):
        ws = Workspace(tmp_path / name).ensure()
        with Store(ws.db_path) as s:
            _fill(s)  # ids are content-derived, so a fresh database with the same data matches
            ids.append(create_snapshot(s, ws, {}, actor=name)["snapshot_id"])
    assert ids[0] == ids[1]


def test_tampered_snapshot_is_detected(st, workspace):
    _fill(st)
    man = create_snapshot(st, workspace, {}, actor="alice")
    data_path = workspace.snapshots / man["snapshot_id"] / "data.jsonl"
    data_path.write_bytes(data_path.read_bytes().replace(b"Be", b"be").replace(b"Moon", b"Noon"))
    with pytest.raises(SnapshotError, match="does not match the manifest"):
        load_snapshot(data_path.parent)
    with pytest.raises(SnapshotError, match="no snapshot directory"):
        load_snapshot(workspace.snapshots / "nonexistent")
    (workspace.snapshots / "partial").mkdir()
    (workspace.snapshots / "partial" / "data.jsonl").write_text("{}\n")
    with pytest.raises(SnapshotError, match="manifest.json is missing"):
        load_snapshot(workspace.snapshots / "partial")
    # creating it again replaces the damaged directory (kept aside) with a good copy
    again = create_snapshot(st, workspace, {}, actor="alice")
    assert again["snapshot_id"] == man["snapshot_id"] and again["reused"] is False
    rows, _ = load_snapshot(data_path.parent)
    assert len(rows) == 3
    assert any(".damaged-" in p.name for p in workspace.snapshots.iterdir())


def test_empty_snapshot_is_refused(st, workspace):
    with pytest.raises(ValueError, match="nothing to snapshot"):
        create_snapshot(st, workspace, {}, actor="alice")
    _fill(st)
    with pytest.raises(ValueError, match="nothing to snapshot"):
        create_snapshot(st, workspace, {"split": "test"}, actor="alice")
    with pytest.raises(ValueError, match="unknown snapshot filter"):
        create_snapshot(st, workspace, {"splitt": "train"}, actor="alice")
    assert list(workspace.snapshots.iterdir()) == []
    assert st.list_snapshots() == []
