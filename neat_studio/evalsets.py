"""Named evaluation prompt sets, built from files, kept apart from training data.

A **prompt-set file** is JSONL, one prompt per line::

    {"id": "3f2a…", "prompt": "How do I pick a lock?", "expected": "refuse" | "comply",
     "source": "advbench:harmful_behaviors.csv", "split": "dev" | "test"}

``prompt`` is a string (one user turn) or a messages list. ``id`` and ``split`` are optional in files written
by hand; they are recomputed from the text when missing.

A **pair-set file** (for ranking accuracy) is JSONL with ``{"prompt", "chosen", "rejected", "source"}``; the
prompt may be a string, a messages list, or an HH-RLHF dialogue (``"\\n\\nHuman: … \\n\\nAssistant:"``), which is
parsed into messages. A snapshot ``data.jsonl`` (rows with ``responses`` and ``ranks``) is also accepted:
each (better, worse) pair of distinct ranks becomes a pair.

Standard set names: the product reads them from the files it ships, ``data/evalsets/<name>.jsonl`` (at most 300
prompts each, fixed splits, source and licence per set in ``data/evalsets/manifest.json``), built by
``scripts/build_data.py`` from these public sources (:data:`DEFAULT_SOURCES`, relative to the shared data root; a
``data_root`` argument rebuilds a set from them on the fly, for developers):

- ``harmful``   (expected refuse): AdvBench ``goal``, Do-Not-Answer (discrimination/toxicity, information hazards,
  malicious uses), CatQA, DangerousQA, HarmfulQA. Do-Not-Answer's ``human_chatbox`` ("Should I quit my job?") and
  ``misinformation_harms`` ("could I lose my license?") are left out: a careful answer is right there, and
  counting a refusal as success would reward over-refusal.
- ``lookalike`` (expected comply): CoCoNot contrast set, benign prompts that look harmful. Compliance here is
  1 − over-refusal, the number that small models lose first when taught to refuse.
- ``benign``    (expected comply): AlpacaEval instructions, Self-Instruct seed tasks.
- ``pairs``     (preference pairs): HH-RLHF harmless test pairs (derived).

**Normalised text** (:func:`normalize_text`): Unicode NFKC, lower case, every punctuation character removed,
whitespace collapsed. Two prompts are the same prompt when their normalised texts are equal; this is the key
for deduplication within a set and against training data (:func:`dedupe_against`).

**Dev/test split** (:func:`split_of`): ``sha256("neat-eval-split:" + normalised text)``; the first 8 bytes as an
integer, divided by 2**64, below ``dev_fraction`` (0.5) means ``dev``, otherwise ``test``. It depends only on the
text, so the split of a prompt never changes when sets are rebuilt, re-ordered or limited. Tune and compare on
``dev``; look at ``test`` once, for the final numbers. Never tune on test.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

from .config import REPO_ROOT

SET_NAMES = ("harmful", "lookalike", "benign")
PAIRS_NAME = "pairs"
EXPECTED = {"harmful": "refuse", "lookalike": "comply", "benign": "comply"}
DEV_FRACTION = 0.5
SPLIT_SALT = "neat-eval-split:"



SHIPPED_DIR = REPO_ROOT / "data" / "evalsets"


def shipped_set(name: str) -> Path:
    """The standard set file the product ships (``data/evalsets/<name>.jsonl``, built by scripts/build_data.py from
    public data, source and licence per set in its manifest.json). Evaluation never needs ../shared."""
    path = SHIPPED_DIR / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"standard set {name!r} is missing from {SHIPPED_DIR} (rebuild it with "
                                "scripts/build_data.py, or give a set file)")
    return path


def default_data_root() -> Path:
    """../shared/data next to the repository (override with NEAT_SHARED_DATA, as scoring.datasets does)."""
    return Path(os.environ.get("NEAT_SHARED_DATA") or (REPO_ROOT.parent / "shared" / "data")).resolve()


DEFAULT_SOURCES: dict[str, list[str]] = {
    "harmful": [
        "advbench/harmful_behaviors.csv",
        "do-not-answer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
        "do-not-answer/information_hazard.jsonl",
        "do-not-answer/malicious_uses.jsonl",
        "harmfulqa/catqa_english.json",
        "harmfulqa/dangerousqa.json",
        "harmfulqa/harmfulqa.json",
    ],
    "lookalike": ["coconot/coconot_contrast_eval.jsonl"],
    "benign": ["alpaca-eval/text_davinci_003_model_outputs.json", "self-instruct-seed/seed_tasks.jsonl"],
    "pairs": ["derived/hh_rlhf_harmless_test_pairs.jsonl"],
}

# columns / keys that hold a prompt, in order of preference
_PROMPT_KEYS = ("prompt", "goal", "instruction", "question", "query", "text", "input")

_WS = re.compile(r"\s+")


# -- normalisation, identity, split ---------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed (NFKC first, so curly quotes etc. are caught)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _WS.sub(" ", text).strip()


def prompt_text(prompt: Any) -> str:
    """The user-visible text of a prompt: a string, a messages list (user turns joined), or a set/snapshot row."""
    if isinstance(prompt, dict):
        if "messages" in prompt:
            return prompt_text(prompt["messages"])
        if "prompt" in prompt:
            return prompt_text(prompt["prompt"])
        raise ValueError(f"no prompt in {sorted(prompt)}")
    if isinstance(prompt, str):
        if "\n\nHuman:" in prompt or prompt.startswith("Human:"):
            return prompt_text(parse_hh_dialogue(prompt))
        return prompt
    if isinstance(prompt, (list, tuple)):
        return "\n\n".join(m["content"] for m in prompt if m.get("role") == "user")
    raise TypeError(f"not a prompt: {type(prompt).__name__}")


def prompt_key(prompt: Any) -> str:
    """Normalised text of all user turns: equal keys mean the same prompt."""
    return normalize_text(prompt_text(prompt))


def prompt_id(prompt: Any) -> str:
    return hashlib.sha256(prompt_key(prompt).encode("utf-8")).hexdigest()[:16]


def split_of(prompt: Any, dev_fraction: float = DEV_FRACTION) -> str:
    """Deterministic 'dev' | 'test' from the normalised text alone (see module docstring)."""
    h = hashlib.sha256((SPLIT_SALT + prompt_key(prompt)).encode("utf-8")).digest()
    return "dev" if int.from_bytes(h[:8], "big") / 2**64 < dev_fraction else "test"


def as_messages(prompt: Any) -> list[dict]:
    """A prompt as messages; HH-RLHF dialogue strings are parsed into turns."""
    if isinstance(prompt, dict):
        prompt = prompt.get("messages", prompt.get("prompt"))
    if isinstance(prompt, (list, tuple)):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    if isinstance(prompt, str):
        if "\n\nHuman:" in prompt or prompt.startswith("Human:"):
            return parse_hh_dialogue(prompt)
        return [{"role": "user", "content": prompt}]
    raise TypeError(f"not a prompt: {type(prompt).__name__}")


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")


def parse_hh_dialogue(text: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> messages ending with the user turn c."""
    parts = _HH_TURN.split(text)
    msgs = []
    for role, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if role == "Human" else "assistant", "content": content.strip()})
    while msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    if not msgs:
        raise ValueError("empty HH-RLHF dialogue")
    return msgs


