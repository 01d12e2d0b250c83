"""Prompt-library helpers that are not SQL: diffs between immutable versions."""
from __future__ import annotations

import difflib


def diff_text(a: str, b: str, label_a: str = "a", label_b: str = "b") -> str:
    """Unified diff (word-wrapped lines kept as they are) between two prompt texts."""
    return "".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                        fromfile=label_a, tofile=label_b, lineterm="\n")) or "(no difference)\n"


def diff_versions(store, name: str, a: int | None, b: int | None) -> str:
    """Diff version `a` against `b` of one library prompt (defaults: previous vs latest)."""
    versions = store.list_versions(name)
    if not versions:
        raise ValueError(f"no system prompt named {name!r}")
    latest = max(v["version"] for v in versions)
    b = b or latest
    a = a or max(b - 1, 1)
    va, vb = store.get_system_prompt(name, a), store.get_system_prompt(name, b)
    if va is None or vb is None:
        raise ValueError(f"{name} has versions 1..{latest}; asked for {a} and {b}")
    return diff_text(va["text"], vb["text"], f"{name}@{a}", f"{name}@{b}")


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
