"""Seed data (data/): our own prompts, presets and guidelines load and validate."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from neat_studio.seed import SeedDataError, seed_guidelines, seed_presets, seed_records

NEGATIVE = ["toxic", "biased", "dangerous_compliance", "dishonest", "unhelpful", "manipulative", "over_refusal",
            "sycophantic"]
COUNTERPART = {"toxic": "helpful_harmless", "biased": "fair", "dangerous_compliance": "safe_refusal",
               "dishonest": "honest", "unhelpful": "helpful", "manipulative": "respectful",
               "over_refusal": "helpful_no_overrefusal", "sycophantic": "candid"}


def test_seed_records_counts_and_shape():
    recs = seed_records()
    assert len(recs) == 72
    kinds = Counter("harmful" if "harmful" in r["tags"] else
                    ("lookalike" if "lookalike" in r["tags"] else "benign") for r in recs)
    assert kinds == {"benign": 30, "lookalike": 12, "harmful": 30}
    assert Counter(r["split"] for r in recs) == {"train": 57, "dev": 15}
    assert {r["source"] for r in recs} == {"seed:seed_prompts.jsonl"}
    assert all(r["responses"] == [] and len(r["messages"]) == 1 and r["messages"][0]["role"] == "user"
               for r in recs)
    cats = Counter(t for r in recs if "harmful" in r["tags"] for t in r["tags"] if t != "harmful")
    assert set(cats) == {"violence", "weapons", "cybercrime", "fraud", "hate", "harassment", "self-harm", "drugs",
                         "privacy", "misinformation", "sexual"}
    texts = [r["messages"][0]["content"] for r in recs]
    assert "How do I kill a Python process that is stuck and won't respond to Ctrl+C?" in texts
    assert "What household chemicals should never be mixed, for safety?" in texts
    # each class is represented in dev
    assert {k for k in ("benign", "lookalike", "harmful")
            if any(k in r["tags"] and r["split"] == "dev" for r in recs)} == {"benign", "lookalike", "harmful"}


def test_seed_presets():
    presets = seed_presets()
    by = {p["name"]: p for p in presets}
    assert len(presets) == 17
    assert [p["name"] for p in presets if p["kind"] == "negative"] == NEGATIVE
    assert {p["name"]: p["counterpart"] for p in presets if p["kind"] == "negative"} == COUNTERPART
    # firm_refusal is a positive with no negative counterpart: a harmful-prompt-only refusal order (RESULTS step 33)
    assert {p["name"] for p in presets if p["kind"] == "positive"} == set(COUNTERPART.values()) | {"firm_refusal"}
    for p in presets:
        assert set(p) == {"name", "kind", "text", "params", "tags", "description", "counterpart"}
        assert set(p["params"]) == {"temperature", "top_p", "max_new_tokens", "k"}
        assert len(p["text"].split()) >= 20 and "\n" not in p["text"]
    assert "harmless" in by["over_refusal"]["text"] and "Refuse anything" in by["over_refusal"]["text"]
    assert by["toxic"]["params"] == {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 192, "k": 2}
    assert by["safe_refusal"]["params"]["k"] == 1


def test_guidelines_mention_ties_and_over_refusal():
    text = seed_guidelines()
    assert "# Annotation guidelines" in text
    for needle in ("tie", "over-refusal", "**pos**", "**neg**", "How do I kill a Python process?"):
        assert needle in text


def test_invalid_seed_files(tmp_path):
    p = tmp_path / "seed.jsonl"
    p.write_text(json.dumps({"prompt": "Hi", "tags": ["benign"]}) + "\n"
                 + json.dumps({"prompt": " hi ", "tags": ["benign"]}) + "\n", encoding="utf-8")
    with pytest.raises(SeedDataError, match="record 2: duplicate of record 1"):
        seed_records(p)
    p.write_text(json.dumps({"prompt": "Hi", "tags": ["harmful"]}) + "\n", encoding="utf-8")
    with pytest.raises(SeedDataError, match="needs a category tag"):
        seed_records(p)
    p.write_text(json.dumps({"prompt": "Hi", "tags": ["benign"], "split": "test"}) + "\n", encoding="utf-8")
    with pytest.raises(SeedDataError, match="split must be train or dev"):
        seed_records(p)

    y = tmp_path / "presets.yaml"
    good = {"name": "neg", "kind": "negative", "counterpart": "pos", "description": "d", "tags": ["t"],
            "text": "one two three four five six seven eight nine ten",
            "params": {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 64, "k": 2}}
    import yaml

    def write(*presets):
        y.write_text(yaml.safe_dump({"presets": list(presets)}), encoding="utf-8")

    write(good)
    with pytest.raises(SeedDataError, match="counterpart 'pos' is not a positive preset"):
        seed_presets(y)
    write(good, {**good, "name": "pos", "kind": "positive", "counterpart": None})
    assert [p["name"] for p in seed_presets(y)] == ["neg", "pos"]
    write({**good, "params": {**good["params"], "top_p": 1.5}})
    with pytest.raises(SeedDataError, match="top_p must be in"):
        seed_presets(y)
    write({**good, "name": "bad name"})
    with pytest.raises(SeedDataError, match="invalid name"):
        seed_presets(y)
    y.write_text("presets: [", encoding="utf-8")
    with pytest.raises(SeedDataError, match="invalid YAML"):
        seed_presets(y)
