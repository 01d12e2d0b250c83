"""Annotate tab: a queue per annotator; one prompt at a time with its candidates shuffled and origins hidden;
keyboard-first ranking with ties (see ranker.js), marks, comment, flag, edits as new human responses, an AI
suggestion when a reward scorer exists, guidelines, progress. Saving is one committed store transaction."""
from __future__ import annotations

import json
import time
from pathlib import Path

import gradio as gr

from .common import Ctx, Tab, error_box, esc, folded_html, ok_box

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
VIEW = ("ranker", "comment", "flag", "msg", "progress", "sess", "open_id", "edit_box")  # what a prompt's view sets
CMD = (*VIEW, "edit_text", "edit_info")  # a ranker command may also open the edit box
SHOW = (*VIEW, "tag", "source", "guidelines", "guide_text")
QUEUE_DONE = ("Queue complete: no prompt with 2+ candidates is waiting for you under these filters. Add candidates "
              "(Negative Prompt Studio → Add to pool) or tick 'include prompts I annotated'.")
PUBLIC = ("ranker", "comment", "flag", "msg", "progress", "open_id", "open_btn", "next", "edit_text", "edit_save",
          "guidelines", "guide_text")


def _filters(tag, split, source, search, include_done, order) -> dict:
    """The queue filter fields as Studio.queue_next takes them."""
    return {"tag": tag, "split": split, "source": source, "search": search, "include_annotated": include_done,
            "order": order}


