"""The store's core: shared helpers, the connection and its lifecycle (see the package docstring)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import duckdb
import pyarrow as pa

from .schema import IMPORT_PREFIX, MIGRATIONS, NAME_RE, PARAM_RULES, REF_RE, ROLES



_SHARED: dict[str, tuple[threading.RLock, dict[str, int]]] = {}
_SHARED_GUARD = threading.Lock()


class SchemaError(RuntimeError):
    """The database file has a schema this code cannot use (newer version, or not a studio database)."""


class StoreLockedError(RuntimeError):
    """Another process holds the database file open read-write."""


class StaleAnnotationError(ValueError):
    """A save based on an annotation that is no longer the annotator's latest for the prompt (another tab, or
    another person under the same name, saved in between). `current`: the latest annotation id now."""

    def __init__(self, message: str, current: str | None):
        super().__init__(message)
        self.current = current


# ---------------------------------------------------------------------------------------------------------
# pure helpers


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _iso(v: Any) -> Any:
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(timezone.utc).replace(tzinfo=None)
        return v.isoformat(timespec="microseconds") + "Z"
    return v


def _parse_time(v: Any) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return _iso_to_naive(v) if isinstance(v, datetime) else None
    if isinstance(v, str):
        s = v[:-1] + "+00:00" if v.endswith("Z") else v
        return _iso_to_naive(datetime.fromisoformat(s))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return datetime.fromtimestamp(v, timezone.utc).replace(tzinfo=None)
    raise ValueError(f"not a timestamp: {v!r}")


def _iso_to_naive(d: datetime) -> datetime:
    return d.astimezone(timezone.utc).replace(tzinfo=None) if d.tzinfo is not None else d


def _first(cur) -> tuple | None:
    """First row of a result, fully consumed (DuckDB 2 refuses new work while a result is unfinished)."""
    rows = cur.fetchall()
    return rows[0] if rows else None


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def _short_id() -> str:
    return uuid.uuid4().hex[:16]


def _dumps(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _loads(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def _req_str(v: Any, what: str, max_len: int = 200) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{what} must be a non-empty string, got {v!r}")
    if len(v) > max_len:
        raise ValueError(f"{what} is too long ({len(v)} > {max_len} characters)")
    return v.strip()


def normalise_tags(tags: Any) -> list[str]:
    """Tags as a sorted, de-duplicated list of stripped non-empty strings (ValueError otherwise)."""
    if tags is None:
        return []
    if isinstance(tags, str):
        tags = [tags]
    out = set()
    for t in tags:
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"a tag must be a non-empty string, got {t!r}")
        if len(t.strip()) > 64:
            raise ValueError(f"tag too long (max 64 characters): {t[:70]!r}")
        out.add(t.strip())
    return sorted(out)


def normalise_messages(row: dict) -> list[dict]:
    """`row["messages"]` (validated) or `row["text"]` as `[{"role": "user", "content": text}]`."""
    msgs = row.get("messages")
    if msgs is None:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a prompt needs non-empty 'messages' or 'text'")
        return [{"role": "user", "content": text}]
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise ValueError("the last message of a prompt must be a user turn")
    if not out[-1]["content"].strip():
        raise ValueError("the last user turn of a prompt is empty")
    return out


def prompt_content_hash(messages: list[dict]) -> str:
    """sha256 over roles and whitespace-collapsed contents: prompts differing only in spacing are the same."""
    norm = [[m["role"], " ".join(m["content"].split())] for m in messages]
    return _sha(json.dumps(norm, ensure_ascii=False))


def _text_hash(text: str) -> str:
    return _sha(text.strip())


def _response_id(prompt_id: str, origin: str, text_hash: str) -> str:
    return _sha(f"{prompt_id}\x1f{origin}\x1f{text_hash}")[:16]


def is_human_annotator(annotator: str) -> bool:
    return not annotator.startswith(IMPORT_PREFIX)


def ranking_to_ranks(ranking: list[list[str]]) -> dict[str, int]:
    """{response_id: index of its group} (0 = best)."""
    return {rid: gi for gi, group in enumerate(ranking) for rid in group}


def combine_rankings(rankings: Sequence[list[list[str]]]) -> list[list[str]]:
    """Combine rankings by each response's mean group index over the rankings that place it; ties kept, then
    re-densified into groups (best first). Deterministic (ids sorted inside groups)."""
    return _mean_groups([ranking_to_ranks(ranking) for ranking in rankings])


def parse_ref(ref: str) -> tuple[str, int | None]:
    """"name@3" -> ("name", 3); "name" -> ("name", None). ValueError on anything else."""
    m = REF_RE.match(ref.strip()) if isinstance(ref, str) else None
    if not m:
        raise ValueError(f"invalid system prompt reference {ref!r}: expected 'name' or 'name@version' "
                         f"(name matching {NAME_RE.pattern})")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def _validate_params(params: dict | None) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict, got {type(params).__name__}")
    out = {}
    for k, v in params.items():
        if k not in PARAM_RULES:
            raise ValueError(f"unknown generation parameter {k!r}; allowed: {', '.join(PARAM_RULES)}")
        typ, lo, hi, lo_excl = PARAM_RULES[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not float(v).is_integer()):
            raise ValueError(f"parameter {k} must be {'an integer' if typ is int else 'a number'}, got {v!r}")
        v = typ(v)
        if v != v or v < lo or v > hi or (lo_excl and v <= lo):
            raise ValueError(f"parameter {k}={v} out of range {'(' if lo_excl else '['}{lo}, {hi}]")
        out[k] = v
    return out


def _validate_ranking(ranking: Any, valid_ids: set[str]) -> list[list[str]]:
    if not isinstance(ranking, (list, tuple)):
        raise ValueError("ranking must be a list of groups (lists of response ids), best first")
    seen: set[str] = set()
    out = []
    for gi, group in enumerate(ranking):
        if not isinstance(group, (list, tuple)):
            raise ValueError(f"ranking group {gi} must be a list of response ids, got {group!r}")
        if not group:
            raise ValueError(f"ranking group {gi} is empty")
        for rid in group:
            if not isinstance(rid, str):
                raise ValueError(f"response id must be a string, got {rid!r}")
            if rid in seen:
                raise ValueError(f"response {rid} appears twice in the ranking")
            if rid not in valid_ids:
                raise ValueError(f"response {rid} does not belong to this prompt")
            seen.add(rid)
        out.append(list(group))
    return out


# ---------------------------------------------------------------------------------------------------------


class StoreCore:
    """Connection, lifecycle, transactions, low-level helpers, settings and overview of the store."""

    def __init__(self, db_path: str | Path, *, migrations: list[tuple[int, list[str]]] | None = None):
        self.db_path = Path(db_path)
        if str(db_path) != ":memory:":
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # Store objects of one process on the same file share a lock and the insertion counters
        # (table -> last seq handed out; this process is the only writer of the file).
        key = str(db_path) if str(db_path) == ":memory:" else str(self.db_path.resolve())
        with _SHARED_GUARD:
            if key == ":memory:" or key not in _SHARED:
                shared = (threading.RLock(), {})
                if key != ":memory:":
                    _SHARED[key] = shared
            else:
                shared = _SHARED[key]
        self._lock, self._seq_cache = shared
        self._tx_depth = 0
        try:
            self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(str(db_path))
        except duckdb.IOException as e:
            if "lock" in str(e).lower():
                raise StoreLockedError(
                    f"the studio database {self.db_path} is open in another process (only one process may "
                    f"write it; close the other app or CLI first). DuckDB said: {e}") from e
            raise
        try:
            with self._lock:
                self._seq_cache.clear()  # re-read from the file: another process may have written it meanwhile
                self._migrate(MIGRATIONS if migrations is None else migrations)
        except BaseException:
            self._con.close()
            self._con = None
            raise

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _migrate(self, migrations: list[tuple[int, list[str]]]) -> None:
        con = self._con
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        if "schema_meta" not in tables:
            if tables:
                raise SchemaError(f"{self.db_path} is not a NEAT Studio database (it has tables "
                                  f"{sorted(tables)[:5]} but no schema_meta)")
            current = 0
        else:
            current = _first(con.execute("SELECT coalesce(max(version), 0) FROM schema_meta"))[0]
        latest = migrations[-1][0] if migrations else 0
        if current > latest:
            raise SchemaError(
                f"{self.db_path} has schema version {current}, newer than this NEAT Studio supports "
                f"({latest}); upgrade NEAT Studio to open it (the file was left untouched)")
        for version, statements in migrations:
            if version <= current:
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute("CREATE TABLE IF NOT EXISTS schema_meta (version INTEGER PRIMARY KEY, "
                            "applied_at TIMESTAMP NOT NULL)")
                for sql in statements:
                    con.execute(sql)
                con.execute("INSERT INTO schema_meta VALUES (?, ?)", [version, _now()])
                con.execute("COMMIT")
            except BaseException as e:
                con.execute("ROLLBACK")
                raise SchemaError(f"migration to schema version {version} failed; the database is left at "
                                  f"version {current}: {e}") from e
            current = version

    @property
    def schema_version(self) -> int:
        return self._one("SELECT coalesce(max(version), 0) FROM schema_meta") or 0

    def checkpoint(self) -> None:
        with self._lock:
            self._check_open()
            self._con.execute("CHECKPOINT")

    def close(self) -> None:
        """Checkpoint and close; idempotent."""
        with self._lock:
            if self._con is None:
                return
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error:
                pass
            self._con.close()
            self._con = None

    def backup(self, dest: str | Path, *, parquet_dir: str | Path | None = None, actor: str = "system") -> dict:
        """Write a consistent copy of the whole database to `dest` (a new DuckDB file) while the store stays
        in use: the copy is made under the store lock inside DuckDB (ATTACH + COPY FROM DATABASE), so no
        write can interleave. With `parquet_dir`, also an EXPORT DATABASE in parquet (schema.sql + one file
        per table) that any tool can read. The file is written to a temporary name and renamed at the end."""
        dest = Path(dest).resolve()
        if dest.exists():
            raise ValueError(f"backup target {dest} already exists; choose a new file name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".tmp-{uuid.uuid4().hex[:8]}")
        with self._lock:
            self._check_open()
            con = self._con
            con.execute("CHECKPOINT")
            src = _first(con.execute("SELECT current_database()"))[0]
            alias = f"bk_{uuid.uuid4().hex[:8]}"
            con.execute(f"ATTACH ? AS {alias}", [str(tmp)])
            try:
                con.execute(f'COPY FROM DATABASE "{src}" TO {alias}')
            finally:
                con.execute(f"DETACH {alias}")
            if parquet_dir is not None:
                pdir = Path(parquet_dir).resolve()
                if pdir.exists() and any(pdir.iterdir()):
                    tmp.unlink(missing_ok=True)
                    raise ValueError(f"parquet export folder {pdir} is not empty")
                quoted = str(pdir).replace("'", "''")  # EXPORT takes no bound parameter; a quoted literal
                con.execute(f"EXPORT DATABASE '{quoted}' (FORMAT parquet)")
            counts = self.counts()
        os.replace(tmp, dest)
        self.log_event(actor, "backup", "database", None, {"dest": str(dest), "parquet_dir":
                                                            str(parquet_dir) if parquet_dir else None})
        return {"path": str(dest), "parquet_dir": str(parquet_dir) if parquet_dir else None,
                "schema_version": self.schema_version, "counts": counts}

    @staticmethod
    def restore(backup: str | Path, db_path: str | Path) -> dict:
        """Replace the database file `db_path` by the backup file. Only while no process has `db_path` open
        (the app must be stopped). The backup is validated first (a studio database, a schema this code can
        open); the current file is kept beside it as `<name>.before-restore-<time>`, so nothing is lost."""
        backup, db_path = Path(backup).resolve(), Path(db_path).resolve()
        if not backup.is_file():
            raise ValueError(f"backup file {backup} does not exist")
        from . import Store  # the whole store (this core is one of its parts)

        probe = Store(backup)  # raises SchemaError for a foreign or newer-version file
        try:
            counts = probe.counts()
        finally:
            probe.close()
        kept = None
        if db_path.exists():
            try:
                duckdb.connect(str(db_path)).close()  # fails when another process holds the file
            except duckdb.IOException as e:
                raise StoreLockedError(f"{db_path} is open in another process; stop the app before restoring "
                                       f"({e})") from e
            kept = db_path.with_name(db_path.name + ".before-restore-" + time.strftime("%Y%m%d-%H%M%S"))
            os.replace(db_path, kept)
            wal = db_path.with_name(db_path.name + ".wal")
            if wal.exists():
                os.replace(wal, kept.with_name(kept.name + ".wal"))
        tmp = db_path.with_name(db_path.name + ".restoring")
        shutil.copyfile(backup, tmp)
        os.replace(tmp, db_path)
        return {"restored": str(db_path), "from": str(backup), "previous_kept_as": str(kept) if kept else None,
                "counts": counts}

    @property
    def closed(self) -> bool:
        return self._con is None

    def __enter__(self) -> "StoreCore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- low level ----------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._con is None:
            raise RuntimeError("the store is closed")

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction (nested calls join the outer one). Any exception rolls everything back."""
        with self._lock:
            self._check_open()
            if self._tx_depth:
                self._tx_depth += 1
                try:
                    yield self._con
                finally:
                    self._tx_depth -= 1
                return
            self._con.execute("BEGIN TRANSACTION")
            self._tx_depth = 1
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                self._seq_cache.clear()  # numbers handed out inside the failed transaction were not used
                try:
                    self._con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                raise
            finally:
                self._tx_depth = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several store writes into ONE transaction: every write method called inside the block joins it,
        and any exception rolls all of them back (nothing is written). E.g. a Compare vote stores its prompt, two
        responses and the annotation together or not at all."""
        with self._tx():
            yield

    def _rows(self, sql: str, params: Sequence | None = None) -> list[dict]:
        with self._lock:
            self._check_open()
            cur = self._con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, r)) for r in cur.fetchall()]

    def _one(self, sql: str, params: Sequence | None = None) -> Any:
        with self._lock:
            self._check_open()
            r = _first(self._con.execute(sql, params or []))
            return r[0] if r else None

    def _next_seq(self, con, table: str, n: int = 1) -> int:
        """First of `n` consecutive insertion-order numbers for `table` (an internal constant)."""
        if table not in self._seq_cache:
            self._seq_cache[table] = _first(con.execute(f"SELECT coalesce(max(seq), 0) FROM {table}"))[0]
        first = self._seq_cache[table] + 1
        self._seq_cache[table] += n
        return first

    def _bulk_insert(self, con, table: str, schema: pa.Schema, data: dict[str, list]) -> None:
        """INSERT many rows through a registered Arrow table (fast, typed; table/columns are constants)."""
        if not data or not len(next(iter(data.values()))):
            return
        tbl = pa.table({k: pa.array(data[k], type=schema.field(k).type) for k in schema.names}, schema=schema)
        view = f"_bulk_{uuid.uuid4().hex}"
        con.register(view, tbl)
        try:
            cols = ", ".join(schema.names)
            con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
        finally:
            con.unregister(view)

    def _audit(self, con, actor: str, action: str, entity: str, entity_id: str | None = None,
               detail: Any = None) -> None:
        actor = _req_str(actor, "actor")
        con.execute("INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [self._next_seq(con, "audit_log"), _now(), actor, action, entity, entity_id,
                     None if detail is None else _dumps(detail)])

    def log_event(self, actor: str, action: str, entity: str, entity_id: str | None = None,
                  detail: Any = None) -> None:
        """Append an audit entry for an action taken outside the store (e.g. a run started, a file exported)."""
        with self._tx() as con:
            self._audit(con, actor, _req_str(action, "action"), _req_str(entity, "entity"), entity_id, detail)

    def audit(self, limit: int = 100, entity: str | None = None, actor: str | None = None) -> list[dict]:
        """Newest audit entries first."""
        where, params = [], []
        if entity:
            where.append("entity = ?")
            params.append(entity)
        if actor:
            where.append("actor = ?")
            params.append(actor)
        sql = "SELECT * FROM audit_log" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._rows(sql + " ORDER BY seq DESC LIMIT ?", params + [int(limit)])
        for r in rows:
            r["created_at"] = _iso(r["created_at"])
            r["detail"] = _loads(r["detail"])
        return rows

    # -- settings -----------------------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        rows = self._rows("SELECT value FROM settings WHERE key = ?", [key])
        return _loads(rows[0]["value"]) if rows and rows[0]["value"] is not None else default

    def set_setting(self, key: str, value: Any, actor: str) -> None:
        """Set a JSON value; the previous value is kept in the audit log."""
        key = _req_str(key, "setting key")
        try:
            encoded = _dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"setting {key!r} must be JSON-serialisable: {e}") from None
        with self._tx() as con:
            old = _first(con.execute("SELECT value FROM settings WHERE key = ?", [key]))
            con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?, ?, ?)",
                        [key, encoded, _now(), _req_str(actor, "actor")])
            self._audit(con, actor, "set_setting", "setting", key,
                        {"old": _loads(old[0]) if old else None, "new": value})

    # -- overview -----------------------------------------------------------------------------------------
    def counts(self) -> dict:
        with self._lock:
            c = self._rows(f"""SELECT
                (SELECT count(*) FROM prompts) AS prompts,
                (SELECT count(*) FROM responses) AS responses,
                (SELECT count(*) FROM annotations WHERE NOT starts_with(annotator, '{IMPORT_PREFIX}')) AS annotations,
                (SELECT count(*) FROM annotations WHERE starts_with(annotator, '{IMPORT_PREFIX}'))
                    AS imported_rankings,
                (SELECT count(DISTINCT annotator) FROM annotations
                    WHERE NOT starts_with(annotator, '{IMPORT_PREFIX}')) AS annotators,
                (SELECT count(DISTINCT prompt_id) FROM annotations
                    WHERE NOT starts_with(annotator, '{IMPORT_PREFIX}')) AS annotated_prompts,
                (SELECT count(DISTINCT name) FROM system_prompts) AS system_prompts,
                (SELECT count(*) FROM system_prompts) AS system_prompt_versions,
                (SELECT count(*) FROM runs) AS runs,
                (SELECT count(*) FROM snapshots) AS snapshots""")[0]
        return {k: int(v) for k, v in c.items()}


def pairs_unranked_note(n: int) -> str:
    """What an import's `pairs_unranked` count means, for the CLI and the UI ("" when 0)."""
    if not n:
        return ""
    return (f"{n} preference pair(s) were not added to their prompt's ranking: together with the other pairs of that "
            "prompt from the same source, one ranking would also state pairs the data does not give (e.g. A>B and "
            "C>D would become A=C > B=D) or contradict one. Their responses are stored unranked: rank them in "
            "Annotate (or import them as listwise rankings).")


