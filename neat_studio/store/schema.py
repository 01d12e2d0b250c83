"""The store's schema: migrations (append only) and the value rules its tables enforce."""
from __future__ import annotations

import re

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
    (3, [
        # task distribution: who has a prompt open (see store/tasks.py)
        """CREATE TABLE leases (
            prompt_id VARCHAR NOT NULL, annotator VARCHAR NOT NULL, expires_at TIMESTAMP NOT NULL,
            PRIMARY KEY (prompt_id, annotator))""",
        # accounts (see store/users.py; password hashes are bcrypt, made in ui/auth.py)
        """CREATE TABLE users (
            username VARCHAR PRIMARY KEY, password_hash VARCHAR NOT NULL,
            role VARCHAR NOT NULL CHECK (role IN ('admin', 'annotator')), disabled BOOLEAN NOT NULL,
            must_change BOOLEAN NOT NULL, created_at TIMESTAMP NOT NULL, created_by VARCHAR NOT NULL,
            updated_at TIMESTAMP NOT NULL)""",
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
