"""Train tab: configure and start a training run (NEAT / RRHF / SFT / DPO) on a frozen snapshot of the curated
data, watch it live (progress, ETA, loss / rank-loss / rank-accuracy / p-gap curves, log, errors in plain words),
stop / resume it, and browse the run history with each run's report.

No business logic here: `build()` lays out the components (by name, in `TrainTab.c`) and binds them to
`TrainTab`'s handlers, which go through `ctx.studio` (studio/training.py: training_page, recipe_form, estimate_form,
start_form, run_view, training_runs_changed, run_config, run_report, stop/resume_training; studio/evaluation.py:
start_run_evaluation). The run itself is a subprocess supervised by neat_studio.jobs, so a page reload or an app
restart re-attaches to it (the page shows the active run on load)."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from ..run_check import RUN_EVAL_N
from ..studio.training import DEFAULT_RECIPE, FORM_KEYS, HYPER, NO_RECIPE, form_defaults, form_from_config
from .common import (Ctx, Tab, code_html, error_box, esc, evaluation_updates, fmt_num, names_text, ok_box,
                     report_for_page, warn_box)

HISTORY_COLUMNS = ["run", "name", "status", "vs base", "method", "model", "snapshot", "started", "duration", "steps",
                   "loss", "rank acc", "p-gap", "config", "error"]
# 100 % in all: the config and error columns stay in view; at 1280 px each short column's longest word ("finished",
# "significant", "default", "144/144", "1.210") fits whole in studio.css's 13 px
HISTORY_WIDTHS = ["7%", "8%", "7%", "8.5%", "5.5%", "6%", "6.5%", "8%", "6.5%", "6.5%", "5%", "5%", "5%", "10.5%", "5%"]
# label and minimum of each hyper-parameter field (their keys, types and order: studio.training.HYPER)
HYPER_FIELDS = {
    "rounds": ("rounds", 1), "epochs": ("epochs per round", 1), "k": ("k (plain samples)", 0),
    "k_neg": ("k_neg (per negative)", 0), "k_pos": ("k_pos (per positive)", 0), "lr": ("learning rate", 0),
    "batch_size": ("batch size (lists)", 1), "grad_accum": ("grad accumulation", 1),
    "max_steps": ("max steps (0 = all)", 0), "max_new_tokens": ("max new tokens (samples)", 1),
    "max_prompt_len": ("max prompt tokens", 1), "max_response_len": ("max response tokens", 1),
    "margin": ("margin", 0), "sft_weight": ("sft weight (λ)", 0), "save_every": ("checkpoint every N steps", 0),
    "seed": ("seed", 0), "val_every": ("validate every N steps", 0),
}
HYPER_KEYS = tuple(k for k, _ in HYPER)

# the handlers' inputs and outputs by name (TrainTab.c); the form's inputs are FORM_KEYS and the settings of a reused
# run that the form does not show ("extra")
FORM_IN = (*FORM_KEYS, "extra")
VIEW_OUT = ("progress", "loss_plot", "acc_plot", "gap_plot", "val_plot", "error", "log", "plot_key", "stop", "resume")
RECIPE_OUT = ("recipe_info", "method", "negatives", "positives", "min_responses", "lora", "anchor", "rank_reduction",
              "val_file", "select", "check", *HYPER_KEYS)
FORM_OUT = (*FORM_IN, "message")
SHOW_IN = ("negatives_auto", *FORM_IN)
SHOW_OUT = ("run", "history", *VIEW_OUT, "model", "negatives", "positives", "tags", "estimate", "negatives_auto")
START_OUT = ("message", "run", "history", *VIEW_OUT, "confirm")
STOP_OUT = ("message", *VIEW_OUT)
RESUME_OUT = ("message", "run", "history", *VIEW_OUT)
TICK_OUT = (*VIEW_OUT, "history", "run", "hist_key")
SELECT_OUT = ("run", *VIEW_OUT)
EVAL_OUT = ("report_message", "report", "report_charts")
REPORT_OUT = (*EVAL_OUT, "config")
RESTORE_OUT = (*FORM_OUT, "restored")
# what other tabs and tests find as "train.<name>" (the hyper-parameters as "train.hp_<key>")
EXPORTED = ("model", "method", "negatives", "positives", "annotated_only", "include_imported", "tags", "estimate",
            "start", "stop", "resume", "message", "run", "progress", "loss_plot", "acc_plot", "gap_plot", "val_plot",
            "error",
            "log", "timer", "history", "report", "lora", "dtype", "name", "reuse", "recipe")


# -- rendering (pure; every dynamic string escaped) --------------------------------------------------------------
def fmt_dur(s) -> str:
    from ..neat.estimate import fmt_duration

    return fmt_duration(s)


def progress_html(p: dict | None) -> str:
    if not p:
        return "<div class='neat-empty' id='train-progress-empty'>No run selected. Configure a run and press " \
               "<b>Start training</b>, or pick one from the history.</div>"
    pct = max(0.0, min(1.0, float(p.get("progress") or 0.0))) * 100
    status = p.get("status") or ""
    total = p.get("total_steps")
    eta = p.get("eta_s")
    parts = [f"<b>{esc(status)}</b>", f"step {esc(p.get('step') or 0)} / {esc(total if total else '?')}",
             f"{pct:.0f} %"]
    if status in ("running", "queued"):
        parts.append(f"ETA {esc(fmt_dur(eta)) if eta is not None else 'estimating…'}")
        parts.append(esc(p.get("phase") or ""))
    elif p.get("elapsed_s") is not None:
        parts.append(f"trained {esc(fmt_dur(p.get('elapsed_s')))}")
    last = next((r for r in reversed(p.get("metrics") or []) if isinstance(r.get("grad_norm"), (int, float))), None)
    if last is not None:  # the latest step's gradient norm before clipping (a spike or a collapse shows here)
        parts.append(f"grad norm {esc(fmt_num(float(last['grad_norm']), 2))} (step {esc(last.get('step'))})")
    color = {"failed": "#c0392b", "stopped": "#b7791f", "finished": "#2f855a"}.get(status, "#4f46e5")
    return (f"<div class='neat-train-progress' id='train-progress-box' data-status='{esc(status)}' "
            f"data-step='{esc(p.get('step') or 0)}' data-run='{esc(p.get('run_id'))}'>"
            f"<div style='font-size:.9rem;margin-bottom:4px'>run <code>{esc(p.get('run_id'))}</code> · "
            f"{esc(p.get('name') or '')} · {' · '.join(parts)}</div>"
            f"<div role='progressbar' aria-valuemin='0' aria-valuemax='100' aria-valuenow='{pct:.0f}' "
            f"style='background:#e5e7eb;border-radius:6px;height:14px;overflow:hidden'>"
            f"<div style='width:{pct:.1f}%;background:{color};height:100%;transition:width .5s'></div></div>"
            f"{check_html(p.get('events') or [])}</div>")


def check_html(events: list[dict]) -> str:
    """The run's check against its base (config `check`: its last `check` / `check_failed` event), under the
    progress bar; a warning when the run is worse than its base on any axis."""
    ev = next((e for e in reversed(events) if e.get("event") in ("check", "check_failed")), None)
    if ev is None:
        return ""
    if ev["event"] == "check_failed":
        return (f"<div class='neat-warn' id='train-check-msg'>The check against the base failed: "
                f"{esc(ev.get('message'))}</div>")
    cls = "neat-warn" if ev.get("worse") else "neat-ok"
    said = " ".join(str(v) for v in ev.get("verdict") or [])
    return (f"<div class='{cls}' id='train-check-msg'>Checked against the base model on every dev prompt: "
            f"{esc(said)} (report: Open report of the shown run)</div>")


def curves_figure(rows: list[dict], keys: list[tuple[str, str]], title: str):
    """A small matplotlib figure of metric rows (x = step). Points are drawn too, so 1-2 steps show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=90)
    drawn = False
    for key, label in keys:
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and r.get("step") is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3 if len(xs) > 30 else 5, linewidth=1.4, label=label)
            drawn = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if rows:
        steps = [r["step"] for r in rows if r.get("step") is not None]
        if steps and max(steps) - min(steps) < 4:   # few steps: integer ticks, a little margin
            ax.set_xticks(sorted(set(steps)))
            ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, fontsize=9,
                color="#888")
    fig.tight_layout()
    plt.close(fig)
    return fig


