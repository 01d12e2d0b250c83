"""Snapshot rows -> TRL pairs JSONL / listwise JSONL / parquet (pure: no store).

Input rows are snapshot `data.jsonl` rows (docs/ARCHITECTURE.md)::

    {"prompt_id", "prompt": messages, "responses": [text], "ranks": [int], "origins": [str],
     "response_ids": [str], "annotators": [str], "split", "tags"}

Every writer writes atomically (a temp file in the target directory, fsync, rename), returns the number of lines /
rows written, and gzips when the path ends with ".gz" (JSONL writers).

Documented choices
------------------
- `pairs_from_row`: every (i, j) with ranks[i] < ranks[j], in (i, j) order; ties and None ranks give no pair.
- `export_trl_pairs` skips pairs whose chosen and rejected texts are identical and writes each distinct
  (prompt, chosen, rejected) of a row once.
- Negative system prompts never belong in an exported prompt: system turns whose content equals one of
  `negative_prompts` (compared after stripping) are removed (all writers).
- TRL string format (`conversational=False`): a prompt that is one user turn is written as that text, verbatim and
  marker-free. A multi-turn prompt (or one with a remaining system turn) cannot be a plain string without losing
  its turns, so it is written as an HH transcript "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"
  (led by "\\n\\nSystem: ..." if needed), the form `importers.read_trl` parses back into the same messages.
  Every written prompt is checked to parse back to the (normalised) messages; a prompt that would not (its text
  contains transcript markers itself) raises ValueError naming the prompt_id: use conversational=True for it.
- Conversational format (TRL's "conversational" dataset type): prompt = message list, chosen / rejected =
  [{"role": "assistant", "content": text}].
- Which format (`conversational=None`, the default): conversational when the data is chat data, i.e. some
  exported prompt has more than one message (several turns, or a system turn that is not a negative system
  prompt); else the plain string format (single-turn prompts as their bare text). The choice is made per FILE,
  never per line: one file mixing string and message-list prompts would not load as one `datasets` column.
  `conversational=True` / `False` force a format.
"""
from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from neat_studio.io.importers import clean_text, parse_prompt_string

__all__ = [
    "pairs_from_row",
    "prompt_messages",
    "render_prompt_string",
    "is_chat_data",
    "export_trl_pairs",
    "export_listwise",
    "export_parquet",
]


def pairs_from_row(row: dict) -> list[tuple[int, int]]:
    """(chosen_idx, rejected_idx) for every pair with rank_i < rank_j (lower rank = better; ties give none)."""
    ranks = row["ranks"]
    if len(ranks) != len(row["responses"]):
        raise ValueError(f"row {row.get('prompt_id')!r}: {len(ranks)} ranks for {len(row['responses'])} responses")
    n = len(ranks)
    return [(i, j) for i in range(n) for j in range(n)
            if ranks[i] is not None and ranks[j] is not None and ranks[i] < ranks[j]]


def prompt_messages(row: dict, negative_prompts: Iterable[str] = ()) -> list[dict]:
    """The row's prompt messages without system turns that are negative system prompts."""
    neg = {t.strip() for t in negative_prompts}
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt
            if not (m["role"] == "system" and m["content"].strip() in neg)]
    if not msgs or msgs[-1]["role"] != "user":
        raise ValueError(f"row {row.get('prompt_id')!r}: prompt must end with a user turn")
    return msgs


def _normalised(msgs: list[dict]) -> list[dict]:
    out: list[dict] = []
    for m in msgs:
        c = clean_text(m["content"])
        if out and out[-1]["role"] == m["role"]:
            a = out[-1]["content"]
            out[-1] = {"role": m["role"], "content": f"{a}\n\n{c}" if a and c else (a or c)}
        else:
            out.append({"role": m["role"], "content": c})
    return out


def render_prompt_string(msgs: list[dict], prompt_id: Any = None) -> str:
    """Messages -> the TRL string form (see module doc); raises ValueError if it would not read back exactly."""
    if len(msgs) == 1 and msgs[0]["role"] == "user":
        text = msgs[0]["content"]
    else:
        parts = []
        for m in msgs:
            label = {"system": "System", "user": "Human", "assistant": "Assistant"}[m["role"]]
            parts.append(f"\n\n{label}: {m['content']}")
        text = "".join(parts) + "\n\nAssistant:"
    try:
        back = parse_prompt_string(text)
    except Exception:  # noqa: BLE001 - any parse failure means "ambiguous"
        back = None
    if back != _normalised(msgs):
        raise ValueError(f"prompt {prompt_id!r} cannot be written as a TRL string prompt that reads back "
                         f"unchanged (its text contains Human:/Assistant: transcript markers); "
                         f"use conversational=True")
    return text


