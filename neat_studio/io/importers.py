"""File -> list[ImportRecord] (pure: no store, no network unless `fmt="hub"` is asked for explicitly).

An ImportRecord (docs/ARCHITECTURE.md)::

    {"messages": [{"role": "user", "content": "..."}, ...],   # ends with a user turn
     "source": "hh-rlhf:harmless-base.test.jsonl.gz", "tags": [...], "split": "train"|"dev"|"test",
     "responses": [{"text": "...", "origin": "dataset:chosen", "rank": 0}, ...]}

Entry point: `read_records(path, fmt="auto", ...)`. Formats (`FORMATS`):

- ``hh_rlhf``  `chosen` / `rejected` full dialogues ("\\n\\nHuman: ...\\n\\nAssistant: ...") or, equally, message
  lists (TRL "implicit prompt" form). The turns before the final assistant turn are the prompt; the final assistant
  turns of chosen / rejected are the two responses (`dataset:chosen` rank 0, `dataset:rejected` rank 1).
- ``trl``      `prompt` / `chosen` / `rejected`, as strings or as role/content message lists.
- ``listwise`` `prompt` / `responses` [/ `ranks` / `origins` / `split` / `tags`]: what `export_listwise` and
  `export_parquet` write, so those exports import back.
- ``jsonl`` / ``csv``  plain prompt files: the column `prompt_column` (str or message list). A `responses` /
  `response` column is ignored unless `response_column=` names it (then: unranked `dataset` candidates).
  Optional per-row `split` and `tags` columns are honoured.
- ``parquet`` / ``hf_disk`` (a `datasets.save_to_disk` directory) / ``hub`` (`datasets.load_dataset(name)`, offline
  cache only under this app): container formats; the rows are then interpreted by columns as in ``auto``.
- ``auto``     container by extension (.jsonl/.ndjson/.json[.gz], .csv/.tsv[.gz], .parquet, a directory = hf_disk),
  then interpretation by the first row's columns: chosen+rejected without a prompt column -> hh_rlhf;
  prompt+chosen+rejected -> trl; prompt+responses+ranks -> listwise; otherwise a plain prompt file.

Documented choices
------------------
- Text normalisation (all texts): C0 control characters except TAB/LF/CR, DEL and lone UTF-16 surrogates (which can
  only come from JSON escapes such as "\\u0000" or "\\ud800") are REMOVED; "\\r\\n" becomes "\\n"; leading and
  trailing whitespace is stripped. Raw NUL bytes in a file mean a binary file and are rejected; invalid UTF-8 is
  rejected (a UTF-8 BOM at the start is accepted).
- Empty responses are kept (HH-RLHF has chosen answers that are empty: silence was preferred). Empty prompts are
  an error. A prompt above `max_prompt_bytes` (sum of its message contents in UTF-8, default 64 KiB) is an error.
- Consecutive turns of the same role are merged into one turn (joined with a blank line). HH-RLHF has a few
  dialogues with two assistant turns in a row; after merging, chosen and rejected share their prefix in all 2,312
  rows of harmless-base.test. If chosen and rejected still diverge before their final assistant turns, the prompt
  is chosen's prefix, rejected keeps its own final turn and the record gets the tag ``hh-divergent-context``.
- HH-RLHF chosen == rejected final turn (none in harmless-base.test): both responses are kept, tied at rank 0
  (no preference pair can come from identical texts).
- TRL pairs: exact duplicate (prompt, chosen, rejected) lines are collapsed. The pairs of one prompt are MERGED
  into a single listwise record when a ranking exists whose full pair set (every rank_i < rank_j, as
  `exporters.pairs_from_row` derives it) is exactly the set of given pairs (e.g. one pair, or A>B + A>C, or
  A>B + B>C + A>C); otherwise (e.g. A>B + C>D, or A>B + B>C alone) each pair stays its own 2-response record.
  Either way export_trl_pairs -> read back yields the same (prompt, chosen, rejected) set. In a merged record a
  text that is both chosen and rejected gets origin ``dataset``. A pair with chosen == rejected becomes a record
  with both tied at rank 0 (it carries no preference). Per-row `split` / `tags` columns are not read for TRL.
- TRL string prompts are plain user text, except a string that starts with "\\n\\nHuman:" or "\\n\\nSystem:" (or
  starts with "Human:" and contains "\\n\\nAssistant:"), which is parsed as an HH transcript into messages
  (a trailing empty "Assistant:" cue is dropped). `exporters.export_trl_pairs` writes exactly that form.
- Split: the `split=` argument wins; else a per-row `split` column (train/dev/test; validation/valid/val -> dev);
  else "train". Tags: `tags=` argument + per-row `tags` (list, or a comma separated string in CSV), de-duplicated.
- Errors name the control the reader has: `terms="cli"` (default) the CLI's options (``--prompt-column``,
  ``--format``) and the Python argument, `terms="ui"` the fields of the web UI's import form (`FORM_LABELS`).
- Errors: `DataFormatError(path, line, message)`; `line` is 1-based (the record's first line in CSV, the row
  number in parquet / datasets) or None for file-level problems (unknown format, unreadable container). Nothing
  partial is ever returned. Lines are read with a per-line cap (`max_bytes`), so a 50 MB line fails after
  reading `max_bytes`, not after loading the whole thing.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = [
    "DataFormatError",
    "FORMATS",
    "MAX_LINE_BYTES",
    "MAX_PROMPT_BYTES",
    "FORM_LABELS",
    "TERMS",
    "clean_text",
    "parse_transcript",
    "parse_prompt_string",
    "read_records",
    "read_hh_rlhf",
    "read_trl",
    "read_listwise",
    "read_jsonl",
    "read_csv",
    "read_parquet",
    "read_hf_disk",
    "read_hub",
]

MAX_LINE_BYTES = 8 * 1024 * 1024  # per line / per text cap
MAX_PROMPT_BYTES = 64 * 1024  # a prompt (sum of its message contents, UTF-8) above this is an error
MAX_JSON_ARRAY_BYTES = 64 * 1024 * 1024  # a .json file holding one JSON array is loaded whole, up to this size

FORMATS = ("auto", "hh_rlhf", "trl", "listwise", "jsonl", "csv", "parquet", "hf_disk", "hub")
ROLES = ("system", "user", "assistant")
SPLITS = ("train", "dev", "test")
_SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev"}
_ORIGIN_RE = re.compile(
    r"^(policy|human|dataset|dataset:chosen|dataset:rejected|"
    r"(negative|positive):[A-Za-z0-9][A-Za-z0-9_.-]{0,63}@[0-9]+|compare:\S+)$"
)
# how an error message names the control to use: the CLI's options or the web UI's import form (its field labels,
# FORM_LABELS, which the Prompts tab uses for the fields)
FORM_LABELS = {"format": "Format", "prompt_column": "Prompt column (plain files)"}
TERMS = ("cli", "ui")
_HINTS = {
    "cli": {
        "prompt_column": "pass --prompt-column (prompt_column= in Python)",
        "pick_format": "pass --format trl / hh_rlhf / listwise, or --format jsonl / csv to import the prompts only",
        "forced_format": "--format {fmt}",
        "name_format": "pass --format (fmt= in Python)",
    },
    "ui": {
        "prompt_column": f"type the name of the column that holds the prompt into the form's "
                         f"'{FORM_LABELS['prompt_column']}' field",
        "pick_format": f"choose trl / hh_rlhf / listwise in the form's '{FORM_LABELS['format']}' field, or jsonl / "
                       f"csv there to import the prompts only",
        "forced_format": f"{FORM_LABELS['format']} {{fmt}}",
        "name_format": f"choose the file's format in the form's '{FORM_LABELS['format']}' field",
    },
}


def _hint(terms: str, key: str, **kw) -> str:
    return _HINTS[terms][key].format(**kw)


_CTRL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


class DataFormatError(ValueError):
    """Bad input. `str()` names the file and (1-based) line: "data.jsonl, line 3: invalid JSON ..."."""

    def __init__(self, path: Any, line: int | None, message: str):
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(self.path, line, message)

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


class _RowError(Exception):
    """Raised inside row interpretation; converted to DataFormatError with the row's line."""


