"""Prompts tab: browse / search (text or semantic) / filter; import files; add and tag prompts by hand."""
from __future__ import annotations

import pandas as pd
import gradio as gr

from ..io.importers import FORM_LABELS
from .common import Ctx, Tab, error_box, ok_box, parse_tags, prompt_text, short, warn_box

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


def prompts_table(rows: list[dict]) -> pd.DataFrame:
    """The table's rows (text shortened, tags joined; strings only: untrusted text is shown as text)."""
    return pd.DataFrame([[r["id"], short(prompt_text(r["messages"]), 220), ", ".join(r.get("tags") or []),
                          r["source"], r["split"], str(r.get("n_responses", "")), str(r.get("n_annotators", ""))]
                         for r in rows], columns=COLUMNS)


def results_summary(res: dict) -> str:
    """The line above the table for a `Studio.browse_prompts` result."""
    if res["mode"] == "semantic":
        return (f"**{len(res['rows'])}** most similar prompts (semantic search over {res['total']} embedded). "
                f"{res['note']}")
    return f"**{res['total']}** prompt(s) match."


RESULTS = ("page", "table", "summary", "page_info")  # a search's outputs
FACETS = ("tag", "source", "emb_info")
DETAIL = ("detail_id", "detail", "detail_resp", "tag_ids")
PUBLIC = ("query", "semantic", "search", "table", "detail", "tag", "source", "split", "status", "add_text", "add_btn",
          "import_file", "import_btn", "import_msg")