def history_df(runs: list[dict]) -> pd.DataFrame:
    rows = []
    for r in runs:
        cfg = r.get("config") or {}
        fm = r.get("final_metrics") or {}
        short_cfg = ", ".join(f"{k}={v}" for k, v in cfg.items()
                              if k not in ("model", "method", "data", "snapshot_path") and v not in ([], "", None))
        steps = f"{fm.get('step')}/{fm.get('total_steps')}" if fm.get("step") is not None else ""
        started = (r.get("started_at") or r.get("created_at") or "")[:19].replace("T", " ")
        rows.append([r["id"], r.get("name") or "", r["status"], r.get("check") or "", r.get("method") or "",
                     str(cfg.get("model", "")),
                     r.get("snapshot_id") or "", started,
                     fmt_dur(r.get("duration_s")) if r.get("duration_s") is not None else "", steps,
                     fmt_num(fm.get("loss")), fmt_num(fm.get("rank_acc")), fmt_num(fm.get("p_gap")), short_cfg,
                     r.get("error") or ""])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def run_choices(runs: list[dict]) -> list[tuple[str, str]]:
    return [(f"{r['id']} · {r.get('name') or ''} · {r['status']}", r["id"]) for r in runs]


def val_figure(events: list[dict]):
    """Held-out validation (val events): harmful prompts refused and harmless ones answered per validated step, the
    step select=best_val kept marked; 'no data yet' for a run without validation."""
    val = [e for e in events if e.get("event") == "val"]
    fixed = next((e["scale"] for e in val if e.get("scale")), None)  # merge_scale: every validation at that scale
    fig = curves_figure([{"step": e.get("step"), "refusal": e.get("refusal"), "answered": e.get("answered")}
                         for e in val], [("refusal", "harmful refused"), ("answered", "harmless answered")],
                        "held-out validation" + (f" (adapter at {fixed:g}x)" if fixed else ""))
    kept = next((e for e in reversed(events) if e.get("event") == "selected"), None)
    if kept is not None and fig.axes:
        ax, scale, at = fig.axes[0], kept.get("adapter_scale", 1), kept.get("selected_step", 0)
        ax.axvline(at, color="#2f855a", linestyle="--", linewidth=1.2)
        label = "kept" + (f" at {scale:g}x its change" if scale != 1 else "")
        right = at > max((e.get("step") or 0 for e in val), default=0) / 2  # in the right half: written leftwards
        ax.text(at, 0.02, f"{label} " if right else f" {label}", ha="right" if right else "left", color="#2f855a",
                fontsize=7, transform=ax.get_xaxis_transform())
        for e in (e for e in events if e.get("event") == "val_scaled"):  # adapter_scales: the kept step rescaled
            ax.plot([e["step"]] * 2, [e["refusal"], e["answered"]], linestyle="none", marker="o", mfc="none",
                    color="#2f855a", markersize=5)
    return fig