def _new_file_mode(path: Path) -> int:
    """The mode of the file being replaced, else what ``open(path, "w")`` would create (0666 minus the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        pass
    umask = None
    try:  # Linux: read it without changing it (os.umask sets it for every thread while it asks)
        with open("/proc/self/status") as f:
            umask = next((int(x.split()[1], 8) for x in f if x.startswith("Umask:")), None)
    except OSError:
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: str | Path, write: Callable[[Any], None], *, gz: bool = False) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the export a file name")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if gz:
                with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as g:
                    write(g)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))  # mkstemp makes 0600; an export gets the mode a plain open() gives
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_jsonl(path: str | Path, lines: list[dict]) -> int:
    def write(f):
        for obj in lines:
            f.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))

    _atomic_write(path, write, gz=str(path).lower().endswith(".gz"))
    return len(lines)


def _selected(rows: Iterable[dict], split: str | None) -> list[dict]:
    return [r for r in rows if split is None or r.get("split") == split]


def is_chat_data(rows: Iterable[dict], *, negative_prompts: Iterable[str] = (), split: str | None = None) -> bool:
    """Whether some prompt that `export_trl_pairs` would write has more than one message (several turns, or a
    system turn other than a negative system prompt): then its default format is conversational."""
    neg = list(negative_prompts)
    return any(pairs_from_row(r) and len(prompt_messages(r, neg)) > 1 for r in _selected(rows, split))


def export_trl_pairs(rows: Iterable[dict], path: str | Path, conversational: bool | None = None, *,
                     negative_prompts: Iterable[str] = (), split: str | None = None) -> int:
    """TRL preference JSONL ({"prompt","chosen","rejected"} per line). Returns the number of pairs written.
    `conversational`: True = message lists, False = strings, None = conversational for chat data (module doc)."""
    neg = list(negative_prompts)
    rows = _selected(rows, split)
    if conversational is None:
        conversational = is_chat_data(rows, negative_prompts=neg)
    lines: list[dict] = []
    for row in rows:
        pairs = pairs_from_row(row)
        if not pairs:
            continue
        msgs = prompt_messages(row, neg)
        prompt: Any = msgs if conversational else render_prompt_string(msgs, row.get("prompt_id"))
        seen = set()
        for i, j in pairs:
            c, r = row["responses"][i], row["responses"][j]
            if c == r or (c, r) in seen:
                continue
            seen.add((c, r))
            if conversational:
                lines.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": c}],
                              "rejected": [{"role": "assistant", "content": r}]})
            else:
                lines.append({"prompt": prompt, "chosen": c, "rejected": r})
    return _write_jsonl(path, lines)


def _listwise_obj(row: dict, neg: list[str], scores: dict | None) -> dict:
    n = len(row["responses"])
    ranks = list(row.get("ranks") or [None] * n)
    origins = list(row.get("origins") or ["dataset"] * n)
    if len(ranks) != n or len(origins) != n:
        raise ValueError(f"row {row.get('prompt_id')!r}: responses, ranks and origins differ in length")
    obj = {
        "prompt_id": row.get("prompt_id"),
        "prompt": prompt_messages(row, neg),
        "responses": list(row["responses"]),
        "ranks": ranks,
        "origins": origins,
        "response_ids": list(row.get("response_ids") or []),
        "annotators": list(row.get("annotators") or []),
        "split": row.get("split", "train"),
        "tags": list(row.get("tags") or []),
    }
    sc = (scores or {}).get(row.get("prompt_id"), row.get("scores"))
    if sc is not None:
        if len(sc) != n:
            raise ValueError(f"row {row.get('prompt_id')!r}: {len(sc)} scores for {n} responses")
        obj["scores"] = [None if s is None else float(s) for s in sc]
    return obj


def export_listwise(rows: Iterable[dict], path: str | Path, *, negative_prompts: Iterable[str] = (),
                    scores: dict | None = None, split: str | None = None) -> int:
    """Listwise JSONL: prompt_id, prompt (messages), responses, ranks, origins, response_ids, annotators, split,
    tags, and scores (from `scores[prompt_id]` or the row's own "scores") when present. Returns rows written.
    `importers.read_records` reads it back (format "listwise")."""
    neg = list(negative_prompts)
    return _write_jsonl(path, [_listwise_obj(r, neg, scores) for r in _selected(rows, split)])


def export_parquet(rows: Iterable[dict], path: str | Path, *, negative_prompts: Iterable[str] = (),
                   scores: dict | None = None, split: str | None = None) -> int:
    """The listwise rows as a parquet file with a fixed schema (a `scores` column only when some row has scores).
    Returns rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    neg = list(negative_prompts)
    objs = [_listwise_obj(r, neg, scores) for r in _selected(rows, split)]
    fields = [
        ("prompt_id", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("responses", pa.list_(pa.string())),
        ("ranks", pa.list_(pa.int64())),
        ("origins", pa.list_(pa.string())),
        ("response_ids", pa.list_(pa.string())),
        ("annotators", pa.list_(pa.string())),
        ("split", pa.string()),
        ("tags", pa.list_(pa.string())),
    ]
    if any("scores" in o for o in objs):
        fields.append(("scores", pa.list_(pa.float64())))
    schema = pa.schema(fields)
    for o in objs:
        if o["prompt_id"] is not None:
            o["prompt_id"] = str(o["prompt_id"])
    table = pa.Table.from_pylist(objs, schema=schema)
    _atomic_write(path, lambda f: pq.write_table(table, f))
    return len(objs)
