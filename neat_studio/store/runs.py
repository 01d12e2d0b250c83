"""Training runs: create (one active at a time), update, list. A mixin of Store (see the package docstring)."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from .core import _dumps, _first, _iso, _loads, _now, _parse_time, _req_str, _short_id
from .schema import ACTIVE_RUN_STATUSES, RUN_STATUSES


class RunsMixin:
    # -- runs ---------------------------------------------------------------------------------------------
    _RUN_FIELDS = {"name", "status", "config", "snapshot_id", "run_dir", "pid", "started_at", "finished_at",
                   "final_metrics", "error"}

    @staticmethod
    def _run_out(r: dict) -> dict:
        r = dict(r)
        for k in ("config", "final_metrics"):
            r[k] = _loads(r[k])
        for k in ("created_at", "started_at", "finished_at"):
            r[k] = _iso(r[k])
        return r

    def create_run(self, name: str, method: str, config: dict, actor: str, snapshot_id: str | None = None,
                   run_dir: str | Path | None = None, status: str = "created",
                   require_idle: bool = False) -> str:
        """Record a training run; returns its id. `require_idle`: refuse (RuntimeError) while another run is
        queued or running (checked atomically)."""
        name, method = _req_str(name, "run name"), _req_str(method, "method")
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {status!r}")
        run_id = _short_id()
        with self._tx() as con:
            if require_idle:
                act = _first(con.execute(
                    "SELECT id, status FROM runs WHERE list_contains(?::VARCHAR[], status) LIMIT 1",
                    [list(ACTIVE_RUN_STATUSES)]))
                if act:
                    raise RuntimeError(f"run {act[0]} is {act[1]}; one training run at a time")
            con.execute("INSERT INTO runs (id, name, method, status, config, snapshot_id, run_dir, created_at, "
                        "created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [run_id, name, method, status, _dumps(config or {}), snapshot_id,
                         None if run_dir is None else str(run_dir), _now(), _req_str(actor, "actor")])
            self._audit(con, actor, "create_run", "run", run_id, {"name": name, "method": method,
                                                                   "snapshot_id": snapshot_id})
        return run_id

    def update_run(self, run_id: str, *, actor: str = "system", **fields) -> dict:
        """Update run fields (status, pid, run_dir, started_at, finished_at, final_metrics, error, ...).
        Setting status 'running' stamps started_at, a final status stamps finished_at, unless given."""
        bad = set(fields) - self._RUN_FIELDS
        if bad:
            raise ValueError(f"unknown run field(s) {sorted(bad)}; allowed: {sorted(self._RUN_FIELDS)}")
        if "status" in fields and fields["status"] not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, got {fields['status']!r}")
        with self._tx() as con:
            cur = _first(con.execute("SELECT started_at, finished_at FROM runs WHERE id = ?", [run_id]))
            if cur is None:
                raise ValueError(f"unknown run id {run_id!r}")
            st = fields.get("status")
            if st == "running" and cur[0] is None and "started_at" not in fields:
                fields["started_at"] = _now()
            if st in ("finished", "failed", "stopped") and cur[1] is None and "finished_at" not in fields:
                fields["finished_at"] = _now()
            vals = []
            for k in sorted(fields):
                v = fields[k]
                if k in ("config", "final_metrics"):
                    v = None if v is None else _dumps(v)
                elif k in ("started_at", "finished_at"):
                    v = _parse_time(v)
                elif k == "run_dir" and v is not None:
                    v = str(v)
                elif k == "pid" and v is not None:
                    v = int(v)
                vals.append(v)
            if fields:
                # column names come from the whitelist above, values are bound
                con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in sorted(fields))} WHERE id = ?",
                            vals + [run_id])
            self._audit(con, actor, "update_run", "run", run_id,
                        {k: _iso(v) if isinstance(v, datetime) else (str(v) if isinstance(v, Path) else v)
                         for k, v in fields.items()})
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", [run_id])
        return self._run_out(rows[0]) if rows else None

    def list_runs(self, limit: int = 100, status: str | None = None) -> list[dict]:
        """Newest first."""
        return [self._run_out(r) for r in self._rows(
            "SELECT * FROM runs WHERE (? IS NULL OR status = ?) ORDER BY created_at DESC, id LIMIT ?",
            [status, status, int(limit)])]

    def active_run(self) -> dict | None:
        """The newest run that is queued or running, if any."""
        rows = self._rows("SELECT * FROM runs WHERE list_contains(?::VARCHAR[], status) "
                          "ORDER BY created_at DESC LIMIT 1", [list(ACTIVE_RUN_STATUSES)])
        return self._run_out(rows[0]) if rows else None
