"""Data tab: counts, per-annotator progress, inter-annotator agreement (Kendall tau-b, pairwise agreement on
shared prompts), exports (TRL pairs, listwise JSONL, parquet) and snapshot creation for training."""
from __future__ import annotations

import pandas as pd
import gradio as gr

from .common import Ctx, error_box, esc, fmt_num, ok_box, parse_tags

COUNT_LABELS = [("prompts", "prompts"), ("responses", "responses"), ("annotations", "human annotations"),
                ("annotated_prompts", "annotated prompts"), ("annotators", "annotators"),
                ("imported_rankings", "imported rankings"), ("system_prompts", "system prompts"),
                ("system_prompt_versions", "prompt versions"), ("snapshots", "snapshots"), ("runs", "runs")]


# the TRL export's format choice (Studio.TRL_FORMATS)
TRL_FORMAT_CHOICES = [("auto: conversational for chat data", "auto"),
                      ("conversational (message lists)", "conversational"),
                      ("plain strings", "string")]
PEOPLE_COLUMNS = ["annotator", "done", "of", "saves", "flagged", "last"]
PAIRS_COLUMNS = ["annotator A", "annotator B", "shared prompts", "Kendall τ-b", "pairwise agreement"]
SHARES_COLUMNS = ["annotator", "done", "share", "open now"]
LEASES_COLUMNS = ["prompt", "annotator", "until"]
SNAPSHOT_COLUMNS = ["snapshot", "created", "rows", "sha256"]


def counts_html(c: dict) -> str:
    cells = "".join(f"<div class='neat-stat'><div class='neat-stat-n'>{esc(c.get(k, 0))}</div>"
                    f"<div class='neat-stat-l'>{esc(label)}</div></div>" for k, label in COUNT_LABELS)
    return f"<div class='neat-stats'>{cells}</div>"


def agreement_md(a: dict) -> str:
    if not a["shared_prompts"]:
        return ("**Agreement**: no prompt has been ranked by two or more annotators yet. Agreement is computed on "
                "prompts ranked by several people (their latest annotations).")
    return (f"**Agreement** on {a['shared_prompts']} shared prompt(s): Kendall τ-b **{fmt_num(a['kendall_tau'])}**, "
            f"pairwise agreement **{fmt_num(a['pairwise_agreement'])}** (1 = identical rankings, ties included).")


def table(rows: list[list], columns: list[str]) -> pd.DataFrame:
    """Rows of Studio.data_overview as a table (figures with fmt_num)."""
    return pd.DataFrame([[fmt_num(v) for v in r] for r in rows], columns=columns)


def scorer_msg(m: dict) -> str:
    return (f"Scorer {m['scorer_version']} trained on {m.get('n_train_pairs')} pairs; held-out pairwise accuracy "
            f"{fmt_num(m.get('dev_acc'))} on {m.get('n_dev_pairs')} pairs of unseen prompts.")


PUBLIC = ("refresh", "counts", "people", "agreement", "pairs", "overlap", "overlap_save", "shares", "leases",
          "export_trl", "export_trl_format", "export_listwise", "export_parquet", "export_file", "snapshot")


