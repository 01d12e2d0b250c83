"""Shared helpers for the tab modules: the context object, identity/roles, safe rendering of untrusted text.

Everything a user, a dataset or a model wrote is UNTRUSTED. It is shown either in components that render text as
text (Textbox, Dataframe with datatype "str", Code) or, inside gr.HTML, only after `esc()`.
"""
from __future__ import annotations

import html
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import gradio as gr

from ..eval_metrics import overall_line
from .auth import LOCAL_USER, UserDB


def esc(text: Any) -> str:
    """HTML-escape anything (quotes too, so the result is safe inside attribute values)."""
    return html.escape("" if text is None else str(text), quote=True)


FOLD_OVER_CHARS = 800  # a text longer than this is shown folded ...
FOLD_HEAD_CHARS = 600  # ... its first ~600 characters, the rest behind a <details> element


def folded_html(text: Any, head: int = FOLD_HEAD_CHARS, over: int = FOLD_OVER_CHARS) -> str:
    """Escaped text; a long one (more than `over` characters) as its first ~`head` characters (cut at a space when
    there is one near) and the rest in a closed <details> element that says how much is folded."""
    t = "" if text is None else str(text)
    if len(t) <= over:
        return esc(t)
    cut = head
    space = max(t.rfind(" ", head - 100, head), t.rfind("\n", head - 100, head))
    if space > 0:
        cut = space + 1
    rest = t[cut:]
    return (f"{esc(t[:cut])}<details class='neat-fold'><summary>… show the rest ({len(rest):,} more characters; "
            f"{len(t):,} in all)</summary>{esc(rest)}</details>")


def fmt_num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def prompt_text(messages) -> str:
    """The last user turn of a messages list (what a table shows)."""
    if isinstance(messages, str):
        return messages
    for m in reversed(messages or []):
        if m.get("role") == "user":
            return m.get("content", "")
    return (messages or [{}])[-1].get("content", "") if messages else ""


