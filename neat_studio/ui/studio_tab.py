"""Negative Prompt Studio tab: the library of negative/positive system prompts (immutable versions, diffs,
generation parameters), previews (normal vs negative side by side, seeded, all prompts decoded in one batch and streamed), preview
metrics per version with a comparison table, and "Add to pool"."""
from __future__ import annotations

import pandas as pd
import gradio as gr

from ..library import word_diff
from ..studio.preview import EDITOR_FIELDS, EDITOR_NEW, NO_SYSTEM_PROMPT
from .common import Ctx, error_box, esc, fmt_num, folded_html, ok_box, parse_tags, prompt_text, warn_box

LIB_COLUMNS = ["name", "kind", "latest", "versions", "tags", "author"]
CMP_COLUMNS = ["version", "normal side", "prompts", "prompt set", "negatives", "undesirability", "measure",
               "distance", "diversity", "refusals", "leaks", "len ratio", "pooled"]
# what an undesirability value measures (metrics.preview_metrics' undesirability_source), in a word
MEASURE = {"reward gap": "reward gap", "heuristic (no refusal, no leak, length)": "heuristic 0–1"}
VERSION_COLUMNS = ["version", "author", "created", "params", "tags"]


def diff_html(a: str, b: str, label_a: str, label_b: str) -> str:
    parts = []
    for op, text in word_diff(a, b):
        t = esc(text)
        parts.append(t if op == "equal" else f"<del>{t}</del>" if op == "delete" else f"<ins>{t}</ins>")
    if a == b:
        head = f"{esc(label_a)} and {esc(label_b)} have the same text"
    else:
        head = f"changes from <b>{esc(label_a)}</b> to <b>{esc(label_b)}</b>"
    return f"<div class='neat-diff'><div class='neat-diff-head'>{head}</div><div class='neat-diff-body'>" \
           f"{''.join(parts)}</div></div>"


def preview_html(rows: list[dict], normal_label: str, neg_label: str, seed: int | None, done: int, total: int) -> str:
    """Side-by-side preview cards. Every model/user text is escaped."""
    if not rows:
        return "<div class='neat-empty'>No preview yet. Pick prompts and press <b>Run preview</b>.</div>"
    out = [f"<div class='neat-preview-head'>{done}/{total} prompt(s) · seed <code>{esc(seed)}</code> · "
           f"normal = <code>{esc(normal_label)}</code> · negative = <code>{esc(neg_label)}</code></div>"]
    for r in rows:
        out.append("<div class='neat-pv-row'>")
        out.append(f"<div class='neat-pv-prompt'><span class='neat-pid'>{esc(r['prompt_id'])}</span> "
                   f"{folded_html(prompt_text(r['prompt']))}</div><div class='neat-pv-cols'>")
        for side, cls, label in (("normal", "normal", "normal"), ("negative", "negative", "negative")):
            out.append(f"<div class='neat-pv-col neat-{cls}'><div class='neat-pv-label'>{label}</div>")
            for s in r[side]:
                out.append(f"<div class='neat-pv-text'>{esc(s['text']) or '<i>(empty)</i>'}"
                           f"<div class='neat-pv-meta'>seed {esc(s.get('seed'))}"
                           f"{' · ' + esc(s.get('n_tokens')) + ' tokens' if s.get('n_tokens') is not None else ''}"
                           f"{' · streaming…' if s.get('streaming') else ''}</div></div>")
            out.append("</div>")
        out.append("</div></div>")
    return "".join(out)


def metrics_md(m: dict | None) -> str:
    if not m:
        return ""
    notes = "; ".join(m.get("notes") or [])
    src = m.get("undesirability_source") or "n/a"
    return (f"**Preview metrics** ({m.get('n', 0)} negatives) · undesirability **{fmt_num(m.get('undesirability'))}**"
            f" ({src}) · distance from normal **{fmt_num(m.get('distance'))}** · diversity "
            f"**{fmt_num(m.get('diversity'))}** · refusals **{fmt_num(m.get('refusal_share'))}** · leaks "
            f"**{fmt_num(m.get('leak_share'))}** · length ratio {fmt_num(m.get('mean_len_ratio'))}"
            + (f"\n\n_{notes}_" if notes else ""))