class DataTab:
    """The tab's handlers; components registered by name in `c`. The tables and messages are Studio's
    (studio/core.py: data_overview, save_overlap_form, export_form, snapshot_form)."""

    OUTS = ("counts", "people", "agreement", "pairs", "snapshots", "overlap", "shares", "leases")

    def __init__(self, ctx: Ctx):
        self.ctx, self.st, self.c = ctx, ctx.studio, {}

    def of(self, *names: str) -> list:
        return [self.c[n] for n in names]

    def load(self, request: gr.Request):
        o, c = self.st.data_overview(), self.c
        return {c["counts"]: counts_html(o["counts"]), c["people"]: table(o["annotators"], PEOPLE_COLUMNS),
                c["agreement"]: agreement_md(o["agreement"]), c["pairs"]: table(o["pairs"], PAIRS_COLUMNS),
                c["snapshots"]: table(o["snapshots"], SNAPSHOT_COLUMNS), c["overlap"]: o["overlap"],
                c["shares"]: table(o["shares"], SHARES_COLUMNS), c["leases"]: table(o["leases"], LEASES_COLUMNS)}

    def save_overlap(self, n, request: gr.Request):
        actor = self.ctx.require_admin(request, "change the rankings per prompt")
        try:
            return ok_box(self.st.save_overlap_form(n, actor=actor))
        except (TypeError, ValueError) as e:
            return error_box(f"Not saved: {e}")

    def export(self, kind: str, split, annotated_only, trl_format, request: gr.Request):
        actor = self.ctx.require_admin(request, "export data")
        try:
            r = self.st.export_form(kind, split, annotated_only, trl_format, actor=actor)
        except (ValueError, OSError) as e:
            return error_box(f"Export failed: {e}"), None
        return ok_box(r["message"]), r["path"]

    # one handler per button: gradio finds the gr.Request parameter in a method's hints, not in a partial's
    def export_trl(self, split, annotated_only, trl_format, request: gr.Request):
        return self.export("trl", split, annotated_only, trl_format, request)

    def export_listwise(self, split, annotated_only, trl_format, request: gr.Request):
        return self.export("listwise", split, annotated_only, trl_format, request)

    def export_parquet(self, split, annotated_only, trl_format, request: gr.Request):
        return self.export("parquet", split, annotated_only, trl_format, request)

    def snapshot(self, split, tags, annotated_only, include_imported, request: gr.Request):
        actor = self.ctx.require_admin(request, "create snapshots")
        try:
            msg = self.st.snapshot_form(split, parse_tags(tags), annotated_only, include_imported, actor=actor)
        except (ValueError, OSError) as e:
            return error_box(f"Snapshot not created: {e}"), gr.update()
        return ok_box(msg), table(self.st.snapshot_rows(), SNAPSHOT_COLUMNS)

    def train_scorer(self, request: gr.Request):
        actor = self.ctx.require_admin(request, "train the reward scorer")
        try:
            m = self.st.train_scorer(actor=actor)
        except (ValueError, OSError) as e:
            return error_box(f"Scorer not trained: {e}")
        return ok_box(scorer_msg(m))


