"""Text helpers of the importers: normalisation, HH transcripts and role/content message lists (module doc of
neat_studio.io.importers: "Documented choices")."""
from __future__ import annotations

import re
from typing import Any

from .errors import RowError

ROLES = ("system", "user", "assistant")
_CTRL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


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
            raise RowError("transcript has a 'System:' turn but no 'Human:' turn")
        msgs.append({"role": "system", "content": clean_text(s[len("\n\nSystem:"):cut])})
        s = s[cut:]
    parts = _TURN_RE.split(s)
    if parts[0].strip():
        raise RowError(f"text before the first '\\n\\nHuman:' turn: {parts[0].strip()[:60]!r}")
    if len(parts) < 3:
        raise RowError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns found")
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


def parse_messages(value: Any, what: str) -> list[dict]:
    """Validate a role/content message list; returns cleaned, same-role-merged messages."""
    if not isinstance(value, list) or not value:
        raise RowError(f"{what} must be a non-empty list of messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError(f"{what}[{k}] must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise RowError(f"{what}[{k}] has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"{what}[{k}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": clean_text(content)})
    return _merge_same_role(out)

