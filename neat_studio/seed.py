"""Our own hand-written seed data (data/ in the repo): prompts and system-prompt presets, loaded and validated.

- `seed_records()` -> ImportRecords from data/seed_prompts.jsonl (source "seed:seed_prompts.jsonl"). Every record is
  tagged either "benign" (optionally "lookalike": harmless but sounds risky) or "harmful" plus a category tag, and
  has split "train" or "dev". Prompts are unique (case- and whitespace-insensitive).
- `seed_presets()` -> preset dicts from data/presets.yaml:
  `{"name", "kind": "negative"|"positive", "text", "params": {"temperature","top_p","max_new_tokens","k"},
    "tags", "description", "counterpart"}` (counterpart: the positive preset matching a negative one; None for
  positives). Names follow the system-prompt name rule of docs/ARCHITECTURE.md.
- `seed_guidelines()` (alias `guidelines_text`) -> the annotation guidelines (data/guidelines.md).
Invalid seed files raise SeedDataError (a ValueError) naming the file and the offending entry.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from neat_studio.config import SEED_DIR
from neat_studio.io.importers import read_records

__all__ = ["SeedDataError", "seed_records", "seed_presets", "seed_guidelines", "guidelines_text", "SEED_PROMPTS", "PRESETS", "GUIDELINES"]

SEED_PROMPTS = SEED_DIR / "seed_prompts.jsonl"
PRESETS = SEED_DIR / "presets.yaml"
GUIDELINES = SEED_DIR / "guidelines.md"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HARM_CATEGORIES = {
    "violence", "weapons", "cybercrime", "fraud", "hate", "harassment", "self-harm", "drugs", "privacy",
    "misinformation", "sexual",
}
PARAM_KEYS = ("temperature", "top_p", "max_new_tokens", "k")


class SeedDataError(ValueError):
    pass


def seed_records(path: str | Path | None = None) -> list[dict]:
    """The seed prompts as ImportRecords (no responses), validated."""
    path = Path(path) if path is not None else SEED_PROMPTS
    records = read_records(path, "jsonl", source=f"seed:{path.name}")
    seen: dict[str, int] = {}
    for n, rec in enumerate(records, start=1):
        where = f"{path}, record {n}"
        tags = rec["tags"]
        if len(rec["messages"]) != 1:
            raise SeedDataError(f"{where}: a seed prompt is a single user turn")
        if ("benign" in tags) == ("harmful" in tags):
            raise SeedDataError(f"{where}: tags must contain exactly one of 'benign' / 'harmful', got {tags}")
        if "harmful" in tags and not HARM_CATEGORIES & set(tags):
            raise SeedDataError(f"{where}: a harmful prompt needs a category tag ({', '.join(sorted(HARM_CATEGORIES))})")
        if "lookalike" in tags and "benign" not in tags:
            raise SeedDataError(f"{where}: 'lookalike' is for benign prompts")
        if rec["split"] not in ("train", "dev"):
            raise SeedDataError(f"{where}: split must be train or dev, got {rec['split']!r}")
        key = " ".join(rec["messages"][0]["content"].casefold().split())
        if key in seen:
            raise SeedDataError(f"{where}: duplicate of record {seen[key]}")
        seen[key] = n
    return records


def _preset(p: object, n: int, path: Path) -> dict:
    if not isinstance(p, dict):
        raise SeedDataError(f"{path}: preset {n} must be a mapping")
    name = p.get("name")
    where = f"{path}: preset {name!r}" if isinstance(name, str) else f"{path}: preset {n}"
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SeedDataError(f"{where}: invalid name (must match {NAME_RE.pattern})")
    unknown = set(p) - {"name", "kind", "text", "params", "tags", "description", "counterpart"}
    if unknown:
        raise SeedDataError(f"{where}: unknown keys {sorted(unknown)}")
    if p.get("kind") not in ("negative", "positive"):
        raise SeedDataError(f"{where}: kind must be negative or positive, got {p.get('kind')!r}")
    text = p.get("text")
    if not isinstance(text, str) or len(text.split()) < 10:
        raise SeedDataError(f"{where}: text must be a real system prompt (at least 10 words)")
    desc = p.get("description")
    if not isinstance(desc, str) or not desc.strip():
        raise SeedDataError(f"{where}: description is required")
    tags = p.get("tags")
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) and t.strip() for t in tags):
        raise SeedDataError(f"{where}: tags must be a non-empty list of strings")
    params = p.get("params")
    if not isinstance(params, dict) or set(params) != set(PARAM_KEYS):
        raise SeedDataError(f"{where}: params must have exactly {', '.join(PARAM_KEYS)}")
    t, tp, mnt, k = (params[x] for x in PARAM_KEYS)
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 2):
        raise SeedDataError(f"{where}: temperature must be in [0, 2]")
    if not (isinstance(tp, (int, float)) and not isinstance(tp, bool) and 0 < tp <= 1):
        raise SeedDataError(f"{where}: top_p must be in (0, 1]")
    if not (isinstance(mnt, int) and not isinstance(mnt, bool) and 1 <= mnt <= 4096):
        raise SeedDataError(f"{where}: max_new_tokens must be an integer in [1, 4096]")
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 16):
        raise SeedDataError(f"{where}: k must be an integer in [1, 16]")
    counterpart = p.get("counterpart")
    if p["kind"] == "negative" and not isinstance(counterpart, str):
        raise SeedDataError(f"{where}: a negative preset must name its positive counterpart")
    if p["kind"] == "positive" and counterpart is not None:
        raise SeedDataError(f"{where}: only negative presets name a counterpart")
    return {
        "name": name,
        "kind": p["kind"],
        "text": " ".join(text.split()),
        "params": {"temperature": float(t), "top_p": float(tp), "max_new_tokens": mnt, "k": k},
        "tags": [x.strip() for x in tags],
        "description": desc.strip(),
        "counterpart": counterpart,
    }


def seed_presets(path: str | Path | None = None) -> list[dict]:
    """The negative / positive presets, validated (unique names; every negative's counterpart is a positive)."""
    path = Path(path) if path is not None else PRESETS
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SeedDataError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("presets"), list) or not doc["presets"]:
        raise SeedDataError(f"{path}: expected a mapping with a non-empty 'presets' list")
    presets = [_preset(p, n, path) for n, p in enumerate(doc["presets"], start=1)]
    by_name: dict[str, dict] = {}
    for p in presets:
        if p["name"] in by_name:
            raise SeedDataError(f"{path}: duplicate preset name {p['name']!r}")
        by_name[p["name"]] = p
    for p in presets:
        if p["kind"] == "negative":
            c = by_name.get(p["counterpart"])
            if c is None or c["kind"] != "positive":
                raise SeedDataError(f"{path}: preset {p['name']!r}: counterpart {p['counterpart']!r} "
                                    f"is not a positive preset")
    return presets


def seed_guidelines(path: str | Path | None = None) -> str:
    """The annotation guidelines (markdown)."""
    text = Path(path or GUIDELINES).read_text(encoding="utf-8")
    if not text.strip():
        raise SeedDataError(f"{path or GUIDELINES}: guidelines are empty")
    return text


guidelines_text = seed_guidelines