def run_figures(rows: list[dict], events: list[dict] = ()) -> dict:
    """The shown run's curves by output name."""
    return {"loss_plot": curves_figure(rows, [("loss", "loss"), ("rank_loss", "rank loss"), ("sft_loss", "sft loss")],
                                       "loss"),
            "acc_plot": curves_figure(rows, [("rank_acc", "rank accuracy")], "rank accuracy"),
            "gap_plot": curves_figure(rows, [("p_gap", "p-gap")], "p-gap (mean log-prob best − negative)"),
            "val_plot": val_figure(list(events))}


# -- the handlers ----------------------------------------------------------------------------------------------
class TrainTab(Tab):
    """The Train tab's handlers (see Tab). The form's values go by name (FORM_KEYS, and "extra": a reused run's
    settings that the form does not show); what they mean is up to Studio's training services."""

    @staticmethod
    def form(values) -> tuple[dict, dict]:
        """(the form's values by FORM_KEYS, extra) of the FORM_IN inputs in order."""
        form = dict(zip(FORM_IN, values))
        return form, form.pop("extra")

    def estimate(self, form: dict, extra: dict | None) -> str:
        try:
            e = self.st.estimate_form(form, extra)
        except ValueError as ex:
            return f"⚠ {esc(ex)}"
        return f"**Estimated time:** {esc(e['text'])} · {e['n_prompts']} training prompt(s) match the data filters"

    def do_estimate(self, *values):
        return self.estimate(*self.form(values))

    def pick_recipe(self, recipe, negatives):
        """A recipe fills in the whole form (Studio.recipe_form); "(none)" is NeatConfig's defaults."""
        try:
            r = self.st.recipe_form(recipe, negatives)
        except ValueError as ex:
            return self.pack(RECIPE_OUT, {"recipe_info": f"⚠ {esc(ex)}"})
        info = f"**{esc(recipe)}**: {esc(r['description'])}" if r["description"] is not None else ""
        return self.pack(RECIPE_OUT, {"recipe_info": info, **{k: gr.update(value=v) for k, v in r["values"].items()}})

    def view(self, run, key=None) -> dict:
        """The shown run's outputs (VIEW_OUT) by name; the curves only when they changed since `key`."""
        off = {"error": "", "log": "", "plot_key": key, "stop": gr.update(interactive=False),
               "resume": gr.update(interactive=False)}
        if not run:
            return {**off, "progress": progress_html(None)}
        try:
            v = self.st.run_view(run, key)
        except ValueError as ex:
            return {**off, "progress": error_box(str(ex))}
        return {"progress": progress_html(v["run"]), **(run_figures(v["run"]["metrics"], v["run"].get("events") or [])
                                                         if v["redraw"] else {}),
                "error": error_box(v["error"]) if v["error"] else "", "log": v["log"], "plot_key": v["key"],
                "stop": gr.update(interactive=v["can_stop"]), "resume": gr.update(interactive=v["can_resume"])}

    def show_run(self, run):
        return self.pack(VIEW_OUT, self.view(run))

    def runs(self, shown) -> dict:
        """The run list (showing `shown`) and the history table, fresh."""
        runs = self.st.training_runs()
        return {"run": gr.update(choices=run_choices(runs), value=shown), "history": history_df(runs)}

    def on_show(self, negatives_auto, *values):
        """Page load, tab opened, Refresh: the active run (else the newest), fresh choices, the time estimate
        (Studio.training_page: the negative prompt choice follows the newest saved version while it still holds
        the default it was given)."""
        form, extra = self.form(values)
        page = self.st.training_page(form["negatives"], negatives_auto)
        o, form["negatives"] = page["options"], page["negatives"]
        return self.pack(SHOW_OUT, {
            "run": gr.update(choices=run_choices(page["runs"]), value=page["shown"]),
            "history": history_df(page["runs"]), **self.view(page["shown"]), "model": gr.update(choices=o["models"]),
            "negatives": gr.update(choices=o["negatives"], value=page["negatives"]),
            "positives": gr.update(choices=o["positives"]), "tags": gr.update(choices=o["tags"]),
            "estimate": self.estimate(form, extra), "negatives_auto": page["negatives_auto"]})

    def start(self, data: dict, request: gr.Request):
        """`data`: {component: value} of the run selector, the confirmation state and the form (set-style inputs).
        A run estimated over 15 min starts on the second click with the same settings (Studio.start_form); the
        first one asks."""
        actor = self.ctx.require_admin(request, "start training")
        v = self.named(data)
        try:
            r = self.st.start_form(v, v.get("extra"), v.get("confirm"), actor=actor)
        except (ValueError, RuntimeError) as ex:
            return self.pack(START_OUT, {"message": error_box(f"Not started: {ex}"), **self.view(v.get("run")),
                                         "confirm": None})
        if r["run_id"] is None:
            return self.pack(START_OUT, {"message": warn_box(r["message"]), **self.view(v.get("run")),
                                         "confirm": r["armed"]})
        return self.pack(START_OUT, {
            "message": ok_box(f"Started run {r['run_id']}. It runs in the background; you can reload the page or "
                              "leave."), **self.runs(r["run_id"]), **self.view(r["run_id"]), "confirm": None})

    def stop(self, run, request: gr.Request):
        actor = self.ctx.require_admin(request, "stop training")
        if not run:
            return self.pack(STOP_OUT, {"message": error_box("No run selected."), **self.view(None)})
        try:
            self.st.stop_training(run, actor=actor)
        except (ValueError, RuntimeError) as ex:
            return self.pack(STOP_OUT, {"message": error_box(str(ex)), **self.view(run)})
        return self.pack(STOP_OUT, {"message": ok_box(f"Stopping run {run}: it finishes its step and writes a "
                                                      "checkpoint."), **self.view(run)})

    def resume(self, run, request: gr.Request):
        actor = self.ctx.require_admin(request, "resume training")
        if not run:
            return self.pack(RESUME_OUT, {"message": error_box("No run selected."), **self.view(None)})
        try:
            self.st.resume_training(run, actor=actor)
        except (ValueError, RuntimeError) as ex:
            return self.pack(RESUME_OUT, {"message": error_box(f"Not resumed: {ex}"), **self.view(run)})
        return self.pack(RESUME_OUT, {"message": ok_box(f"Resumed run {run} from its last checkpoint."),
                                      **self.runs(run), **self.view(run)})

    def tick(self, run, plot_key, hist_key):
        """Every 2 s: the shown run; the history and the run list only when a run or a status changed."""
        out = self.view(run, plot_key)
        runs, sig = self.st.training_runs_changed(hist_key)
        if runs is not None:
            out |= {"history": history_df(runs), "run": gr.update(choices=run_choices(runs))}
        return self.pack(TICK_OUT, {**out, "hist_key": sig})

    def select_history(self, evt: gr.SelectData, history):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            rid = str(history.iloc[row, 0])
        except Exception:  # noqa: BLE001
            return self.pack(SELECT_OUT, self.view(None))
        return self.pack(SELECT_OUT, {"run": gr.update(value=rid), **self.view(rid)})

    def open_report(self, run):
        hidden = {"report": "", "report_charts": gr.update(visible=False), "config": gr.update(visible=False)}
        if not run:
            return self.pack(REPORT_OUT, {**hidden, "report_message": error_box("No run selected.")})
        try:
            r = self.st.run_report(run)
        except ValueError as ex:
            return self.pack(REPORT_OUT, {**hidden, "report_message": error_box(str(ex))})
        cfg = gr.update(value=code_html(r["config_yaml"] or "", "config.yaml"), visible=bool(r["config_yaml"]))
        who = f"run {run} · {r['name']}" if r.get("name") else f"run {run}"
        if r["markdown"] is None:
            return self.pack(REPORT_OUT, {**hidden, "config": cfg, "report_message": ok_box(
                f"{who[0].upper() + who[1:]} has no evaluation report yet: press 'Evaluate shown run vs its base "
                "model' (an evaluation started in the Compare tab goes to the workspace's reports/ folder instead).")})
        return self.pack(REPORT_OUT, {
            "report_message": ok_box(f"Report of {who} ({r['path']}).{names_text(r.get('model_names'))}"),
            "report": report_for_page(r["markdown"]), "config": cfg,
            "report_charts": gr.update(value=r["charts"], visible=bool(r["charts"]))})

    def evaluate_run(self, run, eval_n, request: gr.Request):
        self.ctx.require_admin(request, "evaluate runs")
        if not run:
            yield error_box("No run selected."), gr.update(), gr.update(visible=False)
            return
        try:
            ev = self.st.start_run_evaluation(run, eval_n, actor=self.ctx.user(request))
        except (ValueError, RuntimeError) as ex:
            yield error_box(f"Not evaluated: {ex}"), gr.update(), gr.update(visible=False)
            return
        yield from evaluation_updates(self.st, ev["id"], f"Evaluating {ev['label']} vs {ev['base_label']}",
                                      "Evaluation done ({out_dir}).")

    def fill_form(self, cfg: dict, note: str) -> dict:
        """Every form input (and "extra") from a job config, and a message."""
        form, extra = form_from_config(cfg)
        return {**{k: gr.update(value=v) for k, v in form.items()}, "extra": extra, "message": note}

    def reuse(self, run):
        if not run:
            return self.pack(FORM_OUT, {"message": error_box("No run selected.")})
        try:
            cfg = self.st.run_config(run)
        except ValueError as ex:
            return self.pack(FORM_OUT, {"message": error_box(str(ex))})
        return self.pack(FORM_OUT, self.fill_form(cfg, ok_box(f"The form holds run {run}'s settings now (its data "
                                                              "filters too); the data is frozen anew when you start.")))

    def restore(self, restored, request: gr.Request):
        """First open of the tab in this page: the settings this user last started a run with."""
        if restored:
            return self.pack(RESTORE_OUT, {"restored": True})
        try:
            cfg = self.st.last_train_form(self.ctx.user(request))
        except gr.Error:
            cfg = None
        if not cfg:
            return self.pack(RESTORE_OUT, {"restored": True})
        return self.pack(RESTORE_OUT, {**self.fill_form(cfg, ok_box("The form holds the settings of the last run you "
                                                                    "started.")), "restored": True})


