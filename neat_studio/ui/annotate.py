"""Annotate tab: a queue per annotator; one prompt at a time with its candidates shuffled and origins hidden;
keyboard-first ranking with ties (see ranker.js), marks, comment, flag, edits as new human responses, an AI
suggestion when a reward scorer exists, guidelines, progress. Saving is one committed store transaction."""
from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from .common import Ctx, error_box, esc, folded_html, ok_box

RANKER_JS = Path(__file__).with_name("ranker.js").read_text(encoding="utf-8")
KEYS_HELP = ("<b>1–9</b> select a response, then <b>1–9</b> its rank group (same number = tie) · <b>Esc</b> "
             "cancel · <b>P</b>/<b>N</b>/<b>0</b> mark pos/neg/neutral · <b>A</b> accept AI suggestion (<b>A</b> "
             "twice for a weak scorer) · <b>U</b> undo · <b>H</b> show/hide origins · <b>E</b> edit · <b>F</b> flag · "
             "<b>C</b> comment · <b>Enter</b> submit · <b>S</b> skip · <b>B</b> previous")


def _label(i: int) -> str:
    return f"#{i + 1}"


def scorer_quality(sugg: dict) -> str:
    """' · dev accuracy 0.71 on 42 pairs' (or '' without the figures)."""
    acc, n = sugg.get("dev_acc"), sugg.get("n_dev_pairs")
    if acc is None or not n:
        return " · no dev accuracy measured"
    return f" · dev accuracy {float(acc):.2f} on {int(n)} pairs"


def weak_scorer_note(sugg: dict) -> str:
    """A warning when the scorer's dev accuracy is unmeasured, low or measured on few pairs ('' otherwise): the
    suggestion's own "weak" (Studio.annotation_item), else the same rule on its figures."""
    if "weak" in sugg:
        return str(sugg.get("weak") or "")
    from ..studio import weak_scorer_note as note

    return note(sugg.get("dev_acc"), sugg.get("n_dev_pairs"))


def ai_confidence_html(sugg: dict | None, rid: str) -> str:
    """The scorer's confidence in one response, for its card ('' without figures)."""
    if not sugg:
        return ""
    p, sc = (sugg.get("p_better") or {}).get(rid), (sugg.get("scores") or {}).get(rid)
    if p is None and sc is None:
        return ""
    parts = ([f"p {float(p):.2f}"] if p is not None else []) + ([f"score {float(sc):+.2f}"] if sc is not None else [])
    return (f"<span class='neat-ai-conf' title='reward scorer {esc(sugg.get('scorer'))}: the probability that it "
            f"prefers this response to another one shown (averaged), and its raw score'>AI {esc(' · '.join(parts))}"
            f"</span>")