class AnnotateTab(Tab):
    """The tab's handlers. The page state (`sess`): "item" (the prompt shown), "skip" (this page's skips), "draft"
    (the ranks and marks not yet saved), "edit" (the response being edited), "base_item"/"base" (the annotation
    the page loaded for the item: a save over a newer one is refused)."""

    def _advance(self, me: str, s: dict, filters: dict, wrap: bool = False) -> dict:
        """`s` moved to the annotator's next prompt in the queue."""
        s.update(self.st.queue_next(me, s.get("skip") or [], wrap=wrap, **filters))
        s["draft"], s["base_item"] = None, None
        return s

    def _view(self, me: str, s: dict, message: str = "", kind: str = "ok") -> dict:
        """The VIEW outputs by name for the prompt of page state `s`."""
        page = self.st.annotation_page(me, s.get("item"))
        if page["error"]:
            s["item"], message, kind = None, page["error"], "err"
        item, comment, flag = page["item"], "", False
        if item is None:
            ranker = ranker_html(None, message=message or QUEUE_DONE)
        else:
            ranker = ranker_html(item, s.get("draft"))
            ann = item.get("annotation") or {}
            if s.get("base_item") != s["item"]:  # what this page loaded: a save over a newer annotation is refused
                s["base_item"], s["base"] = s["item"], ann.get("id")
            comment, flag = ann.get("comment", ""), bool(ann.get("flagged", False))
        box = "" if not message else (error_box(message) if kind == "err" else ok_box(message))
        return {"ranker": ranker, "comment": comment, "flag": flag, "msg": box,
                "progress": progress_html(page["progress"], me), "sess": s,
                "open_id": gr.update(choices=page["recent"], value=None), "edit_box": gr.update(visible=False)}

    def on_show(self, sess, tag, split, source, search, include_done, order, request: gr.Request):
        me = self.ctx.user(request)
        s = {"skip": [], **(sess or {})}
        if not s.get("item"):
            self._advance(me, s, _filters(tag, split, source, search, include_done, order))
        view = self._view(me, s)
        if (sess or {}).get("item") and s.get("item") == sess.get("item"):
            del view["comment"], view["flag"]  # same prompt as before the tab switch: keep comment and flag
        facets, guide = self.st.prompt_facets(), self.st.guidelines()
        return self.pack(SHOW, {**view, "tag": gr.update(choices=[""] + facets["tags"]),
                               "source": gr.update(choices=[""] + facets["sources"]), "guidelines": guide,
                               "guide_text": guide})

    def go_next(self, sess, tag, split, source, search, include_done, order, request: gr.Request):
        me, s = self.ctx.user(request), dict(sess or {})
        if s.get("item"):
            s["skip"] = [*(s.get("skip") or []), s["item"]]
        # wrap: when nothing but this page's skips is left, they come back
        self._advance(me, s, _filters(tag, split, source, search, include_done, order), wrap=True)
        return self.pack(VIEW, self._view(me, s))

    def refilter(self, tag, split, source, search, include_done, order, request: gr.Request):
        me = self.ctx.user(request)
        s = self._advance(me, {"skip": []}, _filters(tag, split, source, search, include_done, order))
        return self.pack(VIEW, self._view(me, s))

    def open_prompt(self, sess, open_id, request: gr.Request):
        me, s = self.ctx.user(request), dict(sess or {})
        try:
            pid = self.st.known_prompt_id(open_id)
        except ValueError as e:
            return self.pack(VIEW, self._view(me, s, str(e), "err"))
        s["item"], s["draft"], s["base_item"] = pid, None, None
        return self.pack(VIEW, self._view(me, s))

    def on_cmd(self, evt: gr.EventData, sess, comment, flag, tag, split, source, search, include_done, order,
               request: gr.Request):
        """A command of the ranker (ranker.js): submit, skip, prev or edit, with the ranks and marks on the page."""
        me = self.ctx.user(request)
        data = {k: getattr(evt, k, None) for k in CMD_KEYS}  # EventData's public attributes (absent keys: None)
        s, item = dict(sess or {}), data["item"]
        if not item or item != s.get("item"):
            return self.pack(CMD, {})  # a command for a prompt no longer shown (double submit, stale page)
        s["draft"] = {"item": item, "ranks": {str(k): int(v) for k, v in (data["ranks"] or {}).items()},
                      "marks": {str(k): str(v) for k, v in (data["marks"] or {}).items()}}
        filters = _filters(tag, split, source, search, include_done, order)
        if data["cmd"] == "submit":
            return self.pack(CMD, self._submit(me, s, comment, flag, filters))
        if data["cmd"] == "skip":
            return self.pack(CMD, self._skip(me, s, filters))
        if data["cmd"] == "prev":
            return self.pack(CMD, self._previous(me, s))
        if data["cmd"] == "edit":
            r = self.st.editable_response(data["rid"], item)
            if r is None:
                return self.pack(CMD, {})
            s["edit"] = r["id"]
            return self.pack(CMD, {"sess": s, "edit_box": gr.update(visible=True), "edit_text": r["text"],
                                  "edit_info": f"Editing response `{r['id']}` (origin hidden)."})
        return self.pack(CMD, {})

    def _submit(self, me: str, s: dict, comment, flag, filters: dict) -> dict:
        item, draft = s["item"], s["draft"]
        try:  # the rules (every response ranked, or flagged with what was ranked) live in Studio
            r = self.st.submit_ranking(item, me, draft["ranks"], marks=draft["marks"], comment=comment or "",
                                       flagged=bool(flag),
                                       expect_latest=s.get("base") if s.get("base_item") == item else ...)
        except ValueError as e:
            return {"msg": error_box(f"Not saved: {e}"), "sess": s}
        self._advance(me, s, filters)  # saved: the next view loads the annotation afresh
        return self._view(me, s, f"Saved prompt {item}: {r['summary']}.")

    def _skip(self, me: str, s: dict, filters: dict) -> dict:
        item = s["item"]
        try:
            self.st.skip_prompt(item, me)  # kept in the store: a reload or a restart shows it last too
        except ValueError as e:
            return {"msg": error_box(f"Not skipped: {e}"), "sess": s}
        s["skip"] = [*(s.get("skip") or []), item]
        self._advance(me, s, filters, wrap=True)  # only skipped prompts left: they come back, longest skipped first
        return self._view(me, s, f"Skipped {item} (it comes back after the rest of the queue, also after a reload).")

    def _previous(self, me: str, s: dict) -> dict:
        pid = self.st.previous_annotated(me, s["item"])
        if pid is None:
            return {"msg": error_box("No previous annotation."), "sess": s}
        s["item"], s["draft"] = pid, None
        return self._view(me, s, f"Back to {pid} (your saved ranking is loaded; Enter saves a new version).")

    def save_edit(self, sess, edit_text, request: gr.Request):
        me, s = self.ctx.user(request), dict(sess or {})
        if not s.get("edit"):
            return self.pack(VIEW, self._view(me, s, "Nothing is being edited.", "err"))
        try:
            new_id = self.st.edit_response(s["edit"], edit_text, actor=me)
        except ValueError as e:
            return self.pack(VIEW, {**self._view(me, s, f"Edit not saved: {e}", "err"),
                                   "edit_box": gr.update(visible=True)})
        s["edit"] = None
        return self.pack(VIEW, self._view(me, s, f"Saved your edit as a new human response ({new_id}); the original "
                                                "stays. Rank it too."))

    def save_guidelines(self, guide_text, request: gr.Request):
        actor = self.ctx.require_admin(request, "edit the guidelines")
        try:
            self.st.set_guidelines(guide_text, actor=actor)
        except ValueError as e:
            raise gr.Error(str(e))
        gr.Info("Guidelines saved.")
        return guide_text

    def save_ranking(self, prompt_id: str, ranking_json: str, marks_json: str, comment: str,
                     request: gr.Request) -> str:
        """API only (`/save_ranking`, what scripts and load tests use): save one ranking for `prompt_id`.
        `ranking_json`: JSON list of groups of response ids, best first (ties share a group); `marks_json`: JSON
        {response_id: "pos"|"neg"|"neutral"} or ""; `comment`: free text. The annotator is the signed-in user
        (with login on) or the local user: never taken from the request body. Returns JSON
        {"annotation_id", "prompt_id", "annotator"}; a clear error and nothing written on bad input."""
        t0 = time.perf_counter()  # the handler's own time, beside the end-to-end time a client sees
        me = self.ctx.user(request)
        try:
            r = self.st.save_ranking_json(prompt_id, me, ranking_json, marks_json, comment)
        except ValueError as e:
            raise gr.Error(f"Not saved: {e}") from None
        return json.dumps({**r, "annotator": me, "server_ms": round((time.perf_counter() - t0) * 1000, 2)})


