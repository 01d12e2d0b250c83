"""Row interpretation of the importers: rows (dicts) -> ImportRecords, by kind (hh_rlhf / trl / listwise / plain
prompts), with the per-row checks (prompt, split, tags, origins) and the TRL pair merging of the module doc of
neat_studio.io.importers."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .containers import Rows
from .errors import DataFormatError, RowError, hint
from .text import clean_text, parse_messages, parse_prompt_string, parse_transcript

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "dev"}
_ORIGIN_RE = re.compile(
    r"^(policy|human|dataset|dataset:chosen|dataset:rejected|"
    r"(negative|positive):[A-Za-z0-9][A-Za-z0-9_.-]{0,63}@[0-9]+|compare:\S+)$"
)


@dataclass
class RowContext:
    """One read's settings (where, source, split, tags, columns, caps) and the per-row checks built on them."""

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
            raise RowError(f"{what} must be a string, got {type(value).__name__}")
        if len(value) > self.max_bytes or len(value.encode("utf-8", "surrogatepass")) > self.max_bytes:
            raise RowError(f"{what} is larger than {self.max_bytes} bytes")
        t = clean_text(value)
        if not t and not allow_empty:
            raise RowError(f"{what} is empty")
        return t

    def prompt(self, value: Any, what: str | None = None) -> list[dict]:
        what = what or f"column {self.prompt_column!r}"
        if value is None or (isinstance(value, float) and value != value):  # None / NaN
            raise RowError(f"{what} is empty")
        if isinstance(value, str):
            if len(value) > 4 * self.max_prompt_bytes:  # cheap pre-check before parsing huge strings
                raise RowError(f"prompt is larger than the {self.max_prompt_bytes}-byte cap")
            msgs = parse_prompt_string(value)
        elif isinstance(value, list):
            msgs = parse_messages(value, what)
        else:
            raise RowError(f"{what} must be a string or a list of messages, got {type(value).__name__}")
        return self.check_prompt(msgs, what)

    def check_prompt(self, msgs: list[dict], what: str) -> list[dict]:
        if not msgs or msgs[-1]["role"] != "user":
            raise RowError(f"{what} must end with a user turn")
        if not msgs[-1]["content"]:
            raise RowError(f"{what} is empty")
        if any(m["role"] == "system" for m in msgs[1:]):
            raise RowError(f"{what}: a system turn may only come first")
        size = sum(len(m["content"].encode("utf-8")) for m in msgs)
        if size > self.max_prompt_bytes:
            raise RowError(f"prompt is {size} bytes, over the {self.max_prompt_bytes}-byte cap")
        return msgs

    def row_split(self, row: dict) -> str:
        if self.split is not None:
            return self.split
        v = row.get("split")
        if v is None or v == "":
            return "train"
        if not isinstance(v, str):
            raise RowError(f"column 'split' must be a string, got {type(v).__name__}")
        v = SPLIT_ALIASES.get(v.strip().lower(), v.strip().lower())
        if v not in SPLITS:
            raise RowError(f"column 'split' is {row.get('split')!r}; expected one of {', '.join(SPLITS)}")
        return v

    def row_tags(self, row: dict | None) -> list[str]:
        tags = list(self.tags)
        v = None if row is None else row.get("tags")
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip().startswith("[") else re.split(r"[,;]", v)
            except json.JSONDecodeError:
                raise RowError(f"column 'tags' is not a JSON list: {v[:60]!r}") from None
        if v is not None and not (isinstance(v, float) and v != v):
            if not isinstance(v, (list, tuple)) or not all(isinstance(t, str) for t in v):
                raise RowError("column 'tags' must be a list of strings")
            tags += [clean_text(t) for t in v]
        return dedupe_tags(tags)

    def record(self, messages, responses, row=None, *, split=None, extra_tags=()) -> dict:
        return {
            "messages": messages,
            "source": self.source,
            "tags": dedupe_tags(self.row_tags(row) + list(extra_tags)),
            "split": split or (self.row_split(row) if row is not None else (self.split or "train")),
            "responses": responses,
        }


def dedupe_tags(tags: Iterable[str]) -> list[str]:
    out: list[str] = []
    for t in tags:
        t = t.strip()
        if t and t not in out:
            out.append(t)
    return out


def _fail(ctx: RowContext, line: int, e: Exception) -> DataFormatError:
    return DataFormatError(ctx.path, line, str(e))


def _build_hh(rows: Rows, ctx: RowContext) -> list[dict]:
    out = []
    for line, row in rows:
        try:
            for col in ("chosen", "rejected"):
                if col not in row:
                    raise RowError(f"missing column {col!r} (columns: {', '.join(map(str, row))})")
            turns = {}
            for col in ("chosen", "rejected"):
                v = row[col]
                if isinstance(v, str):
                    if len(v.encode("utf-8", "surrogatepass")) > ctx.max_bytes:
                        raise RowError(f"{col} is larger than {ctx.max_bytes} bytes")
                    try:
                        msgs = parse_transcript(v)
                    except RowError as e:
                        raise RowError(f"{col} is not an HH dialogue (and there is no {ctx.prompt_column!r} "
                                        f"column): {e}") from None
                else:
                    msgs = parse_messages(v, col)
                if msgs[-1]["role"] != "assistant":
                    raise RowError(f"{col} does not end with an assistant turn")
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
        except RowError as e:
            raise _fail(ctx, line, e) from None
    return out