def diff_markup(d: dict) -> str:
    """A version diff (Studio.library_version_diff) as HTML: the words, then the changed parameters."""
    html = diff_html(d["from"]["text"], d["to"]["text"], d["from"]["ref"], d["to"]["ref"])
    if d["param_changes"]:
        html += f"<div class='neat-diff-params'>parameters: {esc('; '.join(d['param_changes']))}</div>"
    return html


def library_df(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r["name"], r["kind"], str(r["version"]), str(r.get("n_versions", "")), ", ".join(r["tags"]),
                          r["author"]] for r in rows], columns=LIB_COLUMNS)


def versions_df(versions: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[str(v["version"]), v["author"], v["created_at"][:19].replace("T", " "),
                          ", ".join(f"{k}={val}" for k, val in (v["params"] or {}).items()), ", ".join(v["tags"])]
                         for v in versions], columns=VERSION_COLUMNS)


def compare_df(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r["ref"], r["normal"], str(r["prompts"]), r["prompt_set"], str(r["n"]),
                          fmt_num(r["undesirability"]),
                          MEASURE.get(r["undesirability_source"] or "", r["undesirability_source"] or "n/a"),
                          fmt_num(r["distance"]), fmt_num(r["diversity"]), fmt_num(r["refusal_share"]),
                          fmt_num(r["leak_share"]), fmt_num(r["mean_len_ratio"]), "yes" if r["pooled"] else ""]
                         for r in rows], columns=CMP_COLUMNS)


