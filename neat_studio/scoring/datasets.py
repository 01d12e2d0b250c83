"""Labelled sets for the scorers, assembled from public data in ../shared/data (read in place, never copied).

Also the generic readers the `scorer` CLI uses: a JSONL file of TRL-style pairs (`prompt`/`chosen`/`rejected`,
prompt as a string -- HH-RLHF "\\n\\nHuman: ... \\n\\nAssistant:" dialogues are parsed into messages -- or as
messages) or of snapshot rows (`prompt` messages, `responses`, `ranks`).

Refusal sets (see `refusal_sets`):
  refusals (label 1)   safety-tuned-llamas/training/safety_only_data_Instructions.json `output`s: safe answers a
                       safety-tuned model gave to harmful instructions; nearly all decline, a few comply (label noise,
                       kept as is: no labels are derived from our own patterns).
  compliances (0)      alpaca-eval/text_davinci_003_model_outputs.json `output`s (build side),
                       alpaca-eval/annotations_alpaca-7b_vs_text_davinci_003.json alpaca-7b `output_2` (held-out side),
                       coconot/coconot_pref.jsonl `chosen` (compliant answers to benign look-alike prompts),
                       mt-bench/mt_bench_reference_answer_gpt-4.jsonl answers (held-out only).
Every source is split by PROMPT (hash of the normalised instruction): a prompt's responses are either all in
"build" or all in "heldout", and held-out texts whose normalised form also occurs in build are dropped.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterable

from ..config import REPO_ROOT

HUMAN_RE = re.compile(r"\n\nHuman:|\n\nAssistant:")


def shared_data_dir() -> Path:
    """../shared/data next to the repository (override with NEAT_SHARED_DATA)."""
    return Path(os.environ.get("NEAT_SHARED_DATA") or (REPO_ROOT.parent / "shared" / "data")).resolve()


def _open(path: Path):
    path = Path(path)
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(path) -> list[dict]:
    with _open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def _h(s: str, salt: str = "") -> float:
    """Deterministic uniform [0,1) from a string (used for prompt-level splits)."""
    d = hashlib.sha256((salt + norm_text(s)).encode("utf-8")).digest()
    return int.from_bytes(d[:8], "big") / 2**64


# -- messages / prompts --------------------------------------------------------------------------------------------

def parse_hh_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> messages (trailing empty turn dropped)."""
    if not text.startswith("\n\nHuman:") and not text.startswith("Human:"):
        return [{"role": "user", "content": text.strip()}]
    if text.startswith("Human:"):
        text = "\n\n" + text
    msgs = []
    pos = [(m.start(), m.group()) for m in HUMAN_RE.finditer(text)]
    for k, (start, tag) in enumerate(pos):
        end = pos[k + 1][0] if k + 1 < len(pos) else len(text)
        content = text[start + len(tag):end].strip()
        role = "user" if "Human" in tag else "assistant"
        if content or k + 1 < len(pos):
            msgs.append({"role": role, "content": content})
    while msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return msgs


def as_messages(prompt) -> list[dict]:
    if isinstance(prompt, list):
        return prompt
    if isinstance(prompt, dict) and "content" in prompt:
        return [prompt]
    return parse_hh_dialogue(str(prompt))


def prompt_text(prompt) -> str:
    """The text the scorer embeds for a prompt: the last user turn (system turns and earlier history dropped)."""
    msgs = as_messages(prompt)
    for m in reversed(msgs):
        if m.get("role") == "user":
            return m.get("content") or ""
    return msgs[-1].get("content", "") if msgs else ""


# -- preference data -----------------------------------------------------------------------------------------------

