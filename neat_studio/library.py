"""Prompt-library helpers that are not SQL: diffs between immutable versions."""
from __future__ import annotations

import difflib


def diff_text(a: str, b: str, label_a: str = "a", label_b: str = "b") -> str:
    """Unified diff (word-wrapped lines kept as they are) between two prompt texts. Every line ends with a newline
    in the diff, so a text without a final newline does not glue its last line to the next diff line."""
    la = [x + "\n" for x in (a or "").splitlines()]
    lb = [x + "\n" for x in (b or "").splitlines()]
    return "".join(difflib.unified_diff(la, lb, fromfile=label_a, tofile=label_b, lineterm="\n")) or "(no difference)\n"


def _params_lines(params: dict | None) -> str:
    import json

    return "".join(f"{k} = {json.dumps(v, sort_keys=True)}\n" for k, v in sorted((params or {}).items()))


def diff_versions(store, name: str, a: int | None, b: int | None) -> str:
    """Diff version `a` against `b` of one library prompt (defaults: previous vs latest): the text, then the
    generation parameters (one `key = value` line each) when they differ."""
    versions = store.list_versions(name)
    if not versions:
        raise ValueError(f"no system prompt named {name!r}")
    latest = max(v["version"] for v in versions)
    b = b or latest
    a = a or max(b - 1, 1)
    va, vb = store.get_system_prompt(name, a), store.get_system_prompt(name, b)
    if va is None or vb is None:
        raise ValueError(f"{name} has versions 1..{latest}; asked for {a} and {b}")
    text = diff_text(va["text"], vb["text"], f"{name}@{a}", f"{name}@{b}")
    pa, pb = _params_lines(va.get("params")), _params_lines(vb.get("params"))
    if pa == pb:
        return text
    if text == "(no difference)\n":
        text = "(text: no difference)\n"
    return text + diff_text(pa, pb, f"{name}@{a} params", f"{name}@{b} params")


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """Word-level diff of two prompt texts as segments `(op, text)`, op in "equal" | "delete" | "insert".
    Whitespace is kept with the word before it, so joining the "equal"+"insert" texts gives `b` back and
    joining "equal"+"delete" gives `a` back."""
    import re

    ta = re.findall(r"\S+\s*|\s+", a or "")
    tb = re.findall(r"\S+\s*|\s+", b or "")
    out: list[tuple[str, str]] = []
    sm = difflib.SequenceMatcher(a=ta, b=tb, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            out.append(("equal", "".join(ta[i1:i2])))
        else:
            if i2 > i1:
                out.append(("delete", "".join(ta[i1:i2])))
            if j2 > j1:
                out.append(("insert", "".join(tb[j1:j2])))
    return out