class StudioTab:
    """The tab's handlers. Components are registered by name in `c`; a handler that takes the whole editor gets
    {component: value} (a set of inputs), reads it by name and returns updates keyed by component (the outputs
    it leaves out stay as they are). The decisions are Studio's (studio/preview.py)."""

    def __init__(self, ctx: Ctx):
        self.ctx, self.st, self.c = ctx, ctx.studio, {}

    def of(self, *names: str) -> list:
        return [self.c[n] for n in names]

    def by_name(self, data: dict) -> dict:
        names = {comp: name for name, comp in self.c.items()}
        return {names[comp]: value for comp, value in data.items()}

    @staticmethod
    def editor(v: dict) -> dict:
        """The editor's fields (EDITOR_FIELDS) from the form's values: tags as a list."""
        return {**{f: v[f] for f in EDITOR_FIELDS}, "tags": parse_tags(v["tags"])}

    def show_editor(self, ed: dict) -> dict:
        return {self.c[f]: ", ".join(ed[f]) if f == "tags" else ed[f] for f in EDITOR_FIELDS}

    # -- library -------------------------------------------------------------------------------------------
    def lib_df(self, kind_filter):
        return library_df(self.st.library_list(kind=None if kind_filter == "all" else kind_filter))

    def diff_for(self, name, a, b):
        try:
            d = self.st.library_version_diff(name, a, b)
        except ValueError as e:
            return error_box(str(e)), ""
        return ("", "") if d is None else (diff_markup(d), d["raw"])

    def versions(self, name: str) -> dict:
        """The versions table, the diff's pickers at their default pair and that diff."""
        v = self.st.library_version_choices(name)
        html, raw = self.diff_for(name, v["from"], v["to"])
        return {self.c["versions"]: versions_df(v["versions"]), self.c["diff"]: html, self.c["diff_raw"]: raw,
                self.c["va"]: gr.update(choices=v["choices"], value=v["from"]),
                self.c["vb"]: gr.update(choices=v["choices"], value=v["to"])}

    def on_select(self, data: dict, evt: gr.SelectData):
        v = self.by_name(data)
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            name = str(v["lib"].iloc[row, 0])
        except Exception:  # noqa: BLE001
            return gr.skip()
        warn = self.st.library_editor_warning(self.editor(v), name, v["guard"])
        if warn is not None:
            return {self.c["save_msg"]: warn_box(warn), self.c["guard"]: name}
        ed = self.st.library_editor_values(name)
        out = {**(self.show_editor(ed) if ed else {}), **self.versions(name), self.c["save_msg"]: "",
               self.c["guard"]: None}
        if ed and ed["kind"] == "negative":
            out[self.c["neg_ref"]] = gr.update(value=ed["ref"])
        return out

    def new_prompt(self, data: dict):
        v = self.by_name(data)
        warn = self.st.library_editor_warning(self.editor(v), EDITOR_NEW, v["guard"])
        if warn is not None:
            return {self.c["save_msg"]: warn_box(warn), self.c["guard"]: EDITOR_NEW}
        return {**self.show_editor(self.st.library_editor_empty()), self.c["save_msg"]: "", self.c["guard"]: None}

    def save(self, name, kind, text, tags, temperature, top_p, max_new_tokens, k, kind_filter, request: gr.Request):
        actor = self.ctx.require_admin(request, "edit the prompt library")
        values = {"name": name, "kind": kind, "text": text, "tags": parse_tags(tags), "temperature": temperature,
                  "top_p": top_p, "max_new_tokens": max_new_tokens, "k": k}
        try:
            r = self.st.save_library_editor(values, actor=actor)
        except ValueError as e:
            return {self.c["save_msg"]: error_box(f"{e}. Nothing was saved.")}
        refs = self.st.library_refs()
        neg = gr.update(choices=refs["negative"], **({"value": r["ref"]} if kind == "negative" else {}))
        return {self.c["save_msg"]: ok_box(r["message"]), self.c["ref"]: r["ref"], **self.versions(r["name"]),
                self.c["lib"]: self.lib_df(kind_filter), self.c["neg_ref"]: neg,
                self.c["normal_ref"]: gr.update(choices=[NO_SYSTEM_PROMPT] + refs["positive"])}

    # -- preview -------------------------------------------------------------------------------------------
    def compare(self):
        return compare_df(self.st.preview_comparison())

    def run_preview(self, ref, normal, seed, mode, n, tag, ids, request: gr.Request, progress=gr.Progress()):
        actor = self.ctx.require_admin(request, "run previews")
        key = getattr(request, "session_hash", None)  # Stop finds this session's preview by it
        msg, metrics, out, pv_ref = self.of("pv_msg", "pv_metrics", "pv_out", "pv_ref")
        try:
            for ev in self.st.preview_events(ref, normal_ref=normal, seed=seed, mode=mode, n=n, tag=tag,
                                             ids=parse_tags(ids), actor=actor, run_key=key):
                html = preview_html(ev["rows"], ev["normal"], ev["ref"], ev["seed"], ev["done"], ev["total"])
                if ev["stage"] == "start":
                    progress((0, ev["total"]), desc="loading the model / generating")
                    yield {msg: ok_box(ev["message"]), metrics: "", out: html, pv_ref: None}
                elif ev["stage"] == "done":
                    yield {msg: ok_box(ev["message"]), metrics: metrics_md(ev["preview"]["metrics"]), out: html,
                           pv_ref: ev["ref"], self.c["compare"]: self.compare()}
                else:
                    if ev["stage"] == "row":
                        progress((ev["done"], ev["total"]), desc=f"prompt {ev['done']}/{ev['total']}")
                    yield {metrics: "", out: html, pv_ref: None}
        except ValueError as e:
            yield {msg: error_box(str(e)), metrics: "", pv_ref: None}

    def stop_preview(self, request: gr.Request):
        """Stop: the running preview of this session stops at its next decoding step; the message says so."""
        self.ctx.require_admin(request, "stop previews")
        msg = self.st.stop_preview_message(getattr(request, "session_hash", None))
        return gr.update() if msg is None else warn_box(msg)  # nothing was running: the last message stands

    def to_pool(self, ref, request: gr.Request):
        actor = self.ctx.require_admin(request, "add candidates to the pool")
        try:
            msg = self.st.pool_preview(ref, actor=actor)
        except ValueError as e:
            return error_box(str(e)), gr.update()
        return ok_box(msg), self.compare()

    def on_show_keep(self, cur_neg, kind_filter, auto):
        """Page load / tab opened: fresh choices; the preview's version is the one saved last unless the user
        chose another one (kept while it exists)."""
        ch = self.st.preview_choices(cur_neg, auto)
        return (gr.update(choices=ch["negative"], value=ch["value"]),
                gr.update(choices=[NO_SYSTEM_PROMPT] + ch["positive"]), gr.update(choices=ch["tags"]),
                self.lib_df(kind_filter), self.compare(), ch["newest"])


