"""Negative Prompt Studio tab: the library of negative/positive system prompts (immutable versions, diffs,
generation parameters), previews (normal vs negative side by side, seeded, all prompts decoded in one batch and streamed), preview
metrics per version with a comparison table, and "Add to pool"."""
from __future__ import annotations

import pandas as pd
import gradio as gr

from ..library import word_diff
from .common import Ctx, error_box, esc, fmt_num, folded_html, ok_box, parse_tags, prompt_text, warn_box

LIB_COLUMNS = ["name", "kind", "latest", "versions", "tags", "author"]
CMP_COLUMNS = ["version", "normal side", "prompts", "prompt set", "negatives", "undesirability", "measure",
               "distance", "diversity", "refusals", "leaks", "len ratio", "pooled"]
# what an undesirability value measures (metrics.preview_metrics' undesirability_source), in a word
MEASURE = {"reward gap": "reward gap", "heuristic (no refusal, no leak, length)": "heuristic 0–1"}
NONE_NORMAL = "(no system prompt)"


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


NEW = "\x00new"  # the guard's target for the New button


def editor_changed(loaded: tuple | None, values: tuple) -> bool:
    """Whether the prompt editor's `values` (name, kind, ref, text, tags, temperature, top_p, max tokens, k) differ
    from the `loaded` version's (same order; None: nothing loaded, then any text counts as a change)."""
    if loaded is None:
        return bool(str(values[3] or "").strip())
    for i, (a, b) in enumerate(zip(loaded, values)):
        if i == 2:
            continue  # the ref is what was loaded, not something the user edits
        if i >= 5:
            try:
                if abs(float(a) - float(b)) > 1e-9:
                    return True
            except (TypeError, ValueError):
                if a != b:
                    return True
        elif i == 4:
            if sorted(parse_tags(str(a or ""))) != sorted(parse_tags(str(b or ""))):
                return True
        elif str(a or "").strip() != str(b or "").strip():
            return True
    return False


