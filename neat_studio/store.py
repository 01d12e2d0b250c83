"""The studio's data store: DuckDB schema, migrations and EVERY SQL statement of the project.

`Store(db_path)` owns one read-write DuckDB connection (DuckDB allows one read-write process per file; the app
process is that process). All statements run under one `threading.RLock`; every multi-row write is one
transaction (all or nothing); every write takes an `actor` and appends a row to `audit_log`. User values are
always bound as parameters, never formatted into SQL.

Values returned to callers are plain JSON-serialisable Python (timestamps as ISO-8601 UTC strings ending in
"Z", JSON columns decoded, tags as sorted lists).

API (see each method's docstring):
  lifecycle   Store(db_path), schema_version, checkpoint(), close(), context manager, transaction()
  prompts     add_prompts(rows, actor) -> ids; get_prompt(id); list_prompts(**filters, limit, offset, order);
              count_prompts(**filters); set_tags(ids, tags, actor, mode); set_split(ids, split, actor);
              prompt_sources(); prompt_tags(); sample_prompts(n, seed, tag)
  system      save_system_prompt(name, kind, text, params, author, tags) -> version;
              get_system_prompt(name, version); resolve_ref("name@v"); list_system_prompts(kind);
              list_versions(name); all_system_prompt_versions(); newest_system_prompt(kind)
  responses   add_responses(rows, actor) -> ids; list_responses(prompt_id); get_response(id);
              edit_response(response_id, new_text, actor) -> new id
  annotations save_annotation(prompt_id, annotator, ranking, marks, comment, flagged) -> id;
              latest_annotation(prompt_id, annotator); latest_annotations(prompt_id);
              annotation_history(prompt_id, annotator); annotator_progress(); next_in_queue(annotator, ...);
              skipped_prompts(annotator); set_skipped(annotator, prompt_id, skipped, actor)
  import      import_records(records, actor) -> report
  snapshot    listwise_rows(split, tags, annotated_only, include_imported, min_responses, exclude_flagged);
              record_snapshot(manifest, path, actor); list_snapshots(); get_snapshot(id)
  runs        create_run(name, method, config, actor, ...); update_run(run_id, actor=..., **fields); get_run;
              list_runs; active_run()
  vectors     put_embeddings(kind, ids, vectors, model_id); get_embeddings(kind, model_id, ids);
              missing_embeddings(kind, model_id); put_scores(ids, scores, scorer_version); get_scores(...)
  settings    get_setting(key, default); set_setting(key, value, actor)
  misc        counts(); audit(limit); log_event(actor, action, entity, entity_id, detail)

Pure helpers: `normalise_messages`, `prompt_content_hash`, `ranking_to_ranks`, `combine_rankings`,
`parse_ref`, `is_human_annotator`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import random
import re
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import numpy as np
import pyarrow as pa

EMBED_DIM = 384
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REF_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:@(\d+))?$")
SYSTEM_KINDS = ("negative", "positive")
SPLITS = ("train", "dev", "test")
ROLES = ("system", "user", "assistant")
MARKS = ("pos", "neg", "neutral")
RUN_STATUSES = ("created", "queued", "running", "finished", "failed", "stopped")
ACTIVE_RUN_STATUSES = ("queued", "running")
EMBED_KINDS = ("prompt", "response")
IMPORT_PREFIX = "import:"
ORIGIN_RE = re.compile(
    r"^(policy|human|dataset(:[A-Za-z0-9_.-]+)?|(negative|positive):[A-Za-z0-9][A-Za-z0-9_.-]{0,63}@\d+"
    r"|compare:\S{1,200})$")
# key -> (type, min, max, min_exclusive)
PARAM_RULES: dict[str, tuple[type, float, float, bool]] = {
    "temperature": (float, 0.0, 5.0, False),
    "top_p": (float, 0.0, 1.0, True),
    "max_new_tokens": (int, 1, 8192, False),
    "k": (int, 1, 64, False),
    "seed": (int, 0, 2**63 - 1, False),
}

# Forward migrations, applied in order, each in its own transaction. Never edit a released entry: append.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE prompts (
            id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, messages JSON NOT NULL, text VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL UNIQUE, source VARCHAR NOT NULL, tags VARCHAR[] NOT NULL,
            split VARCHAR NOT NULL CHECK (split IN ('train', 'dev', 'test')),
            created_at TIMESTAMP NOT NULL, created_by VARCHAR NOT NULL)""",
        """CREATE TABLE system_prompts (
            name VARCHAR NOT NULL, version INTEGER NOT NULL CHECK (version >= 1),
            kind VARCHAR NOT NULL CHECK (kind IN ('negative', 'positive')), text VARCHAR NOT NULL,
            params JSON NOT NULL, tags VARCHAR[] NOT NULL, author VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL, parent_version INTEGER, PRIMARY KEY (name, version))""",
        """CREATE TABLE responses (
            id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, prompt_id VARCHAR NOT NULL, text VARCHAR NOT NULL,
            text_hash VARCHAR NOT NULL, origin VARCHAR NOT NULL, model_id VARCHAR, params JSON, seed BIGINT,
            parent_response_id VARCHAR, created_at TIMESTAMP NOT NULL, created_by VARCHAR NOT NULL,
            UNIQUE (prompt_id, origin, text_hash))""",
        """CREATE TABLE annotations (
            id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, prompt_id VARCHAR NOT NULL,
            annotator VARCHAR NOT NULL, ranking JSON NOT NULL, marks JSON NOT NULL, comment VARCHAR NOT NULL,
            flagged BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL)""",
        """CREATE TABLE settings (
            key VARCHAR PRIMARY KEY, value JSON, updated_at TIMESTAMP NOT NULL, updated_by VARCHAR NOT NULL)""",
        """CREATE TABLE audit_log (
            seq BIGINT PRIMARY KEY, created_at TIMESTAMP NOT NULL, actor VARCHAR NOT NULL, action VARCHAR NOT NULL,
            entity VARCHAR NOT NULL, entity_id VARCHAR, detail JSON)""",
    ]),
    (2, [
        """CREATE TABLE runs (
            id VARCHAR PRIMARY KEY, name VARCHAR NOT NULL, method VARCHAR NOT NULL,
            status VARCHAR NOT NULL CHECK (status IN ('created', 'queued', 'running', 'finished', 'failed',
                                                      'stopped')),
            config JSON NOT NULL, snapshot_id VARCHAR, run_dir VARCHAR, pid INTEGER,
            created_at TIMESTAMP NOT NULL, created_by VARCHAR NOT NULL, started_at TIMESTAMP,
            finished_at TIMESTAMP, final_metrics JSON, error VARCHAR)""",
        f"""CREATE TABLE embeddings (
            kind VARCHAR NOT NULL CHECK (kind IN ('prompt', 'response')), item_id VARCHAR NOT NULL,
            model_id VARCHAR NOT NULL, vector FLOAT[{EMBED_DIM}] NOT NULL, created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (kind, item_id, model_id))""",
        """CREATE TABLE scores (
            response_id VARCHAR NOT NULL, scorer_version VARCHAR NOT NULL, score DOUBLE NOT NULL,
            created_at TIMESTAMP NOT NULL, PRIMARY KEY (response_id, scorer_version))""",
        """CREATE TABLE snapshots (
            id VARCHAR PRIMARY KEY, path VARCHAR NOT NULL, sha256 VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL,
            created_by VARCHAR NOT NULL, filters JSON NOT NULL, counts JSON NOT NULL)""",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


_SHARED: dict[str, tuple[threading.RLock, dict[str, int]]] = {}
_SHARED_GUARD = threading.Lock()


class SchemaError(RuntimeError):
    """The database file has a schema this code cannot use (newer version, or not a studio database)."""


class StoreLockedError(RuntimeError):
    """Another process holds the database file open read-write."""


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


class Store:
    """DuckDB-backed store; see the module docstring."""

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

    def __enter__(self) -> "Store":
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

    # -- prompts ------------------------------------------------------------------------------------------
    _PROMPT_SCHEMA = pa.schema([("id", pa.string()), ("seq", pa.int64()), ("messages", pa.string()),
                                ("text", pa.string()), ("content_hash", pa.string()), ("source", pa.string()),
                                ("tags", pa.list_(pa.string())), ("split", pa.string()),
                                ("created_at", pa.timestamp("us")), ("created_by", pa.string())])

    @staticmethod
    def _prepare_prompt(row: dict) -> dict:
        if not isinstance(row, dict):
            raise ValueError(f"a prompt row must be a dict, got {type(row).__name__}")
        messages = normalise_messages(row)
        split = row.get("split") or "train"
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        source = row.get("source") or "manual"
        if not isinstance(source, str):
            raise ValueError(f"source must be a string, got {source!r}")
        h = prompt_content_hash(messages)
        return {"id": h[:16], "messages": messages, "text": messages[-1]["content"], "content_hash": h,
                "source": source, "tags": normalise_tags(row.get("tags")), "split": split}

    def _add_prompts_tx(self, con, prepared: list[dict], actor: str) -> tuple[list[str], int, int, int]:
        """Insert new prompts, merge tags into existing ones (which keep their split). Returns (ids, n_added,
        n_tags_merged, n_split_kept: existing prompts whose stored split differs from the one given now)."""
        by_hash: dict[str, dict] = {}
        for p in prepared:
            if p["content_hash"] in by_hash:
                q = by_hash[p["content_hash"]]
                q["tags"] = sorted(set(q["tags"]) | set(p["tags"]))
            else:
                by_hash[p["content_hash"]] = dict(p)
        existing: dict[str, tuple[str, list[str], str]] = {}
        if by_hash:
            view = f"_hashes_{uuid.uuid4().hex}"
            con.register(view, pa.table({"h": list(by_hash)}))
            try:
                for h, pid, tags, split in con.execute(
                        f"SELECT p.content_hash, p.id, p.tags, p.split FROM prompts p JOIN {view} v "
                        f"ON p.content_hash = v.h").fetchall():
                    existing[h] = (pid, list(tags or []), split)
            finally:
                con.unregister(view)
        new = [p for h, p in by_hash.items() if h not in existing]
        n_merged = 0
        for h, (pid, old_tags, _) in existing.items():
            merged = sorted(set(old_tags) | set(by_hash[h]["tags"]))
            if merged != sorted(old_tags):
                con.execute("UPDATE prompts SET tags = ? WHERE id = ?", [merged, pid])
                n_merged += 1
        if new:
            seq0, now, actor = self._next_seq(con, "prompts", len(new)), _now(), _req_str(actor, "actor")
            self._bulk_insert(con, "prompts", self._PROMPT_SCHEMA, {
                "id": [p["id"] for p in new], "seq": [seq0 + i for i in range(len(new))],
                "messages": [_dumps(p["messages"]) for p in new], "text": [p["text"] for p in new],
                "content_hash": [p["content_hash"] for p in new], "source": [p["source"] for p in new],
                "tags": [p["tags"] for p in new], "split": [p["split"] for p in new],
                "created_at": [now] * len(new), "created_by": [actor] * len(new)})
        ids = [existing[p["content_hash"]][0] if p["content_hash"] in existing else p["id"] for p in prepared]
        kept = sum(1 for h, (_, _, sp) in existing.items() if by_hash[h].get("split", sp) != sp)
        return ids, len(new), n_merged, kept

    def add_prompts(self, rows: list[dict], actor: str) -> list[str]:
        """Add prompts (`messages` or `text`, `source`, `tags`, `split`) in one transaction; one id per row.
        A prompt already stored (same normalised content) keeps its id, split and source; its tags are merged."""
        prepared = []
        for i, r in enumerate(rows):
            try:
                prepared.append(self._prepare_prompt(r))
            except ValueError as e:
                raise ValueError(f"prompt row {i}: {e}") from None
        with self._tx() as con:
            ids, added, merged, _ = self._add_prompts_tx(con, prepared, actor)
            self._audit(con, actor, "add_prompts", "prompt", ids[0] if len(ids) == 1 else None,
                        {"rows": len(rows), "added": added, "tags_merged": merged, "ids": ids[:20]})
        return ids

    @staticmethod
    def _prompt_out(r: dict) -> dict:
        r = dict(r)
        r["messages"] = _loads(r["messages"])
        r["tags"] = sorted(r.get("tags") or [])
        r["created_at"] = _iso(r["created_at"])
        r.pop("seq", None)
        return r

    def get_prompt(self, prompt_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM prompts WHERE id = ?", [prompt_id])
        return self._prompt_out(rows[0]) if rows else None

    def get_prompts(self, prompt_ids: Iterable[str]) -> dict[str, dict]:
        """{id: prompt} for the ids that exist."""
        ids = list(prompt_ids)
        rows = self._rows("SELECT * FROM prompts WHERE list_contains(?::VARCHAR[], id)", [ids]) if ids else []
        return {r["id"]: self._prompt_out(r) for r in rows}

    _ORDERS = {"created": "p.seq ASC", "newest": "p.seq DESC", "text": "p.text ASC, p.seq ASC",
               "responses": "n_responses DESC, p.seq ASC"}

    def _prompt_where(self, search=None, tag=None, source=None, split=None, status=None,
                      annotator=None, min_responses=None) -> tuple[str, list]:
        where, params = ["TRUE"], []
        if min_responses:
            where.append("(SELECT count(*) FROM responses r WHERE r.prompt_id = p.id) >= ?")
            params.append(int(min_responses))
        if search:
            where.append("contains(lower(p.text), lower(?))")
            params.append(str(search))
        if tag:
            where.append("list_has_any(p.tags, ?::VARCHAR[])")
            params.append([tag] if isinstance(tag, str) else list(tag))
        if source:
            where.append("p.source = ?")
            params.append(source)
        if split:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
            where.append("p.split = ?")
            params.append(split)
        if status:
            if annotator:
                who, who_p = "a.annotator = ?", [annotator]
            else:
                who, who_p = f"NOT starts_with(a.annotator, '{IMPORT_PREFIX}')", []
            if status == "annotated":
                where.append(f"EXISTS (SELECT 1 FROM annotations a WHERE a.prompt_id = p.id AND {who})")
            elif status == "unannotated":
                where.append(f"NOT EXISTS (SELECT 1 FROM annotations a WHERE a.prompt_id = p.id AND {who})")
            elif status == "flagged":
                where.append("EXISTS (SELECT 1 FROM annotations a WHERE a.prompt_id = p.id AND a.flagged "
                             f"AND {who})")
            else:
                raise ValueError(f"status must be 'annotated', 'unannotated' or 'flagged', got {status!r}")
            params += who_p
        return " AND ".join(where), params

    def list_prompts(self, search: str | None = None, tag: str | list[str] | None = None,
                     source: str | None = None, split: str | None = None, status: str | None = None,
                     annotator: str | None = None, limit: int = 50, offset: int = 0,
                     order: str = "created", min_responses: int | None = None) -> list[dict]:
        """Prompts matching all filters, with `n_responses` and `n_annotators` (human). `search`: substring of
        the last user turn (case-insensitive). `tag`: any of. `status`: 'annotated' | 'unannotated' | 'flagged'
        (by `annotator` if given, else by any human). `order`: created | newest | text | responses."""
        if order not in self._ORDERS:
            raise ValueError(f"order must be one of {sorted(self._ORDERS)}, got {order!r}")
        where, params = self._prompt_where(search, tag, source, split, status, annotator, min_responses)
        sql = f"""SELECT p.*,
            (SELECT count(*) FROM responses r WHERE r.prompt_id = p.id) AS n_responses,
            (SELECT count(DISTINCT a.annotator) FROM annotations a WHERE a.prompt_id = p.id
               AND NOT starts_with(a.annotator, '{IMPORT_PREFIX}')) AS n_annotators
            FROM prompts p WHERE {where} ORDER BY {self._ORDERS[order]} LIMIT ? OFFSET ?"""
        return [self._prompt_out(r) for r in self._rows(sql, params + [int(limit), int(offset)])]

    def count_prompts(self, search=None, tag=None, source=None, split=None, status=None, annotator=None,
                      min_responses=None) -> int:
        """Number of prompts `list_prompts` would return with the same filters and no limit."""
        where, params = self._prompt_where(search, tag, source, split, status, annotator, min_responses)
        return self._one(f"SELECT count(*) FROM prompts p WHERE {where}", params)

    def set_tags(self, prompt_ids: Iterable[str], tags: Iterable[str] | str, actor: str,
                 mode: str = "replace") -> int:
        """Set (`replace`), `add` or `remove` tags on prompts in one transaction. Returns the number changed."""
        if mode not in ("replace", "add", "remove"):
            raise ValueError(f"mode must be replace, add or remove, got {mode!r}")
        tags = normalise_tags(tags)
        ids = list(dict.fromkeys(prompt_ids))
        with self._tx() as con:
            current = dict(con.execute("SELECT id, tags FROM prompts WHERE list_contains(?::VARCHAR[], id)",
                                       [ids]).fetchall()) if ids else {}
            missing = [i for i in ids if i not in current]
            if missing:
                raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
            changed = 0
            for pid in ids:
                old = sorted(current[pid] or [])
                new = tags if mode == "replace" else (
                    sorted(set(old) | set(tags)) if mode == "add" else sorted(set(old) - set(tags)))
                if new != old:
                    con.execute("UPDATE prompts SET tags = ? WHERE id = ?", [new, pid])
                    changed += 1
            self._audit(con, actor, f"tags_{mode}", "prompt", ids[0] if len(ids) == 1 else None,
                        {"ids": ids[:50], "n": len(ids), "tags": tags, "changed": changed})
        return changed

    def set_split(self, prompt_ids: Iterable[str], split: str, actor: str) -> int:
        """Move prompts to a split (train/dev/test) in one transaction. Returns the number changed."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        ids = list(dict.fromkeys(prompt_ids))
        with self._tx() as con:
            current = dict(con.execute("SELECT id, split FROM prompts WHERE list_contains(?::VARCHAR[], id)",
                                       [ids]).fetchall()) if ids else {}
            missing = [i for i in ids if i not in current]
            if missing:
                raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
            todo = [i for i in ids if current[i] != split]
            if todo:
                con.execute("UPDATE prompts SET split = ? WHERE list_contains(?::VARCHAR[], id)", [split, todo])
            self._audit(con, actor, "set_split", "prompt", ids[0] if len(ids) == 1 else None,
                        {"ids": ids[:50], "n": len(ids), "split": split, "changed": len(todo)})
        return len(todo)

    def prompt_sources(self) -> list[str]:
        return [r["source"] for r in self._rows("SELECT DISTINCT source FROM prompts ORDER BY source")]

    def prompt_tags(self) -> list[str]:
        return [r["t"] for r in self._rows("SELECT DISTINCT unnest(tags) AS t FROM prompts ORDER BY t")]

    def sample_prompts(self, n: int, seed: int = 0, tag: str | list[str] | None = None,
                       split: str | None = None, source: str | None = None) -> list[str]:
        """n prompt ids drawn without replacement, reproducible for a given seed and data."""
        where, params = self._prompt_where(tag=tag, split=split, source=source)
        ids = [r["id"] for r in self._rows(f"SELECT p.id FROM prompts p WHERE {where} ORDER BY p.id", params)]
        return random.Random(seed).sample(ids, min(int(n), len(ids)))

    # -- system prompts -----------------------------------------------------------------------------------
    @staticmethod
    def _sp_out(r: dict) -> dict:
        r = dict(r)
        r["params"] = _loads(r["params"]) or {}
        r["tags"] = sorted(r.get("tags") or [])
        r["created_at"] = _iso(r["created_at"])
        r["ref"] = f"{r['name']}@{r['version']}"
        return r

    def save_system_prompt(self, name: str, kind: str, text: str, params: dict | None, author: str,
                           tags: Iterable[str] | None = None) -> int:
        """Save a new immutable version (latest + 1) and return its number. If text and params equal the
        latest version's, that version is returned and nothing is written."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"invalid system prompt name {name!r}: use 1-64 letters, digits, '_', '.', '-', "
                             "starting with a letter or digit")
        if kind not in SYSTEM_KINDS:
            raise ValueError(f"kind must be 'negative' or 'positive', got {kind!r}")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("system prompt text must not be empty")
        params = _validate_params(params)
        tags = normalise_tags(tags)
        author = _req_str(author, "author")
        with self._tx() as con:
            latest = _first(con.execute("SELECT version, kind, text, params FROM system_prompts WHERE name = ? "
                                        "ORDER BY version DESC LIMIT 1", [name]))
            if latest:
                if latest[1] != kind:
                    raise ValueError(f"system prompt {name!r} is a {latest[1]} prompt; choose another name for "
                                     f"a {kind} prompt")
                if latest[2] == text and (_loads(latest[3]) or {}) == params:
                    return latest[0]
            version = (latest[0] + 1) if latest else 1
            con.execute("INSERT INTO system_prompts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [name, version, kind, text, _dumps(params), tags, author, _now(),
                         latest[0] if latest else None])
            self._audit(con, author, "save_system_prompt", "system_prompt", f"{name}@{version}",
                        {"kind": kind, "params": params, "chars": len(text)})
        return version

    def get_system_prompt(self, name: str, version: int | None = None) -> dict | None:
        if version is None:
            rows = self._rows("SELECT * FROM system_prompts WHERE name = ? ORDER BY version DESC LIMIT 1", [name])
        else:
            rows = self._rows("SELECT * FROM system_prompts WHERE name = ? AND version = ?", [name, int(version)])
        return self._sp_out(rows[0]) if rows else None

    def resolve_ref(self, ref: str) -> dict:
        """"name@v" or "name" (latest) -> the system prompt dict; ValueError if it does not exist."""
        name, version = parse_ref(ref)
        sp = self.get_system_prompt(name, version)
        if sp is None:
            latest = self.get_system_prompt(name)
            if latest is None:
                known = [p["name"] for p in self.list_system_prompts()]
                raise ValueError(f"no system prompt named {name!r} (known: {', '.join(known[:20]) or 'none'})")
            raise ValueError(f"system prompt {name!r} has no version {version} (latest is {latest['version']})")
        return sp

    def list_system_prompts(self, kind: str | None = None) -> list[dict]:
        """Latest version of each name (with `n_versions`), sorted by name."""
        sql = """SELECT s.*, count(*) OVER (PARTITION BY s.name) AS n_versions FROM system_prompts s
                 WHERE (? IS NULL OR s.kind = ?)
                 QUALIFY row_number() OVER (PARTITION BY s.name ORDER BY s.version DESC) = 1 ORDER BY s.name"""
        return [self._sp_out(r) for r in self._rows(sql, [kind, kind])]

    def list_versions(self, name: str) -> list[dict]:
        return [self._sp_out(r) for r in self._rows(
            "SELECT * FROM system_prompts WHERE name = ? ORDER BY version", [name])]

    def all_system_prompt_versions(self) -> list[dict]:
        """Every version of every system prompt (name, version order): what a snapshot freezes."""
        return [self._sp_out(r) for r in self._rows("SELECT * FROM system_prompts ORDER BY name, version")]

    def newest_system_prompt(self, kind: str | None = None) -> dict | None:
        """The most recently saved version (of `kind`, or of any kind), or None when the library has none."""
        rows = self._rows("SELECT * FROM system_prompts WHERE (? IS NULL OR kind = ?) "
                          "ORDER BY created_at DESC, version DESC, name LIMIT 1", [kind, kind])
        return self._sp_out(rows[0]) if rows else None

    # -- responses ----------------------------------------------------------------------------------------
    _RESPONSE_SCHEMA = pa.schema([("id", pa.string()), ("seq", pa.int64()), ("prompt_id", pa.string()),
                                  ("text", pa.string()), ("text_hash", pa.string()), ("origin", pa.string()),
                                  ("model_id", pa.string()), ("params", pa.string()), ("seed", pa.int64()),
                                  ("parent_response_id", pa.string()), ("created_at", pa.timestamp("us")),
                                  ("created_by", pa.string())])

    @staticmethod
    def _prepare_response(r: dict) -> dict:
        if not isinstance(r, dict):
            raise ValueError(f"a response row must be a dict, got {type(r).__name__}")
        text, origin = r.get("text"), r.get("origin")
        if not isinstance(text, str):
            raise ValueError(f"response text must be a string, got {type(text).__name__}")
        if not isinstance(origin, str) or not ORIGIN_RE.match(origin):
            raise ValueError(f"invalid origin {origin!r}: expected policy, human, dataset[:x], "
                             "negative:<name>@<v>, positive:<name>@<v> or compare:<model_id>")
        if not isinstance(r.get("prompt_id"), str):
            raise ValueError("response row needs a prompt_id")
        seed = r.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        params = r.get("params")
        if params is not None and not isinstance(params, dict):
            raise ValueError("response params must be a dict or None")
        th = _text_hash(text)
        return {"id": _response_id(r["prompt_id"], origin, th), "prompt_id": r["prompt_id"], "text": text,
                "text_hash": th, "origin": origin, "model_id": r.get("model_id"),
                "params": None if params is None else _dumps(params), "seed": None if seed is None else int(seed),
                "parent_response_id": r.get("parent_response_id")}

    def _add_responses_tx(self, con, prepared: list[dict], actor: str) -> tuple[list[str], int]:
        pids = sorted({p["prompt_id"] for p in prepared})
        if pids:
            found = {r[0] for r in con.execute("SELECT id FROM prompts WHERE list_contains(?::VARCHAR[], id)",
                                               [pids]).fetchall()}
            missing = [p for p in pids if p not in found]
            if missing:
                raise ValueError(f"unknown prompt id(s) for responses: {', '.join(missing[:5])}")
        ids = list(dict.fromkeys(p["id"] for p in prepared))
        existing = {r[0] for r in con.execute("SELECT id FROM responses WHERE list_contains(?::VARCHAR[], id)",
                                              [ids]).fetchall()} if ids else set()
        new, seen = [], set(existing)
        for p in prepared:
            if p["id"] not in seen:
                seen.add(p["id"])
                new.append(p)
        if new:
            seq0, now, actor = self._next_seq(con, "responses", len(new)), _now(), _req_str(actor, "actor")
            cols = {k: [p[k] for p in new] for k in ("id", "prompt_id", "text", "text_hash", "origin", "model_id",
                                                      "params", "seed", "parent_response_id")}
            cols.update(seq=[seq0 + i for i in range(len(new))], created_at=[now] * len(new),
                        created_by=[actor] * len(new))
            self._bulk_insert(con, "responses", self._RESPONSE_SCHEMA, cols)
        return [p["id"] for p in prepared], len(new)

    def add_responses(self, rows: list[dict], actor: str) -> list[str]:
        """Add candidate responses (prompt_id, text, origin, model_id, params, seed) in one transaction; one id
        per row. Ids are deterministic in (prompt, origin, text): an identical response returns the stored id."""
        prepared = []
        for i, r in enumerate(rows):
            try:
                prepared.append(self._prepare_response(r))
            except ValueError as e:
                raise ValueError(f"response row {i}: {e}") from None
        with self._tx() as con:
            ids, added = self._add_responses_tx(con, prepared, actor)
            self._audit(con, actor, "add_responses", "response", ids[0] if len(ids) == 1 else None,
                        {"rows": len(rows), "added": added, "ids": ids[:20]})
        return ids

    @staticmethod
    def _resp_out(r: dict) -> dict:
        r = dict(r)
        r["params"] = _loads(r["params"])
        r["created_at"] = _iso(r["created_at"])
        r.pop("seq", None)
        r.pop("text_hash", None)
        return r

    def list_responses(self, prompt_id: str) -> list[dict]:
        return [self._resp_out(r) for r in self._rows(
            "SELECT * FROM responses WHERE prompt_id = ? ORDER BY seq", [prompt_id])]

    def get_response(self, response_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM responses WHERE id = ?", [response_id])
        return self._resp_out(rows[0]) if rows else None

    def edit_response(self, response_id: str, new_text: str, actor: str) -> str:
        """Store a human edit as a new response (origin 'human', parent_response_id = the original, which stays).
        Returns the new id (or the id of an identical human response of that prompt)."""
        if not isinstance(new_text, str) or not new_text.strip():
            raise ValueError("the edited response must not be empty")
        with self._tx() as con:
            orig = _first(con.execute("SELECT prompt_id, text FROM responses WHERE id = ?", [response_id]))
            if orig is None:
                raise ValueError(f"unknown response id {response_id!r}")
            if orig[1].strip() == new_text.strip():
                raise ValueError("the edited text is identical to the original response")
            prepared = self._prepare_response({"prompt_id": orig[0], "text": new_text, "origin": "human",
                                               "parent_response_id": response_id})
            ids, added = self._add_responses_tx(con, [prepared], actor)
            self._audit(con, actor, "edit_response", "response", ids[0],
                        {"parent": response_id, "prompt_id": orig[0], "added": added})
        return ids[0]

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
                        actor: str | None = None) -> str:
        """Append an annotation (the latest per prompt and annotator counts). `ranking`: groups of response ids
        of this prompt, best first (ties within a group), at least two responses. An empty ranking is allowed
        only with a flag, comment or marks; a comment- or mark-only save keeps the annotator's earlier ranking in
        force, a flag without a ranking withdraws it (see listwise_rows). ValueError on invalid input; nothing is
        written then."""
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
                      last_ids: Sequence[str] = ()) -> str | None:
        """Next prompt id for `annotator`: prompts with >= min_responses responses that this annotator has not
        annotated, oldest first; None when the queue is done. `skip_ids` are left out; `last_ids` (e.g. the
        annotator's skipped prompts, in the order they were skipped) come after every other unannotated prompt.
        With `include_annotated`, already annotated prompts follow (least recently annotated by them first)."""
        where, params = self._prompt_where(search, tag, source, split)
        sql = f"""SELECT p.id, p.seq, (SELECT max(a.seq) FROM annotations a WHERE a.prompt_id = p.id
                                               AND a.annotator = ?) AS mine
                  FROM prompts p
                  WHERE {where} AND NOT list_contains(?::VARCHAR[], p.id)
                    AND (SELECT count(*) FROM responses r WHERE r.prompt_id = p.id) >= ?"""
        sql = (f"SELECT id FROM ({sql}) WHERE {'TRUE' if include_annotated else 'mine IS NULL'} "
               "ORDER BY mine IS NOT NULL, coalesce(list_position(?::VARCHAR[], id), 0), mine, seq LIMIT 1")
        r = self._rows(sql, [annotator] + params + [list(skip_ids), int(min_responses), list(last_ids)])
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

    # -- embeddings and scores ----------------------------------------------------------------------------
    def put_embeddings(self, kind: str, ids: Sequence[str], vectors: np.ndarray, model_id: str,
                       actor: str = "system") -> int:
        """Store (replace) float32 vectors (n x 384) for prompts or responses. Returns n."""
        if kind not in EMBED_KINDS:
            raise ValueError(f"kind must be 'prompt' or 'response', got {kind!r}")
        vec = np.asarray(vectors, dtype=np.float32)
        ids = [str(i) for i in ids]
        if vec.ndim != 2 or vec.shape[1] != EMBED_DIM or vec.shape[0] != len(ids):
            raise ValueError(f"vectors must have shape ({len(ids)}, {EMBED_DIM}), got {vec.shape}")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in put_embeddings")
        if not np.isfinite(vec).all():
            raise ValueError("vectors contain NaN or infinity")
        model_id = _req_str(model_id, "model_id")
        if not ids:
            return 0
        schema = pa.schema([("kind", pa.string()), ("item_id", pa.string()), ("model_id", pa.string()),
                            ("vector", pa.list_(pa.float32(), EMBED_DIM)), ("created_at", pa.timestamp("us"))])
        tbl = pa.table({"kind": [kind] * len(ids), "item_id": ids, "model_id": [model_id] * len(ids),
                        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), EMBED_DIM),
                        "created_at": pa.array([_now()] * len(ids), pa.timestamp("us"))}, schema=schema)
        with self._tx() as con:
            view = f"_emb_{uuid.uuid4().hex}"
            con.register(view, tbl)
            try:
                con.execute(f"INSERT OR REPLACE INTO embeddings SELECT kind, item_id, model_id, vector, created_at "
                            f"FROM {view}")
            finally:
                con.unregister(view)
            self._audit(con, actor, "put_embeddings", "embedding", None, {"kind": kind, "model_id": model_id,
                                                                          "n": len(ids)})
        return len(ids)

    def get_embeddings(self, kind: str, model_id: str, ids: Sequence[str] | None = None
                       ) -> tuple[list[str], np.ndarray]:
        """(ids, float32 array n x 384). With `ids`: those stored, in the order asked (missing ones omitted)."""
        with self._lock:
            self._check_open()
            sql = "SELECT item_id, vector FROM embeddings WHERE kind = ? AND model_id = ?"
            params: list = [kind, model_id]
            if ids is not None:
                sql += " AND list_contains(?::VARCHAR[], item_id)"
                params.append([str(i) for i in ids])
            tbl = self._con.sql(sql + " ORDER BY item_id", params=params).to_arrow_table()
        got = tbl.column("item_id").to_pylist()
        mat = (np.asarray(tbl.column("vector").combine_chunks().flatten(), dtype=np.float32).reshape(-1, EMBED_DIM)
               if got else np.zeros((0, EMBED_DIM), np.float32))
        if ids is not None:
            pos = {i: k for k, i in enumerate(got)}
            order = [pos[str(i)] for i in ids if str(i) in pos]
            return [got[k] for k in order], mat[order]
        return got, mat

    def missing_embeddings(self, kind: str, model_id: str) -> list[tuple[str, str]]:
        """[(id, text)] of prompts (last user turn) or responses without a vector for `model_id`."""
        if kind not in EMBED_KINDS:
            raise ValueError(f"kind must be 'prompt' or 'response', got {kind!r}")
        table = "prompts" if kind == "prompt" else "responses"
        rows = self._rows(f"""SELECT t.id, t.text FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM embeddings e
                              WHERE e.kind = ? AND e.model_id = ? AND e.item_id = t.id) ORDER BY t.seq""",
                          [kind, model_id])
        return [(r["id"], r["text"]) for r in rows]

    def put_scores(self, response_ids: Sequence[str], scores: Sequence[float], scorer_version: str,
                   actor: str = "system") -> int:
        """Store (replace) one score per response for a scorer version. Returns n."""
        ids = [str(i) for i in response_ids]
        vals = [float(s) for s in scores]
        if len(ids) != len(vals):
            raise ValueError(f"{len(ids)} ids but {len(vals)} scores")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in put_scores")
        if not all(np.isfinite(vals)):
            raise ValueError("scores contain NaN or infinity")
        scorer_version = _req_str(scorer_version, "scorer_version")
        if not ids:
            return 0
        schema = pa.schema([("response_id", pa.string()), ("scorer_version", pa.string()),
                            ("score", pa.float64()), ("created_at", pa.timestamp("us"))])
        tbl = pa.table({"response_id": ids, "scorer_version": [scorer_version] * len(ids), "score": vals,
                        "created_at": pa.array([_now()] * len(ids), pa.timestamp("us"))}, schema=schema)
        with self._tx() as con:
            view = f"_scores_{uuid.uuid4().hex}"
            con.register(view, tbl)
            try:
                con.execute(f"INSERT OR REPLACE INTO scores SELECT response_id, scorer_version, score, created_at "
                            f"FROM {view}")
            finally:
                con.unregister(view)
            self._audit(con, actor, "put_scores", "score", None, {"scorer_version": scorer_version, "n": len(ids)})
        return len(ids)

    def get_scores(self, scorer_version: str, response_ids: Sequence[str] | None = None) -> dict[str, float]:
        sql, params = "SELECT response_id, score FROM scores WHERE scorer_version = ?", [scorer_version]
        if response_ids is not None:
            sql += " AND list_contains(?::VARCHAR[], response_id)"
            params.append([str(i) for i in response_ids])
        return {r["response_id"]: r["score"] for r in self._rows(sql, params)}

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