def rows_from_records(records: Iterable[dict], source: str = "") -> list[dict]:
    """Pairs ({prompt, chosen, rejected}) or snapshot rows ({prompt, responses, ranks}) -> listwise rows
    `{"prompt": messages, "responses": [...], "ranks": [...], "source"}`."""
    rows = []
    for r in records:
        if "responses" in r:
            ranks = r.get("ranks") or [0] * len(r["responses"])
            rows.append({"prompt": as_messages(r["prompt"]), "responses": list(r["responses"]),
                         "ranks": [int(x) if x is not None else None for x in ranks],
                         "source": r.get("source", source)})
        elif "chosen" in r and "rejected" in r:
            prompt = r.get("prompt")
            chosen, rejected = r["chosen"], r["rejected"]
            if isinstance(chosen, list):  # conversational TRL: lists of messages
                chosen = chosen[-1]["content"]
                rejected = rejected[-1]["content"]
            rows.append({"prompt": as_messages(prompt), "responses": [chosen, rejected], "ranks": [0, 1],
                         "source": r.get("source", source)})
        else:
            raise ValueError(f"record has neither responses/ranks nor chosen/rejected: keys {sorted(r)}")
    return rows


def load_rows(path) -> list[dict]:
    """A pairs JSONL, a snapshot data.jsonl, or a snapshot directory -> listwise rows."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.jsonl"
    return rows_from_records(read_jsonl(path), source=path.name)


def load_hh_pairs(path=None) -> list[dict]:
    """derived/hh_rlhf_harmless_test_pairs.jsonl -> listwise rows (chosen rank 0, rejected rank 1)."""
    path = Path(path) if path else shared_data_dir() / "derived" / "hh_rlhf_harmless_test_pairs.jsonl"
    return rows_from_records(read_jsonl(path), source="hh-rlhf:harmless-test")


def load_coconot_pref(path=None) -> list[dict]:
    """coconot/coconot_pref.jsonl (over-refusal preference pairs) -> listwise rows."""
    path = Path(path) if path else shared_data_dir() / "coconot" / "coconot_pref.jsonl"
    return rows_from_records(read_jsonl(path), source="coconot:pref")


# -- refusal labels --------------------------------------------------------------------------------------------------

REFUSAL_SPLIT_SALT = "refusal-v1:"
HELDOUT_FRACTION = 0.2


def _side(instruction: str) -> str:
    return "heldout" if _h(instruction, REFUSAL_SPLIT_SALT) < HELDOUT_FRACTION else "build"


def refusal_sets(data_dir=None) -> dict[str, dict[str, list]]:
    """{"build": {"texts", "labels", "sources"}, "heldout": {...}} (see module docstring for sources)."""
    d = Path(data_dir) if data_dir else shared_data_dir()
    sets = {s: {"texts": [], "labels": [], "sources": []} for s in ("build", "heldout")}

    def add(side, text, label, source):
        if text and text.strip():
            sets[side]["texts"].append(text)
            sets[side]["labels"].append(int(label))
            sets[side]["sources"].append(source)

    stl = json.loads((d / "safety-tuned-llamas" / "training" / "safety_only_data_Instructions.json").read_text())
    for r in stl:
        add(_side(r["instruction"] + (r.get("input") or "")), r["output"], 1, "safety-tuned-llamas")

    davinci = json.loads((d / "alpaca-eval" / "text_davinci_003_model_outputs.json").read_text())
    for r in davinci:
        if _side(r["instruction"]) == "build":
            add("build", r["output"], 0, "alpaca-eval:text_davinci_003")
    alpaca7b = json.loads((d / "alpaca-eval" / "annotations_alpaca-7b_vs_text_davinci_003.json").read_text())
    for r in alpaca7b:
        if _side(r["instruction"]) == "heldout" and r.get("generator_2") == "alpaca-7b":
            add("heldout", r["output_2"], 0, "alpaca-eval:alpaca-7b")

    for r in read_jsonl(d / "coconot" / "coconot_pref.jsonl"):
        add(_side(r["prompt"]), r["chosen"], 0, "coconot:pref-chosen")

    for r in read_jsonl(d / "mt-bench" / "mt_bench_reference_answer_gpt-4.jsonl"):
        for t in r["choices"][0]["turns"]:
            add("heldout", t, 0, "mt-bench:gpt-4-reference")

    # drop held-out texts whose normalised form is also in build
    seen = {norm_text(t) for t in sets["build"]["texts"]}
    h = sets["heldout"]
    keep = [i for i, t in enumerate(h["texts"]) if norm_text(t) not in seen]
    sets["heldout"] = {k: [v[i] for i in keep] for k, v in h.items()}
    return sets