# ----------------------------------------------------------------------------------------------- text helpers
def clean_text(s: str) -> str:
    """Remove control characters (keeps TAB/LF/CR) and lone surrogates, CRLF -> LF, strip outer whitespace."""
    return _CTRL_RE.sub("", s.replace("\r\n", "\n")).strip()


def _merge_same_role(msgs: list[dict]) -> list[dict]:
    out: list[dict] = []
    for m in msgs:
        if out and out[-1]["role"] == m["role"]:
            a, b = out[-1]["content"], m["content"]
            out[-1] = {"role": m["role"], "content": f"{a}\n\n{b}" if a and b else (a or b)}
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def parse_transcript(text: str) -> list[dict]:
    """Parse an HH-style transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...", optionally led by "\\n\\nSystem: ...")
    into messages. Contents are cleaned; same-role neighbours are merged; an empty trailing turn is kept."""
    s = text.replace("\r\n", "\n")
    if not s.startswith("\n\n") and s.lstrip().startswith(("Human:", "System:")):
        s = "\n\n" + s.lstrip()
    msgs: list[dict] = []
    if s.startswith("\n\nSystem:"):
        cut = s.find("\n\nHuman:")
        if cut < 0:
            raise _RowError("transcript has a 'System:' turn but no 'Human:' turn")
        msgs.append({"role": "system", "content": clean_text(s[len("\n\nSystem:"):cut])})
        s = s[cut:]
    parts = _TURN_RE.split(s)
    if parts[0].strip():
        raise _RowError(f"text before the first '\\n\\nHuman:' turn: {parts[0].strip()[:60]!r}")
    if len(parts) < 3:
        raise _RowError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
    for i in range(1, len(parts), 2):
        msgs.append({"role": _HH_ROLE[parts[i]], "content": clean_text(parts[i + 1])})
    return _merge_same_role(msgs)