def build(ctx: Ctx) -> dict:
    st = ctx.studio
    with gr.Row():
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("### Library")
            kind_filter = gr.Radio(["all", "negative", "positive"], value="all", show_label=False)
            lib = gr.Dataframe(headers=LIB_COLUMNS, datatype="str", interactive=False, wrap=True, max_height=380,
                               column_widths=["27%", "15%", "10%", "12%", "20%", "16%"], elem_id="lib-table")
            new_btn = gr.Button("New system prompt", size="sm", elem_id="lib-new")
        with gr.Column(scale=3, min_width=420):
            gr.Markdown("### Edit (saving creates a new immutable version)")
            with gr.Row():
                name = gr.Textbox(label="Name", scale=2, elem_id="lib-name", max_lines=1)
                kind = gr.Radio(["negative", "positive"], value="negative", label="Kind", scale=2, elem_id="lib-kind")
                current = gr.Textbox(label="Loaded version", interactive=False, scale=1, elem_id="lib-current")
            text = gr.Textbox(label="System prompt text", lines=5, max_lines=12, elem_id="lib-text")
            tags = gr.Textbox(label="Tags (comma separated)", elem_id="lib-tags", max_lines=1)
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=0.9, step=0.05, label="temperature", elem_id="lib-temp")
                top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p", elem_id="lib-topp")
                max_tokens = gr.Number(value=128, precision=0, minimum=1, maximum=8192, label="max tokens",
                                       elem_id="lib-maxtok")
                k = gr.Number(value=1, precision=0, minimum=1, maximum=64, label="k (samples / prompt)",
                              elem_id="lib-k")
            with gr.Row():
                save_btn = gr.Button("Save new version", variant="primary", elem_id="lib-save")
            save_msg = gr.HTML("", js_on_load=None, elem_id="lib-save-msg")
    ctx.admin_only.append(save_btn)
    with gr.Accordion("Versions and diff", open=True):
        with gr.Row():
            versions = gr.Dataframe(headers=["version", "author", "created", "params", "tags"], datatype="str",
                                    interactive=False, wrap=True, max_height=220, scale=3, elem_id="lib-versions",
                                    column_widths=["10%", "15%", "20%", "35%", "20%"])
            with gr.Column(scale=2):
                with gr.Row():
                    va = gr.Dropdown(label="from version", choices=[], elem_id="diff-a")
                    vb = gr.Dropdown(label="to version", choices=[], elem_id="diff-b")
                diff_btn = gr.Button("Show diff", size="sm", elem_id="diff-btn")
        diff_out = gr.HTML("", js_on_load=None, elem_id="lib-diff")
        diff_raw = gr.Textbox(label="Unified diff", lines=4, max_lines=14, interactive=False, elem_id="lib-diff-raw")

    gr.Markdown("### Preview")
    with gr.Row():
        # choices arrive on page load; custom values keep the /run_preview API route usable (the ref is checked by
        # Studio.run_preview against the library, an unknown one is a clear error)
        neg_ref = gr.Dropdown(label="Negative prompt version", choices=[], elem_id="pv-neg", scale=2,
                              allow_custom_value=True)
        normal_ref = gr.Dropdown(label="Normal side", choices=[NONE_NORMAL], value=NONE_NORMAL, elem_id="pv-normal",
                                 scale=2)
        seed = gr.Number(value=0, precision=0, label="seed", elem_id="pv-seed", scale=1, minimum=0)
    with gr.Row():
        mode = gr.Radio(["random", "tag", "manual"], value="random", label="Prompts", elem_id="pv-mode", scale=2)
        n = gr.Number(value=3, precision=0, minimum=1, maximum=50, label="how many", elem_id="pv-n", scale=1)
        pv_tag = gr.Dropdown(label="tag", choices=[], scale=1, elem_id="pv-tag", allow_custom_value=True)
        pv_ids = gr.Textbox(label="prompt ids (manual, comma separated)", scale=2, elem_id="pv-ids")
    with gr.Row():
        run_btn = gr.Button("Run preview", variant="primary", elem_id="pv-run")
        stop_btn = gr.Button("Stop", size="sm", scale=0, min_width=80, elem_id="pv-stop")
        pool_btn = gr.Button("Add to pool", elem_id="pv-pool")
    pv_msg = gr.HTML("", js_on_load=None, elem_id="pv-msg")
    pv_metrics = gr.Markdown("", elem_id="pv-metrics")
    pv_out = gr.HTML(preview_html([], "", "", None, 0, 0), js_on_load=None, elem_id="pv-out")
    pv_ref_state = gr.State(None)
    pv_auto = gr.State(None)  # the default last given to the preview's version choice (not a user choice)
    gr.Markdown("### Compare versions (latest preview of each)")
    cmp_table = gr.Dataframe(headers=CMP_COLUMNS, datatype="str", interactive=False, wrap=True, max_height=300,
                             elem_id="pv-compare")
    gr.Markdown("undesirability: reward gap normal − negative with a trained scorer, else the share of negatives "
                "that are neither refusals nor leaks (weighted by length); distance: cosine distance to the normal "
                "answers; diversity: mean pairwise distance among negatives; refusals / leaks: share of negatives "
                "that refuse / copy the normal answer. Higher undesirability, distance and diversity and lower "
                "refusals and leaks = a more useful negative prompt. Each row is that version's latest preview: compare "
                "rows only where `measure` (reward gap, which can be negative, or the 0–1 heuristic share) and "
                "`prompt set` (which prompts were previewed) are the same.", elem_classes=["neat-help"])

    # -- library -------------------------------------------------------------------------------------------
    def lib_df(kf):
        rows = st.library_list(kind=None if kf == "all" else kf)
        return pd.DataFrame([[r["name"], r["kind"], str(r["version"]), str(r.get("n_versions", "")),
                              ", ".join(r["tags"]), r["author"]] for r in rows], columns=LIB_COLUMNS)

    def refs():
        r = st.library_refs()
        return r["negative"], r["positive"]

    def versions_view(nm):
        vs = st.library_versions(nm)
        df = pd.DataFrame([[str(v["version"]), v["author"], v["created_at"][:19].replace("T", " "),
                            ", ".join(f"{k}={val}" for k, val in (v["params"] or {}).items()), ", ".join(v["tags"])]
                           for v in reversed(vs)], columns=["version", "author", "created", "params", "tags"])
        choices = [str(v["version"]) for v in vs]
        a = choices[-2] if len(choices) >= 2 else (choices[-1] if choices else None)
        b = choices[-1] if choices else None
        return df, gr.update(choices=choices, value=a), gr.update(choices=choices, value=b)

    def load_version(nm, version=None):
        sp = st.library_version(nm, version)
        if sp is None:
            return [gr.update()] * 9
        p = sp["params"] or {}
        return (sp["name"], sp["kind"], sp["ref"], sp["text"], ", ".join(sp["tags"]), p.get("temperature", 0.9),
                p.get("top_p", 0.95), p.get("max_new_tokens", 128), p.get("k", 1))

    editor = [name, kind, current, text, tags, temperature, top_p, max_tokens, k]
    guard = gr.State(None)  # what the user was last warned would replace unsaved editor changes

    def unsaved(values) -> bool:
        """Does the editor hold changes that are not saved? (Against the loaded version, or any text when none.)"""
        sp = None
        if values[2]:
            try:
                sp = st.resolve_library_ref(values[2])
            except ValueError:
                pass
        return editor_changed(load_version(sp["name"], sp["version"]) if sp else None, values)

    def keep_editor(values, target, gd):
        """None to go ahead; else the warning to show (the first click only: the same target again discards)."""
        if gd == target or not unsaved(values):
            return None
        return warn_box("The editor has unsaved changes. Save them as a new version, or click "
                        f"{'New system prompt' if target == NEW else target} again to discard them.")

    def on_select(evt: gr.SelectData, df, gd, *values):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            nm = str(df.iloc[row, 0])
        except Exception:  # noqa: BLE001
            return [gr.update()] * (len(editor) + 8)
        warn = keep_editor(values, nm, gd)
        if warn is not None:
            return (*[gr.update()] * (len(editor) + 6), warn, nm)
        ed = load_version(nm)
        vdf, a, b = versions_view(nm)
        d = diff_for(nm, a["value"], b["value"])
        pv = gr.update(value=ed[2]) if ed[1] == "negative" else gr.update()
        return (*ed, vdf, a, b, *d, pv, "", None)

    def diff_for(nm, a, b):
        if not nm or not a or not b:
            return "", ""
        try:
            A, B = st.library_version(nm, int(a)), st.library_version(nm, int(b))
            if A is None or B is None:
                raise ValueError(f"{nm} has no version {a if A is None else b}")
            raw = st.library_diff(nm, int(a), int(b))
        except ValueError as e:
            return error_box(str(e)), ""
        pa, pb = A.get("params") or {}, B.get("params") or {}
        pchg = [f"{k2}: {pa.get(k2)} → {pb.get(k2)}" for k2 in sorted(set(pa) | set(pb)) if pa.get(k2) != pb.get(k2)]
        html = diff_html(A["text"], B["text"], A["ref"], B["ref"])
        if pchg:
            html += f"<div class='neat-diff-params'>parameters: {esc('; '.join(pchg))}</div>"
        return html, raw

    lib.select(on_select, [lib, guard, *editor], [*editor, versions, va, vb, diff_out, diff_raw, neg_ref, save_msg, guard])
    kind_filter.change(lib_df, kind_filter, lib)
    diff_btn.click(diff_for, [name, va, vb], [diff_out, diff_raw])

    def new_prompt(gd, *values):
        warn = keep_editor(values, NEW, gd)
        if warn is not None:
            return (*[gr.update()] * len(editor), warn, NEW)
        return ("", "negative", "", "", "", 0.9, 0.95, 128, 1, "", None)

    new_btn.click(new_prompt, [guard, *editor], [*editor, save_msg, guard])

    def save(nm, kd, tx, tg, temp, tp, mt, kk, kf, request: gr.Request):
        actor = ctx.require_admin(request, "edit the prompt library")
        params = {"temperature": float(temp), "top_p": float(tp),
                  "max_new_tokens": int(mt) if mt is not None else None, "k": int(kk) if kk is not None else None}
        params = {a: b for a, b in params.items() if b is not None}
        try:
            r = st.save_library_prompt(nm, kd, tx, params, parse_tags(tg), actor=actor)
        except ValueError as e:
            return (error_box(f"{e}. Nothing was saved."), *[gr.update()] * 9)
        msg = ok_box(f"Saved {r['ref']}.") if r["created"] else \
            ok_box(f"No change from {r['ref']}: text and parameters are identical, nothing was saved.")
        vdf, a, b = versions_view(nm.strip())
        d = diff_for(nm.strip(), a["value"], b["value"])
        neg, pos = refs()
        return (msg, r["ref"], lib_df(kf), vdf, a, b, *d,
                gr.update(choices=neg, value=r["ref"]) if kd == "negative" else gr.update(choices=neg),
                gr.update(choices=[NONE_NORMAL] + pos))

    save_btn.click(save, [name, kind, text, tags, temperature, top_p, max_tokens, k, kind_filter],
                   [save_msg, current, lib, versions, va, vb, diff_out, diff_raw, neg_ref, normal_ref],
                   api_name="save_library_prompt")

    # -- preview -------------------------------------------------------------------------------------------
    def cmp_df():
        rows = st.preview_comparison()
        return pd.DataFrame([[r["ref"], r["normal"], str(r["prompts"]), r["prompt_set"], str(r["n"]),
                              fmt_num(r["undesirability"]),
                              MEASURE.get(r["undesirability_source"] or "", r["undesirability_source"] or "n/a"),
                              fmt_num(r["distance"]), fmt_num(r["diversity"]), fmt_num(r["refusal_share"]),
                              fmt_num(r["leak_share"]), fmt_num(r["mean_len_ratio"]), "yes" if r["pooled"] else ""]
                             for r in rows], columns=CMP_COLUMNS)

    def run_preview(ref, normal, sd, md, nn, tg, ids, request: gr.Request, progress=gr.Progress()):
        actor = ctx.require_admin(request, "run previews")
        key = getattr(request, "session_hash", None)  # Stop finds this session's preview by it
        if not ref:
            yield error_box("Choose a negative prompt version first."), "", gr.update(), None, gr.update()
            return
        try:
            sd = int(sd or 0)
            pids = st.sample_for_preview(md, int(nn or 3), seed=sd, tag=tg or None, ids=parse_tags(ids))
            normal_ref = None if (not normal or normal == NONE_NORMAL) else normal
            gen = st.run_preview(ref, pids, normal_ref=normal_ref, seed=sd, actor=actor, run_key=key)
            rows = []
            progress((0, len(pids)), desc="loading the model / generating")
            yield (ok_box(f"Generating {len(pids)} prompt(s) with seed {sd}…"), "",
                   preview_html([], "", "", sd, 0, len(pids)), None, gr.update())
            for kind_, i, total, payload in gen:
                if kind_ == "rows":  # every prompt's texts so far (all prompts stream at once)
                    yield (gr.update(), "", preview_html(payload, normal_ref or NONE_NORMAL, ref, sd, 0, total),
                           None, gr.update())
                elif kind_ == "row":
                    rows.append(payload)
                    progress((i, total), desc=f"prompt {i}/{total}")
                    yield (gr.update(), "", preview_html(rows, normal_ref or NONE_NORMAL, ref, sd, i, total),
                           None, gr.update())
                else:
                    pv = payload
                    yield (ok_box(f"Preview of {pv['ref']} saved (seed {sd}, model {pv['model_id']}). Re-run with "
                                  f"the same seed and prompts to reproduce it; 'Add to pool' makes these responses "
                                  f"annotation candidates."),
                           metrics_md(pv["metrics"]), preview_html(rows, normal_ref or NONE_NORMAL, pv["ref"], sd,
                                                                   total, total), pv["ref"], cmp_df())
        except ValueError as e:
            yield error_box(str(e)), "", gr.update(), None, gr.update()

    run_ev = run_btn.click(run_preview, [neg_ref, normal_ref, seed, mode, n, pv_tag, pv_ids],
                           [pv_msg, pv_metrics, pv_out, pv_ref_state, cmp_table], concurrency_limit=1)

    def stop_preview(request: gr.Request):
        """Stop: the running preview of this session stops at its next decoding step; the message says so."""
        ctx.require_admin(request, "stop previews")
        r = st.stop_preview(getattr(request, "session_hash", None))
        if r is None or r["state"] in ("finished", "failed"):
            return gr.update()  # nothing was running: the last message stands
        return warn_box(f"Preview stopped: {r['done']} of {r['total']} prompt(s) finished generating; nothing was "
                        "saved (a preview is saved, and can be added to the pool, once it completes).")

    stop_btn.click(stop_preview, None, [pv_msg], cancels=[run_ev])

    def to_pool(ref, request: gr.Request):
        actor = ctx.require_admin(request, "add candidates to the pool")
        if not ref:
            return error_box("Run a preview first (the pool takes the latest finished preview)."), gr.update()
        try:
            r = st.add_preview_to_pool(ref, actor=actor)
        except ValueError as e:
            return error_box(str(e)), gr.update()
        return ok_box(f"Added {r['added']} new candidate response(s) for {r['prompts']} prompt(s) "
                      f"({r['responses'] - r['added']} were already in the pool). Origins: negative:{ref} and the "
                      f"normal side."), cmp_df()

    pool_btn.click(to_pool, [pv_ref_state], [pv_msg, cmp_table])
    ctx.admin_only += [run_btn, stop_btn, pool_btn]

    def on_show_keep(cur_neg, kf, auto):
        """Page load / tab opened: fresh choices; the preview's version is the one saved last unless the user
        chose another one (kept while it exists)."""
        neg, pos = refs()
        tags_ = st.prompt_tags()
        newest = st.newest_prompt_ref("negative")
        val = cur_neg if cur_neg in neg and cur_neg != auto else newest
        return (gr.update(choices=neg, value=val), gr.update(choices=[NONE_NORMAL] + pos),
                gr.update(choices=tags_), lib_df(kf), cmp_df(), newest)

    return {"lib": lib, "name": name, "kind": kind, "text": text, "tags": tags, "save": save_btn,
            "save_msg": save_msg, "versions": versions, "diff": diff_out, "diff_raw": diff_raw, "neg_ref": neg_ref,
            "normal_ref": normal_ref, "seed": seed, "mode": mode, "n": n, "run": run_btn, "pool": pool_btn,
            "pv_out": pv_out, "pv_msg": pv_msg, "compare": cmp_table,
            "stop": stop_btn,
            "_on_show": (on_show_keep, [neg_ref, kind_filter, pv_auto],
                         [neg_ref, normal_ref, pv_tag, lib, cmp_table, pv_auto])}
