"""Task distribution: how many rankings a prompt needs (the workspace's overlap) and who has a prompt open
(leases), so that two people do not rank the same prompt at once. A mixin of Store (see the package docstring).

A prompt is *taken* for an annotator when the other people's submitted rankings of it plus their live leases on it
reach the overlap (setting `annotations_per_prompt`, default 1). A submitted ranking is a human annotation with a
non-empty ranking (a flag or comment alone does not count). A lease lasts LEASE_S seconds from the moment the
prompt is handed out and ends early when its holder saves or skips.
"""
from __future__ import annotations

from datetime import timedelta

from .core import _first, _iso, _now, _req_str
from .schema import IMPORT_PREFIX

OVERLAP_KEY = "annotations_per_prompt"
LEASE_S = 300


class TasksMixin:
    # -- task distribution --------------------------------------------------------------------------------
    def overlap(self) -> int:
        """Rankings wanted per prompt (a workspace setting, default 1)."""
        v = self.get_setting(OVERLAP_KEY, 1)
        return int(v) if isinstance(v, int) and v >= 1 else 1

    def set_overlap(self, n, actor: str) -> int:
        """Set the rankings wanted per prompt (1-20). ValueError for anything else; nothing written then."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 20:
            raise ValueError(f"annotations per prompt must be a whole number from 1 to 20, got {n!r}")
        self.set_setting(OVERLAP_KEY, n, actor=actor)
        return n

    def taken_prompts(self, annotator: str) -> list[str]:
        """Prompts not to hand to `annotator`: the others' rankings + live leases reach the overlap. Prompts this
        annotator ranked or holds are never in it (their own work stays theirs to review)."""
        sql = f"""
            WITH done AS (SELECT prompt_id, count(DISTINCT annotator) AS n FROM annotations
                          WHERE annotator <> ? AND NOT starts_with(annotator, '{IMPORT_PREFIX}')
                            AND json_array_length(ranking) > 0 GROUP BY prompt_id),
                 held AS (SELECT prompt_id, count(*) AS n FROM leases
                          WHERE annotator <> ? AND expires_at > ? GROUP BY prompt_id),
                 mine AS (SELECT prompt_id FROM annotations WHERE annotator = ?
                          UNION SELECT prompt_id FROM leases WHERE annotator = ? AND expires_at > ?)
            SELECT p FROM (SELECT coalesce(d.prompt_id, h.prompt_id) AS p,
                                  coalesce(d.n, 0) + coalesce(h.n, 0) AS n
                           FROM done d FULL OUTER JOIN held h ON d.prompt_id = h.prompt_id)
            WHERE n >= ? AND p NOT IN (SELECT prompt_id FROM mine) ORDER BY p"""
        now = _now()
        return [r["p"] for r in self._rows(sql, [annotator, annotator, now, annotator, annotator, now,
                                                  self.overlap()])]

    def lease(self, prompt_id: str, annotator: str, seconds: int = LEASE_S) -> str:
        """Hand `prompt_id` to `annotator` for `seconds` (renewing their lease; a longer one they hold, such as an
        admin's assignment, is kept). Returns the expiry (ISO)."""
        annotator = _req_str(annotator, "annotator", 100)
        until = _now() + timedelta(seconds=int(seconds))
        with self._tx() as con:
            if _first(con.execute("SELECT count(*) FROM prompts WHERE id = ?", [prompt_id]))[0] == 0:
                raise ValueError(f"unknown prompt id {prompt_id!r}")
            con.execute("DELETE FROM leases WHERE expires_at <= ?", [_now()])
            held = _first(con.execute("SELECT expires_at FROM leases WHERE prompt_id = ? AND annotator = ?",
                                      [prompt_id, annotator]))
            until = max(until, held[0]) if held else until  # renewing never shortens (an admin's assignment)
            con.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", [prompt_id, annotator, until])
        return _iso(until)

    def release(self, prompt_id: str, annotator: str) -> bool:
        """End `annotator`'s lease on the prompt (save, skip). True when there was one."""
        with self._tx() as con:
            n = _first(con.execute("SELECT count(*) FROM leases WHERE prompt_id = ? AND annotator = ?",
                                   [prompt_id, annotator]))[0]
            con.execute("DELETE FROM leases WHERE prompt_id = ? AND annotator = ?", [prompt_id, annotator])
        return bool(n)

    def held_prompts(self, annotator: str) -> list[str]:
        """The prompts `annotator` holds a live lease on, oldest lease first."""
        return [r["prompt_id"] for r in self._rows(
            "SELECT prompt_id FROM leases WHERE annotator = ? AND expires_at > ? ORDER BY expires_at",
            [annotator, _now()])]

    def active_leases(self) -> list[dict]:
        """Live leases: [{prompt_id, annotator, expires_at}], soonest to expire first."""
        rows = self._rows("SELECT * FROM leases WHERE expires_at > ? ORDER BY expires_at, prompt_id", [_now()])
        for r in rows:
            r["expires_at"] = _iso(r["expires_at"])
        return rows