class PromptsTab(Tab):
    """The tab's handlers (see Tab: parameters are named after the components they read)."""

    def _filters(self, semantic, tag, source, split, status, request) -> dict:
        """The search fields (besides the query) as Studio.browse_prompts takes them."""
        code = STATUS.get(status or "any")
        # only a "... by me" status needs the user (someone who must change their password may still browse)
        user = self.ctx.user(request) if code and code.endswith(":me") else None
        return {"semantic": semantic, "tag": tag, "source": source, "split": split, "status": code, "user": user}

    def _results(self, query, semantic, tag, source, split, status, request, page: int, **kw) -> dict:
        filters = self._filters(semantic, tag, source, split, status, request)
        try:
            res = self.st.browse_prompts(query, page=page, page_size=PAGE, **filters, **kw)
        except ValueError as e:
            raise gr.Error(str(e))
        return {"page": res["page"], "table": prompts_table(res["rows"]), "summary": results_summary(res),
                "page_info": f"page {res['page'] + 1} / {res['pages']}"}

    def first_page(self, query, semantic, tag, source, split, status, request: gr.Request):
        return self.pack(RESULTS, self._results(query, semantic, tag, source, split, status, request, 0))

    def previous_page(self, query, semantic, tag, source, split, status, page, request: gr.Request):
        return self.pack(RESULTS, self._results(query, semantic, tag, source, split, status, request, page - 1))

    def next_page(self, query, semantic, tag, source, split, status, page, request: gr.Request):
        return self.pack(RESULTS, self._results(query, semantic, tag, source, split, status, request, page + 1,
                                               back_if_empty=True))

    def facets(self):
        f = self.st.prompt_facets()
        choices = {"tag": [""] + f["tags"], "source": [""] + f["sources"]}
        return self.pack(FACETS, {**{k: gr.update(choices=v) for k, v in choices.items()},
                                 "emb_info": self.st.embedding_note()})

    def on_show(self, query, semantic, tag, source, split, status, request: gr.Request):
        return (*self.facets(), *self.first_page(query, semantic, tag, source, split, status, request))

    def select(self, evt: gr.SelectData, table, tag_ids):
        """A row click: its prompt in the detail view, its id added to (or removed from) the selection."""
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            pid = str(table.iloc[row, 0])
        except Exception:  # noqa: BLE001
            return self.pack(DETAIL, {})
        d = self.st.prompt_detail(pid)
        if d is None:
            return self.pack(DETAIL, {"detail_id": pid, "detail": "(prompt not found)",
                                     "detail_resp": pd.DataFrame(columns=["origin", "response"])})
        return self.pack(DETAIL, {"detail_id": pid, "detail": _conversation(d["prompt"]["messages"]),
                                 "detail_resp": pd.DataFrame([[r["origin"], r["text"]] for r in d["responses"]],
                                                             columns=["origin", "response"]),
                                 "tag_ids": toggle_id(tag_ids, pid)})

    def select_all(self, query, semantic, tag, source, split, status, request: gr.Request):
        filters = self._filters(semantic, tag, source, split, status, request)
        try:
            r = self.st.select_prompts(query, limit=SELECT_ALL_MAX, **filters)
        except ValueError as e:
            return gr.update(), error_box(str(e))
        note = f" (the first {len(r['ids'])} of {r['total']}: narrow the search for the rest)" if r["more"] else ""
        return ", ".join(r["ids"]), ok_box(f"{len(r['ids'])} prompt(s) selected{note}. Apply tags or move them below.")

    def apply_tags(self, tag_ids, tag_tags, tag_mode, request: gr.Request):
        actor = self.ctx.require_admin(request, "tag prompts")
        try:
            n = self.st.tag_prompts(parse_tags(tag_ids), parse_tags(tag_tags), mode=tag_mode, actor=actor)
        except ValueError as e:
            return error_box(str(e))
        cleared = tag_mode == "replace" and not parse_tags(tag_tags)
        return ok_box(f"{'Cleared all tags' if cleared else 'Tags updated'} on {n} prompt(s).")

    def move_split(self, tag_ids, split_to, request: gr.Request):
        actor = self.ctx.require_admin(request, "move prompts")
        try:
            n = self.st.set_prompt_split(parse_tags(tag_ids), split_to, actor=actor)
        except ValueError as e:
            return error_box(str(e))
        return ok_box(f"{n} prompt(s) moved to {split_to}.")

    def assign(self, tag_ids, assign_to, request: gr.Request):
        actor = self.ctx.require_admin(request, "assign prompts")
        try:
            n = self.st.assign_prompts(parse_tags(tag_ids), assign_to, actor=actor)
        except ValueError as e:
            return error_box(f"Not assigned: {e}")
        return ok_box(f"{n} prompt(s) assigned to {assign_to.strip()} for {self.st.ASSIGN_DAYS} days: first in their "
                      "queue, out of everyone else's until they save or skip them.")

    def add(self, add_text, add_system, add_tags, add_split, request: gr.Request):
        actor = self.ctx.require_admin(request, "add prompts")
        try:
            r = self.st.add_prompt(add_text, parse_tags(add_tags), add_split, system=add_system, actor=actor)
        except ValueError as e:
            return error_box(str(e)), gr.update()
        if r["existing"]:
            return ok_box(f"This prompt already exists ({r['id']}); tags merged."), gr.update()
        return ok_box(f"Added prompt {r['id']}."), ""

    def do_import(self, import_file, import_format, import_column, import_split, import_tags, request: gr.Request,
                  progress=gr.Progress()):
        actor = self.ctx.require_admin(request, "import files")
        path = import_file if isinstance(import_file, str) else getattr(import_file, "name", import_file)
        try:
            r = self.st.import_upload(path, import_format, prompt_column=import_column, split=import_split,
                                      tags=parse_tags(import_tags), actor=actor,
                                      progress=lambda x, what: progress(x, desc=what))
        except ValueError as e:
            return error_box(str(e))
        return ok_box(r["summary"]) + (warn_box(r["warning"]) if r["warning"] else "")

    def embed(self, request: gr.Request, progress=gr.Progress()):
        actor = self.ctx.require_admin(request, "compute embeddings")
        try:
            n = self.st.embed_prompts(actor=actor, progress=lambda d, t: progress((d, t), desc="embedding prompts"))
        except Exception as e:  # noqa: BLE001 - show, don't crash
            raise gr.Error(f"Embedding failed: {e}")
        gr.Info(f"Embedded {n} prompt(s).")
        return self.st.embedding_note()


