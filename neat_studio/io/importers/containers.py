"""Row sources of the importers: a file (JSON Lines, a JSON array, CSV/TSV, each optionally gzipped; Parquet), a
datasets directory or a hub dataset -> (1-based line or row number, row dict), with per-line caps and errors that
name the line; and the container of a file from its name (or first bytes)."""
from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Iterator

from .errors import DataFormatError, hint

MAX_JSON_ARRAY_BYTES = 64 * 1024 * 1024  # a .json file holding one JSON array is loaded whole, up to this size

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


def iter_jsonl(path: Path, max_bytes: int) -> Rows:
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


def iter_json(path: Path, max_bytes: int, prompt_column: str) -> Rows:
    """A .json file: a JSON array of objects (or of strings = prompts), else treated as JSON Lines."""
    try:
        with _open_binary(path) as f:
            head = f.read(8192)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(path, 1, f"cannot read: {type(e).__name__}: {e}") from None
    _sniff_binary(path, head)
    if not head.lstrip(codecs.BOM_UTF8 + b" \t\r\n").startswith(b"["):
        yield from iter_jsonl(path, max_bytes)
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


def iter_csv(path: Path, max_bytes: int, delimiter: str) -> Rows:
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


def iter_parquet(path: Path) -> Rows:
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


def iter_dataset(ds) -> Rows:
    for n, row in enumerate(ds, start=1):
        yield n, dict(row)


def load_hf_disk(path: Path, hf_split: str | None):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a bad directory
        raise DataFormatError(path, None, f"not a datasets.save_to_disk directory: {type(e).__name__}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, hf_split, str(path))
    return ds


def load_hub(name: str, hf_split: str | None, hf_config: str | None):
    import datasets

    try:
        return datasets.load_dataset(name, hf_config, split=hf_split or "train")
    except Exception as e:  # noqa: BLE001
        raise DataFormatError(
            name, None,
            f"cannot load dataset {name!r} from the Hugging Face hub (no network, and not in the local cache?): "
            f"{type(e).__name__}: {e}",
        ) from None


def detect_container(path: Path, fmt: str | None = None, terms: str = "cli") -> str:
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
        raise DataFormatError(path, None, f"{hint(terms, 'forced_format', fmt=fmt)} reads JSON lines, a JSON array, "
                                          "CSV/TSV or Parquet, and "
                                          "this file's name (no .jsonl/.json/.csv/.tsv/.parquet ending) and first "
                                          "bytes do not say which; rename it with the right ending")
    raise DataFormatError(path, None, "cannot detect the format from the file name (expected .jsonl, .jsonl.gz, "
                                      ".json, .csv, .tsv, .parquet or a datasets directory); "
                                      + hint(terms, "name_format"))