PUBLIC = ("lib", "name", "kind", "text", "tags", "save", "save_msg", "versions", "diff", "diff_raw", "neg_ref",
          "normal_ref", "seed", "mode", "n", "run", "pool", "pv_out", "pv_msg", "compare", "stop")


def build(ctx: Ctx) -> dict:
    tab = StudioTab(ctx)
    c = tab.c
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Library")
            c["kind_filter"] = gr.Radio(["all", "negative", "positive"], value="all", show_label=False,
                                        elem_id="lib-kind-filter")
            c["lib"] = gr.Dataframe(headers=LIB_COLUMNS, datatype="str", interactive=False, wrap=True,
                                    max_height=380, column_widths=["27%", "15%", "10%", "12%", "20%", "16%"],
                                    elem_id="lib-table")
            c["new"] = gr.Button("New system prompt", size="sm", elem_id="lib-new")
        with gr.Column(scale=3, min_width=420):
            gr.Markdown("### Edit (saving creates a new immutable version)")
            with gr.Row():
                c["name"] = gr.Textbox(label="Name", scale=2, elem_id="lib-name", max_lines=1)
                c["kind"] = gr.Radio(["negative", "positive"], value="negative", label="Kind", scale=2,
                                     elem_id="lib-kind")
                c["ref"] = gr.Textbox(label="Loaded version", interactive=False, scale=1, elem_id="lib-current")
            c["text"] = gr.Textbox(label="System prompt text", lines=5, max_lines=12, elem_id="lib-text")
            c["tags"] = gr.Textbox(label="Tags (comma separated)", elem_id="lib-tags", max_lines=1)
            with gr.Row():
                c["temperature"] = gr.Slider(0.0, 2.0, value=0.9, step=0.05, label="temperature", elem_id="lib-temp")
                c["top_p"] = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p", elem_id="lib-topp")
                c["max_new_tokens"] = gr.Number(value=128, precision=0, minimum=1, maximum=8192, label="max tokens",
                                                elem_id="lib-maxtok")
                c["k"] = gr.Number(value=1, precision=0, minimum=1, maximum=64, label="k (samples / prompt)",
                                   elem_id="lib-k")
            with gr.Row():
                c["save"] = gr.Button("Save new version", variant="primary", elem_id="lib-save")
            c["save_msg"] = gr.HTML("", js_on_load=None, elem_id="lib-save-msg")
    ctx.admin_only.append(c["save"])
    with gr.Accordion("Versions and diff", open=True):
        with gr.Row():
            c["versions"] = gr.Dataframe(headers=VERSION_COLUMNS, datatype="str", interactive=False, wrap=True,
                                         max_height=220, scale=3, elem_id="lib-versions",
                                         column_widths=["10%", "15%", "20%", "35%", "20%"])
            with gr.Column(scale=2):
                with gr.Row():
                    c["va"] = gr.Dropdown(label="from version", choices=[], elem_id="diff-a")
                    c["vb"] = gr.Dropdown(label="to version", choices=[], elem_id="diff-b")
                c["diff_btn"] = gr.Button("Show diff", size="sm", elem_id="diff-btn")
        c["diff"] = gr.HTML("", js_on_load=None, elem_id="lib-diff")
        c["diff_raw"] = gr.Textbox(label="Unified diff", lines=4, max_lines=14, interactive=False,
                                   elem_id="lib-diff-raw")

    gr.Markdown("### Preview")
    with gr.Row():
        # choices arrive on page load; custom values keep the /run_preview API route usable (the ref is checked by
        # Studio.run_preview against the library, an unknown one is a clear error)
        c["neg_ref"] = gr.Dropdown(label="Negative prompt version", choices=[], elem_id="pv-neg", scale=2,
                                   allow_custom_value=True)
        c["normal_ref"] = gr.Dropdown(label="Normal side", choices=[NO_SYSTEM_PROMPT], value=NO_SYSTEM_PROMPT,
                                      elem_id="pv-normal", scale=2)
        c["seed"] = gr.Number(value=0, precision=0, label="seed", elem_id="pv-seed", scale=1, minimum=0)
    with gr.Row():
        c["mode"] = gr.Radio(["random", "tag", "manual"], value="random", label="Prompts", elem_id="pv-mode", scale=2)
        c["n"] = gr.Number(value=3, precision=0, minimum=1, maximum=50, label="how many", elem_id="pv-n", scale=1)
        c["pv_tag"] = gr.Dropdown(label="tag", choices=[], scale=1, elem_id="pv-tag", allow_custom_value=True)
        c["pv_ids"] = gr.Textbox(label="prompt ids (manual, comma separated)", scale=2, elem_id="pv-ids")
    with gr.Row():
        c["run"] = gr.Button("Run preview", variant="primary", elem_id="pv-run")
        c["stop"] = gr.Button("Stop", size="sm", scale=0, min_width=80, elem_id="pv-stop")
        c["pool"] = gr.Button("Add to pool", elem_id="pv-pool")
    c["pv_msg"] = gr.HTML("", js_on_load=None, elem_id="pv-msg")
    c["pv_metrics"] = gr.Markdown("", elem_id="pv-metrics")
    c["pv_out"] = gr.HTML(preview_html([], "", "", None, 0, 0), js_on_load=None, elem_id="pv-out")
    c["pv_ref"] = gr.State(None)
    c["pv_auto"] = gr.State(None)  # the default last given to the preview's version choice (not a user choice)
    c["guard"] = gr.State(None)  # what the user was last warned would replace unsaved editor changes
    gr.Markdown("### Compare versions (latest preview of each)")
    c["compare"] = gr.Dataframe(headers=CMP_COLUMNS, datatype="str", interactive=False, wrap=True, max_height=300,
                                elem_id="pv-compare")
    gr.Markdown("undesirability: reward gap normal − negative with a trained scorer, else the share of negatives "
                "that are neither refusals nor leaks (weighted by length); distance: cosine distance to the normal "
                "answers; diversity: mean pairwise distance among negatives; refusals / leaks: share of negatives "
                "that refuse / copy the normal answer. Higher undesirability, distance and diversity and lower "
                "refusals and leaks = a more useful negative prompt. Each row is that version's latest preview: compare "
                "rows only where `measure` (reward gap, which can be negative, or the 0–1 heuristic share) and "
                "`prompt set` (which prompts were previewed) are the same.", elem_classes=["neat-help"])

    editor = tab.of(*EDITOR_FIELDS)
    c["lib"].select(tab.on_select, {c["lib"], c["guard"], *editor},
                    [*editor, *tab.of("versions", "va", "vb", "diff", "diff_raw", "neg_ref", "save_msg", "guard")])
    c["kind_filter"].change(tab.lib_df, c["kind_filter"], c["lib"])
    c["diff_btn"].click(tab.diff_for, tab.of("name", "va", "vb"), tab.of("diff", "diff_raw"))
    c["new"].click(tab.new_prompt, {c["guard"], *editor}, [*editor, c["save_msg"], c["guard"]])
    c["save"].click(tab.save, tab.of("name", "kind", "text", "tags", "temperature", "top_p", "max_new_tokens", "k",
                                     "kind_filter"),
                    tab.of("save_msg", "ref", "lib", "versions", "va", "vb", "diff", "diff_raw", "neg_ref",
                           "normal_ref"), api_name="save_library_prompt")
    run_ev = c["run"].click(tab.run_preview, tab.of("neg_ref", "normal_ref", "seed", "mode", "n", "pv_tag",
                                                    "pv_ids"),
                            tab.of("pv_msg", "pv_metrics", "pv_out", "pv_ref", "compare"), concurrency_limit=1)
    c["stop"].click(tab.stop_preview, None, [c["pv_msg"]], cancels=[run_ev])
    c["pool"].click(tab.to_pool, [c["pv_ref"]], tab.of("pv_msg", "compare"))
    ctx.admin_only += tab.of("run", "stop", "pool")
    return {**{k: c[k] for k in PUBLIC},
            "_on_show": (tab.on_show_keep, tab.of("neg_ref", "kind_filter", "pv_auto"),
                         tab.of("neg_ref", "normal_ref", "pv_tag", "lib", "compare", "pv_auto"))}
