"""File -> list[ImportRecord] (pure: no store, no network unless `fmt="hub"` is asked for explicitly).

An ImportRecord (docs/ARCHITECTURE.md)::

    {"messages": [{"role": "user", "content": "..."}, ...],   # ends with a user turn
     "source": "hh-rlhf:harmless-base.test.jsonl.gz", "tags": [...], "split": "train"|"dev"|"test",
     "responses": [{"text": "...", "origin": "dataset:chosen", "rank": 0}, ...]}

Entry point: `read_records(path, fmt="auto", ...)` (this module). Its parts: `containers` (a file / directory / hub
dataset -> rows), `records` (rows -> ImportRecords, by kind), `text` (normalisation, transcripts, messages),
`errors` (limits, `DataFormatError`, how errors name the CLI's options or the UI's form fields).

Formats (`FORMATS`):

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

from itertools import chain
from pathlib import Path
from typing import Iterable

from .containers import (
    detect_container,
    iter_csv,
    iter_dataset,
    iter_json,
    iter_jsonl,
    iter_parquet,
    load_hf_disk,
    load_hub,
)
from .errors import FORM_LABELS, MAX_LINE_BYTES, MAX_PROMPT_BYTES, TERMS, DataFormatError
from .records import (
    BUILDERS,
    SOURCE_LABEL,
    SPLIT_ALIASES,
    SPLITS,
    RowContext,
    dedupe_tags,
    detect_kind,
    plain_rows_checked,
)
from .text import clean_text, parse_prompt_string, parse_transcript

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

FORMATS = ("auto", "hh_rlhf", "trl", "listwise", "jsonl", "csv", "parquet", "hf_disk", "hub")


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
        s = SPLIT_ALIASES.get(split, split)
        if s not in SPLITS:
            raise DataFormatError(where, None, f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        split = s
    tag_list = dedupe_tags(tags or [])
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
            container = detect_container(p, fmt, terms)
        else:
            container = detect_container(p, terms=terms)
        if container == "hf_disk" and not p.is_dir():
            raise DataFormatError(where, None, "hf_disk expects a datasets.save_to_disk directory")
        if container != "hf_disk" and p.is_dir():
            raise DataFormatError(where, None, f"is a directory, not a {container} file")

    if container == "jsonl":
        rows = iter_jsonl(Path(path), max_bytes)
    elif container == "json":
        rows = iter_json(Path(path), max_bytes, prompt_column)
    elif container in ("csv", "tsv"):
        rows = iter_csv(Path(path), max_bytes, "\t" if container == "tsv" else ",")
    elif container == "parquet":
        rows = iter_parquet(Path(path))
    elif container == "hf_disk":
        rows = iter_dataset(load_hf_disk(Path(path), hf_split))
    else:
        rows = iter_dataset(load_hub(where, hf_split, hf_config))

    first = next(rows, None)
    if first is None:
        raise DataFormatError(where, 1, "file is empty: no records")
    if fmt in ("hh_rlhf", "trl", "listwise"):
        kind = fmt
    elif fmt in ("jsonl", "csv"):
        kind = "plain"
    else:
        kind = detect_kind(first[1], prompt_column)
    label = SOURCE_LABEL.get(kind, "hub" if container == "hub" else {"tsv": "csv", "json": "jsonl"}.get(
        container, container))
    ctx = RowContext(path=where, source=source or f"{label}:{name}", split=split, tags=tag_list,
               prompt_column=prompt_column, response_column=response_column, max_bytes=max_bytes,
               max_prompt_bytes=max_prompt_bytes, kind=kind, terms=terms)
    rows = chain([first], rows)
    if kind == "plain" and fmt not in ("jsonl", "csv"):  # detected from the first row: every row must agree
        rows = plain_rows_checked(rows, where, terms)
    records = BUILDERS[kind](rows, ctx)
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