def _is_transcript(s: str) -> bool:
    return s.startswith(("\n\nHuman:", "\n\nSystem:")) or (
        s.lstrip().startswith("Human:") and "\n\nAssistant:" in s
    )


def parse_prompt_string(s: str) -> list[dict]:
    """A string prompt -> messages: an HH transcript (see module doc) or a single user turn."""
    if _is_transcript(s):
        msgs = parse_transcript(s)
        if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
            msgs = msgs[:-1]  # the "\n\nAssistant:" generation cue
        return msgs
    return [{"role": "user", "content": clean_text(s)}]


def _messages(value: Any, what: str) -> list[dict]:
    """Validate a role/content message list; returns cleaned, same-role-merged messages."""
    if not isinstance(value, list) or not value:
        raise _RowError(f"{what} must be a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _RowError(f"{what}[{k}] must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise _RowError(f"{what}[{k}] has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise _RowError(f"{what}[{k}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": clean_text(content)})
    return _merge_same_role(out)


# ------------------------------------------------------------------------------------------------ row context
@dataclass
class _Ctx:
    path: str
    source: str
    split: str | None
    tags: list[str]
    prompt_column: str
    response_column: str | None
    max_bytes: int
    max_prompt_bytes: int
    kind: str = ""
    terms: str = "cli"
    extra: dict = field(default_factory=dict)

    def text(self, value: Any, what: str, *, allow_empty: bool = True) -> str:
        if not isinstance(value, str):
            raise _RowError(f"{what} must be a string, got {type(value).__name__}")
        if len(value) > self.max_bytes or len(value.encode("utf-8", "surrogatepass")) > self.max_bytes:
            raise _RowError(f"{what} is larger than {self.max_bytes} bytes")
        t = clean_text(value)
        if not t and not allow_empty:
            raise _RowError(f"{what} is empty")
        return t

    def prompt(self, value: Any, what: str | None = None) -> list[dict]:
        what = what or f"column {self.prompt_column!r}"
        if value is None or (isinstance(value, float) and value != value):  # None / NaN
            raise _RowError(f"{what} is empty")
        if isinstance(value, str):
            if len(value) > 4 * self.max_prompt_bytes:  # cheap pre-check before parsing huge strings
                raise _RowError(f"prompt is larger than the {self.max_prompt_bytes}-byte cap")
            msgs = parse_prompt_string(value)
        elif isinstance(value, list):
            msgs = _messages(value, what)
        else:
            raise _RowError(f"{what} must be a string or a list of messages, got {type(value).__name__}")
        return self.check_prompt(msgs, what)

    def check_prompt(self, msgs: list[dict], what: str) -> list[dict]:
        if not msgs or msgs[-1]["role"] != "user":
            raise _RowError(f"{what} must end with a user turn")
        if not msgs[-1]["content"]:
            raise _RowError(f"{what} is empty")
        if any(m["role"] == "system" for m in msgs[1:]):
            raise _RowError(f"{what}: a system turn may only come first")
        size = sum(len(m["content"].encode("utf-8")) for m in msgs)
        if size > self.max_prompt_bytes:
            raise _RowError(f"prompt is {size} bytes, over the {self.max_prompt_bytes}-byte cap")
        return msgs

    def row_split(self, row: dict) -> str:
        if self.split is not None:
            return self.split
        v = row.get("split")
        if v is None or v == "":
            return "train"
        if not isinstance(v, str):
            raise _RowError(f"column 'split' must be a string, got {type(v).__name__}")
        v = _SPLIT_ALIASES.get(v.strip().lower(), v.strip().lower())
        if v not in SPLITS:
            raise _RowError(f"column 'split' is {row.get('split')!r}; expected one of {', '.join(SPLITS)}")
        return v

    def row_tags(self, row: dict | None) -> list[str]:
        tags = list(self.tags)
        v = None if row is None else row.get("tags")
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip().startswith("[") else re.split(r"[,;]", v)
            except json.JSONDecodeError:
                raise _RowError(f"column 'tags' is not a JSON list: {v[:60]!r}") from None
        if v is not None and not (isinstance(v, float) and v != v):
            if not isinstance(v, (list, tuple)) or not all(isinstance(t, str) for t in v):
                raise _RowError("column 'tags' must be a list of strings")
            tags += [clean_text(t) for t in v]
        return _dedupe_tags(tags)

    def record(self, messages, responses, row=None, *, split=None, extra_tags=()) -> dict:
        return {
            "messages": messages,
            "source": self.source,
            "tags": _dedupe_tags(self.row_tags(row) + list(extra_tags)),
            "split": split or (self.row_split(row) if row is not None else (self.split or "train")),
            "responses": responses,
        }


def _dedupe_tags(tags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for t in tags:
        t = t.strip()
        if t and t not in out:
            out.append(t)
    return out


# ----------------------------------------------------------------------------------------------- row sources
Rows = Iterator[tuple[int, dict]]


def _open_binary(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


_MAGIC = ((b"\x1f\x8b", "gzip-compressed data (name the file *.gz)"), (b"PAR1", "a parquet file (use .parquet)"),
          (b"PK\x03\x04", "a zip archive"), (b"%PDF", "a PDF document"), (b"\x89PNG", "a PNG image"))


def _sniff_binary(path: Path, head: bytes) -> None:
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise DataFormatError(path, 1, f"binary data: {what}; expected a UTF-8 text file")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise DataFormatError(path, line, "binary data (NUL bytes): expected a UTF-8 text file")


BLANK_BLOCK = 1 << 20  # JSON Lines: runs of blank lines are skipped a block at a time (bytes.count, not a loop)


def _iter_lines(path: Path, max_bytes: int, skip_blank: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) with a per-line byte cap; binary / invalid UTF-8 / corrupt gzip -> error.
    `skip_blank`: blank lines are not yielded, and a run of them costs one bytes.count per megabyte (64 MiB of
    gzipped newlines: well under a second, not a Python loop over 64 million lines)."""
    lineno = 0
    try:
        with _open_binary(path) as f:
            head = f.read(8192)
            f.seek(0)
            _sniff_binary(path, head)
            while True:
                if skip_blank:
                    block = f.peek(BLANK_BLOCK)[:BLANK_BLOCK] if hasattr(f, "peek") else b""
                    if block and not block.strip(b" \t\r\n") and b"\n" in block:
                        cut = block.rindex(b"\n") + 1
                        lineno += block.count(b"\n", 0, cut)
                        f.read(cut)
                        continue
                raw = f.readline(max_bytes + 1)
                if not raw:
                    break
                lineno += 1
                if skip_blank and not raw.strip():
                    continue
                if len(raw) > max_bytes and not (len(raw) == max_bytes + 1 and raw.endswith(b"\n")):
                    raise DataFormatError(path, lineno, f"line is longer than {max_bytes} bytes (the per-line cap)")
                if b"\x00" in raw:
                    raise DataFormatError(path, lineno, "binary data (NUL bytes): expected a UTF-8 text file")
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(path, lineno, f"invalid UTF-8 at byte offset {e.start} of the line") from None
                yield lineno, line
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise DataFormatError(path, None, "no such file") from None
        raise DataFormatError(path, lineno + 1, f"cannot read: {type(e).__name__}: {e}") from None


def _iter_jsonl(path: Path, max_bytes: int) -> Rows:
    for lineno, line in _iter_lines(path, max_bytes, skip_blank=True):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise DataFormatError(path, lineno, "invalid JSON: nested too deeply") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _iter_json(path: Path, max_bytes: int, prompt_column: str) -> Rows:
    """A .json file: a JSON array of objects (or of strings = prompts), else treated as JSON Lines."""
    try:
        with _open_binary(path) as f:
            head = f.read(8192)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(path, 1, f"cannot read: {type(e).__name__}: {e}") from None
    _sniff_binary(path, head)
    if not head.lstrip(codecs.BOM_UTF8 + b" \t\r\n").startswith(b"["):
        yield from _iter_jsonl(path, max_bytes)
        return
    with _open_binary(path) as f:
        raw = f.read(MAX_JSON_ARRAY_BYTES + 1)
    if len(raw) > MAX_JSON_ARRAY_BYTES:
        raise DataFormatError(path, None, f"JSON array file over {MAX_JSON_ARRAY_BYTES} bytes; use JSON Lines")
    if b"\x00" in raw:
        raise DataFormatError(path, raw[: raw.index(b"\x00")].count(b"\n") + 1, "binary data (NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataFormatError(path, raw[: e.start].count(b"\n") + 1, "invalid UTF-8") from None
    dec = json.JSONDecoder()
    ws = re.compile(r"[ \t\r\n]*")
    i = ws.match(text, 0).end() + 1  # past '['
    line, last = 1, 0
    while True:
        i = ws.match(text, i).end()
        line += text.count("\n", last, i)
        last = i
        if i < len(text) and text[i] == "]":
            break
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise DataFormatError(path, line, "invalid JSON: nested too deeply") from None
        if isinstance(obj, str):
            obj = {prompt_column: obj}
        if not isinstance(obj, dict):
            raise DataFormatError(path, line, f"expected a JSON object, got {type(obj).__name__}")
        yield line, obj
        i = ws.match(text, end).end()
        if i < len(text) and text[i] == ",":
            i += 1
        elif not (i < len(text) and text[i] == "]"):
            raise DataFormatError(path, line + text.count("\n", last, i), "invalid JSON: expected ',' or ']'")
    if text[i + 1:].strip():
        raise DataFormatError(path, line, "invalid JSON: extra data after the array")


def _iter_csv(path: Path, max_bytes: int, delimiter: str) -> Rows:
    lines = _iter_lines(path, max_bytes)
    state = {"line": 0}

    def text_lines() -> Iterator[str]:
        for n, line in lines:
            state["line"] = n
            yield line

    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, max_bytes))
    try:
        reader = csv.reader(text_lines(), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataFormatError(path, state["line"], f"CSV error: {e}") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        while True:
            start = state["line"] + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise DataFormatError(path, start, f"CSV error: {e}") from None
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataFormatError(path, start, f"row has {len(cells)} fields, the header has {len(header)}")
            yield start, dict(zip(header, cells))
    finally:
        csv.field_size_limit(old_limit)


def _iter_parquet(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataFormatError(path, None, f"not a readable parquet file: {e}") from None
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except pa.ArrowException as e:
        raise DataFormatError(path, n + 1, f"parquet read error: {e}") from None


def _pick_split(dd, hf_split: str | None, where: str):
    names = list(dd.keys())
    if hf_split is not None:
        if hf_split not in dd:
            raise DataFormatError(where, None, f"no split {hf_split!r}; available: {', '.join(names)}")
        return dd[hf_split]
    if len(names) == 1:
        return dd[names[0]]
    raise DataFormatError(where, None, f"several splits ({', '.join(names)}): pass hf_split=")


def _iter_dataset(ds) -> Rows:
    for n, row in enumerate(ds, start=1):
        yield n, dict(row)


def _load_hf_disk(path: Path, hf_split: str | None):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad directory
        raise DataFormatError(path, None, f"not a datasets.save_to_disk directory: {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, hf_split, str(path))
    return ds


def _load_hub(name: str, hf_split: str | None, hf_config: str | None):
    import datasets

    try:
        return datasets.load_dataset(name, hf_config, split=hf_split or "train")
    except Exception as e:  # noqa: BLE001
        raise DataFormatError(
            name, None,
            f"cannot load dataset {name!r} from the Hugging Face hub (no network, and not in the local cache?): "
            f"{type(e).__name__}: {e}",
        ) from None


# --------------------------------------------------------------------------------------------- interpretation
def _fail(ctx: _Ctx, line: int, e: Exception) -> DataFormatError:
    return DataFormatError(ctx.path, line, str(e))


def _build_hh(rows: Rows, ctx: _Ctx) -> list[dict]:
    out = []
    for line, row in rows:
        try:
            for col in ("chosen", "rejected"):
                if col not in row:
                    raise _RowError(f"missing column {col!r} (columns: {', '.join(map(str, row))})")
            turns = {}
            for col in ("chosen", "rejected"):
                v = row[col]
                if isinstance(v, str):
                    if len(v.encode("utf-8", "surrogatepass")) > ctx.max_bytes:
                        raise _RowError(f"{col} is larger than {ctx.max_bytes} bytes")
                    try:
                        msgs = parse_transcript(v)
                    except _RowError as e:
                        raise _RowError(f"{col} is not an HH dialogue (and there is no {ctx.prompt_column!r} "
                                        f"column): {e}") from None
                else:
                    msgs = _messages(v, col)
                if msgs[-1]["role"] != "assistant":
                    raise _RowError(f"{col} does not end with an assistant turn")
                turns[col] = msgs
            prompt = turns["chosen"][:-1]
            extra = []
            if prompt != turns["rejected"][:-1]:
                extra = ["hh-divergent-context"]
            prompt = ctx.check_prompt(prompt, "the dialogue before the final assistant turn")
            c, r = turns["chosen"][-1]["content"], turns["rejected"][-1]["content"]
            responses = [
                {"text": c, "origin": "dataset:chosen", "rank": 0},
                {"text": r, "origin": "dataset:rejected", "rank": 0 if c == r else 1},
            ]
            out.append(ctx.record(prompt, responses, row, extra_tags=extra))
        except _RowError as e:
            raise _fail(ctx, line, e) from None
    return out


def _answer(ctx: _Ctx, value: Any, col: str, prompt: list[dict]) -> str:
    """A TRL chosen/rejected value -> the answer text."""
    if isinstance(value, str):
        return ctx.text(value, col)
    msgs = _messages(value, col)
    if len(msgs) > 1 and msgs[: len(prompt)] == prompt:  # full conversation stored in chosen/rejected
        msgs = msgs[len(prompt):]
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise _RowError(f"{col} must be a string or a list holding the assistant message")
    if len(msgs[0]["content"].encode("utf-8")) > ctx.max_bytes:
        raise _RowError(f"{col} is larger than {ctx.max_bytes} bytes")
    return msgs[0]["content"]


def _ranks_if_consistent(texts: list[str], pairs: list[tuple[str, str]]) -> dict[str, int] | None:
    """Ranks (0 best, dense) whose full pair set equals `pairs` exactly, or None if no such ranking exists."""
    worse: dict[str, set[str]] = {t: set() for t in texts}
    indeg = {t: 0 for t in texts}
    for c, r in pairs:
        worse[c].add(r)
        indeg[r] += 1
    depth = {t: 0 for t in texts}
    queue = [t for t in texts if indeg[t] == 0]
    seen = 0
    while queue:
        t = queue.pop()
        seen += 1
        for w in worse[t]:
            depth[w] = max(depth[w], depth[t] + 1)
            indeg[w] -= 1
            if indeg[w] == 0:
                queue.append(w)
    if seen != len(texts):  # a cycle
        return None
    derived = {(a, b) for a in texts for b in texts if depth[a] < depth[b]}
    return depth if derived == set(pairs) else None


def _build_trl(rows: Rows, ctx: _Ctx) -> list[dict]:
    groups: dict[str, dict] = {}  # prompt key -> {"messages", "pairs": [..]}
    for line, row in rows:
        try:
            missing = [c for c in (ctx.prompt_column, "chosen", "rejected") if c not in row]
            if missing:
                raise _RowError(
                    f"missing column(s) {', '.join(map(repr, missing))} (columns: {', '.join(map(str, row))})"
                )
            prompt = ctx.prompt(row[ctx.prompt_column])
            chosen = _answer(ctx, row["chosen"], "chosen", prompt)
            rejected = _answer(ctx, row["rejected"], "rejected", prompt)
        except _RowError as e:
            raise _fail(ctx, line, e) from None
        g = groups.setdefault(json.dumps(prompt, ensure_ascii=False), {"messages": prompt, "pairs": []})
        if (chosen, rejected) not in g["pairs"]:
            g["pairs"].append((chosen, rejected))
    out = []
    split = ctx.split or "train"
    for g in groups.values():
        prompt, pairs = g["messages"], g["pairs"]
        ties = [p for p in pairs if p[0] == p[1]]
        strict = [p for p in pairs if p[0] != p[1]]
        texts: list[str] = []
        for c, r in strict:
            for t in (c, r):
                if t not in texts:
                    texts.append(t)
        ranks = _ranks_if_consistent(texts, strict) if strict else None
        if ranks is not None:
            chosen_set = {c for c, _ in strict}
            rejected_set = {r for _, r in strict}
            responses = [
                {"text": t, "rank": ranks[t],
                 "origin": "dataset" if (t in chosen_set and t in rejected_set)
                 else ("dataset:chosen" if t in chosen_set else "dataset:rejected")}
                for t in texts
            ]
            out.append(ctx.record(prompt, responses, split=split))
        else:
            for c, r in strict:
                out.append(ctx.record(prompt, [{"text": c, "origin": "dataset:chosen", "rank": 0},
                                               {"text": r, "origin": "dataset:rejected", "rank": 1}], split=split))
        for c, _ in ties:
            out.append(ctx.record(prompt, [{"text": c, "origin": "dataset:chosen", "rank": 0},
                                           {"text": c, "origin": "dataset:rejected", "rank": 0}], split=split))
    return out


def _build_listwise(rows: Rows, ctx: _Ctx) -> list[dict]:
    out = []
    for line, row in rows:
        try:
            missing = [c for c in (ctx.prompt_column, "responses") if c not in row]
            if missing:
                raise _RowError(
                    f"missing column(s) {', '.join(map(repr, missing))} (columns: {', '.join(map(str, row))})"
                )
            prompt = ctx.prompt(row[ctx.prompt_column])
            texts = row["responses"]
            if not isinstance(texts, list):
                raise _RowError("column 'responses' must be a list of strings")
            texts = [ctx.text(t, f"responses[{k}]") for k, t in enumerate(texts)]
            ranks = row.get("ranks")
            ranks = [None] * len(texts) if ranks is None else ranks
            origins = row.get("origins")
            origins = ["dataset"] * len(texts) if origins is None else origins
            for name, v in (("ranks", ranks), ("origins", origins)):
                if not isinstance(v, list) or len(v) != len(texts):
                    raise _RowError(f"column {name!r} must be a list as long as 'responses' ({len(texts)})")
            for k, rk in enumerate(ranks):
                if rk is not None and (isinstance(rk, bool) or not isinstance(rk, int) or rk < 0):
                    raise _RowError(f"ranks[{k}] must be a non-negative integer or null, got {rk!r}")
            for k, o in enumerate(origins):
                if not isinstance(o, str) or not _ORIGIN_RE.match(o):
                    raise _RowError(f"origins[{k}] is not a valid origin: {o!r}")
            responses = [{"text": t, "origin": o, "rank": rk} for t, o, rk in zip(texts, origins, ranks)]
            out.append(ctx.record(prompt, responses, row))
        except _RowError as e:
            raise _fail(ctx, line, e) from None
    return out


def _build_plain(rows: Rows, ctx: _Ctx) -> list[dict]:
    out = []
    seen_response_column = False
    first_columns: list[str] | None = None
    for line, row in rows:
        if first_columns is None:
            first_columns = list(map(str, row))
        try:
            if ctx.prompt_column not in row:
                raise _RowError(
                    f"missing prompt column {ctx.prompt_column!r} (columns: {', '.join(map(str, row))}); "
                    f"{_hint(ctx.terms, 'prompt_column')}"
                )
            prompt = ctx.prompt(row[ctx.prompt_column])
            responses = []
            if ctx.response_column is not None and ctx.response_column in row:
                seen_response_column = True
                v = row[ctx.response_column]
                vals = [] if v is None else (v if isinstance(v, list) else [v])
                responses = [{"text": ctx.text(t, f"{ctx.response_column}[{k}]"), "origin": "dataset", "rank": None}
                             for k, t in enumerate(vals)]
            out.append(ctx.record(prompt, responses, row))
        except _RowError as e:
            raise _fail(ctx, line, e) from None
    if ctx.response_column is not None and not seen_response_column:
        raise DataFormatError(ctx.path, 1, f"missing response column {ctx.response_column!r} "
                                           f"(columns: {', '.join(first_columns or [])})")
    return out


_BUILDERS: dict[str, Callable[[Rows, _Ctx], list[dict]]] = {
    "hh_rlhf": _build_hh, "trl": _build_trl, "listwise": _build_listwise, "plain": _build_plain,
}
_SOURCE_LABEL = {"hh_rlhf": "hh-rlhf", "trl": "trl", "listwise": "listwise"}


def _detect_kind(row: dict, prompt_column: str) -> str:
    cols = set(row)
    if {"chosen", "rejected"} <= cols and prompt_column not in cols:
        return "hh_rlhf"
    if {prompt_column, "chosen", "rejected"} <= cols:
        return "trl"
    if {prompt_column, "responses", "ranks"} <= cols:
        return "listwise"
    return "plain"


def _plain_rows_checked(rows, where: str, terms: str = "cli"):
    """Rows of a file detected as plain prompts (from its first row): a row with preference columns (or half of a
    pair, e.g. a misspelt 'rejected') would lose them silently, so it is an error instead."""
    for line, row in rows:
        if isinstance(row, dict):
            cols = set(row)
            pair = {"chosen", "rejected"} & cols
            if pair or {"responses", "ranks"} <= cols:
                what = (f"'{sorted(pair)[0]}' without '{({'chosen', 'rejected'} - pair).pop()}' (a misspelt column?)"
                        if len(pair) == 1 else
                        "preference columns (" + ", ".join(sorted(pair or {"responses", "ranks"})) + ")")
                raise DataFormatError(where, line, f"this row has {what}; the file is read as plain prompts (from "
                                      f"its first row's columns), which would drop them. Give every row the same "
                                      f"columns, or {_hint(terms, 'pick_format')}")
        yield line, row


def _detect_container(path: Path, fmt: str | None = None, terms: str = "cli") -> str:
    """The container from the file name; for a forced interpretation (`fmt` hh_rlhf / trl / listwise) of a file
    whose name says nothing, from its first bytes (Parquet magic, or JSON lines / a JSON array)."""
    if path.is_dir():
        return "hf_disk"
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                      (".tsv", "tsv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(ext):
            return kind
    if fmt is not None:
        try:
            with open(path, "rb") as f:
                head = f.read(4096)
        except OSError as e:
            raise DataFormatError(path, None, f"cannot read: {e.strerror or e}") from None
        if head[:4] == b"PAR1":
            return "parquet"
        first = head.lstrip()[:1]
        if first == b"{":
            return "jsonl"
        if first == b"[":
            return "json"
        raise DataFormatError(path, None, f"{_hint(terms, 'forced_format', fmt=fmt)} reads JSON lines, a JSON array, "
                                          "CSV/TSV or Parquet, and "
                                          "this file's name (no .jsonl/.json/.csv/.tsv/.parquet ending) and first "
                                          "bytes do not say which; rename it with the right ending")
    raise DataFormatError(path, None, "cannot detect the format from the file name (expected .jsonl, .jsonl.gz, "
                                      ".json, .csv, .tsv, .parquet or a datasets directory); "
                                      + _hint(terms, "name_format"))


# ------------------------------------------------------------------------------------------------- public API
def read_records(
    path: str | Path,
    fmt: str = "auto",
    *,
    prompt_column: str = "prompt",
    response_column: str | None = None,
    source: str | None = None,
    split: str | None = None,
    tags: Iterable[str] | None = None,
    hf_split: str | None = None,
    hf_config: str | None = None,
    max_bytes: int = MAX_LINE_BYTES,
    max_prompt_bytes: int = MAX_PROMPT_BYTES,
    terms: str = "cli",
) -> list[dict]:
    """Read a file (or a datasets directory, or a hub dataset name for fmt="hub") into ImportRecords.

    `fmt`: one of FORMATS. hh_rlhf / trl / listwise force the interpretation (container by extension);
    jsonl / csv force the container and a plain prompt file; parquet / hf_disk / hub force the container and
    interpret by columns. `split` overrides per-row splits; `tags` are added to every record; `source` defaults to
    "<format>:<file name>". `terms`: "cli" or "ui", how errors name the options / form fields to use. Raises
    DataFormatError on any bad input; never returns partial results.
    """
    if terms not in TERMS:
        raise ValueError(f"terms must be one of {', '.join(TERMS)}, got {terms!r}")
    where = str(path)
    if fmt not in FORMATS:
        raise DataFormatError(where, None, f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if split is not None:
        s = _SPLIT_ALIASES.get(split, split)
        if s not in SPLITS:
            raise DataFormatError(where, None, f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        split = s
    tag_list = _dedupe_tags(tags or [])
    if max_bytes < 1 or max_prompt_bytes < 1:
        raise ValueError("max_bytes and max_prompt_bytes must be positive")

    name = where
    if fmt == "hub":
        container = "hub"
    else:
        p = Path(path)
        if not p.exists():
            raise DataFormatError(where, None, "no such file or directory")
        name = p.name
        if fmt in ("jsonl", "csv", "parquet", "hf_disk"):
            container = fmt
            if fmt == "csv" and p.name.lower().removesuffix(".gz").endswith(".tsv"):
                container = "tsv"
            if fmt == "jsonl" and p.name.lower().removesuffix(".gz").endswith(".json"):
                container = "json"
        elif fmt in ("hh_rlhf", "trl", "listwise"):
            container = _detect_container(p, fmt, terms)
        else:
            container = _detect_container(p, terms=terms)
        if container == "hf_disk" and not p.is_dir():
            raise DataFormatError(where, None, "hf_disk expects a datasets.save_to_disk directory")
        if container != "hf_disk" and p.is_dir():
            raise DataFormatError(where, None, f"is a directory, not a {container} file")

    if container == "jsonl":
        rows = _iter_jsonl(Path(path), max_bytes)
    elif container == "json":
        rows = _iter_json(Path(path), max_bytes, prompt_column)
    elif container in ("csv", "tsv"):
        rows = _iter_csv(Path(path), max_bytes, "\t" if container == "tsv" else ",")
    elif container == "parquet":
        rows = _iter_parquet(Path(path))
    elif container == "hf_disk":
        rows = _iter_dataset(_load_hf_disk(Path(path), hf_split))
    else:
        rows = _iter_dataset(_load_hub(where, hf_split, hf_config))

    first = next(rows, None)
    if first is None:
        raise DataFormatError(where, 1, "file is empty: no records")
    if fmt in ("hh_rlhf", "trl", "listwise"):
        kind = fmt
    elif fmt in ("jsonl", "csv"):
        kind = "plain"
    else:
        kind = _detect_kind(first[1], prompt_column)
    label = _SOURCE_LABEL.get(kind, "hub" if container == "hub" else {"tsv": "csv", "json": "jsonl"}.get(
        container, container))
    ctx = _Ctx(path=where, source=source or f"{label}:{name}", split=split, tags=tag_list,
               prompt_column=prompt_column, response_column=response_column, max_bytes=max_bytes,
               max_prompt_bytes=max_prompt_bytes, kind=kind, terms=terms)
    rows = chain([first], rows)
    if kind == "plain" and fmt not in ("jsonl", "csv"):  # detected from the first row: every row must agree
        rows = _plain_rows_checked(rows, where, terms)
    records = _BUILDERS[kind](rows, ctx)
    if not records:
        raise DataFormatError(where, 1, "no records")
    return records


def read_hh_rlhf(path, **kw) -> list[dict]:
    """HH-RLHF dialogues (chosen / rejected) -> one record per row with 2 ranked responses."""
    return read_records(path, "hh_rlhf", **kw)


def read_trl(path, **kw) -> list[dict]:
    """TRL preference pairs (prompt / chosen / rejected; strings or messages) -> records (see module doc)."""
    return read_records(path, "trl", **kw)


def read_listwise(path, **kw) -> list[dict]:
    """Listwise rows (prompt / responses / ranks / origins), e.g. export_listwise or export_parquet output."""
    return read_records(path, "listwise", **kw)


def read_jsonl(path, **kw) -> list[dict]:
    """Plain JSONL prompt file (`prompt_column`; responses only with `response_column=`)."""
    return read_records(path, "jsonl", **kw)


def read_csv(path, **kw) -> list[dict]:
    """Plain CSV/TSV prompt file (`prompt_column`; responses only with `response_column=`)."""
    return read_records(path, "csv", **kw)


def read_parquet(path, **kw) -> list[dict]:
    """Parquet file, interpreted by its columns."""
    return read_records(path, "parquet", **kw)


def read_hf_disk(path, **kw) -> list[dict]:
    """A `datasets.save_to_disk` directory (pass hf_split= for a DatasetDict with several splits)."""
    return read_records(path, "hf_disk", **kw)


def read_hub(name: str, **kw) -> list[dict]:
    """`datasets.load_dataset(name, hf_config, split=hf_split or "train")`; offline -> local cache only."""
    return read_records(name, "hub", **kw)