# -- the tab ---------------------------------------------------------------------------------------------------
def validation_row(c: dict, start: dict, helps: dict, selects: list) -> None:
    """The form's held-out validation settings (neat/validation.py; val_every is with the numbers above)."""
    with gr.Row():
        c["val_file"] = gr.Textbox(value=start["val_file"], label="Held-out validation file (optional)",
                                   max_lines=1, scale=3, info=helps.get("val_file"), elem_id="train-val-file")
        c["select"] = gr.Dropdown(list(selects), value=start["select"], label="Keep", scale=1,
                                  info=helps.get("select"), elem_id="train-select")


def build(ctx: Ctx) -> dict:
    tab = TrainTab(ctx)
    st, c, start = ctx.studio, tab.c, form_defaults()
    st.jobs  # create the job runner now: re-attaches runs left running by an earlier app process
    opts = st.training_options()
    helps, defaults = opts["help"], opts["defaults"]

    gr.Markdown("### New training run")
    with gr.Row():
        c["recipe"] = gr.Dropdown([NO_RECIPE] + opts["recipes"], value=DEFAULT_RECIPE, label="Recipe", scale=1,
                                  elem_id="train-recipe", info="a named preset of the settings below "
                                  "(neat_studio/neat/recipes.py); you can still change any of them")
        c["recipe_info"] = gr.Markdown("", elem_id="train-recipe-info")
    with gr.Row():
        c["model"] = gr.Dropdown(label="Base model", choices=opts["models"], value="default", allow_custom_value=True,
                                 scale=3, elem_id="train-model", info="default (SmolLM2-135M-Instruct), a previous "
                                 "run's model, or an HF name / local path")
        c["method"] = gr.Radio(opts["methods"], value="neat", label="Method", scale=2, elem_id="train-method",
                               info=helps.get("method"))
    with gr.Row():
        newest = [opts["newest_negative"]] if opts["newest_negative"] else []
        c["negatives"] = gr.Dropdown(label="Negative prompt versions", choices=opts["negatives"], multiselect=True,
                                     value=newest, elem_id="train-negatives", allow_custom_value=True,
                                     info=helps.get("negatives") + " (default: the version saved last)")
        c["negatives_auto"] = gr.State(newest)  # the default last given to the choice (newer version on open)
        c["positives"] = gr.Dropdown(label="Positive prompt versions (optional, NEAT-PP)", choices=opts["positives"],
                                     multiselect=True, value=[], elem_id="train-positives", allow_custom_value=True,
                                     info="used when k_pos > 0: " + helps.get("positives", ""))
    with gr.Row():
        c["annotated_only"] = gr.Checkbox(False, label="Annotated only (prompts a human ranked)",
                                          elem_id="train-annotated")
        c["include_imported"] = gr.Checkbox(True, label="Include imported ranked pairs", elem_id="train-imported")
        c["tags"] = gr.Dropdown(label="Only prompts with these tags (empty = all)", choices=opts["tags"],
                                multiselect=True, value=[], elem_id="train-tags")
        c["min_responses"] = gr.Number(2, label="Min. ranked responses per prompt", precision=0, minimum=1,
                                       elem_id="train-min-responses", info="1 also trains on prompts with only a "
                                       "reference answer (NEAT / RRHF add samples)")
    with gr.Accordion("Hyper-parameters (defaults are sized for a 2-core CPU)", open=False):
        for i in range(0, len(HYPER), 4):
            with gr.Row():
                for key, kind in HYPER[i:i + 4]:
                    label, lo = HYPER_FIELDS[key]
                    c[key] = gr.Number(value=start[key], label=label, precision=0 if kind is int else None,
                                       minimum=lo, info=helps.get(key), elem_id=f"train-{key}")
        with gr.Row():
            c["lora"] = gr.Checkbox(False, label="LoRA adapters", info=helps.get("lora"), elem_id="train-lora")
            c["dtype"] = gr.Dropdown(opts["dtypes"], value=defaults.get("dtype", "auto"), label="Precision",
                                     info=f"{helps.get('dtype')}; here auto = {opts['auto_dtype']}",
                                     elem_id="train-dtype")
            c["name"] = gr.Textbox(label="Run name (optional)", max_lines=1, elem_id="train-name")
        with gr.Row():
            c["anchor"] = gr.Dropdown(["none", "round"], value=defaults.get("anchor", "none"), label="Anchor",
                                      info=helps.get("anchor"), elem_id="train-anchor")
            c["rank_reduction"] = gr.Dropdown(["sum", "mean"], value=defaults.get("rank_reduction", "sum"),
                                              label="Rank loss per list", info=helps.get("rank_reduction"),
                                              elem_id="train-rank-reduction")
        validation_row(c, start, helps, opts["selects"])
    c["estimate"] = gr.Markdown("", elem_id="train-estimate")
    with gr.Row():
        c["check"] = gr.Checkbox(start.get("check", False), label="Check against the base model when done",
                                 info=helps.get("check"), elem_id="train-check")
        c["start"] = gr.Button("Start training", variant="primary", elem_id="train-start")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="train-stop")
        c["resume"] = gr.Button("Resume", elem_id="train-resume")
    ctx.admin_only.extend(tab.comps(("start", "stop", "resume")))
    c["message"] = gr.HTML("", js_on_load=None, elem_id="train-msg")
    c["confirm"] = gr.State(None)  # a long run's first Start click (Studio.start_form)

    gr.Markdown("### Run")
    with gr.Row():
        c["run"] = gr.Dropdown(label="Run shown", choices=[], value=None, elem_id="train-run", scale=4)
        c["refresh"] = gr.Button("Refresh", size="sm", scale=0, min_width=90, elem_id="train-refresh")
    c["progress"] = gr.HTML(progress_html(None), js_on_load=None, elem_id="train-progress")
    with gr.Row():  # the figures carry their own titles: gradio's label badge would cover them
        c["loss_plot"] = gr.Plot(label="loss / rank loss", show_label=False, elem_id="train-loss-plot")
        c["acc_plot"] = gr.Plot(label="rank accuracy", show_label=False, elem_id="train-acc-plot")
        c["gap_plot"] = gr.Plot(label="p-gap (best − negative)", show_label=False, elem_id="train-gap-plot")
        c["val_plot"] = gr.Plot(label="held-out validation", show_label=False, elem_id="train-val-plot")
    c["error"] = gr.HTML("", js_on_load=None, elem_id="train-error")
    c["log"] = gr.Textbox(label="Last log lines", lines=8, max_lines=14, interactive=False, elem_id="train-log")
    c["timer"], c["plot_key"], c["hist_key"] = gr.Timer(2.0), gr.State(None), gr.State(None)

    gr.Markdown("### Run history")
    c["history"] = gr.Dataframe(headers=HISTORY_COLUMNS, datatype="str", interactive=False, wrap=True, max_height=320,
                                column_widths=HISTORY_WIDTHS, elem_id="train-history")
    with gr.Row():
        c["reuse"] = gr.Button("Reuse the shown run's config", size="sm", elem_id="train-reuse")
        c["open_report"] = gr.Button("Open report of the shown run", size="sm", elem_id="train-report")
        c["evaluate"] = gr.Button("Evaluate shown run vs its base model", size="sm", elem_id="train-evaluate")
        c["eval_n"] = gr.Number(RUN_EVAL_N, label="prompts per set (dev split)", precision=0, minimum=4, maximum=300,
                                elem_id="train-eval-n", info="150 = every dev prompt; fewer: faster but noisier")
    ctx.admin_only.append(c["evaluate"])
    c["report_message"] = gr.HTML("", js_on_load=None, elem_id="train-report-msg")
    c["report"] = gr.Markdown("", elem_id="train-report-md")
    c["report_charts"] = gr.Gallery(label="charts", columns=3, height="auto", visible=False,
                                    elem_id="train-report-charts")
    c["config"] = gr.HTML("", visible=False, elem_id="train-config")  # code_html: numbers on their own lines
    c["extra"] = gr.State({})  # a reused run's settings that the form does not show (cleared by picking a recipe)
    c["restored"] = gr.State(False)  # the user's last settings were put in the form (once per page)

    form = tab.comps(FORM_IN)
    c["recipe"].input(tab.pick_recipe, tab.comps(("recipe", "negatives")), tab.comps(RECIPE_OUT))
    c["recipe"].input(lambda: {}, None, c["extra"])  # a recipe chosen by hand replaces what a reused run brought
    c["reuse"].click(tab.reuse, [c["run"]], tab.comps(FORM_OUT)).then(tab.do_estimate, form, c["estimate"])
    ctx.admin_only.append(c["reuse"])
    # one queue, the last change wins: a recipe fills ~20 fields at once, and per-field listeners left stale estimates
    gr.on([comp.change for comp in form if isinstance(comp, (gr.Number, gr.Checkbox, gr.Dropdown, gr.Radio))],
          tab.do_estimate, form, c["estimate"], show_progress="hidden", trigger_mode="always_last", concurrency_limit=1)
    c["start"].click(tab.start, {c["run"], c["confirm"], *form}, tab.comps(START_OUT))
    c["stop"].click(tab.stop, [c["run"]], tab.comps(STOP_OUT))
    c["resume"].click(tab.resume, [c["run"]], tab.comps(RESUME_OUT))
    c["run"].input(lambda run: tab.show_run(run), [c["run"]], tab.comps(VIEW_OUT), show_progress="hidden")
    c["refresh"].click(tab.on_show, tab.comps(SHOW_IN), tab.comps(SHOW_OUT))
    c["timer"].tick(tab.tick, tab.comps(("run", "plot_key", "hist_key")), tab.comps(TICK_OUT), show_progress="hidden")
    c["history"].select(tab.select_history, [c["history"]], tab.comps(SELECT_OUT))
    c["open_report"].click(tab.open_report, [c["run"]], tab.comps(REPORT_OUT))
    c["evaluate"].click(tab.evaluate_run, tab.comps(("run", "eval_n")), tab.comps(EVAL_OUT))
    return {**{k: c[k] for k in EXPORTED}, **{f"hp_{k}": c[k] for k in HYPER_KEYS},
            "_on_show": (tab.on_show, tab.comps(SHOW_IN), tab.comps(SHOW_OUT)),
            "_restore": (tab.restore, [c["restored"]], tab.comps(RESTORE_OUT))}
