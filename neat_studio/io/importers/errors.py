"""Limits, errors and how an error names the control to use (the CLI's options or the web UI's import form)."""
from __future__ import annotations

from typing import Any

MAX_LINE_BYTES = 8 * 1024 * 1024  # per line / per text cap
MAX_PROMPT_BYTES = 64 * 1024  # a prompt (sum of its message contents, UTF-8) above this is an error
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


def hint(terms: str, key: str, **kw) -> str:
    return _HINTS[terms][key].format(**kw)


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


class RowError(Exception):
    """Raised inside row interpretation; converted to DataFormatError with the row's line."""