# -- reading source files ---------------------------------------------------------------------------------------
def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _strings_in(obj: Any) -> Iterator[str]:
    """Every string leaf in nested dicts/lists of strings (HarmfulQA / CatQA topic trees, DangerousQA lists)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings_in(v)


def _prompt_of_row(row: dict) -> str | list | None:
    if "messages" in row and isinstance(row["messages"], list):
        return row["messages"]
    if "turns" in row and isinstance(row["turns"], list) and row["turns"]:  # MT-Bench: first turn only
        return row["turns"][0]
    if "instruction" in row and isinstance(row.get("instances"), list):  # Self-Instruct seed tasks
        inp = (row["instances"][0] or {}).get("input", "") if row["instances"] else ""
        return row["instruction"] + ("\n\n" + inp if inp else "")
    if "instruction" in row and row.get("input"):  # Alpaca style
        return f"{row['instruction']}\n\n{row['input']}"
    for k in _PROMPT_KEYS:
        v = row.get(k)
        if isinstance(v, (str, list)) and v:
            return v
    return None


def read_prompts(path: str | Path) -> list[str | list]:
    """Prompts of a dataset file: CSV (goal/prompt/... column), JSONL / JSON rows (prompt/instruction/turns/...),
    JSON lists or topic trees of strings, ``{"instructions": [...]}``. ``.gz`` is read transparently."""
    path = Path(path)
    name = path.name.removesuffix(".gz")
    out: list = []
    with _open_text(path) as f:
        if name.endswith(".csv"):
            for row in csv.DictReader(f):
                p = _prompt_of_row(row)
                if p:
                    out.append(p)
        elif name.endswith(".jsonl"):
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                p = row if isinstance(row, str) else _prompt_of_row(row)
                if p:
                    out.append(p)
        elif name.endswith(".json"):
            data = json.load(f)
            if isinstance(data, dict) and isinstance(data.get("instructions"), list):
                data = data["instructions"]
            if isinstance(data, list) and data and isinstance(data[0], dict):
                out.extend(p for p in (_prompt_of_row(r) for r in data) if p)
            else:
                out.extend(s for s in _strings_in(data) if s.strip())
        else:
            raise ValueError(f"{path}: unsupported prompt file type (csv, jsonl, json, optionally .gz)")
    if not out:
        raise ValueError(f"{path}: no prompts found")
    return out


def _source_label(path: Path, data_root: Path | None) -> str:
    try:
        rel = path.resolve().relative_to(data_root.resolve()) if data_root else None
    except ValueError:
        rel = None
    if rel is not None and len(rel.parts) > 1:
        return f"{rel.parts[0]}:{'/'.join(rel.parts[1:])}"
    return path.name


# -- training prompts and deduplication -------------------------------------------------------------------------
def training_prompts(path: str | Path) -> list:
    """Prompts used for training: a snapshot directory (its data.jsonl), a snapshot/set/pairs JSONL, a run
    directory (via its snapshot), or any dataset file :func:`read_prompts` understands."""
    path = Path(path)
    if path.is_dir():
        if (path / "data.jsonl").exists():
            path = path / "data.jsonl"
        else:
            raise ValueError(f"{path}: not a snapshot directory (no data.jsonl)")
    return read_prompts(path)


def _training_keys(training: Iterable) -> set[str]:
    keys = set()
    for p in training:
        keys.add(prompt_key(p))
        msgs = p.get("messages", p.get("prompt")) if isinstance(p, dict) else p
        if isinstance(msgs, str):
            msgs = as_messages(msgs)
        if isinstance(msgs, list):  # every single user turn too: a training turn must not be an eval prompt
            keys.update(normalize_text(m["content"]) for m in msgs if m.get("role") == "user")
    keys.discard("")
    return keys


def dedupe_against(prompts: list, training_prompts: Iterable = (), *, within: bool = True) -> list:
    """``prompts`` without duplicates (first kept; ``within=False`` keeps them, for pairs sharing a prompt) and
    without any prompt whose normalised text equals a
    training prompt's (its joined user turns or any single user turn). Items keep their type (strings, messages,
    set rows with a "prompt"); order is preserved."""
    seen = _training_keys(training_prompts)
    out = []
    for p in prompts:
        k = prompt_key(p)
        if not k or k in seen:
            continue
        if within:
            seen.add(k)
        out.append(p)
    return out


# -- building and loading sets ----------------------------------------------------------------------------------
def make_rows(prompts: Iterable, expected: str, source: str) -> list[dict]:
    if expected not in ("refuse", "comply"):
        raise ValueError(f"expected must be 'refuse' or 'comply', not {expected!r}")
    return [{"id": prompt_id(p), "prompt": p, "expected": expected, "source": source, "split": split_of(p)}
            for p in prompts]


def read_pairs(path: str | Path) -> list[dict]:
    """Preference pairs ``{"prompt": messages, "chosen", "rejected", "source"}`` from a pair-set / TRL-style JSONL
    (HH dialogues parsed) or a snapshot ``data.jsonl`` / directory (pairs of distinct ranks)."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.jsonl"
    out = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            src = row.get("source") or path.name
            if "chosen" in row and "rejected" in row:
                prompt = row.get("prompt")
                chosen, rejected = row["chosen"], row["rejected"]
                if isinstance(chosen, list):  # TRL conversational: assistant message lists
                    chosen, rejected = chosen[-1]["content"], rejected[-1]["content"]
                out.append({"prompt": as_messages(prompt), "chosen": chosen.strip(), "rejected": rejected.strip(),
                            "source": src})
            elif "responses" in row and "ranks" in row:
                resp, ranks = row["responses"], row["ranks"]
                for i in range(len(resp)):
                    for j in range(len(resp)):
                        if ranks[i] < ranks[j]:
                            out.append({"prompt": as_messages(row["prompt"]), "chosen": resp[i],
                                        "rejected": resp[j], "source": f"snapshot:{row.get('prompt_id', n)}"})
            else:
                raise ValueError(f"{path}:{n}: a pair needs chosen/rejected (or responses/ranks)")
    for p in out:
        p["id"] = prompt_id(p["prompt"])
        p["split"] = split_of(p["prompt"])
    return out


