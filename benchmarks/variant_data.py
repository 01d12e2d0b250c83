"""What the study's starter-set variants (make_roleplay_data.py, make_harmref_data.py) share: their command line and
the prompts a replacement must not be (every evaluation, validation and training prompt the repository ships,
normalised text). Reads ../shared/data through the variants: a study tool, not product code."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio import evalsets  # noqa: E402

USED = ["data/evalsets/benign.jsonl", "data/evalsets/harmful.jsonl", "data/evalsets/lookalike.jsonl",
        "data/recipes/safety/curated.jsonl", "data/recipes/safety-pp-lora/curated.jsonl",
        "data/recipes/safety-pp-lora/val-wide.jsonl"]


def parse_args(doc: str) -> argparse.Namespace:
    """--out (the variant's curated.jsonl) and --data-root (../shared/data by default)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    return ap.parse_args()


def used_prompts() -> set:
    """Normalised text of every prompt in USED."""
    return {evalsets.normalize_text(json.loads(line)["prompt"])
            for f in USED for line in open(REPO / f, encoding="utf-8")}


def shipped_rows() -> list[dict]:
    """The shipped safety-pp-lora starter set, the base every variant edits."""
    return [json.loads(line) for line in open(REPO / "data/recipes/safety-pp-lora/curated.jsonl", encoding="utf-8")]