def _rank_pairs(ranks: dict[str, int]) -> set[tuple[str, str]]:
    """(better, worse) for every two responses of {response id: rank} with different ranks."""
    return {(a, b) for a, ra in ranks.items() for b, rb in ranks.items() if ra < rb}


def _group_pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    """(better, worse) for every two responses in different groups of a ranking (groups best first)."""
    return _rank_pairs(ranking_to_ranks(groups))


def _mean_groups(recs: list[dict[str, int]]) -> list[list[str]]:
    """One ranking from several {response id: rank} (a rank or a group index): each response's mean over the
    dicts that place it, equal means tied, groups best first, ids sorted inside a group (deterministic)."""
    acc: dict[str, list[int]] = {}
    for rec in recs:
        for rid, rank in rec.items():
            acc.setdefault(rid, []).append(rank)
    means = {rid: Fraction(sum(v), len(v)) for rid, v in acc.items()}
    groups: list[list[str]] = []
    for rid in sorted(means, key=lambda r: (means[r], r)):
        if groups and means[groups[-1][0]] == means[rid]:
            groups[-1].append(rid)
        else:
            groups.append([rid])
    return groups


def _consistent(old: list[list[str]], new: list[list[str]]) -> bool:
    """True if `new` ranks only responses `old` ranks, and orders every pair the same way."""
    o, n = ranking_to_ranks(old), ranking_to_ranks(new)
    if not set(n) <= set(o):
        return False
    ids = list(n)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            if (n[a] > n[b]) - (n[a] < n[b]) != (o[a] > o[b]) - (o[a] < o[b]):
                return False
    return True