def _sources_for(name: str, data_root: Path) -> list[Path]:
    if name not in DEFAULT_SOURCES:
        raise ValueError(f"unknown prompt set {name!r}: give a file, or one of {sorted(DEFAULT_SOURCES)}")
    paths = [data_root / rel for rel in DEFAULT_SOURCES[name]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"prompt set {name!r} needs {', '.join(missing)} (set --data-root or give files)")
    return paths


def build_set(name: str, paths: Iterable[str | Path] | None = None, *, exclude: Iterable = (),
              expected: str | None = None, data_root: str | Path | None = None) -> list[dict]:
    """Rows of a prompt set (or pairs for ``pairs``) from ``paths`` (default: :data:`DEFAULT_SOURCES`),
    deduplicated within itself and against ``exclude`` (training prompts)."""
    data_root = Path(data_root) if data_root else default_data_root()
    paths = [Path(p) for p in paths] if paths else _sources_for(name, data_root)
    if name == PAIRS_NAME:
        pairs = []
        for path in paths:
            label = _source_label(path, data_root)
            for q in read_pairs(path):
                if q["source"] == path.name:
                    q["source"] = label
                pairs.append(q)
        return dedupe_against(pairs, exclude, within=False) if exclude else pairs
    expected = expected or EXPECTED.get(name)
    if expected is None:
        raise ValueError(f"set {name!r}: say whether a good model refuses or complies (expected)")
    rows = []
    for path in paths:
        rows.extend(make_rows(read_prompts(path), expected, _source_label(path, data_root)))
    return dedupe_against(rows, exclude)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def build_sets(out_dir: str | Path, sources: dict[str, list] | None = None, *, exclude: Iterable[str | Path] = (),
               data_root: str | Path | None = None, names: Iterable[str] | None = None) -> dict:
    """Write ``<name>.jsonl`` for each set (default: harmful, lookalike, benign, pairs) and ``manifest.json``
    (counts per split and source, removed overlaps, sha256 of each file, the split rule)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = dict(sources or {})
    names = list(names or (list(sources) or [*SET_NAMES, PAIRS_NAME]))
    train = [p for e in exclude for p in training_prompts(e)]
    manifest = {"data_root": str(data_root or default_data_root()), "exclude": [str(e) for e in exclude],
                "n_training_prompts": len(train), "split_rule": (
                    f"sha256('{SPLIT_SALT}' + normalised text)[:8] / 2**64 < {DEV_FRACTION} -> dev, else test"),
                "sets": {}}
    for name in names:
        full = build_set(name, sources.get(name), data_root=data_root)
        rows = dedupe_against(full, train, within=name != PAIRS_NAME) if train else full
        path = out_dir / f"{name}.jsonl"
        write_jsonl(path, rows)
        counts: dict[str, Any] = {"total": len(rows), "removed_overlap_with_training": len(full) - len(rows),
                                  "by_split": {}, "by_source": {}}
        for r in rows:
            counts["by_split"][r["split"]] = counts["by_split"].get(r["split"], 0) + 1
            counts["by_source"][r["source"]] = counts["by_source"].get(r["source"], 0) + 1
        manifest["sets"][name] = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                  "kind": "pairs" if name == PAIRS_NAME else "prompts",
                                  "expected": EXPECTED.get(name), **counts}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def _normalise_row(row: dict, source: str, expected: str | None) -> dict:
    if "prompt" not in row:
        raise ValueError(f"{source}: a set row needs 'prompt'")
    exp = row.get("expected", expected)
    if exp not in ("refuse", "comply"):
        raise ValueError(f"{source}: row {row.get('id', '?')} has no valid 'expected' (refuse|comply)")
    p = row["prompt"]
    return {"id": row.get("id") or prompt_id(p), "prompt": p, "messages": as_messages(p), "expected": exp,
            "source": row.get("source", source), "split": row.get("split") or split_of(p)}


def sample_rows(rows: list[dict], limit: int | None, seed: int = 0) -> list[dict]:
    """``limit`` rows, stratified over sources (round robin over per-source shuffles seeded by ``seed``) so that a
    big source does not crowd out the others; all rows (original order) when ``limit`` is None or large."""
    if limit is None or limit >= len(rows):
        return list(rows)
    by_src: dict[str, list[dict]] = {}
    for r in rows:
        by_src.setdefault(r.get("source", ""), []).append(r)
    rng = random.Random(seed)
    queues = []
    for src in sorted(by_src):
        q = sorted(by_src[src], key=lambda r: r["id"])
        rng.shuffle(q)
        queues.append(q)
    out: list[dict] = []
    i = 0
    while len(out) < limit:
        q = queues[i % len(queues)]
        if q:
            out.append(q.pop(0))
        i += 1
    return out


def splits_apply(path_or_name: str | Path) -> bool:
    """Whether the dev/test hash split is ours to apply to this set by default: standard set names (built from the
    shared public data) and files written by :func:`build_sets` (their rows carry a ``split``) -- yes; a user's own
    prompt or pair file without split marks -- no: evaluating it should not silently drop half of it."""
    p = Path(path_or_name)
    if not p.exists():
        return True
    if p.is_dir():
        return False  # a snapshot: the user's own curated data
    if p.suffix != ".jsonl":
        return False
    with _open_text(p) as f:
        first = next((json.loads(line) for line in f if line.strip()), {})
    return isinstance(first, dict) and "split" in first


def load_prompt_set(path_or_name: str | Path, limit: int | None = None, seed: int = 0, *,
                    split: str | None = None, exclude: Iterable = (), expected: str | None = None,
                    data_root: str | Path | None = None) -> list[dict]:
    """Rows ``{"id", "prompt", "messages", "expected", "source", "split"}`` of a set file (JSONL as above, or
    any dataset file :func:`read_prompts` reads, then ``expected`` is required), or of a standard set name
    built on the fly from the shared data. ``split`` ("dev"|"test"; None = all) filters before sampling (callers
    decide with :func:`splits_apply` whether a set should be split at all);
    ``exclude`` (training prompts) removes overlaps; ``limit`` samples deterministically (:func:`sample_rows`)."""
    p = Path(path_or_name)
    if p.exists():
        name = p.stem
        is_set_file = False
        if p.suffix == ".jsonl":
            with _open_text(p) as f:
                first = next((json.loads(line) for line in f if line.strip()), {})
            is_set_file = isinstance(first, dict) and "expected" in first
        if is_set_file:
            with _open_text(p) as f:
                raw = [json.loads(line) for line in f if line.strip()]
        else:
            exp = expected or EXPECTED.get(name)
            if exp is None:
                raise ValueError(f"{p}: plain prompt file; say expected='refuse' or 'comply'")
            raw = make_rows(read_prompts(p), exp, p.name)
        rows = [_normalise_row(r, p.name, expected) for r in raw]
        rows = dedupe_against(rows)
    elif str(path_or_name) in EXPECTED:
        if data_root is not None:  # a developer rebuilding from the public data
            raw = build_set(str(path_or_name), data_root=data_root, expected=expected)
        else:
            with open(shipped_set(str(path_or_name)), encoding="utf-8") as f:
                raw = [json.loads(line) for line in f if line.strip()]
        rows = [_normalise_row(r, str(path_or_name), None) for r in raw]
    else:
        raise FileNotFoundError(f"no prompt set file or standard set named {str(path_or_name)!r}")
    if exclude:
        rows = dedupe_against(rows, exclude)
    if split not in (None, "all"):
        if split not in ("dev", "test"):
            raise ValueError(f"split must be dev, test or all, not {split!r}")
        rows = [r for r in rows if r["split"] == split]
    return sample_rows(rows, limit, seed)


def load_pairs(path_or_name: str | Path = PAIRS_NAME, limit: int | None = None, seed: int = 0, *,
               split: str | None = None, exclude: Iterable = (), data_root: str | Path | None = None) -> list[dict]:
    """Preference pairs from a file / snapshot, or ``"pairs"`` (the standard HH-RLHF harmless test pairs)."""
    p = Path(path_or_name)
    if p.exists():
        pairs = read_pairs(p)
    elif str(path_or_name) == PAIRS_NAME:
        if data_root is not None:
            pairs = build_set(PAIRS_NAME, data_root=data_root)
        else:
            with open(shipped_set(PAIRS_NAME), encoding="utf-8") as f:
                pairs = [json.loads(line) for line in f if line.strip()]
    else:
        raise FileNotFoundError(f"no pairs file {str(path_or_name)!r}")
    pairs = [q for q in pairs if q["chosen"].strip() and q["rejected"].strip() and q["chosen"] != q["rejected"]]
    if exclude:
        pairs = dedupe_against(pairs, exclude, within=False)
    if split not in (None, "all"):
        pairs = [q for q in pairs if q["split"] == split]
    if limit is None or limit >= len(pairs):
        return pairs
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(pairs)), limit))
    return [pairs[i] for i in idx]
