"""Prompts tab: browse / search (text or semantic) / filter; import files; add and tag prompts by hand."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import gradio as gr

from ..io.importers import FORM_LABELS
from .common import Ctx, error_box, ok_box, parse_tags, prompt_text, short, warn_box

PAGE = 50
COLUMNS = ["id", "prompt", "tags", "source", "split", "resp.", "annot."]
STATUS = {"any": None, "not annotated by anyone": "unannotated", "annotated": "annotated", "flagged": "flagged",
          "not annotated by me": "unannotated:me", "annotated by me": "annotated:me"}
FORMATS = ["auto", "hh_rlhf", "trl", "listwise", "jsonl", "csv", "parquet"]


def _conversation(messages) -> str:
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in messages or [])


SELECT_ALL_MAX = 5000  # "select all prompts of this search" takes at most this many


def toggle_id(current: str | None, pid: str) -> str:
    """The comma-separated selection with `pid` added, or removed when it was there (row clicks)."""
    ids = [x for x in (t.strip() for t in (current or "").split(",")) if x]
    return ", ".join([x for x in ids if x != pid] if pid in ids else ids + [pid])


def build(ctx: Ctx) -> dict:
    st = ctx.studio
    gr.Markdown("Browse, search and curate the user prompts. Semantic search works once prompts are embedded.",
                elem_classes=["neat-help"])
    with gr.Row(equal_height=True):
        query = gr.Textbox(placeholder="Search prompt text…", show_label=False, scale=4, elem_id="prompts-query",
                           max_lines=1)
        semantic = gr.Checkbox(label="semantic", value=False, scale=0, min_width=110, elem_id="prompts-semantic")
        search_btn = gr.Button("Search", variant="primary", scale=0, min_width=100, elem_id="prompts-search")
    with gr.Row():
        tag = gr.Dropdown(label="Tag", choices=[], value=None, allow_custom_value=False, scale=1)
        source = gr.Dropdown(label="Source", choices=[], value=None, scale=1)
        split = gr.Dropdown(label="Split", choices=["", "train", "dev", "test"], value="", scale=1)
        status = gr.Dropdown(label="Annotation status", choices=list(STATUS), value="any", scale=1)
    summary = gr.Markdown("", elem_id="prompts-summary")
    with gr.Row():
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=COLUMNS, datatype="str", interactive=False, wrap=True, max_height=420,
                                 column_widths=["15%", "39%", "12%", "12%", "8%", "7%", "7%"],  # 100 %: no sideways cut
                                 elem_id="prompts-table")
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", size="sm", scale=0, min_width=110)
                page_info = gr.Markdown("", elem_classes=["neat-page"])
                next_btn = gr.Button("Next ▶", size="sm", scale=0, min_width=110)
            page = gr.State(0)
        with gr.Column(scale=2):
            detail_id = gr.Textbox(label="Selected prompt id", interactive=False, elem_id="prompts-selected")
            detail = gr.Textbox(label="Conversation", lines=8, max_lines=16, interactive=False,
                                elem_id="prompts-detail")
            detail_resp = gr.Dataframe(headers=["origin", "response"], datatype="str", interactive=False, wrap=True,
                                       column_widths=["28%", "72%"],
                                       max_height=260, label="Candidate responses")

    with gr.Accordion("Tag / move selected prompts", open=False) as acc_tag:
        with gr.Row():
            tag_ids = gr.Textbox(label="Prompt ids (comma separated; clicking a row adds it, again removes it)",
                                 scale=3, elem_id="prompts-tag-ids")
            tag_tags = gr.Textbox(label="Tags (comma separated)", scale=2)
            tag_mode = gr.Radio(["add", "remove", "replace"], value="add", label="Mode", scale=1)
        with gr.Row():
            all_btn = gr.Button("Select all prompts of this search", size="sm", elem_id="prompts-select-all")
            clear_btn = gr.Button("Clear selection", size="sm", elem_id="prompts-select-clear")
            tag_btn = gr.Button("Apply tags", size="sm", elem_id="prompts-tag-apply")
            split_to = gr.Dropdown(["train", "dev", "test"], value="train", label="Move to split", scale=0,
                                   min_width=140)
            split_btn = gr.Button("Move", size="sm")
            assign_to = gr.Textbox(label="Assign to annotator", scale=1, max_lines=1, elem_id="prompts-assign-to")
            assign_btn = gr.Button("Assign", size="sm", elem_id="prompts-assign")
        tag_msg = gr.HTML("", js_on_load=None)
    with gr.Accordion("Add a prompt by hand", open=False) as acc_add:
        add_text = gr.Textbox(label="User prompt", lines=3, elem_id="prompts-add-text")
        with gr.Row():
            add_system = gr.Textbox(label="Optional system turn (part of the conversation)", scale=2)
            add_tags = gr.Textbox(label="Tags (comma separated)", scale=2, elem_id="prompts-add-tags")
            add_split = gr.Dropdown(["train", "dev", "test"], value="train", label="Split", scale=1)
        add_btn = gr.Button("Add prompt", variant="primary", elem_id="prompts-add-btn")
        add_msg = gr.HTML("", js_on_load=None, elem_id="prompts-add-msg")
    with gr.Accordion("Import a file", open=False) as acc_imp:
        gr.Markdown("Same importers as `python -m neat_studio import`: HH-RLHF, TRL pairs, listwise JSONL, "
                    "plain JSONL/CSV prompt files, parquet. Bad input is reported with its line; nothing is "
                    "written then.")
        with gr.Row():
            imp_file = gr.File(label="File", file_types=[".jsonl", ".json", ".gz", ".csv", ".tsv", ".parquet"],
                               scale=2, elem_id="prompts-import-file")
            with gr.Column(scale=2):
                imp_fmt = gr.Dropdown(FORMATS, value="auto", label=FORM_LABELS["format"],
                                      elem_id="prompts-import-format")
                imp_col = gr.Textbox(value="prompt", label=FORM_LABELS["prompt_column"],
                                     elem_id="prompts-import-column")
            with gr.Column(scale=2):
                imp_split = gr.Dropdown(["", "train", "dev", "test"], value="", label="Split for all rows")
                imp_tags = gr.Textbox(label="Tags for all rows (comma separated)")
        imp_btn = gr.Button("Import", variant="primary", elem_id="prompts-import-btn")
        imp_msg = gr.HTML("", js_on_load=None, elem_id="prompts-import-msg")
    with gr.Accordion("Embeddings (semantic search)", open=False) as acc_emb:
        emb_info = gr.Markdown("", elem_id="prompts-emb-info")
        emb_btn = gr.Button("Compute missing prompt embeddings", size="sm")
    ctx.admin_only += [acc_tag, acc_add, acc_imp, acc_emb]

    # -- handlers ------------------------------------------------------------------------------------------
    def _status(value, request):
        s = STATUS.get(value or "any")
        if s and s.endswith(":me"):
            return s.split(":")[0], ctx.user(request)
        return s, None

    def load(q, sem, tg, src, sp, stat, pg, request: gr.Request):
        s, who = _status(stat, request)
        try:
            res = st.search_prompts(q, semantic=bool(sem), tag=tg or None, source=src or None, split=sp or None,
                                    status=s, annotator=who, limit=PAGE, offset=pg * PAGE)
        except ValueError as e:
            raise gr.Error(str(e))
        rows = [[r["id"], short(prompt_text(r["messages"]), 220), ", ".join(r.get("tags") or []), r["source"],
                 r["split"], str(r.get("n_responses", "")), str(r.get("n_annotators", ""))] for r in res["rows"]]
        df = pd.DataFrame(rows, columns=COLUMNS)
        total = res["total"]
        pages = max(1, (total + PAGE - 1) // PAGE)
        if res["mode"] == "semantic":
            summ = f"**{len(rows)}** most similar prompts (semantic search over {total} embedded). {res['note']}"
        else:
            summ = f"**{total}** prompt(s) match."
        return df, summ, f"page {pg + 1} / {pages}"

    def facets():
        f = st.prompt_facets()
        return (gr.update(choices=[""] + f["tags"]), gr.update(choices=[""] + f["sources"]),
                _emb_info())

    def _emb_info():
        try:
            s = st.semantic_search_ready()
            return f"{s['embedded']} prompt(s) embedded, {s['missing']} missing."
        except Exception as e:  # noqa: BLE001
            return f"Embeddings unavailable: {e}"

    inputs = [query, semantic, tag, source, split, status, page]
    outputs = [table, summary, page_info]

    def first_page(q, sem, tg, src, sp, stat, request: gr.Request):
        return (0, *load(q, sem, tg, src, sp, stat, 0, request))

    for trig in (search_btn.click, query.submit, tag.change, source.change, split.change, status.change,
                 semantic.change):
        trig(first_page, inputs=inputs[:-1], outputs=[page, *outputs])

    def turn(delta):
        def go(q, sem, tg, src, sp, stat, pg, request: gr.Request):
            pg = max(0, pg + delta)
            out = load(q, sem, tg, src, sp, stat, pg, request)
            if delta > 0 and out[0].empty and pg > 0:
                pg -= 1
                out = load(q, sem, tg, src, sp, stat, pg, request)
            return (pg, *out)
        return go

    prev_btn.click(turn(-1), inputs=inputs, outputs=[page, *outputs])
    next_btn.click(turn(+1), inputs=inputs, outputs=[page, *outputs])

    def select(evt: gr.SelectData, df, current_ids):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            pid = str(df.iloc[row, 0])
        except Exception:  # noqa: BLE001
            return gr.update(), gr.update(), gr.update(), gr.update()
        p = st.prompt(pid)
        if p is None:
            return pid, "(prompt not found)", pd.DataFrame(columns=["origin", "response"]), gr.update()
        resp = st.prompt_responses(pid)
        rdf = pd.DataFrame([[r["origin"], r["text"]] for r in resp], columns=["origin", "response"])
        return pid, _conversation(p["messages"]), rdf, toggle_id(current_ids, pid)

    table.select(select, inputs=[table, tag_ids], outputs=[detail_id, detail, detail_resp, tag_ids])

    def select_all(q, sem, tg, src, sp, stat, request: gr.Request):
        s_, who = _status(stat, request)
        try:
            res = st.search_prompts(q, semantic=bool(sem), tag=tg or None, source=src or None, split=sp or None,
                                    status=s_, annotator=who, limit=SELECT_ALL_MAX)
        except ValueError as e:
            return gr.update(), error_box(str(e))
        ids = [r["id"] for r in res["rows"]]
        more = res["total"] > len(ids) and res["mode"] != "semantic"
        note = f" (the first {len(ids)} of {res['total']}: narrow the search for the rest)" if more else ""
        return ", ".join(ids), ok_box(f"{len(ids)} prompt(s) selected{note}. Apply tags or move them below.")

    all_btn.click(select_all, inputs=inputs[:-1], outputs=[tag_ids, tag_msg], api_name="select_all")
    clear_btn.click(lambda: ("", ""), None, [tag_ids, tag_msg])

    def apply_tags(ids, tags, mode, request: gr.Request):
        actor = ctx.require_admin(request, "tag prompts")
        try:
            n = st.tag_prompts(parse_tags(ids), parse_tags(tags), mode=mode, actor=actor)
        except ValueError as e:
            return error_box(str(e))
        cleared = mode == "replace" and not parse_tags(tags)
        return ok_box(f"{'Cleared all tags' if cleared else 'Tags updated'} on {n} prompt(s).")

    def move_split(ids, sp, request: gr.Request):
        actor = ctx.require_admin(request, "move prompts")
        try:
            n = st.set_prompt_split(parse_tags(ids), sp, actor=actor)
        except ValueError as e:
            return error_box(str(e))
        return ok_box(f"{n} prompt(s) moved to {sp}.")

    def assign(ids, who, request: gr.Request):
        actor = ctx.require_admin(request, "assign prompts")
        try:
            n = st.assign_prompts(parse_tags(ids), who, actor=actor)
        except ValueError as e:
            return error_box(f"Not assigned: {e}")
        return ok_box(f"{n} prompt(s) assigned to {who.strip()} for {st.ASSIGN_DAYS} days: first in their queue, out "
                      "of everyone else's until they save or skip them.")

    assign_btn.click(assign, [tag_ids, assign_to], tag_msg, api_name="assign_prompts")
    tag_btn.click(apply_tags, [tag_ids, tag_tags, tag_mode], tag_msg).then(
        first_page, inputs=inputs[:-1], outputs=[page, *outputs]).then(facets, None, [tag, source, emb_info])
    split_btn.click(move_split, [tag_ids, split_to], tag_msg).then(
        first_page, inputs=inputs[:-1], outputs=[page, *outputs])

    def add(text, system, tags, sp, request: gr.Request):
        actor = ctx.require_admin(request, "add prompts")
        try:
            r = st.add_prompt(text, parse_tags(tags), sp, system=system, actor=actor)
        except ValueError as e:
            return error_box(str(e)), gr.update()
        if r["existing"]:
            return ok_box(f"This prompt already exists ({r['id']}); tags merged."), gr.update()
        return ok_box(f"Added prompt {r['id']}."), ""

    add_btn.click(add, [add_text, add_system, add_tags, add_split], [add_msg, add_text], api_name="add_prompt").then(
        facets, None, [tag, source, emb_info]).then(first_page, inputs=inputs[:-1], outputs=[page, *outputs])

    def do_import(f, fmt, col, sp, tags, request: gr.Request, progress=gr.Progress()):
        actor = ctx.require_admin(request, "import files")
        if f is None:
            return error_box("Choose a file first.")
        from ..io.importers import DataFormatError

        path = f if isinstance(f, str) else getattr(f, "name", f)
        kw = {"prompt_column": (col or "prompt").strip()}
        if sp:
            kw["split"] = sp
        if parse_tags(tags):
            kw["tags"] = parse_tags(tags)
        try:  # terms="ui": an error names this form's fields, not the CLI's options
            report = st.import_file(path, fmt or "auto", actor=actor, terms="ui",
                                    progress=lambda x, what: progress(x, desc=what), **kw)
        except (DataFormatError, ValueError, OSError) as e:  # name the file as the user knows it, not the upload
            return error_box(f"{str(e).replace(str(path), Path(str(path)).name)}. Nothing was imported.")
        progress(1.0, desc="done")
        from ..studio import long_prompts_note, pairs_unranked_note

        note = pairs_unranked_note(report.get("pairs_unranked", 0))
        long_note = long_prompts_note(report.get("long_prompt_ids") or [])
        return ok_box("Imported: " + ", ".join(f"{k} {v}" for k, v in report.items()
                                               if not isinstance(v, (bool, list)))
                      + (f". {note}" if note else "")) + (warn_box(long_note) if long_note else "")

    imp_btn.click(do_import, [imp_file, imp_fmt, imp_col, imp_split, imp_tags], imp_msg, api_name="import_file").then(
        facets, None, [tag, source, emb_info]).then(first_page, inputs=inputs[:-1], outputs=[page, *outputs])

    def embed(request: gr.Request, progress=gr.Progress()):
        actor = ctx.require_admin(request, "compute embeddings")
        try:
            n = st.embed_prompts(actor=actor, progress=lambda d, t: progress((d, t), desc="embedding prompts"))
        except Exception as e:  # noqa: BLE001 - show, don't crash
            raise gr.Error(f"Embedding failed: {e}")
        gr.Info(f"Embedded {n} prompt(s).")
        return _emb_info()

    emb_btn.click(embed, None, emb_info)

    def on_show(q, sem, tg, src, sp, stat, request: gr.Request):
        f = facets()
        return (*f, 0, *load(q, sem, tg, src, sp, stat, 0, request))

    return {"query": query, "semantic": semantic, "search": search_btn, "table": table, "detail": detail,
            "tag": tag, "source": source, "split": split, "status": status, "add_text": add_text,
            "add_btn": add_btn, "import_file": imp_file, "import_btn": imp_btn, "import_msg": imp_msg,
            "_on_show": (on_show, inputs[:-1], [tag, source, emb_info, page, *outputs])}
