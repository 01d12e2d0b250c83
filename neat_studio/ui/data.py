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
TRL_FORMAT_WORDS = {"conversational": "TRL conversational format: prompt = messages, chosen / rejected = one "
                                      "assistant message",
                    "string": "TRL string format: plain text prompts"}


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


def snapshot_counts_text(c: dict | None) -> str:
    """A snapshot manifest's counts in words: "3 prompts (train 3), 6 responses, 3 ranked pairs, 3 ranked by
    people" (not a Python dict)."""
    c = dict(c or {})
    parts = []
    if "rows" in c:
        by = c.get("by_split") or {}
        split = ", ".join(f"{k} {v}" for k, v in by.items()) if isinstance(by, dict) else ""
        parts.append(f"{c['rows']} prompt(s)" + (f" ({split})" if split else ""))
    for key, label in (("responses", "response(s)"), ("pairs", "ranked pair(s)"),
                       ("human_rows", "ranked by people")):
        if key in c:
            parts.append(f"{c[key]} {label}")
    parts += [f"{k} {v}" for k, v in c.items() if k not in ("rows", "by_split", "responses", "pairs", "human_rows")
              and not isinstance(v, (dict, list))]
    return ", ".join(parts)


def build(ctx: Ctx) -> dict:
    st = ctx.studio
    with gr.Row():
        gr.Markdown("Counts, progress and agreement use each annotator's latest annotation.",
                    elem_classes=["neat-help"])
        refresh = gr.Button("Refresh", size="sm", elem_id="data-refresh", scale=0, min_width=100)
    counts = gr.HTML("", js_on_load=None, elem_id="data-counts")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Annotators")
            people = gr.Dataframe(headers=["annotator", "done", "of", "saves", "flagged", "last"],
                                  datatype="str", interactive=False, wrap=True, max_height=300, elem_id="data-people")
        with gr.Column():
            gr.Markdown("### Agreement")
            agree = gr.Markdown("", elem_id="data-agreement")
            pairs = gr.Dataframe(headers=["annotator A", "annotator B", "shared prompts", "Kendall τ-b",
                                          "pairwise agreement"], datatype="str", interactive=False, max_height=260,
                                 elem_id="data-pairs")
    with gr.Row():
        with gr.Column():
            gr.Markdown("### Task distribution")
            gr.Markdown("A prompt leaves everyone's queue once it has this many rankings; while someone has a "
                        "prompt open it is theirs for 5 minutes (skip or save ends it). Share = an equal part of "
                        "prompts × rankings per prompt.", elem_classes=["neat-help"])
            with gr.Row():
                overlap = gr.Number(label="Rankings per prompt", precision=0, minimum=1, maximum=20, value=1,
                                    elem_id="data-overlap", scale=1)
                overlap_btn = gr.Button("Save", size="sm", elem_id="data-overlap-save", scale=0, min_width=80)
            overlap_msg = gr.HTML("", js_on_load=None, elem_id="data-overlap-msg")
            shares = gr.Dataframe(headers=["annotator", "done", "share", "open now"], datatype="str",
                                  interactive=False, max_height=220, elem_id="data-shares")
        with gr.Column():
            gr.Markdown("### Open prompts (leases)")
            leases = gr.Dataframe(headers=["prompt", "annotator", "until"], datatype="str", interactive=False,
                                  max_height=260, elem_id="data-leases")
    ctx.admin_only += [overlap_btn]
    with gr.Row():
        with gr.Column() as exp_col:
            gr.Markdown("### Export")
            with gr.Row():
                ex_split = gr.Dropdown(["", "train", "dev", "test"], value="", label="Split")
                ex_annot = gr.Checkbox(label="only prompts a human annotated", value=False)
            ex_trl_fmt = gr.Radio(TRL_FORMAT_CHOICES, value="auto", label="TRL pairs format",
                                  elem_id="data-export-trl-format")
            with gr.Row():
                ex_trl = gr.Button("TRL pairs (JSONL)", size="sm", elem_id="data-export-trl")
                ex_list = gr.Button("Listwise JSONL", size="sm", elem_id="data-export-listwise")
                ex_pq = gr.Button("Parquet", size="sm", elem_id="data-export-parquet")
            ex_msg = gr.HTML("", js_on_load=None, elem_id="data-export-msg")
            ex_file = gr.File(label="Download", interactive=False, elem_id="data-export-file")
        with gr.Column() as snap_col:
            gr.Markdown("### Snapshot for training")
            with gr.Row():
                sn_split = gr.Dropdown(["train", "dev", "test"], value="train", label="Split")
                sn_tags = gr.Textbox(label="Tags (any of; comma separated)")
            with gr.Row():
                sn_annot = gr.Checkbox(label="only human-annotated prompts", value=False)
                sn_imported = gr.Checkbox(label="include imported dataset rankings", value=True)
            sn_btn = gr.Button("Create snapshot", variant="primary", size="sm", elem_id="data-snapshot")
            sn_msg = gr.HTML("", js_on_load=None, elem_id="data-snapshot-msg")
            snaps = gr.Dataframe(headers=["snapshot", "created", "rows", "sha256"], datatype="str",
                                 interactive=False, max_height=220, elem_id="data-snapshots")
    with gr.Row() as scorer_row:
        with gr.Column():
            gr.Markdown("### Reward scorer")
            gr.Markdown("Trains a new scorer version (Bradley–Terry head on MiniLM embeddings) on every ranked "
                        "prompt; held-out accuracy is measured on prompts it did not train on. The newest version "
                        "gives the AI suggestions in Annotate and the undesirability metric of previews.")
            sc_btn = gr.Button("Train reward scorer", size="sm", elem_id="data-train-scorer")
            sc_msg = gr.HTML("", js_on_load=None, elem_id="data-scorer-msg")
    ctx.admin_only += [exp_col, snap_col, scorer_row]

    def _snaps():
        rows = []
        for s in st.snapshots(50):
            c = s.get("counts") or {}
            rows.append([s.get("snapshot_id", s.get("id", "")), str(s.get("created_at", ""))[:19].replace("T", " "),
                         str(c.get("rows", c.get("prompts", ""))), str(s.get("sha256", ""))[:16]])
        return pd.DataFrame(rows, columns=["snapshot", "created", "rows", "sha256"])

    def load(request: gr.Request):
        c = st.counts()
        prog = st.annotation_progress(None)
        total = prog["total"]
        ppl = pd.DataFrame([[p["annotator"], str(p["done"]), str(total), str(p["annotations"]),
                             str(p.get("flagged_ever", 0)), str(p.get("last_at") or "")[:19].replace("T", " ")]
                            for p in prog["per_annotator"]],
                           columns=["annotator", "done", "of", "saves", "flagged", "last"])
        a = st.agreement()
        pdf = pd.DataFrame([[x["a"], x["b"], str(x["prompts"]), fmt_num(x["kendall_tau"]),
                             fmt_num(x["pairwise_agreement"])] for x in a["pairs"]],
                           columns=["annotator A", "annotator B", "shared prompts", "Kendall τ-b",
                                    "pairwise agreement"])
        t = st.task_overview()
        sh = pd.DataFrame([[x["annotator"], str(x["done"]), str(x["share"]), str(x["holds"])]
                           for x in t["per_annotator"]], columns=["annotator", "done", "share", "open now"])
        ls = pd.DataFrame([[x["prompt_id"], x["annotator"], str(x["expires_at"])[11:19]] for x in t["leases"]],
                          columns=["prompt", "annotator", "until"])
        return counts_html(c), ppl, agreement_md(a), pdf, _snaps(), t["overlap"], sh, ls

    outs = [counts, people, agree, pairs, snaps, overlap, shares, leases]
    refresh.click(load, None, outs)

    def save_overlap(n, request: gr.Request):
        actor = ctx.require_admin(request, "change the rankings per prompt")
        try:
            v = st.set_annotations_per_prompt(int(n) if n is not None and float(n).is_integer() else n, actor=actor)
        except (TypeError, ValueError) as e:
            return error_box(f"Not saved: {e}")
        return ok_box(f"Each prompt now wants {v} ranking(s) before it leaves everyone's queue.")

    overlap_btn.click(save_overlap, overlap, overlap_msg, api_name="save_overlap").then(load, None, outs)

    def export(kind):
        def run(sp, annot, trl_fmt, request: gr.Request):
            actor = ctx.require_admin(request, "export data")
            filters = {}
            if sp:
                filters["split"] = sp
            if annot:
                filters["annotated_only"] = True
            try:
                r = st.export_file(kind, actor=actor, trl_format=(trl_fmt or "auto") if kind == "trl" else "auto",
                                   **filters)
            except (ValueError, OSError) as e:
                return error_box(f"Export failed: {e}"), None
            what = f"pairs ({TRL_FORMAT_WORDS.get(r['format'], r['format'])})" if kind == "trl" else "rows"
            return ok_box(f"Wrote {r['written']} {what} to {r['path']}"), r["path"]
        return run

    ex_trl.click(export("trl"), [ex_split, ex_annot, ex_trl_fmt], [ex_msg, ex_file])
    ex_list.click(export("listwise"), [ex_split, ex_annot, ex_trl_fmt], [ex_msg, ex_file])
    ex_pq.click(export("parquet"), [ex_split, ex_annot, ex_trl_fmt], [ex_msg, ex_file])

    def snapshot(sp, tags, annot, imported, request: gr.Request):
        actor = ctx.require_admin(request, "create snapshots")
        filters = {"split": sp or None, "annotated_only": bool(annot), "include_imported": bool(imported)}
        if parse_tags(tags):
            filters["tags"] = parse_tags(tags)
        try:
            m = st.snapshot(actor=actor, **filters)
        except (ValueError, OSError) as e:
            return error_box(f"Snapshot not created: {e}"), gr.update()
        counts = snapshot_counts_text(m.get("counts"))
        return ok_box(f"Snapshot {m['snapshot_id']} created (sha256 {m['sha256'][:16]}…; {counts}). Training reads "
                      f"it from {st.workspace.snapshots / m['snapshot_id']}."), \
            _snaps()

    sn_btn.click(snapshot, [sn_split, sn_tags, sn_annot, sn_imported], [sn_msg, snaps]).then(load, None, outs)

    def train_scorer(request: gr.Request):
        actor = ctx.require_admin(request, "train the reward scorer")
        try:
            m = st.train_scorer(actor=actor)
        except (ValueError, OSError) as e:
            return error_box(f"Scorer not trained: {e}")
        return ok_box(f"Scorer {m['scorer_version']} trained on {m.get('n_train_pairs')} pairs; held-out pairwise "
                      f"accuracy {fmt_num(m.get('dev_acc'))} on {m.get('n_dev_pairs')} pairs of unseen prompts.")

    sc_btn.click(train_scorer, None, sc_msg, concurrency_limit=1, concurrency_id="scorer")

    return {"refresh": refresh, "counts": counts, "people": people, "agreement": agree, "pairs": pairs,
            "overlap": overlap, "overlap_save": overlap_btn, "shares": shares, "leases": leases,
            "export_trl": ex_trl, "export_trl_format": ex_trl_fmt, "export_listwise": ex_list,
            "export_parquet": ex_pq, "export_file": ex_file,
            "snapshot": sn_btn, "_on_show": (load, outs)}