def build(ctx: Ctx) -> dict:
    tab = PromptsTab(ctx)
    c = tab.c
    gr.Markdown("Browse, search and curate the user prompts. Semantic search works once prompts are embedded.",
                elem_classes=["neat-help"])
    with gr.Row(equal_height=True):
        c["query"] = gr.Textbox(placeholder="Search prompt text…", show_label=False, scale=4, elem_id="prompts-query",
                                max_lines=1)
        c["semantic"] = gr.Checkbox(label="semantic", value=False, scale=0, min_width=110,
                                    elem_id="prompts-semantic")
        c["search"] = gr.Button("Search", variant="primary", scale=0, min_width=100, elem_id="prompts-search")
    with gr.Row():
        c["tag"] = gr.Dropdown(label="Tag", choices=[], value=None, allow_custom_value=False, scale=1)
        c["source"] = gr.Dropdown(label="Source", choices=[], value=None, scale=1)
        c["split"] = gr.Dropdown(label="Split", choices=["", "train", "dev", "test"], value="", scale=1)
        c["status"] = gr.Dropdown(label="Annotation status", choices=list(STATUS), value="any", scale=1)
    c["summary"] = gr.Markdown("", elem_id="prompts-summary")
    with gr.Row():
        with gr.Column(scale=3):
            c["table"] = gr.Dataframe(headers=COLUMNS, datatype="str", interactive=False, wrap=True, max_height=420,
                                      column_widths=["15%", "39%", "12%", "12%", "8%", "7%", "7%"],  # no sideways cut
                                      elem_id="prompts-table")
            with gr.Row():
                c["prev"] = gr.Button("◀ Previous", size="sm", scale=0, min_width=110)
                c["page_info"] = gr.Markdown("", elem_classes=["neat-page"])
                c["next"] = gr.Button("Next ▶", size="sm", scale=0, min_width=110)
            c["page"] = gr.State(0)
        with gr.Column(scale=2):
            c["detail_id"] = gr.Textbox(label="Selected prompt id", interactive=False, elem_id="prompts-selected")
            c["detail"] = gr.Textbox(label="Conversation", lines=8, max_lines=16, interactive=False,
                                     elem_id="prompts-detail")
            c["detail_resp"] = gr.Dataframe(headers=["origin", "response"], datatype="str", interactive=False,
                                            wrap=True, column_widths=["28%", "72%"], max_height=260,
                                            label="Candidate responses")
    with gr.Accordion("Tag / move selected prompts", open=False) as acc_tag:
        with gr.Row():
            c["tag_ids"] = gr.Textbox(label="Prompt ids (comma separated; clicking a row adds it, again removes it)",
                                      scale=3, elem_id="prompts-tag-ids")
            c["tag_tags"] = gr.Textbox(label="Tags (comma separated)", scale=2)
            c["tag_mode"] = gr.Radio(["add", "remove", "replace"], value="add", label="Mode", scale=1)
        with gr.Row():
            c["select_all"] = gr.Button("Select all prompts of this search", size="sm", elem_id="prompts-select-all")
            c["clear"] = gr.Button("Clear selection", size="sm", elem_id="prompts-select-clear")
            c["tag_btn"] = gr.Button("Apply tags", size="sm", elem_id="prompts-tag-apply")
            c["split_to"] = gr.Dropdown(["train", "dev", "test"], value="train", label="Move to split", scale=0,
                                        min_width=140)
            c["split_btn"] = gr.Button("Move", size="sm")
            c["assign_to"] = gr.Textbox(label="Assign to annotator", scale=1, max_lines=1, elem_id="prompts-assign-to")
            c["assign_btn"] = gr.Button("Assign", size="sm", elem_id="prompts-assign")
        c["tag_msg"] = gr.HTML("", js_on_load=None)
    with gr.Accordion("Add a prompt by hand", open=False) as acc_add:
        c["add_text"] = gr.Textbox(label="User prompt", lines=3, elem_id="prompts-add-text")
        with gr.Row():
            c["add_system"] = gr.Textbox(label="Optional system turn (part of the conversation)", scale=2)
            c["add_tags"] = gr.Textbox(label="Tags (comma separated)", scale=2, elem_id="prompts-add-tags")
            c["add_split"] = gr.Dropdown(["train", "dev", "test"], value="train", label="Split", scale=1)
        c["add_btn"] = gr.Button("Add prompt", variant="primary", elem_id="prompts-add-btn")
        c["add_msg"] = gr.HTML("", js_on_load=None, elem_id="prompts-add-msg")
    with gr.Accordion("Import a file", open=False) as acc_imp:
        gr.Markdown("Same importers as `python -m neat_studio import`: HH-RLHF, TRL pairs, listwise JSONL, "
                    "plain JSONL/CSV prompt files, parquet. Bad input is reported with its line; nothing is "
                    "written then.")
        with gr.Row():
            c["import_file"] = gr.File(label="File", file_types=[".jsonl", ".json", ".gz", ".csv", ".tsv", ".parquet"],
                                       scale=2, elem_id="prompts-import-file")
            with gr.Column(scale=2):
                c["import_format"] = gr.Dropdown(FORMATS, value="auto", label=FORM_LABELS["format"],
                                                 elem_id="prompts-import-format")
                c["import_column"] = gr.Textbox(value="prompt", label=FORM_LABELS["prompt_column"],
                                                elem_id="prompts-import-column")
            with gr.Column(scale=2):
                c["import_split"] = gr.Dropdown(["", "train", "dev", "test"], value="", label="Split for all rows")
                c["import_tags"] = gr.Textbox(label="Tags for all rows (comma separated)")
        c["import_btn"] = gr.Button("Import", variant="primary", elem_id="prompts-import-btn")
        c["import_msg"] = gr.HTML("", js_on_load=None, elem_id="prompts-import-msg")
    with gr.Accordion("Embeddings (semantic search)", open=False) as acc_emb:
        c["emb_info"] = gr.Markdown("", elem_id="prompts-emb-info")
        c["emb_btn"] = gr.Button("Compute missing prompt embeddings", size="sm")
    ctx.admin_only += [acc_tag, acc_add, acc_imp, acc_emb]

    for trigger in (c["search"].click, c["query"].submit, c["tag"].change, c["source"].change, c["split"].change,
                    c["status"].change, c["semantic"].change):
        tab.bind(trigger, tab.first_page, RESULTS)
    tab.bind(c["prev"].click, tab.previous_page, RESULTS)
    tab.bind(c["next"].click, tab.next_page, RESULTS)
    tab.bind(c["table"].select, tab.select, DETAIL)
    tab.bind(c["select_all"].click, tab.select_all, ["tag_ids", "tag_msg"], api_name="select_all")
    c["clear"].click(lambda: ("", ""), None, [c["tag_ids"], c["tag_msg"]])
    tab.bind(c["assign_btn"].click, tab.assign, ["tag_msg"], api_name="assign_prompts")
    applied = tab.bind(c["tag_btn"].click, tab.apply_tags, ["tag_msg"])
    tab.bind(tab.bind(applied.then, tab.first_page, RESULTS).then, tab.facets, FACETS)
    tab.bind(tab.bind(c["split_btn"].click, tab.move_split, ["tag_msg"]).then, tab.first_page, RESULTS)
    added = tab.bind(c["add_btn"].click, tab.add, ["add_msg", "add_text"], api_name="add_prompt")
    tab.bind(tab.bind(added.then, tab.facets, FACETS).then, tab.first_page, RESULTS)
    imported = tab.bind(c["import_btn"].click, tab.do_import, ["import_msg"], api_name="import_file")
    tab.bind(tab.bind(imported.then, tab.facets, FACETS).then, tab.first_page, RESULTS)
    tab.bind(c["emb_btn"].click, tab.embed, ["emb_info"])
    return {**{k: c[k] for k in PUBLIC},
            "_on_show": (tab.on_show, tab.inputs(tab.on_show), [c[n] for n in (*FACETS, *RESULTS)])}