def _answer(ctx: RowContext, value: Any, col: str, prompt: list[dict]) -> str:
    """A TRL chosen/rejected value -> the answer text."""
    if isinstance(value, str):
        return ctx.text(value, col)
    msgs = parse_messages(value, col)
    if len(msgs) > 1 and msgs[: len(prompt)] == prompt:  # full conversation stored in chosen/rejected
        msgs = msgs[len(prompt):]
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise RowError(f"{col} must be a string or a list holding the assistant message")
    if len(msgs[0]["content"].encode("utf-8")) > ctx.max_bytes:
        raise RowError(f"{col} is larger than {ctx.max_bytes} bytes")
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


def _build_trl(rows: Rows, ctx: RowContext) -> list[dict]:
    groups: dict[str, dict] = {}  # prompt key -> {"messages", "pairs": [..]}
    for line, row in rows:
        try:
            missing = [c for c in (ctx.prompt_column, "chosen", "rejected") if c not in row]
            if missing:
                raise RowError(
                    f"missing column(s) {', '.join(map(repr, missing))} (columns: {', '.join(map(str, row))})"
                )
            prompt = ctx.prompt(row[ctx.prompt_column])
            chosen = _answer(ctx, row["chosen"], "chosen", prompt)
            rejected = _answer(ctx, row["rejected"], "rejected", prompt)
        except RowError as e:
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


def _build_listwise(rows: Rows, ctx: RowContext) -> list[dict]:
    out = []
    for line, row in rows:
        try:
            missing = [c for c in (ctx.prompt_column, "responses") if c not in row]
            if missing:
                raise RowError(
                    f"missing column(s) {', '.join(map(repr, missing))} (columns: {', '.join(map(str, row))})"
                )
            prompt = ctx.prompt(row[ctx.prompt_column])
            texts = row["responses"]
            if not isinstance(texts, list):
                raise RowError("column 'responses' must be a list of strings")
            texts = [ctx.text(t, f"responses[{k}]") for k, t in enumerate(texts)]
            ranks = row.get("ranks")
            ranks = [None] * len(texts) if ranks is None else ranks
            origins = row.get("origins")
            origins = ["dataset"] * len(texts) if origins is None else origins
            for name, v in (("ranks", ranks), ("origins", origins)):
                if not isinstance(v, list) or len(v) != len(texts):
                    raise RowError(f"column {name!r} must be a list as long as 'responses' ({len(texts)})")
            for k, rk in enumerate(ranks):
                if rk is not None and (isinstance(rk, bool) or not isinstance(rk, int) or rk < 0):
                    raise RowError(f"ranks[{k}] must be a non-negative integer or null, got {rk!r}")
            for k, o in enumerate(origins):
                if not isinstance(o, str) or not _ORIGIN_RE.match(o):
                    raise RowError(f"origins[{k}] is not a valid origin: {o!r}")
            responses = [{"text": t, "origin": o, "rank": rk} for t, o, rk in zip(texts, origins, ranks)]
            out.append(ctx.record(prompt, responses, row))
        except RowError as e:
            raise _fail(ctx, line, e) from None
    return out


def _build_plain(rows: Rows, ctx: RowContext) -> list[dict]:
    out = []
    seen_response_column = False
    first_columns: list[str] | None = None
    for line, row in rows:
        if first_columns is None:
            first_columns = list(map(str, row))
        try:
            if ctx.prompt_column not in row:
                raise RowError(
                    f"missing prompt column {ctx.prompt_column!r} (columns: {', '.join(map(str, row))}); "
                    f"{hint(ctx.terms, 'prompt_column')}"
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
        except RowError as e:
            raise _fail(ctx, line, e) from None
    if ctx.response_column is not None and not seen_response_column:
        raise DataFormatError(ctx.path, 1, f"missing response column {ctx.response_column!r} "
                                           f"(columns: {', '.join(first_columns or [])})")
    return out


BUILDERS: dict[str, Callable[[Rows, RowContext], list[dict]]] = {
    "hh_rlhf": _build_hh, "trl": _build_trl, "listwise": _build_listwise, "plain": _build_plain,
}
SOURCE_LABEL = {"hh_rlhf": "hh-rlhf", "trl": "trl", "listwise": "listwise"}


def detect_kind(row: dict, prompt_column: str) -> str:
    cols = set(row)
    if {"chosen", "rejected"} <= cols and prompt_column not in cols:
        return "hh_rlhf"
    if {prompt_column, "chosen", "rejected"} <= cols:
        return "trl"
    if {prompt_column, "responses", "ranks"} <= cols:
        return "listwise"
    return "plain"


def plain_rows_checked(rows, where: str, terms: str = "cli"):
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
                                      f"columns, or {hint(terms, 'pick_format')}")
        yield line, row

