"""A job config (what the Train tab and `Studio.start_training` hand over) -> trainer settings, snapshot filters,
run name and snapshot id; system prompt references pinned to name@version from the library."""
from __future__ import annotations

# keys of a job config that choose the data (snapshot filters), not trainer settings
DATA_KEYS = ("split", "tags", "annotated_only", "include_imported", "min_responses", "exclude_flagged")


def split_config(store, config: dict) -> tuple[dict, dict, str | None, str | None]:
    """A job config -> (trainer settings (NeatConfig keys, validated), snapshot filters, run name, snapshot id).

    Job config = NeatConfig keys (model, method, negatives, positives, rounds, lr, ...) plus `data` (snapshot
    filters: split, tags, annotated_only, include_imported, min_responses, exclude_flagged; data keys may also be
    given at the top level), `name` and optionally `snapshot_id` (reuse a frozen snapshot). Negative/positive
    refs are pinned to name@version from the library. ValueError when it cannot work."""
    from .neat.config import NeatConfig, split_scope

    config = dict(config or {})
    filters = dict(config.pop("data", None) or {})
    for k in DATA_KEYS:
        if k in config:
            filters[k] = config.pop(k)
    filters.setdefault("split", "train")
    if filters.get("tags") in ([], "", None):
        filters.pop("tags", None)
    name = (config.pop("name", None) or "").strip() or None
    snapshot_id = config.pop("snapshot_id", None) or None
    config.pop("snapshot", None)
    config.pop("output_dir", None)
    config = {k: v for k, v in config.items() if v is not None}
    cfg = NeatConfig.from_dict({**config, "snapshot": "<frozen at start>"})  # ConfigError (a ValueError)
    for key, kind in (("negatives", "negative"), ("positives", "positive")):
        pinned = []
        for scoped in getattr(cfg, key):
            ref, tag = split_scope(scoped)
            sp = store.resolve_ref(ref)  # ValueError for an unknown name/version
            if sp["kind"] != kind:
                raise ValueError(f"{sp['ref']} is a {sp['kind']} prompt, not a {kind} prompt")
            pinned.append(f"{sp['name']}@{sp['version']}" + (f":{tag}" if tag else ""))
        setattr(cfg, key, pinned)
    cfg.validate()
    d = cfg.to_dict()
    d.pop("snapshot")
    d.pop("output_dir")
    # only what differs from the defaults travels as --set (plus the essentials), so the run's config.yaml
    # is the trainer's own full record
    defaults = NeatConfig().to_dict()
    keep = {"model", "method", "negatives", "positives"}
    train_cfg = {k: v for k, v in d.items() if k in keep or v != defaults.get(k)}
    return train_cfg, filters, name, snapshot_id
