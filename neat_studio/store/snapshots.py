"""Snapshot rows: the listwise rows a snapshot freezes, and the snapshots recorded. A mixin of Store (see the package
docstring)."""
from __future__ import annotations

from pathlib import Path

from .core import _dumps, _first, _iso, _loads, _now, _parse_time, _req_str, combine_rankings, is_human_annotator, ranking_to_ranks


class SnapshotsMixin:
    # -- snapshot rows ------------------------------------------------------------------------------------
    def listwise_rows(self, split: str | None = None, tags: str | list[str] | None = None,
                      annotated_only: bool = False, include_imported: bool = True, min_responses: int = 2,
                      exclude_flagged: bool = False) -> list[dict]:
        """One row per prompt in the snapshot format (docs/ARCHITECTURE.md), sorted by prompt id.

        Ranks: the latest ranking of every human annotator (a later comment- or mark-only save keeps it, a later
        flag without a ranking withdraws it), combined by mean group index and
        re-densified; without any, the import rankings (combined the same way) when `include_imported`.
        Responses in no counted ranking are left out; rows with fewer than `min_responses` ranked responses
        are dropped. `annotated_only`: only prompts ranked by a human. `exclude_flagged`: drop prompts whose
        latest annotation by any human is flagged. `tags`: prompts carrying any of them."""
        where, params = self._prompt_where(tag=tags, split=split)
        with self._lock:
            prompts = {r["id"]: r for r in self._rows(
                f"SELECT p.id, p.messages, p.split, p.tags FROM prompts p WHERE {where}", params)}
            # flags: the latest annotation of each (prompt, annotator); ranks: the latest one that has a ranking or
            # a flag (a later comment- or mark-only save does not withdraw a ranking; a flag without one does)
            latest = self._rows(f"SELECT prompt_id, annotator, flagged FROM ({self._LATEST_ANN}) WHERE rn = 1")
            anns = self._rows("""SELECT prompt_id, annotator, ranking FROM (SELECT a.*, row_number() OVER (
                                      PARTITION BY a.prompt_id, a.annotator ORDER BY a.seq DESC) AS rn
                                  FROM annotations a WHERE a.ranking <> '[]' OR a.flagged) WHERE rn = 1 ORDER BY seq""")
            resp = {r["id"]: r for r in self._rows("SELECT id, prompt_id, text, origin FROM responses")}
        by_prompt: dict[str, list[dict]] = {}
        for a in anns:
            if a["prompt_id"] in prompts:
                by_prompt.setdefault(a["prompt_id"], []).append(a)
        flagged = {a["prompt_id"] for a in latest if a["flagged"] and is_human_annotator(a["annotator"])}
        out = []
        for pid in sorted(by_prompt):
            human = [a for a in by_prompt[pid] if is_human_annotator(a["annotator"])]
            if exclude_flagged and pid in flagged:
                continue
            counted = [a for a in human if _loads(a["ranking"])]
            if not counted:
                if annotated_only or not include_imported:
                    continue
                counted = [a for a in by_prompt[pid] if not is_human_annotator(a["annotator"])
                           and _loads(a["ranking"])]
            if not counted:
                continue
            groups = combine_rankings([_loads(a["ranking"]) for a in counted])
            ranks = ranking_to_ranks(groups)
            ids = [rid for g in groups for rid in g if rid in resp]
            if len(ids) < max(1, int(min_responses)):
                continue
            p = prompts[pid]
            out.append({"prompt_id": pid, "prompt": _loads(p["messages"]),
                        "responses": [resp[i]["text"] for i in ids], "ranks": [ranks[i] for i in ids],
                        "origins": [resp[i]["origin"] for i in ids], "response_ids": ids,
                        "annotators": sorted({a["annotator"] for a in counted}), "split": p["split"],
                        "tags": sorted(p["tags"] or [])})
        return out

    def record_snapshot(self, manifest: dict, path: str | Path, actor: str) -> None:
        """Remember a snapshot written to disk (idempotent: an id already recorded is left as it is)."""
        with self._tx() as con:
            if _first(con.execute("SELECT count(*) FROM snapshots WHERE id = ?", [manifest["snapshot_id"]]))[0]:
                self._audit(con, actor, "snapshot_reused", "snapshot", manifest["snapshot_id"], None)
                return
            con.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [manifest["snapshot_id"], str(path), manifest["sha256"],
                         _parse_time(manifest.get("created_at")) or _now(), _req_str(actor, "actor"),
                         _dumps(manifest.get("filters") or {}), _dumps(manifest.get("counts") or {})])
            self._audit(con, actor, "create_snapshot", "snapshot", manifest["snapshot_id"],
                        {"counts": manifest.get("counts"), "filters": manifest.get("filters")})

    def list_snapshots(self) -> list[dict]:
        rows = self._rows("SELECT * FROM snapshots ORDER BY created_at DESC, id")
        for r in rows:
            r["created_at"] = _iso(r["created_at"])
            r["filters"], r["counts"] = _loads(r["filters"]), _loads(r["counts"])
        return rows

    def get_snapshot(self, snapshot_id: str) -> dict | None:
        return next((s for s in self.list_snapshots() if s["id"] == snapshot_id), None)
