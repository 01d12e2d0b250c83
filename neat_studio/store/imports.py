"""Import: records (prompt + responses + optional ranking) in one transaction. A mixin of Store (see the package
docstring)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .core import _consistent, _dumps, _group_pairs, _loads, _mean_groups, _now, _rank_pairs, _short_id, combine_rankings
from .schema import IMPORT_PREFIX


class ImportMixin:
    # -- import -------------------------------------------------------------------------------------------
    def import_records(self, records: list[dict], actor: str) -> dict:
        """Import ImportRecords (see docs/ARCHITECTURE.md) in ONE transaction: prompts, responses, and the
        dataset ranking as an annotation by `import:<source>`. Re-importing the same records adds nothing."""
        prepared: list[tuple[dict, list[tuple[dict, Any]]]] = []
        for i, rec in enumerate(records):
            try:
                if not isinstance(rec, dict):
                    raise ValueError(f"expected a dict, got {type(rec).__name__}")
                p = self._prepare_prompt(rec)
                resps = rec.get("responses") or []
                if not isinstance(resps, list):
                    raise ValueError("'responses' must be a list")
                rs = []
                for j, r in enumerate(resps):
                    if not isinstance(r, dict):
                        raise ValueError(f"response {j} must be a dict")
                    rank = r.get("rank")
                    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, np.integer))
                                             or rank < 0):
                        raise ValueError(f"response {j}: rank must be a non-negative integer or None, got {rank!r}")
                    try:
                        pr = self._prepare_response({**r, "prompt_id": p["id"]})
                    except ValueError as e:
                        raise ValueError(f"response {j}: {e}") from None
                    rs.append((pr, None if rank is None else int(rank)))
                prepared.append((p, rs))
            except ValueError as e:
                raise ValueError(f"import record {i}: {e}") from None
        report = {"records": len(records), "prompts_added": 0, "prompts_existing": 0, "tags_merged": 0,
                  "split_kept": 0, "responses_added": 0, "responses_existing": 0, "annotations_added": 0}
        with self._tx() as con:
            pids, added, merged, split_kept = self._add_prompts_tx(con, [p for p, _ in prepared], actor)
            report["prompts_added"] = added
            report["prompts_existing"] = len(set(pids)) - added
            report["tags_merged"] = merged
            report["split_kept"] = split_kept  # stored prompts keep their split (an import never moves one)
            # prompt ids are content-hash prefixes, so the ids prepared above are the stored ones
            rows = [pr for _, rs in prepared for pr, _ in rs]
            rids, radded = self._add_responses_tx(con, rows, actor)
            report["responses_added"] = radded
            report["responses_existing"] = len(set(rids)) - radded
            # per (prompt, import annotator): ONE ranking from all its records (ranks averaged per response), but
            # only as long as that ranking states exactly the records' preferences: a record that would make it
            # state a pair no record gave (A>B and C>D of one prompt would become A=C > B=D, i.e. also A>D and
            # C>B) or contradict one (A>B, B>A) is left unranked (its responses are stored) and counted
            per: dict[tuple[str, str], list[dict[str, int]]] = {}
            for pid, (p, rs) in zip(pids, prepared):
                ranked = {pr["id"]: rank for pr, rank in rs if rank is not None}
                if ranked:
                    per.setdefault((pid, IMPORT_PREFIX + p["source"]), []).append(ranked)
            report["pairs_unranked"] = 0
            if per:
                latest = {(a["prompt_id"], a["annotator"]): a["ranking"] for a in self._import_latest(con)}
                new_rows = []
                for (pid, ann), recs in per.items():
                    kept, given = [], set()
                    for rec in recs:
                        want = given | _rank_pairs(rec)
                        if _group_pairs(_mean_groups(kept + [rec])) == want:
                            kept, given = kept + [rec], want
                        else:
                            report["pairs_unranked"] += max(1, len(_rank_pairs(rec)))
                    if not kept:
                        continue
                    groups = _mean_groups(kept)
                    old = latest.get((pid, ann))
                    if old is not None:
                        if _consistent(old, groups):
                            continue
                        merged = combine_rankings([old, groups])
                        if merged == old:
                            continue
                        if _group_pairs(merged) != _group_pairs(old) | given:
                            report["pairs_unranked"] += max(1, len(given))
                            continue
                        groups = merged
                    new_rows.append((pid, ann, groups))
                if new_rows:
                    seq0, now = self._next_seq(con, "annotations", len(new_rows)), _now()
                    self._bulk_insert(con, "annotations", self._ANNOTATION_SCHEMA, {
                        "id": [_short_id() for _ in new_rows], "seq": [seq0 + i for i in range(len(new_rows))],
                        "prompt_id": [r[0] for r in new_rows], "annotator": [r[1] for r in new_rows],
                        "ranking": [_dumps(r[2]) for r in new_rows], "marks": ["{}"] * len(new_rows),
                        "comment": [""] * len(new_rows), "flagged": [False] * len(new_rows),
                        "created_at": [now] * len(new_rows)})
                report["annotations_added"] = len(new_rows)
            report["nothing_new"] = not (report["prompts_added"] or report["responses_added"]
                                         or report["annotations_added"] or report["tags_merged"])
            sources = sorted({p["source"] for p, _ in prepared})
            self._audit(con, actor, "import", "prompt", None, {**report, "sources": sources[:10]})
        return report

    def _import_latest(self, con) -> list[dict]:
        cur = con.execute(f"""SELECT prompt_id, annotator, ranking FROM ({self._LATEST_ANN}
                               WHERE starts_with(a.annotator, '{IMPORT_PREFIX}')) WHERE rn = 1""")
        return [{"prompt_id": p, "annotator": a, "ranking": _loads(r)} for p, a, r in cur.fetchall()]
