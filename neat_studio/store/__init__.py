"""The studio's data store: DuckDB schema, migrations and EVERY SQL statement of the project.

`Store(db_path)` owns one read-write DuckDB connection (DuckDB allows one read-write process per file; the app
process is that process). All statements run under one `threading.RLock`; every multi-row write is one
transaction (all or nothing); every write takes an `actor` and appends a row to `audit_log`. User values are
always bound as parameters, never formatted into SQL.

Values returned to callers are plain JSON-serialisable Python (timestamps as ISO-8601 UTC strings ending in
"Z", JSON columns decoded, tags as sorted lists).

One room per section (store/<section>.py, a mixin each; store/core.py holds the connection, lifecycle,
settings and overview; store/schema.py the migrations). API (see each method's docstring):
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
  tasks       overlap(); set_overlap(n, actor); taken_prompts(annotator); lease(prompt_id, annotator, seconds);
              release(prompt_id, annotator); active_leases()
  users       add_user(username, role, password_hash, must_change, actor); get_user; list_users(); count_users();
              update_user(username, actor, role, disabled, password_hash, must_change)
  vectors     put_embeddings(kind, ids, vectors, model_id); get_embeddings(kind, model_id, ids);
              missing_embeddings(kind, model_id); put_scores(ids, scores, scorer_version); get_scores(...)
  settings    get_setting(key, default); set_setting(key, value, actor)
  misc        counts(); audit(limit); log_event(actor, action, entity, entity_id, detail)

Pure helpers: `normalise_messages`, `prompt_content_hash`, `ranking_to_ranks`, `combine_rankings`,
`parse_ref`, `is_human_annotator`.
"""
from __future__ import annotations

from .core import (SchemaError, StaleAnnotationError, StoreCore, StoreLockedError, combine_rankings,
                   is_human_annotator, normalise_messages, normalise_tags, pairs_unranked_note, parse_ref,
                   prompt_content_hash, ranking_to_ranks)
from .prompts import PromptsMixin
from .library import LibraryMixin
from .responses import ResponsesMixin
from .annotations import AnnotationsMixin
from .imports import ImportMixin
from .snapshots import SnapshotsMixin
from .tasks import TasksMixin
from .users import UsersMixin
from .runs import RunsMixin
from .vectors import VectorsMixin
from .schema import EMBED_DIM, MIGRATIONS, SCHEMA_VERSION


__all__ = ["EMBED_DIM", "MIGRATIONS", "SCHEMA_VERSION", "SchemaError", "StaleAnnotationError", "Store",
           "StoreLockedError", "combine_rankings", "is_human_annotator", "normalise_messages", "normalise_tags",
           "pairs_unranked_note", "parse_ref", "prompt_content_hash", "ranking_to_ranks"]


class Store(StoreCore, PromptsMixin, LibraryMixin, ResponsesMixin, AnnotationsMixin, ImportMixin, SnapshotsMixin,
            RunsMixin, VectorsMixin, TasksMixin, UsersMixin):
    """DuckDB-backed store; see the module docstring."""