def short(text: str, n: int = 140) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def parse_tags(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        items = value
    else:
        items = str(value).replace(";", ",").split(",")
    out = []
    for t in items:
        t = str(t).strip()
        if t and t not in out:
            out.append(t)
    return out


ANNOTATOR_COOKIE = "neat_annotator"  # without login: the annotator name this browser chose (kept a year)


def valid_annotator_name(name) -> str:
    """A name a browser may annotate under (the account rules: letters, digits, _ . @ -, up to 64); ValueError."""
    from .auth import _USERNAME

    name = str(name or "").strip()
    if not _USERNAME.match(name):
        raise ValueError("a name is 1-64 letters, digits or _ . @ - (starting with a letter or digit)")
    return name


def browser_name(request) -> str | None:
    """The valid annotator name in the request's `neat_annotator` cookie, or None."""
    from http.cookies import CookieError, SimpleCookie
    from urllib.parse import unquote

    headers = getattr(request, "headers", None) if request is not None else None
    raw = headers.get("cookie") if headers is not None else None
    if not raw:
        return None
    try:
        c = SimpleCookie()
        c.load(raw)
        morsel = c.get(ANNOTATOR_COOKIE)
        return valid_annotator_name(unquote(morsel.value)) if morsel else None
    except (CookieError, ValueError):
        return None


@dataclass
class Ctx:
    """What every tab's `build(ctx)` receives.

    - `studio`: the service layer (the ONLY thing tabs call for data).
    - `auth`: the user database, or None (single local user with the admin role).
    - `admin_only`: components that only admins see (hidden for annotators on page load). Server-side checks
      (`require_admin`) guard the handlers too: hiding is cosmetic, the check is the protection.
    - `components`: every tab's returned components by "tab.name", so tabs can wire cross-tab refreshes.
    A tab that wants fresh data whenever it is opened returns `"_on_show": (fn, inputs, outputs)` (or
    `(fn, outputs)`); app.py wires it to the tab's select event and to page load (not to page load with
    `"_load_with_page": False`).
    """

    studio: Any
    auth: UserDB | None = None
    admin_only: list = field(default_factory=list)
    components: dict = field(default_factory=dict)

    # -- identity ----------------------------------------------------------------------------------------------
    def user(self, request: gr.Request | None) -> str:
        """The signed-in user; without login, the name this browser chose (cookie `neat_annotator`), else
        `local`. Never a name taken from a request body."""
        if self.auth is None:
            return browser_name(request) or LOCAL_USER
        name = self.signed_in(request)
        if self.auth.must_change(name):
            raise gr.Error("Change your one-time password first (the form at the top of the page).")
        return name

    def signed_in(self, request: gr.Request | None) -> str:
        """The signed-in account (even one that still has to change its one-time password)."""
        name = getattr(request, "username", None) if request is not None else None
        if not name:
            raise gr.Error("Not signed in.")
        if not self.auth.active(name):
            raise gr.Error("This account is disabled.")
        return name

    def role(self, request: gr.Request | None) -> str:
        if self.auth is None:
            return "admin"
        return self.auth.role(self.user(request)) or "annotator"

    def is_admin(self, request: gr.Request | None) -> bool:
        try:
            return self.role(request) == "admin"
        except gr.Error:
            return False

    def require_admin(self, request: gr.Request | None, what: str = "do this") -> str:
        user = self.user(request)
        if self.role(request) != "admin":
            raise gr.Error(f"Only admins can {what} (you are signed in as {user}, annotator).")
        return user


class Tab:
    """A tab's handlers as the methods of one object, its components registered by name in `c` (filled while its
    build() lays them out; as LLaMA-Factory's web UI does). A handler's parameters are named after the components
    whose values it takes (besides Gradio's own `evt`, `request` and `progress`), so `bind` wires exactly those (or
    it takes set-style inputs and reads them with `named`), and its outputs are built by name (`pack`): no handler
    counts positions."""

    GRADIO_ARGS = ("evt", "request", "progress")

    def __init__(self, ctx: Ctx):
        self.ctx, self.st, self.c = ctx, ctx.studio, {}

    def comps(self, names) -> list:
        return [self.c[n] for n in names]

    def named(self, data: dict) -> dict:
        """{name: value} of set-style inputs ({component: value}, what Gradio passes)."""
        return {n: data[b] for n, b in self.c.items() if b in data}

    def inputs(self, fn) -> list:
        """The components named by `fn`'s parameters, in their order (KeyError for a name not registered)."""
        return [self.c[n] for n in inspect.signature(fn).parameters if n not in self.GRADIO_ARGS]

    def bind(self, trigger, fn, outputs: Iterable[str], **kw):
        """`trigger` (an event listener such as `button.click`, or a dependency's `.then`) runs `fn` with the
        values of its named components into the components named by `outputs`."""
        return trigger(fn, self.inputs(fn), [self.c[n] for n in outputs], **kw)

    @staticmethod
    def pack(names, values: dict) -> tuple:
        """The outputs `names` in their order from {name: value}; a name without a value is left as it is."""
        return tuple(values[n] if n in values else gr.update() for n in names)


def code_html(text: str, title: str) -> str:
    """A read-only text file with line numbers, one row per line (number and text in the same row, so a number
    can never drift from its line, as gr.Code's measured gutter did when it was filled while hidden). Escaped:
    the text renders inert."""
    rows = "".join(f"<div class='neat-code-line'><span class='neat-code-n'>{i}</span>"
                   f"<span class='neat-code-t'>{esc(line) or '&#8203;'}</span></div>"
                   for i, line in enumerate(text.splitlines(), 1))
    return f"<div class='neat-code'><div class='neat-code-title'>{esc(title)}</div>{rows}</div>"


def report_for_page(markdown: str | None) -> str:
    """An evaluation report's Markdown for the page: its chart images are relative files (charts/x.png) the
    browser cannot fetch, and the page shows them in a gallery below, so the image links become a pointer."""
    if not markdown:
        return ""
    out = re.sub(r"^!\[[^\]\n]*\]\([^)\n]*\)[ \t]*\n?", "", markdown, flags=re.M)
    return out.replace("## Charts\n", "## Charts\n\n(shown below)\n", 1) if out != markdown else out


def names_text(model_names) -> str:
    """' Models: <label> = run <id> · <name>; ...' for an evaluation report, whose labels are run folder names
    (ids): `model_names` = Studio.report_model_names(...) pairs. Plain text: escape it where it is shown."""
    parts = [f"{label} = {name}" if name != label else label for label, name in model_names or []]
    return f" Models: {'; '.join(parts)}." if parts else ""


def evaluation_updates(studio, eval_id: str, running: str, done: str, clear_report_on_failure: bool = False):
    """(message, report, charts) of an evaluation a tab started, while it runs and when it ends
    (Studio.watch_evaluation): `running` is said before the stage and count, `done` ("{out_dir}" filled in) with the
    report's model names and its verdict per model once it has finished (a warning when a model is worse than its
    base on any axis); a failure hides the charts (and clears the report when asked)."""
    for s in studio.watch_evaluation(eval_id):
        if s["status"] == "running":
            yield ok_box(f"{running}: {s['stage']} {s['done']}/{s['total']}…"), gr.update(), gr.update()
    if s["status"] == "failed":
        yield (error_box(f"Evaluation failed: {s['error']}"), "" if clear_report_on_failure else gr.update(),
               gr.update(visible=False))
        return
    said = done.format(out_dir=s["out_dir"]) + names_text(s.get("model_names"))
    verdicts = s.get("overall") or []
    if verdicts:  # the verdict in one line per model, a warning when one is worse than its base on any axis
        said += " Verdict: " + " ".join(f"{overall_line(o)}." for o in verdicts)
    box = warn_box if any(o["verdict"] == "worse" for o in verdicts) else ok_box
    yield box(said), report_for_page(s["markdown"]), gr.update(value=s["charts"], visible=bool(s["charts"]))


def error_box(message: str) -> str:
    return f"<div class='neat-error' role='alert'><b>Error.</b> {esc(message)}</div>"


def warn_box(message: str) -> str:
    return f"<div class='neat-warn' role='alert'>{esc(message)}</div>"


def ok_box(message: str) -> str:
    return f"<div class='neat-ok' role='status'>{esc(message)}</div>"