def build(ctx: Ctx) -> dict:
    tab = DataTab(ctx)
    c = tab.c
    with gr.Row():
        gr.Markdown("Counts, progress and agreement use each annotator's latest annotation.",
                    elem_classes=["neat-help"])
        c["refresh"] = gr.Button("Refresh", size="sm", elem_id="data-refresh", scale=0, min_width=100)
    c["counts"] = gr.HTML("", js_on_load=None, elem_id="data-counts")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Annotators")
            c["people"] = gr.Dataframe(headers=PEOPLE_COLUMNS, datatype="str", interactive=False, wrap=True,
                                       max_height=300, elem_id="data-people")
        with gr.Column():
            gr.Markdown("### Agreement")
            c["agreement"] = gr.Markdown("", elem_id="data-agreement")
            c["pairs"] = gr.Dataframe(headers=PAIRS_COLUMNS, datatype="str", interactive=False, max_height=260,
                                      elem_id="data-pairs")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Task distribution")
            gr.Markdown("A prompt leaves everyone's queue once it has this many rankings; while someone has a "
                        "prompt open it is theirs for 5 minutes (skip or save ends it). Share = an equal part of "
                        "prompts × rankings per prompt.", elem_classes=["neat-help"])
            with gr.Row():
                c["overlap"] = gr.Number(label="Rankings per prompt", precision=0, minimum=1, maximum=20, value=1,
                                         elem_id="data-overlap", scale=1)
                c["overlap_save"] = gr.Button("Save", size="sm", elem_id="data-overlap-save", scale=0, min_width=80)
            c["overlap_msg"] = gr.HTML("", js_on_load=None, elem_id="data-overlap-msg")
            c["shares"] = gr.Dataframe(headers=SHARES_COLUMNS, datatype="str", interactive=False, max_height=220,
                                       elem_id="data-shares")
        with gr.Column():
            gr.Markdown("### Open prompts (leases)")
            c["leases"] = gr.Dataframe(headers=LEASES_COLUMNS, datatype="str", interactive=False, max_height=260,
                                       elem_id="data-leases")
    ctx.admin_only += [c["overlap_save"]]
    with gr.Row():
        with gr.Column() as exp_col:
            gr.Markdown("### Export")
            with gr.Row():
                c["ex_split"] = gr.Dropdown(["", "train", "dev", "test"], value="", label="Split")
                c["ex_annot"] = gr.Checkbox(label="only prompts a human annotated", value=False)
            c["export_trl_format"] = gr.Radio(TRL_FORMAT_CHOICES, value="auto", label="TRL pairs format",
                                              elem_id="data-export-trl-format")
            with gr.Row():
                c["export_trl"] = gr.Button("TRL pairs (JSONL)", size="sm", elem_id="data-export-trl")
                c["export_listwise"] = gr.Button("Listwise JSONL", size="sm", elem_id="data-export-listwise")
                c["export_parquet"] = gr.Button("Parquet", size="sm", elem_id="data-export-parquet")
            c["ex_msg"] = gr.HTML("", js_on_load=None, elem_id="data-export-msg")
            c["export_file"] = gr.File(label="Download", interactive=False, elem_id="data-export-file")
        with gr.Column() as snap_col:
            gr.Markdown("### Snapshot for training")
            with gr.Row():
                c["sn_split"] = gr.Dropdown(["train", "dev", "test"], value="train", label="Split")
                c["sn_tags"] = gr.Textbox(label="Tags (any of; comma separated)")
            with gr.Row():
                c["sn_annot"] = gr.Checkbox(label="only human-annotated prompts", value=False)
                c["sn_imported"] = gr.Checkbox(label="include imported dataset rankings", value=True)
            c["snapshot"] = gr.Button("Create snapshot", variant="primary", size="sm", elem_id="data-snapshot")
            c["sn_msg"] = gr.HTML("", js_on_load=None, elem_id="data-snapshot-msg")
            c["snapshots"] = gr.Dataframe(headers=SNAPSHOT_COLUMNS, datatype="str", interactive=False,
                                          max_height=220, elem_id="data-snapshots")
    with gr.Row() as scorer_row:
        with gr.Column():
            gr.Markdown("### Reward scorer")
            gr.Markdown("Trains a new scorer version (Bradley–Terry head on MiniLM embeddings) on every ranked "
                        "prompt; held-out accuracy is measured on prompts it did not train on. The newest version "
                        "gives the AI suggestions in Annotate and the undesirability metric of previews.")
            c["train_scorer"] = gr.Button("Train reward scorer", size="sm", elem_id="data-train-scorer")
            c["sc_msg"] = gr.HTML("", js_on_load=None, elem_id="data-scorer-msg")
    ctx.admin_only += [exp_col, snap_col, scorer_row]

    outs = tab.of(*DataTab.OUTS)
    c["refresh"].click(tab.load, None, outs)
    c["overlap_save"].click(tab.save_overlap, c["overlap"], c["overlap_msg"], api_name="save_overlap").then(
        tab.load, None, outs)
    for kind in ("trl", "listwise", "parquet"):
        c[f"export_{kind}"].click(getattr(tab, f"export_{kind}"), tab.of("ex_split", "ex_annot", "export_trl_format"),
                                  tab.of("ex_msg", "export_file"))
    c["snapshot"].click(tab.snapshot, tab.of("sn_split", "sn_tags", "sn_annot", "sn_imported"),
                        tab.of("sn_msg", "snapshots")).then(tab.load, None, outs)
    c["train_scorer"].click(tab.train_scorer, None, c["sc_msg"], concurrency_limit=1, concurrency_id="scorer")
    return {**{k: c[k] for k in PUBLIC}, "_on_show": (tab.load, outs)}