def ranker_html(item: dict | None, draft: dict | None = None, message: str = "") -> str:
    """The ranking view for one prompt. EVERY text is escaped (responses are untrusted model/user output)."""
    if item is None:
        return (f"<div class='neat-ranker neat-empty' data-item=''><div class='neat-done'>{esc(message) or 'Queue '}"
                f"</div></div>")
    p, responses = item["prompt"], item["responses"]
    ann = item.get("annotation") or {}
    draft = draft or {}
    if draft.get("item") == p["id"]:
        ranks = {k: int(v) for k, v in (draft.get("ranks") or {}).items()}
        marks = dict(draft.get("marks") or {})
    else:
        ranks = {rid: gi + 1 for gi, g in enumerate(ann.get("ranking") or []) for rid in g}
        marks = dict(ann.get("marks") or {})
    sugg = item.get("suggestion")
    idx = {r["id"]: i for i, r in enumerate(responses)}
    sugg_attr = ""
    sugg_text = ""
    weak = ""
    if sugg:
        groups = [[rid for rid in g if rid in idx] for g in sugg["ranking"]]
        groups = [g for g in groups if g]
        weak = weak_scorer_note(sugg)
        # a weak scorer's suggestion is not accepted with one key: ranker.js asks for a second A (data-suggest-confirm)
        sugg_attr = f" data-suggest='{esc(json.dumps(groups))}'" + (" data-suggest-confirm='1'" if weak else "")
        how = ("press <b>A</b> twice to accept (weak scorer: the first press only asks)" if weak else
               "press <b>A</b> to accept")
        sugg_text = ("<div class='neat-suggest'>AI suggestion (scorer " + esc(sugg.get("scorer")) +
                     esc(scorer_quality(sugg)) + "): <b>" +
                     esc("  >  ".join(" = ".join(_label(idx[r]) for r in g) for g in groups)) +
                     "</b> · " + how +
                     (f"<div class='neat-weak'>{esc(weak)}</div>" if weak else "") + "</div>")
    conv = "".join(f"<div class='neat-turn neat-{esc(m.get('role'))}'><span class='neat-role-tag'>"
                   f"{esc(m.get('role'))}</span><div class='neat-turn-text'>{folded_html(m.get('content'))}"
                   f"</div></div>" for m in p["messages"])
    dups = item.get("hidden_duplicates") or {}
    dup_note = (f"<div class='neat-dups'>{len(dups)} near-duplicate candidate(s) hidden (cosine ≥ threshold; they "
                f"stay in the store and get no rank)</div>" if dups else "")
    saved = ""
    if ann:
        saved = (f"<span class='neat-saved'>saved {esc(ann.get('created_at', '')[:19].replace('T', ' '))} UTC"
                 f"{' · flagged' if ann.get('flagged') else ''}</span>")
    accept_btn = "" if not sugg else (
        "<button class='neat-btn' data-cmd='accept' title='weak scorer: press twice'>accept AI (A, twice)</button>"
        if weak else "<button class='neat-btn' data-cmd='accept'>accept AI (A)</button>")
    n = len(responses)
    rank_btns = "".join(f"<button class='neat-btn neat-rank-btn' data-cmd='rank' data-g='{g}' "
                        f"title='set rank group {g}'>{g}</button>" for g in range(1, min(n, 9) + 1))
    cards = []
    for i, r in enumerate(responses):
        origin = r["origin"]
        human = " neat-human" if origin == "human" else ""
        cards.append(
            f"<div class='neat-card{human}' tabindex='-1' data-i='{i + 1}' data-rid='{esc(r['id'])}' "
            f"data-rank='{esc(ranks.get(r['id'], ''))}' data-mark='{esc(marks.get(r['id'], ''))}'>"
            f"<div class='neat-card-head'><span class='neat-key'>{i + 1}</span>"
            f"<span class='neat-rank-badge'></span><span class='neat-mark-badge'></span>"
            f"<span class='neat-origin' title='origin'>{esc(origin)}</span>{ai_confidence_html(sugg, r['id'])}"
            f"<button class='neat-btn neat-edit-btn' data-cmd='edit' data-rid='{esc(r['id'])}' "
            f"title='edit: saved as a new human response'>edit</button></div>"
            f"<div class='neat-card-text'>{esc(r['text']) or '<i>(empty response)</i>'}</div></div>")
    return (
        f"<div class='neat-ranker' data-item='{esc(p['id'])}'{sugg_attr} data-comment='{esc(ann.get('comment') or '')}'"
        f" data-flagged='{'1' if ann.get('flagged') else ''}'>"
        f"<div class='neat-rk-top'><span class='neat-pid'>prompt {esc(p['id'])}</span>"
        f"<span class='neat-tags'>{esc(', '.join(p.get('tags') or []))}</span>{saved}</div>"
        f"<div class='neat-conv'>{conv}</div>{sugg_text}{dup_note}"
        f"<div class='neat-rk-toolbar'><span class='neat-tb-label'>rank group</span>{rank_btns}"
        f"<button class='neat-btn' data-cmd='mark' data-m='pos'>pos (P)</button>"
        f"<button class='neat-btn' data-cmd='mark' data-m='neg'>neg (N)</button>"
        f"<button class='neat-btn' data-cmd='mark' data-m='neutral'>neutral (0)</button>"
        f"<button class='neat-btn' data-cmd='undo'>undo (U)</button>"
        f"<button class='neat-btn' data-cmd='clear'>clear</button>"
        f"{accept_btn}"
        f"<button class='neat-btn' data-cmd='origins'>Show origins (H)</button>"
        f"<span class='neat-tb-gap'></span>"
        f"<button class='neat-btn' data-cmd='prev'>◀ previous (B)</button>"
        f"<button class='neat-btn' data-cmd='skip'>skip (S)</button>"
        f"<button class='neat-btn neat-primary' data-cmd='submit'>submit (Enter)</button></div>"
        f"<div class='neat-rk-status' aria-live='polite'></div>"
        f"<div class='neat-cards'>{''.join(cards)}</div>"
        f"<details class='neat-rk-keys'><summary>keyboard (?)</summary>{KEYS_HELP}</details></div>")


