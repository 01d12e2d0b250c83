"""Freeze curated data into a snapshot directory: what training reads (never the live database).

`<workspace.snapshots>/<snapshot_id>/data.jsonl`  one row per prompt (docs/ARCHITECTURE.md, sorted keys)
`<workspace.snapshots>/<snapshot_id>/manifest.json`  id, sha256 of data.jsonl, created_at, filters, counts,
                                                     every negative/positive system prompt version

snapshot_id = first 12 hex digits of sha256(data.jsonl): the same data always gives the same id, and creating
it again returns the existing snapshot untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FILTER_KEYS = ("split", "tags", "annotated_only", "include_imported", "min_responses", "exclude_flagged")


class SnapshotError(ValueError):
    """A snapshot directory is missing, incomplete or does not match its recorded hash."""


def _row_line(row: dict) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"


def _counts(rows: list[dict]) -> dict:
    by_split: dict[str, int] = {}
    pairs = 0
    for r in rows:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
        ranks = r["ranks"]
        pairs += sum(1 for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j])
    return {"rows": len(rows), "responses": sum(len(r["responses"]) for r in rows), "pairs": pairs,
            "by_split": dict(sorted(by_split.items())),
            "human_rows": sum(1 for r in rows if any(not a.startswith("import:") for a in r["annotators"]))}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def create_snapshot(store, workspace, filters: dict | None, actor: str) -> dict:
    """Write `store.listwise_rows(**filters)` as a snapshot and return its manifest (with `path`).

    Atomic (written in a temporary directory, then renamed). ValueError when no row matches the filters or a
    filter key is unknown."""
    filters = {k: v for k, v in dict(filters or {}).items() if v is not None}
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise ValueError(f"unknown snapshot filter(s) {unknown}; allowed: {', '.join(FILTER_KEYS)}")
    rows = store.listwise_rows(**filters)
    if not rows:
        raise ValueError(f"nothing to snapshot: no prompt with at least {filters.get('min_responses', 2)} ranked "
                         f"responses matches the filters {filters or '{}'} (rank responses in Annotate, or "
                         "import a ranked dataset, first)")
    data = "".join(_row_line(r) for r in rows).encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    snap_id = sha[:12]
    root = Path(workspace.snapshots)
    root.mkdir(parents=True, exist_ok=True)
    final = root / snap_id
    if final.exists():
        try:
            _, manifest = load_snapshot(final)
        except SnapshotError:
            # a damaged directory with our id: keep it for inspection, write a fresh one in its place
            final.rename(root / f"{snap_id}.damaged-{uuid.uuid4().hex[:6]}")
        else:
            store.record_snapshot(manifest, final, actor=actor)
            return {**manifest, "path": str(final), "reused": True}
    manifest = {
        "snapshot_id": snap_id, "sha256": sha,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "created_by": actor, "filters": filters, "counts": _counts(rows),
        "prompt_library": [{"name": p["name"], "kind": p["kind"], "version": p["version"], "text": p["text"],
                            "params": p["params"]} for p in store.all_system_prompt_versions()],
    }
    tmp = root / f".tmp-{snap_id}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _fsync_write(tmp / "data.jsonl", data)
        _fsync_write(tmp / "manifest.json", (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
                                             + "\n").encode("utf-8"))
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            # another writer produced the same snapshot at the same moment: theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
            _, manifest = load_snapshot(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    store.record_snapshot(manifest, final, actor=actor)
    return {**manifest, "path": str(final), "reused": False}


def load_snapshot(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """(rows, manifest) of a snapshot directory (or its data.jsonl / manifest.json). Raises SnapshotError when a
    file is missing or data.jsonl does not match the manifest's sha256."""
    p = Path(path)
    d = p.parent if p.is_file() or p.name in ("data.jsonl", "manifest.json") else p
    if not d.is_dir():
        raise SnapshotError(f"no snapshot directory at {d}")
    data_path, man_path = d / "data.jsonl", d / "manifest.json"
    for f in (data_path, man_path):
        if not f.is_file():
            raise SnapshotError(f"snapshot {d} is incomplete: {f.name} is missing")
    try:
        manifest: dict[str, Any] = json.loads(man_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SnapshotError(f"snapshot manifest {man_path} is not valid JSON: {e}") from None
    data = data_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != manifest.get("sha256"):
        raise SnapshotError(f"snapshot {d}: data.jsonl sha256 {sha[:12]}... does not match the manifest "
                            f"({str(manifest.get('sha256'))[:12]}...); the data was modified or damaged")
    if manifest.get("snapshot_id") != sha[:12]:
        raise SnapshotError(f"snapshot {d}: manifest id {manifest.get('snapshot_id')!r} does not match its data")
    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    return rows, manifest


def resolve_prompt_ref(manifest: dict, ref: str) -> dict:
    """Resolve "name@v" or "name" (latest) against a snapshot's frozen prompt library (no database needed)."""
    name, _, ver = ref.strip().partition("@")
    versions = [p for p in manifest.get("prompt_library", []) if p["name"] == name]
    if not versions:
        raise ValueError(f"system prompt {name!r} is not in snapshot {manifest.get('snapshot_id')}")
    if not ver:
        return max(versions, key=lambda p: p["version"])
    if not ver.isdigit():
        raise ValueError(f"invalid system prompt reference {ref!r}: expected 'name' or 'name@version'")
    for p in versions:
        if p["version"] == int(ver):
            return p
    raise ValueError(f"system prompt {name!r} has no version {ver} in snapshot {manifest.get('snapshot_id')} "
                     f"(latest there is {max(p['version'] for p in versions)})")