def build(ctx: Ctx) -> dict:
    tab = AnnotateTab(ctx)
    c = tab.c
    with gr.Row():
        with gr.Column(scale=4, min_width=600):
            with gr.Accordion("Queue filters", open=False):
                with gr.Row(equal_height=True):
                    c["tag"] = gr.Dropdown(label="Tag", choices=[], value=None, scale=1, elem_id="ann-tag")
                    c["split"] = gr.Dropdown(label="Split", choices=["", "train", "dev", "test"], value="", scale=1)
                    c["source"] = gr.Dropdown(label="Source", choices=[], value=None, scale=1)
                    c["search"] = gr.Textbox(label="Text contains (Enter)", scale=1, max_lines=1)
                    c["include_done"] = gr.Checkbox(label="include prompts I annotated", value=False, scale=1,
                                                    elem_id="ann-include-done")
                    c["order"] = gr.Dropdown(
                        label="Order", choices=[("queue (oldest first)", "queue"),
                                                ("scorer uncertainty (smallest top-2 margin)", "uncertainty"),
                                                ("scorer vs human disagreement", "disagreement")],
                        value="queue", scale=1, elem_id="ann-order",
                        info="the two scorer orders need a trained reward scorer (Data tab); without one the "
                             "queue order is used")
            with gr.Row():
                c["open_id"] = gr.Dropdown(label="My annotated prompts (newest first)", choices=[], value=None,
                                           scale=3, allow_custom_value=True, elem_id="ann-open")
                with gr.Column(scale=1, min_width=140):
                    c["open_btn"] = gr.Button("Open", size="sm", elem_id="ann-open-btn")
                    c["next"] = gr.Button("Next in queue", size="sm", elem_id="ann-next")
            c["msg"] = gr.HTML("", js_on_load=None, elem_id="ann-msg")
            c["ranker"] = gr.HTML(ranker_html(None, message="Loading…"), js_on_load=RANKER_JS, elem_id="ann-ranker",
                                  padding=False)
            with gr.Row():
                c["comment"] = gr.Textbox(label="Comment (saved with the ranking)", lines=2, scale=4,
                                          elem_id="ann-comment")
                c["flag"] = gr.Checkbox(label="Flag this prompt", value=False, scale=1, elem_id="ann-flag")
            with gr.Group(visible=False, elem_id="ann-edit-box") as c["edit_box"]:
                c["edit_info"] = gr.Markdown("")
                c["edit_text"] = gr.Textbox(label="Edited response (saved as a new human response; the original "
                                            "stays)", lines=6, elem_id="ann-edit-text")
                with gr.Row():
                    c["edit_save"] = gr.Button("Save as new response", variant="primary", size="sm",
                                               elem_id="ann-edit-save")
                    c["edit_cancel"] = gr.Button("Cancel", size="sm")
        with gr.Column(scale=1, min_width=260):
            c["progress"] = gr.HTML("", js_on_load=None, elem_id="ann-progress")
            with gr.Accordion("Guidelines", open=True):
                c["guidelines"] = gr.Markdown(ctx.studio.guidelines(), elem_id="ann-guidelines", max_height=520)
            with gr.Accordion("Edit guidelines (admin)", open=False, visible=True) as guide_acc:
                c["guide_text"] = gr.Textbox(lines=12, show_label=False, elem_id="ann-guide-text")
                c["guide_save"] = gr.Button("Save guidelines", size="sm")
    ctx.admin_only.append(guide_acc)
    c["sess"] = gr.State({"item": None, "skip": [], "draft": None, "edit": None})

    tab.bind(c["ranker"].click, tab.on_cmd, CMD, show_progress="hidden")
    tab.bind(c["edit_save"].click, tab.save_edit, VIEW)
    c["edit_cancel"].click(lambda: gr.update(visible=False), None, c["edit_box"])
    tab.bind(c["next"].click, tab.go_next, VIEW)
    tab.bind(c["open_btn"].click, tab.open_prompt, VIEW)
    tab.bind(c["open_id"].select, tab.open_prompt, VIEW)
    for name in ("tag", "split", "source", "include_done", "order"):  # a new order or filter reloads the queue
        tab.bind(c[name].change, tab.refilter, VIEW)
    tab.bind(c["search"].submit, tab.refilter, VIEW)
    tab.bind(c["guide_save"].click, tab.save_guidelines, ["guidelines"])
    gr.api(tab.save_ranking, api_name="save_ranking")
    return {**{k: c[k] for k in PUBLIC}, "_on_show": (tab.on_show, tab.inputs(tab.on_show), [c[n] for n in SHOW]),
            # opening the tab hands out (leases) a prompt: not on every page load of every user
            "_load_with_page": False}