def progress_html(p: dict, me: str) -> str:
    total, done = p["total"], p["done"]
    pct = 0 if not total else min(100, round(100 * done / total))
    others = " · ".join(f"{esc(a['annotator'])} {a['done']}" for a in p["per_annotator"][:8])
    return (f"<div class='neat-progress'><div class='neat-progress-label'>{esc(me)}: <b>{done}</b> / {total} "
            f"prompts done</div><div class='neat-bar'><div style='width:{pct}%'></div></div>"
            f"<div class='neat-progress-others'>{others or 'no annotations yet'}</div></div>")


CMD_KEYS = ("cmd", "item", "ranks", "marks", "rid")  # what the ranker's JS sends with a command


def build(ctx: Ctx) -> dict:
    st = ctx.studio
    with gr.Row():
        with gr.Column(scale=4, min_width=600):
            with gr.Accordion("Queue filters", open=False):
                with gr.Row(equal_height=True):
                    q_tag = gr.Dropdown(label="Tag", choices=[], value=None, scale=1, elem_id="ann-tag")
                    q_split = gr.Dropdown(label="Split", choices=["", "train", "dev", "test"], value="", scale=1)
                    q_source = gr.Dropdown(label="Source", choices=[], value=None, scale=1)
                    q_search = gr.Textbox(label="Text contains (Enter)", scale=1, max_lines=1)
                    q_all = gr.Checkbox(label="include prompts I annotated", value=False, scale=1,
                                        elem_id="ann-include-done")
                    q_order = gr.Dropdown(
                        label="Order", choices=[("queue (oldest first)", "queue"),
                                                ("scorer uncertainty (smallest top-2 margin)", "uncertainty"),
                                                ("scorer vs human disagreement", "disagreement")],
                        value="queue", scale=1, elem_id="ann-order",
                        info="the two scorer orders need a trained reward scorer (Data tab); without one the "
                             "queue order is used")
            with gr.Row():
                open_id = gr.Dropdown(label="My annotated prompts (newest first)", choices=[], value=None, scale=3,
                                      allow_custom_value=True, elem_id="ann-open")
                with gr.Column(scale=1, min_width=140):
                    open_btn = gr.Button("Open", size="sm", elem_id="ann-open-btn")
                    next_btn = gr.Button("Next in queue", size="sm", elem_id="ann-next")
            msg = gr.HTML("", js_on_load=None, elem_id="ann-msg")
            ranker = gr.HTML(ranker_html(None, message="Loading…"), js_on_load=RANKER_JS, elem_id="ann-ranker",
                             padding=False)
            with gr.Row():
                comment = gr.Textbox(label="Comment (saved with the ranking)", lines=2, scale=4, elem_id="ann-comment")
                flag = gr.Checkbox(label="Flag this prompt", value=False, scale=1, elem_id="ann-flag")
            with gr.Group(visible=False, elem_id="ann-edit-box") as edit_box:
                edit_info = gr.Markdown("")
                edit_text = gr.Textbox(label="Edited response (saved as a new human response; the original stays)",
                                       lines=6, elem_id="ann-edit-text")
                with gr.Row():
                    edit_save = gr.Button("Save as new response", variant="primary", size="sm", elem_id="ann-edit-save")
                    edit_cancel = gr.Button("Cancel", size="sm")
        with gr.Column(scale=1, min_width=260):
            prog = gr.HTML("", js_on_load=None, elem_id="ann-progress")
            with gr.Accordion("Guidelines", open=True):
                guide = gr.Markdown(st.guidelines(), elem_id="ann-guidelines", max_height=520)
            with gr.Accordion("Edit guidelines (admin)", open=False, visible=True) as guide_acc:
                guide_text = gr.Textbox(lines=12, show_label=False, elem_id="ann-guide-text")
                guide_save = gr.Button("Save guidelines", size="sm")
    ctx.admin_only.append(guide_acc)
    sess = gr.State({"item": None, "skip": [], "draft": None, "edit": None})

    filters = [q_tag, q_split, q_source, q_search, q_all, q_order]

    def _recent(me):
        return st.recent_annotations(me)

    def _view(me, s, message="", msg_kind="ok"):
        """All outputs for the current item of session `s`."""
        pid = s.get("item")
        item = None
        if pid:
            try:
                item = st.annotation_item(pid, me)
            except ValueError as e:
                s["item"] = None
                message, msg_kind = str(e), "err"
        if item is None:
            html_ = ranker_html(None, message=message or "Queue complete: no prompt with 2+ candidates is waiting "
                                "for you under these filters. Add candidates (Negative Prompt Studio → Add to pool) "
                                "or tick 'include prompts I annotated'.")
            cm, fl = "", False
        else:
            html_ = ranker_html(item, s.get("draft"))
            ann = item.get("annotation") or {}
            if s.get("base_item") != pid:  # what this page loaded: a save over a newer annotation is refused
                s["base_item"], s["base"] = pid, ann.get("id")
            cm, fl = ann.get("comment", ""), bool(ann.get("flagged", False))
        box = "" if not message else (error_box(message) if msg_kind == "err" else ok_box(message))
        return (html_, cm, fl, box, progress_html(st.annotation_progress(me), me), s,
                gr.update(choices=_recent(me), value=None), gr.update(visible=False))

    outputs = [ranker, comment, flag, msg, prog, sess, open_id, edit_box]

    def _next(me, s, tg, sp, src, q, inc, order):
        s["item"] = st.next_prompt(me, tag=tg or None, split=sp or None, source=src or None, search=q or None,
                                   skip_ids=s.get("skip") or [], include_annotated=bool(inc),
                                   order=order or "queue")
        s["draft"], s["base_item"] = None, None
        return s

    def show(s, tg, sp, src, q, inc, order, request: gr.Request):
        me = ctx.user(request)
        s = dict(s or {})
        s.setdefault("skip", [])
        if not s.get("item"):
            s = _next(me, s, tg, sp, src, q, inc, order)
        return _view(me, s)

    def go_next(s, tg, sp, src, q, inc, order, request: gr.Request):
        me = ctx.user(request)
        s = dict(s or {})
        if s.get("item"):
            s.setdefault("skip", []).append(s["item"])
        s = _next(me, s, tg, sp, src, q, inc, order)
        if s["item"] is None and s.get("skip"):
            s["skip"] = []  # wrapped around: skipped prompts come back
            s = _next(me, s, tg, sp, src, q, inc, order)
        return _view(me, s)

    def refilter(s, tg, sp, src, q, inc, order, request: gr.Request):
        me = ctx.user(request)
        s = _next(me, {"skip": []}, tg, sp, src, q, inc, order)
        return _view(me, s)

    def open_prompt(s, pid, request: gr.Request):
        me = ctx.user(request)
        pid = (pid or "").strip()
        if not pid:
            return _view(me, dict(s or {}), "Choose or paste a prompt id.", "err")
        if st.prompt(pid) is None:
            return _view(me, dict(s or {}), f"Unknown prompt id {pid!r}.", "err")
        s = dict(s or {})
        s["item"], s["draft"], s["base_item"] = pid, None, None
        return _view(me, s)

    def on_cmd(evt: gr.EventData, s, cm, fl, tg, sp, src, q, inc, order, request: gr.Request):
        me = ctx.user(request)
        # the ranker's payload, read through EventData's public attributes (absent keys: None)
        data = {k: getattr(evt, k, None) for k in CMD_KEYS}
        s = dict(s or {})
        cmd = data.get("cmd")
        item = data.get("item")
        if not item or item != s.get("item"):
            # a command for a prompt that is no longer shown (double submit, stale page): ignore it
            return [gr.update()] * len(outputs)
        ranks = {str(k): int(v) for k, v in (data.get("ranks") or {}).items()}
        marks = {str(k): str(v) for k, v in (data.get("marks") or {}).items()}
        s["draft"] = {"item": item, "ranks": ranks, "marks": marks}
        if cmd == "submit":
            try:  # the rules (every response ranked, or flagged with what was ranked) live in Studio
                r = st.submit_ranking(item, me, ranks, marks=marks, comment=cm or "", flagged=bool(fl),
                                      expect_latest=s.get("base") if s.get("base_item") == item else ...)
            except ValueError as e:
                return (gr.update(), gr.update(), gr.update(), error_box(f"Not saved: {e}"), gr.update(), s,
                        gr.update(), gr.update())
            ids, ranking = r["shown"], r["ranking"]
            desc = "  >  ".join(" = ".join(f"#{ids.index(x) + 1}" for x in g) for g in ranking)
            if not desc:
                desc = "(flag only)" if fl else "(comment / marks only)"
            elif fl:
                desc += " (flagged)"
            s["base_item"] = None  # saved: the next view loads the annotation afresh
            s = _next(me, s, tg, sp, src, q, inc, order)
            return _view(me, s, f"Saved prompt {item}: {desc}.")
        if cmd == "skip":
            try:
                st.skip_prompt(item, me)  # kept in the store: a reload or a restart shows it last too
            except ValueError as e:
                return (gr.update(), gr.update(), gr.update(), error_box(f"Not skipped: {e}"), gr.update(), s,
                        gr.update(), gr.update())
            s.setdefault("skip", []).append(item)
            s = _next(me, s, tg, sp, src, q, inc, order)
            if s["item"] is None and s.get("skip"):
                s["skip"] = []  # only skipped prompts are left: they come back, the longest skipped first
                s = _next(me, s, tg, sp, src, q, inc, order)
            return _view(me, s, f"Skipped {item} (it comes back after the rest of the queue, also after a reload).")
        if cmd == "prev":
            ids = [pid for _, pid in _recent(me)]  # newest first: step back from the one shown, if it is there
            recent = ids[ids.index(item) + 1:] if item in ids else ids
            if not recent:
                return (gr.update(), gr.update(), gr.update(), error_box("No previous annotation."), gr.update(), s,
                        gr.update(), gr.update())
            s["item"], s["draft"] = recent[0], None
            return _view(me, s, f"Back to {recent[0]} (your saved ranking is loaded; Enter saves a new version).")
        if cmd == "edit":
            rid = data.get("rid")
            r = st.response(rid)
            if r is None or r["prompt_id"] != item:
                return [gr.update()] * len(outputs)
            s["edit"] = rid
            return (gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), s, gr.update(),
                    gr.update(visible=True)), r["text"], f"Editing response `{rid}` (origin hidden)."
        return [gr.update()] * len(outputs)

    def on_cmd_flat(evt: gr.EventData, s, cm, fl, tg, sp, src, q, inc, order, request: gr.Request):
        out = on_cmd(evt, s, cm, fl, tg, sp, src, q, inc, order, request)
        if isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], tuple):
            return (*out[0], out[1], out[2])
        return (*out, gr.update(), gr.update())

    ranker.click(on_cmd_flat, [sess, comment, flag, *filters], [*outputs, edit_text, edit_info],
                 show_progress="hidden")

    def save_edit(s, txt, request: gr.Request):
        me = ctx.user(request)
        s = dict(s or {})
        rid = s.get("edit")
        if not rid:
            return _view(me, s, "Nothing is being edited.", "err")
        try:
            new_id = st.edit_response(rid, txt, actor=me)
        except ValueError as e:
            v = list(_view(me, s, f"Edit not saved: {e}", "err"))
            v[-1] = gr.update(visible=True)
            return tuple(v)
        s["edit"] = None
        return _view(me, s, f"Saved your edit as a new human response ({new_id}); the original stays. Rank it too.")

    edit_save.click(save_edit, [sess, edit_text], outputs)
    edit_cancel.click(lambda: gr.update(visible=False), None, edit_box)

    next_btn.click(go_next, [sess, *filters], outputs)
    open_btn.click(open_prompt, [sess, open_id], outputs)
    open_id.select(open_prompt, [sess, open_id], outputs)
    for f in (q_tag, q_split, q_source, q_all, q_order):  # a new order or filter reloads the queue at once
        f.change(refilter, [sess, *filters], outputs)
    q_search.submit(refilter, [sess, *filters], outputs)

    def save_guidelines(text, request: gr.Request):
        actor = ctx.require_admin(request, "edit the guidelines")
        try:
            st.set_guidelines(text, actor=actor)
        except ValueError as e:
            raise gr.Error(str(e))
        gr.Info("Guidelines saved.")
        return text

    guide_save.click(save_guidelines, guide_text, guide)

    def save_ranking(prompt_id: str, ranking_json: str, marks_json: str, comment: str,
                     request: gr.Request) -> str:
        """API only (`/save_ranking`, what scripts and load tests use): save one ranking for `prompt_id`.
        `ranking_json`: JSON list of groups of response ids, best first (ties share a group); `marks_json`: JSON
        {response_id: "pos"|"neg"|"neutral"} or ""; `comment`: free text. The annotator is the signed-in user
        (with login on) or the local user: never taken from the request body. Returns JSON
        {"annotation_id", "prompt_id", "annotator"}; a clear error and nothing written on bad input."""
        from ..safety import MAX_COMMENT_CHARS, check_text

        t0 = time.perf_counter()  # the handler's own time, beside the end-to-end time a client sees
        me = ctx.user(request)
        try:
            pid = check_text(prompt_id, "prompt id", max_chars=200, allow_empty=False).strip()
            ranking = json.loads(check_text(ranking_json, "ranking", max_chars=200_000) or "[]")
            marks = json.loads(check_text(marks_json, "marks", max_chars=200_000) or "{}")
            if not isinstance(marks, dict):
                raise ValueError("marks must be a JSON object {response_id: pos|neg|neutral}")
            cm = check_text(comment, "comment", max_chars=MAX_COMMENT_CHARS)
            aid = st.save_annotation(pid, me, ranking, marks=marks, comment=cm)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise gr.Error(f"Not saved: {e}") from None
        return json.dumps({"annotation_id": aid, "prompt_id": pid, "annotator": me,
                           "server_ms": round((time.perf_counter() - t0) * 1000, 2)})

    gr.api(save_ranking, api_name="save_ranking")

    def on_show(s, tg, sp, src, q, inc, order, request: gr.Request):
        f = st.prompt_facets()
        g = st.guidelines()
        out = list(show(s, tg, sp, src, q, inc, order, request))
        if (s or {}).get("item") and out[5].get("item") == s.get("item"):
            out[1], out[2] = gr.update(), gr.update()  # same prompt as before the tab switch: keep comment and flag
        return (*out, gr.update(choices=[""] + f["tags"]), gr.update(choices=[""] + f["sources"]), g, g)

    return {"ranker": ranker, "comment": comment, "flag": flag, "msg": msg, "progress": prog, "open_id": open_id,
            "open_btn": open_btn, "next": next_btn, "edit_text": edit_text, "edit_save": edit_save,
            "guidelines": guide, "guide_text": guide_text,
            "_on_show": (on_show, [sess, *filters], [*outputs, q_tag, q_source, guide, guide_text]),
            # opening the tab hands out (leases) a prompt: not on every page load of every user
            "_load_with_page": False}
