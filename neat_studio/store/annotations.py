"""Annotations: rankings per annotator, history, progress, the queue and skips. A mixin of Store (see the package
docstring)."""
from __future__ import annotations

from typing import Iterable
from typing import Sequence

import pyarrow as pa

from .core import StaleAnnotationError, _dumps, _first, _iso, _loads, _now, _req_str, _short_id, _validate_ranking
from .schema import IMPORT_PREFIX, MARKS


class AnnotationsMixin:
    # -- annotations --------------------------------------------------------------------------------------
    _ANNOTATION_SCHEMA = pa.schema([("id", pa.string()), ("seq", pa.int64()), ("prompt_id", pa.string()),
                                    ("annotator", pa.string()), ("ranking", pa.string()), ("marks", pa.string()),
                                    ("comment", pa.string()), ("flagged", pa.bool_()),
                                    ("created_at", pa.timestamp("us"))])

    @staticmethod
    def _ann_out(r: dict) -> dict:
        r = dict(r)
        r["ranking"] = _loads(r["ranking"])
        r["marks"] = _loads(r["marks"]) or {}
        r["created_at"] = _iso(r["created_at"])
        r.pop("rn", None)
        r.pop("seq", None)
        return r

    def save_annotation(self, prompt_id: str, annotator: str, ranking: list[list[str]],
                        marks: dict[str, str] | None = None, comment: str = "", flagged: bool = False,
                        actor: str | None = None, expect_latest: str | None | object = ...) -> str:
        """Append an annotation (the latest per prompt and annotator counts). `ranking`: groups of response ids
        of this prompt, best first (ties within a group), at least two responses. An empty ranking is allowed
        only with a flag, comment or marks; a comment- or mark-only save keeps the annotator's earlier ranking in
        force, a flag without a ranking withdraws it (see listwise_rows). ValueError on invalid input; nothing is
        written then.

        `expect_latest`: the id of this annotator's latest annotation of the prompt when their page loaded it (None:
        there was none). When it is given and no longer the latest, StaleAnnotationError and nothing is written:
        a save never silently replaces a ranking its author did not see."""
        annotator = _req_str(annotator, "annotator", 100)
        if annotator.startswith(IMPORT_PREFIX):
            raise ValueError(f"annotator names starting with {IMPORT_PREFIX!r} are reserved for imports")
        comment = comment or ""
        if not isinstance(comment, str):
            raise ValueError("comment must be a string")
        marks = dict(marks or {})
        with self._tx() as con:
            if _first(con.execute("SELECT count(*) FROM prompts WHERE id = ?", [prompt_id]))[0] == 0:
                raise ValueError(f"unknown prompt id {prompt_id!r}")
            if expect_latest is not ...:
                cur = _first(con.execute("SELECT id FROM annotations WHERE prompt_id = ? AND annotator = ? "
                                         "ORDER BY seq DESC LIMIT 1", [prompt_id, annotator]))
                cur = cur[0] if cur else None
                if cur != (expect_latest or None):
                    raise StaleAnnotationError(
                        f"prompt {prompt_id} has a newer annotation by {annotator} than the one this page loaded "
                        "(saved from another tab or by someone else signed in as you). Nothing was replaced: reopen "
                        "the prompt to see it, then save again if yours should win.", cur)
            valid = {r[0] for r in con.execute("SELECT id FROM responses WHERE prompt_id = ?", [prompt_id]).fetchall()}
            ranking = _validate_ranking(ranking, valid)
            for rid, m in marks.items():
                if rid not in valid:
                    raise ValueError(f"marked response {rid} does not belong to this prompt")
                if m not in MARKS:
                    raise ValueError(f"mark for {rid} must be one of {MARKS}, got {m!r}")
            if not ranking and not (flagged or comment.strip() or marks):
                raise ValueError("empty annotation: rank at least two responses, or flag, comment or mark")
            if ranking and sum(len(g) for g in ranking) < 2:
                raise ValueError("a ranking needs at least two responses (ties allowed): one response alone has "
                                 "nothing to be ranked against; save a comment, mark or flag without a ranking")
            aid = self._insert_annotation(con, prompt_id, annotator, ranking, marks, comment, bool(flagged))
            self._audit(con, actor or annotator, "save_annotation", "annotation", aid,
                        {"prompt_id": prompt_id, "annotator": annotator, "groups": len(ranking),
                         "flagged": bool(flagged)})
        return aid

    def _insert_annotation(self, con, prompt_id, annotator, ranking, marks, comment, flagged) -> str:
        aid = _short_id()
        con.execute("INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [aid, self._next_seq(con, "annotations"), prompt_id, annotator, _dumps(ranking),
                     _dumps(marks), comment, flagged, _now()])
        return aid

    _LATEST_ANN = """SELECT a.*, row_number() OVER (PARTITION BY a.prompt_id, a.annotator ORDER BY a.seq DESC)
                     AS rn FROM annotations a"""

    def latest_annotation(self, prompt_id: str, annotator: str) -> dict | None:
        rows = self._rows("SELECT * FROM annotations WHERE prompt_id = ? AND annotator = ? ORDER BY seq DESC "
                          "LIMIT 1", [prompt_id, annotator])
        return self._ann_out(rows[0]) if rows else None

    def latest_annotations(self, prompt_id: str | None = None, human_only: bool = False) -> list[dict]:
        """The latest annotation of each (prompt, annotator), in order of saving."""
        sql = f"SELECT * FROM ({self._LATEST_ANN} WHERE (? IS NULL OR a.prompt_id = ?)) WHERE rn = 1"
        if human_only:
            sql += f" AND NOT starts_with(annotator, '{IMPORT_PREFIX}')"
        return [self._ann_out(r) for r in self._rows(sql + " ORDER BY seq", [prompt_id, prompt_id])]

    def annotation_history(self, prompt_id: str, annotator: str) -> list[dict]:
        """Every annotation this annotator saved for the prompt, oldest first."""
        return [self._ann_out(r) for r in self._rows(
            "SELECT * FROM annotations WHERE prompt_id = ? AND annotator = ? ORDER BY seq", [prompt_id, annotator])]

    def annotator_progress(self) -> list[dict]:
        """Per human annotator: prompts done, annotations saved, flagged prompts (latest), last activity."""
        rows = self._rows(f"""
            SELECT annotator, count(DISTINCT prompt_id) AS done, count(*) AS annotations, max(created_at) AS last_at,
                   count(DISTINCT CASE WHEN flagged THEN prompt_id END) AS flagged_ever
            FROM annotations WHERE NOT starts_with(annotator, '{IMPORT_PREFIX}')
            GROUP BY annotator ORDER BY done DESC, annotator""")
        for r in rows:
            r["last_at"] = _iso(r["last_at"])
        return rows

    def next_in_queue(self, annotator: str, search: str | None = None, tag: str | list[str] | None = None,
                      source: str | None = None, split: str | None = None, skip_ids: Iterable[str] = (),
                      min_responses: int = 2, include_annotated: bool = False,
                      last_ids: Sequence[str] = (), first_ids: Sequence[str] = ()) -> str | None:
        """Next prompt id for `annotator`: prompts with >= min_responses responses that this annotator has not
        annotated, oldest first; None when the queue is done. `skip_ids` are left out; `last_ids` (e.g. the
        annotator's skipped prompts, in the order they were skipped) come after every other unannotated prompt.
        With `include_annotated`, already annotated prompts follow (least recently annotated by them first).
        `first_ids` (e.g. the prompts the annotator holds a lease on) come before every other unannotated prompt."""
        where, params = self._prompt_where(search, tag, source, split)
        sql = f"""SELECT p.id, p.seq, (SELECT max(a.seq) FROM annotations a WHERE a.prompt_id = p.id
                                               AND a.annotator = ?) AS mine
                  FROM prompts p
                  WHERE {where} AND NOT list_contains(?::VARCHAR[], p.id)
                    AND (SELECT count(*) FROM responses r WHERE r.prompt_id = p.id) >= ?"""
        sql = (f"SELECT id FROM ({sql}) WHERE {'TRUE' if include_annotated else 'mine IS NULL'} "
               "ORDER BY mine IS NOT NULL, list_position(?::VARCHAR[], id) IS NULL, "
               "coalesce(list_position(?::VARCHAR[], id), 0), mine, seq LIMIT 1")
        r = self._rows(sql, [annotator] + params + [list(skip_ids), int(min_responses), list(first_ids),
                                                     list(last_ids)])
        return r[0]["id"] if r else None

    SKIPS_KEY = "annotate_skips:{annotator}"
    MAX_SKIPS = 2000

    def skipped_prompts(self, annotator: str) -> list[str]:
        """The prompts `annotator` skipped and has not annotated since, oldest skip first (kept in the settings
        table, so a reload or a restart keeps them; the queue shows them after every other prompt)."""
        return list(self.get_setting(self.SKIPS_KEY.format(annotator=annotator)) or [])

    def set_skipped(self, annotator: str, prompt_id: str, skipped: bool, actor: str | None = None) -> list[str]:
        """Record (skipped=True: moved to the end of the list) or clear a skip of `prompt_id` by `annotator`.
        Returns the new list. ValueError (nothing written) for an unknown prompt; clearing a prompt that was not
        skipped writes nothing."""
        annotator = _req_str(annotator, "annotator", 100)
        key = self.SKIPS_KEY.format(annotator=annotator)
        with self._tx() as con:
            if skipped and _first(con.execute("SELECT count(*) FROM prompts WHERE id = ?", [prompt_id]))[0] == 0:
                raise ValueError(f"unknown prompt id {prompt_id!r}")
            old = self.skipped_prompts(annotator)
            new = [p for p in old if p != prompt_id] + ([prompt_id] if skipped else [])
            if new != old:
                self.set_setting(key, new[-self.MAX_SKIPS:], actor=actor or annotator)
        return new[-self.MAX_SKIPS:]
