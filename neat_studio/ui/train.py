"""Train tab: configure and start a training run (NEAT / RRHF / SFT / DPO) on a frozen snapshot of the curated
data, watch it live (progress, ETA, loss / rank-loss / rank-accuracy / p-gap curves, log, errors in plain words),
stop / resume it, and browse the run history with each run's report.

No business logic here: everything goes through `ctx.studio` (training_options, estimate_training,
start_confirmation, start_training, stop_training, resume_training, training_status, training_runs, run_report,
start_evaluation, evaluation_status). The run itself is a subprocess supervised by neat_studio.jobs, so a page reload or an app
restart re-attaches to it (the page shows the active run on load)."""
from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from ..studio import start_confirmation
from .common import Ctx, error_box, esc, fmt_num, names_text, ok_box, report_for_page, warn_box

HISTORY_COLUMNS = ["run", "name", "status", "method", "model", "snapshot", "started", "duration", "steps",
                   "loss", "rank acc", "p-gap", "config", "error"]
# (key, label, kind, min); the form starts from the DEFAULT_RECIPE's values over NeatConfig's defaults, the same
# values `train --recipe cpu` gives on the command line (one source: neat/recipes.py)
HYPER = [
    ("rounds", "rounds", int, 1),
    ("epochs", "epochs per round", int, 1),
    ("k", "k (plain samples)", int, 0),
    ("k_neg", "k_neg (per negative)", int, 0),
    ("k_pos", "k_pos (per positive)", int, 0),
    ("lr", "learning rate", float, 0),
    ("batch_size", "batch size (lists)", int, 1),
    ("grad_accum", "grad accumulation", int, 1),
    ("max_steps", "max steps (0 = all)", int, 0),
    ("max_new_tokens", "max new tokens (samples)", int, 1),
    ("max_prompt_len", "max prompt tokens", int, 1),
    ("max_response_len", "max response tokens", int, 1),
    ("margin", "margin", float, 0),
    ("sft_weight", "sft weight (λ)", float, 0),
    ("save_every", "checkpoint every N steps", int, 0),
    ("seed", "seed", int, 0),
]
DEFAULT_RECIPE = "cpu"


# the form's inputs in order (cfg_inputs in build): settings the form shows, then the recipe and the hyper-parameters
FORM_KEYS = ["model", "method", "negatives", "positives", "annotated_only", "include_imported", "tags",
             "min_responses", "lora", "dtype", "name", "anchor", "rank_reduction", "recipe"] + [h[0] for h in HYPER]
DATA_FORM_KEYS = ("annotated_only", "include_imported", "tags", "min_responses")


def config_from_form(vals: list, recipe_cfg: dict | None = None, extra: dict | None = None) -> dict:
    """The job config (NeatConfig keys + data + name) of the form's values (FORM_KEYS order). Settings the form
    does not show come from the chosen recipe (`recipe_cfg`) or, for a reused run, from `extra`."""
    v = dict(zip(FORM_KEYS, vals))
    cfg = dict(recipe_cfg or {}) | dict(extra or {})
    cfg.pop("data", None)
    cfg |= {"model": (v["model"] or "").strip() or "default", "method": v["method"],
            "negatives": list(v["negatives"] or []), "positives": list(v["positives"] or []),
            "lora": bool(v["lora"]), "dtype": v["dtype"] or "auto", "name": (v["name"] or "").strip() or None,
            "anchor": v["anchor"] or "none", "rank_reduction": v["rank_reduction"] or "sum",
            "data": {"annotated_only": bool(v["annotated_only"]), "include_imported": bool(v["include_imported"]),
                     "tags": list(v["tags"] or []), "split": "train", "min_responses": int(v["min_responses"] or 2)}}
    for key, _, kind, _ in HYPER:
        if v[key] is not None and v[key] != "":
            cfg[key] = kind(v[key])
    if v["method"] != "neat":
        cfg["negatives"] = []
    if not cfg.get("k_pos"):
        cfg["positives"] = []
    return cfg


def form_from_config(cfg: dict) -> tuple[list, dict]:
    """(form values in FORM_KEYS order, the settings the form does not show) of a job config: what "reuse this
    run's config" and the remembered last settings put back. config_from_form(*form_from_config(c)) == c."""
    start, data = form_defaults(), dict(cfg.get("data") or {})
    known = set(FORM_KEYS) | {"data", "snapshot_path", "snapshot", "output_dir"}
    vals = []
    for key in FORM_KEYS:
        if key == "recipe":
            vals.append("(none)")
        elif key in DATA_FORM_KEYS:
            vals.append(data.get(key, {"annotated_only": False, "include_imported": True, "tags": [],
                                       "min_responses": 2}[key]))
        else:
            vals.append(cfg.get(key, start.get(key)))
    extra = {k: v for k, v in cfg.items() if k not in known}
    return vals, extra


def form_defaults() -> dict:
    """The Train form's starting values: NeatConfig's defaults with DEFAULT_RECIPE applied."""
    from ..neat.config import NeatConfig
    from ..neat.recipes import apply_recipe

    return apply_recipe(NeatConfig(), DEFAULT_RECIPE).to_dict()


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
            f"<div style='width:{pct:.1f}%;background:{color};height:100%;transition:width .5s'></div></div></div>")


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
        rows.append([r["id"], r.get("name") or "", r["status"], r.get("method") or "", str(cfg.get("model", "")),
                     r.get("snapshot_id") or "", (r.get("started_at") or r.get("created_at") or "")[:19].replace("T", " "),
                     fmt_dur(r.get("duration_s")) if r.get("duration_s") is not None else "", steps,
                     fmt_num(fm.get("loss")), fmt_num(fm.get("rank_acc")), fmt_num(fm.get("p_gap")), short_cfg,
                     r.get("error") or ""])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def run_choices(runs: list[dict]) -> list[tuple[str, str]]:
    return [(f"{r['id']} · {r.get('name') or ''} · {r['status']}", r["id"]) for r in runs]


# -- the tab ---------------------------------------------------------------------------------------------------
def build(ctx: Ctx) -> dict:
    st = ctx.studio
    st.jobs  # create the job runner now: re-attaches runs left running by an earlier app process
    opts = st.training_options()
    helps, defaults = opts["help"], opts["defaults"]
    start = form_defaults()

    gr.Markdown("### New training run")
    with gr.Row():
        recipe = gr.Dropdown(["(none)"] + opts["recipes"], value=DEFAULT_RECIPE, label="Recipe", scale=1,
                             elem_id="train-recipe",
                             info="a named preset of the settings below (neat_studio/neat/recipes.py); you can "
                                  "still change any of them")
        recipe_info = gr.Markdown("", elem_id="train-recipe-info")
    with gr.Row():
        base = gr.Dropdown(label="Base model", choices=opts["models"], value="default", allow_custom_value=True,
                           scale=3, elem_id="train-model",
                           info="default (SmolLM2-135M-Instruct), a previous run's model, or an HF name / local path")
        method = gr.Radio(opts["methods"], value="neat", label="Method", scale=2, elem_id="train-method",
                          info=helps.get("method"))
    with gr.Row():
        newest = [opts["newest_negative"]] if opts["newest_negative"] else []
        negs = gr.Dropdown(label="Negative prompt versions", choices=opts["negatives"], multiselect=True,
                           value=newest, elem_id="train-negatives", allow_custom_value=True,
                           info=helps.get("negatives") + " (default: the version saved last)")
        negs_auto = gr.State(newest)  # the default last given to the choice (replaced by a newer version on open)
        poss = gr.Dropdown(label="Positive prompt versions (optional, NEAT-PP)", choices=opts["positives"],
                           multiselect=True, value=[], elem_id="train-positives", allow_custom_value=True,
                           info="used when k_pos > 0: " + helps.get("positives", ""))
    with gr.Row():
        annotated_only = gr.Checkbox(False, label="Annotated only (prompts a human ranked)", elem_id="train-annotated")
        imported = gr.Checkbox(True, label="Include imported ranked pairs", elem_id="train-imported")
        tags = gr.Dropdown(label="Only prompts with these tags (empty = all)", choices=opts["tags"], multiselect=True,
                           value=[], elem_id="train-tags")
        min_resp = gr.Number(2, label="Min. ranked responses per prompt", precision=0, minimum=1,
                             elem_id="train-min-responses",
                             info="1 also trains on prompts with only a reference answer (NEAT / RRHF add samples)")
    hyper = []
    with gr.Accordion("Hyper-parameters (defaults are sized for a 2-core CPU)", open=False):
        for i in range(0, len(HYPER), 4):
            with gr.Row():
                for key, label, kind, lo in HYPER[i:i + 4]:
                    v = start[key]
                    hyper.append(gr.Number(value=v, label=label, precision=0 if kind is int else None, minimum=lo,
                                           info=helps.get(key), elem_id=f"train-{key}"))
        with gr.Row():
            lora = gr.Checkbox(False, label="LoRA adapters", info=helps.get("lora"), elem_id="train-lora")
            dtype = gr.Dropdown(opts["dtypes"], value=defaults.get("dtype", "auto"), label="Precision",
                                info=f"{helps.get('dtype')}; here auto = {opts['auto_dtype']}", elem_id="train-dtype")
            name = gr.Textbox(label="Run name (optional)", max_lines=1, elem_id="train-name")
        with gr.Row():
            anchor = gr.Dropdown(["none", "round"], value=defaults.get("anchor", "none"), label="Anchor",
                                 info=helps.get("anchor"), elem_id="train-anchor")
            rank_red = gr.Dropdown(["sum", "mean"], value=defaults.get("rank_reduction", "sum"),
                                   label="Rank loss per list", info=helps.get("rank_reduction"),
                                   elem_id="train-rank-reduction")
    estimate = gr.Markdown("", elem_id="train-estimate")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume_btn = gr.Button("Resume", elem_id="train-resume")
    for b in (start_btn, stop_btn, resume_btn):
        ctx.admin_only.append(b)
    msg = gr.HTML("", js_on_load=None, elem_id="train-msg")
    confirm = gr.State(None)  # a long run's first Start click (studio.start_confirmation)

    gr.Markdown("### Run")
    with gr.Row():
        run_sel = gr.Dropdown(label="Run shown", choices=[], value=None, elem_id="train-run", scale=4)
        refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=90, elem_id="train-refresh")
    prog = gr.HTML(progress_html(None), js_on_load=None, elem_id="train-progress")
    with gr.Row():
        # the figures carry their own titles: gradio's label badge would cover them
        loss_plot = gr.Plot(label="loss / rank loss", show_label=False, elem_id="train-loss-plot")
        acc_plot = gr.Plot(label="rank accuracy", show_label=False, elem_id="train-acc-plot")
        gap_plot = gr.Plot(label="p-gap (best − negative)", show_label=False, elem_id="train-gap-plot")
    err = gr.HTML("", js_on_load=None, elem_id="train-error")
    log = gr.Textbox(label="Last log lines", lines=8, max_lines=14, interactive=False, elem_id="train-log")
    timer = gr.Timer(2.0)
    plot_key = gr.State(None)
    hist_key = gr.State(None)

    gr.Markdown("### Run history")
    history = gr.Dataframe(headers=HISTORY_COLUMNS, datatype="str", interactive=False, wrap=True, max_height=320,
                           column_widths=["9%", "8%", "6%", "5%", "7%", "8%", "9%", "6%", "5%", "5%", "5%", "5%",
                                          "14%", "8%"],  # 100 %: the config and error columns stay in view
                           elem_id="train-history")
    with gr.Row():
        reuse_btn = gr.Button("Reuse the shown run's config", size="sm", elem_id="train-reuse")
        report_btn = gr.Button("Open report of the shown run", size="sm", elem_id="train-report")
        eval_btn = gr.Button("Evaluate shown run vs its base model", size="sm", elem_id="train-evaluate")
        eval_n = gr.Number(50, label="prompts per set (dev split)", precision=0, minimum=4, maximum=300,
                           elem_id="train-eval-n",
                           info="~1 s per prompt and model here; 100+ for differences that are not noise")
    ctx.admin_only.append(eval_btn)
    report_msg = gr.HTML("", js_on_load=None, elem_id="train-report-msg")
    report_md = gr.Markdown("", elem_id="train-report-md")
    report_gallery = gr.Gallery(label="charts", columns=3, height="auto", visible=False, elem_id="train-report-charts")
    config_code = gr.Code(label="config.yaml", language="yaml", interactive=False, visible=False,
                          elem_id="train-config")

    # -- helpers -------------------------------------------------------------------------------------------------
    extra = gr.State({})  # a reused run's settings that the form does not show (cleared by picking a recipe)

    def config_from(*vals):
        """Form values (cfg_inputs order: FORM_KEYS, then `extra`) -> the job config."""
        *form, ex = vals
        rc = dict(zip(FORM_KEYS, form))["recipe"]
        # a recipe's settings that the form does not show (e.g. gen_batch_size) come from the recipe itself
        return config_from_form(form, st.recipe_config(rc)["config"] if rc and rc != "(none)" else None, ex)

    form_inputs = [base, method, negs, poss, annotated_only, imported, tags, min_resp, lora, dtype, name, anchor,
                   rank_red, recipe, *hyper]
    cfg_inputs = [*form_inputs, extra]

    def pick_recipe(name, negs_now):
        """A recipe fills in the whole form: NeatConfig's defaults with the recipe's values (method, system prompts
        with their scopes, hyper-parameters, data rule); "(none)" is NeatConfig's defaults. System prompts stay as
        they are when the recipe names none."""
        keep = [gr.update()] * (6 + len(HYPER))
        info, c, data = "", dict(defaults), {}
        if name and name != "(none)":
            try:
                r = st.recipe_config(name)
            except ValueError as ex:
                return f"⚠ {esc(ex)}", *keep
            c.update(r["config"])
            data = r["config"]["data"]
            info = f"**{esc(name)}**: {esc(r['description'])}"
        mine = "negatives" in c and c["negatives"] != defaults.get("negatives")
        return (info, gr.update(value=c["method"]),
                gr.update(value=c["negatives"]) if mine else gr.update(value=negs_now),
                gr.update(value=c["positives"]), gr.update(value=data.get("min_responses", 2)),
                gr.update(value=c["anchor"]), gr.update(value=c["rank_reduction"]),
                *[gr.update(value=c[key]) for key, *_ in HYPER])

    recipe.input(pick_recipe, [recipe, negs], [recipe_info, method, negs, poss, min_resp, anchor, rank_red, *hyper])
    recipe.input(lambda: {}, None, extra)  # a recipe chosen by hand replaces what a reused run brought

    def fill_form(cfg: dict, note: str):
        """Every form input (and `extra`) from a job config."""
        vals, ex = form_from_config(cfg)
        return (*[gr.update(value=v) for v in vals], ex, note)

    def do_estimate(*args):
        try:
            e = st.estimate_training(config_from(*args))
        except ValueError as ex:
            return f"⚠ {esc(ex)}"
        return (f"**Estimated time:** {esc(e['text'])} · {e['n_prompts']} training prompt(s) match the data filters")

    def view(run_id, key=None):
        """(progress, loss fig, acc fig, gap fig, error, log, plot key, stop/resume interactivity)."""
        if not run_id:
            return (progress_html(None), gr.update(), gr.update(), gr.update(), "", "", key,
                    gr.update(interactive=False), gr.update(interactive=False))
        try:
            p = st.training_status(run_id)
        except ValueError as ex:
            return (error_box(str(ex)), gr.update(), gr.update(), gr.update(), "", "", key,
                    gr.update(interactive=False), gr.update(interactive=False))
        rows = p["metrics"]
        new_key = (run_id, len(rows), rows[-1]["step"] if rows else None, p["status"])
        if new_key != key:
            figs = (curves_figure(rows, [("loss", "loss"), ("rank_loss", "rank loss"), ("sft_loss", "sft loss")],
                                  "loss"),
                    curves_figure(rows, [("rank_acc", "rank accuracy")], "rank accuracy"),
                    curves_figure(rows, [("p_gap", "p-gap")], "p-gap (mean log-prob best − negative)"))
        else:
            figs = (gr.update(), gr.update(), gr.update())
        e = ""
        if p["error"]:
            e = error_box(("Run failed: " if p["status"] == "failed" else "") + p["error"])
        active = p["status"] in ("running", "queued")
        can_resume = p["status"] in ("stopped", "failed") and bool(p.get("checkpoint"))
        return (progress_html(p), *figs, e, "\n".join(p["log_tail"]), new_key,
                gr.update(interactive=active and not p["stopping"]), gr.update(interactive=can_resume))

    view_outs = [prog, loss_plot, acc_plot, gap_plot, err, log, plot_key, stop_btn, resume_btn]

    def hist():
        runs = st.training_runs()
        return runs, history_df(runs)

    def on_show(auto, *vals):
        """Page load / tab opened: the active run (else the newest), fresh choices, the time estimate;
        runs re-attached after an app restart show up here. The negative prompt choice follows the newest saved
        version while it still holds the default it was given (a choice the user made stays, if it exists)."""
        runs, df = hist()
        act = st.jobs.active()
        sel = act["id"] if act else (runs[0]["id"] if runs else None)
        o = st.training_options()
        vals = list(vals)
        newest = [o["newest_negative"]] if o["newest_negative"] else []
        cur = list(vals[2] or [])
        if not cur or cur == list(auto or []):
            vals[2] = newest
        else:
            vals[2] = [v for v in cur if v in o["negatives"]] or newest
        return (gr.update(choices=run_choices(runs), value=sel), df, *view(sel),
                gr.update(choices=o["models"]), gr.update(choices=o["negatives"], value=vals[2]),
                gr.update(choices=o["positives"]), gr.update(choices=o["tags"]), do_estimate(*vals), newest)

    show_outs = [run_sel, history, *view_outs, base, negs, poss, tags, estimate, negs_auto]

    def start(data: dict, request: gr.Request):
        """`data`: {component: value} of the run selector, the confirmation state and the config inputs (set-style
        inputs). A run estimated over 15 min starts on the second click with the same settings
        (studio.start_confirmation); the first one asks."""
        actor = ctx.require_admin(request, "start training")
        shown = data.get(run_sel)
        try:
            cfg = config_from(*[data.get(c) for c in cfg_inputs])
            cfg["model"] = st.checked_model(cfg.get("model"))  # user-typed: only allowed model folders
            try:
                est = st.estimate_training(cfg)
            except ValueError:
                est = None  # starting says what is wrong
            ask = start_confirmation(cfg, est, data.get(confirm), time.time())
            if not ask["start"]:
                return (warn_box(ask["message"]), gr.update(), gr.update(), *view(shown), ask["armed"])
            rid = st.start_training(cfg, actor=actor)
            st.remember_train_form(actor, cfg)  # the next visit starts from these settings
        except (ValueError, RuntimeError) as ex:
            return (error_box(f"Not started: {ex}"), gr.update(), gr.update(), *view(shown), None)
        runs, df = hist()
        return (ok_box(f"Started run {rid}. It runs in the background; you can reload the page or leave."),
                gr.update(choices=run_choices(runs), value=rid), df, *view(rid), None)

    def stop(run_id, request: gr.Request):
        actor = ctx.require_admin(request, "stop training")
        if not run_id:
            return error_box("No run selected."), *view(None)
        try:
            st.stop_training(run_id, actor=actor)
        except (ValueError, RuntimeError) as ex:
            return error_box(str(ex)), *view(run_id)
        return ok_box(f"Stopping run {run_id}: it finishes its step and writes a checkpoint."), *view(run_id)

    def resume(run_id, request: gr.Request):
        actor = ctx.require_admin(request, "resume training")
        if not run_id:
            return (error_box("No run selected."), gr.update(), gr.update(), *view(None))
        try:
            st.resume_training(run_id, actor=actor)
        except (ValueError, RuntimeError) as ex:
            return (error_box(f"Not resumed: {ex}"), gr.update(), gr.update(), *view(run_id))
        runs, df = hist()
        return (ok_box(f"Resumed run {run_id} from its last checkpoint."),
                gr.update(choices=run_choices(runs), value=run_id), df, *view(run_id))

    def tick(run_id, key, hkey):
        """Every 2 s: the shown run; the history and the run list only when a run or a status changed."""
        out = list(view(run_id, key))
        runs = st.training_runs()
        sig = tuple((r["id"], r["status"], r.get("error")) for r in runs)
        if sig == hkey:
            return (*out, gr.update(), gr.update(), hkey)
        return (*out, history_df(runs), gr.update(choices=run_choices(runs)), sig)

    def select_history(evt: gr.SelectData, df):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            rid = str(df.iloc[row, 0])
        except Exception:  # noqa: BLE001
            return gr.update(), *view(None)
        return gr.update(value=rid), *view(rid)

    def open_report(run_id):
        if not run_id:
            return error_box("No run selected."), "", gr.update(visible=False), gr.update(visible=False)
        try:
            r = st.run_report(run_id)
        except ValueError as ex:
            return error_box(str(ex)), "", gr.update(visible=False), gr.update(visible=False)
        cfg = gr.update(value=r["config_yaml"] or "", visible=bool(r["config_yaml"]))
        who = f"run {run_id} · {r['name']}" if r.get("name") else f"run {run_id}"
        if r["markdown"] is None:
            return (ok_box(f"{who[0].upper() + who[1:]} has no evaluation report yet: press 'Evaluate shown run vs "
                           "its base model' (an evaluation started in the Compare tab goes to the workspace's "
                           "reports/ folder instead)."), "", gr.update(visible=False), cfg)
        return (ok_box(f"Report of {who} ({r['path']}).{names_text(r.get('model_names'))}"),
                report_for_page(r["markdown"]), gr.update(value=r["charts"], visible=bool(r["charts"])), cfg)

    def evaluate_run(run_id, eval_n, request: gr.Request):
        ctx.require_admin(request, "evaluate runs")
        if not run_id:
            yield error_box("No run selected."), gr.update(), gr.update(visible=False)
            return
        try:
            run = st.training_status(run_id)
            if not run.get("final"):
                raise ValueError(f"run {run_id} has no final model yet (status {run['status']})")
            sets = st.eval_set_choices()
            base_spec = (run.get("config") or {}).get("model") or "default"
            # the base first: the report's verdicts judge every model against the first one
            eid = st.start_evaluation([base_spec, run["run_dir"]], sets, out_dir=f"{run['run_dir']}/report",
                                      n_per_set=int(eval_n or 50), max_new_tokens=48,
                                      pairs_path="pairs", actor=ctx.user(request))
        except (ValueError, RuntimeError) as ex:
            yield error_box(f"Not evaluated: {ex}"), gr.update(), gr.update(visible=False)
            return
        for s in st.watch_evaluation(eid):
            if s["status"] == "running":
                yield (ok_box(f"Evaluating {st.model_label(run['run_dir'])} vs {st.model_label(base_spec)}: "
                              f"{s['stage']} {s['done']}/{s['total']}…"), gr.update(), gr.update())
        if s["status"] == "failed":
            yield error_box(f"Evaluation failed: {s['error']}"), gr.update(), gr.update(visible=False)
            return
        yield (ok_box(f"Evaluation done ({s['out_dir']}).{names_text(s.get('model_names'))}"),
               report_for_page(s["markdown"]),
               gr.update(value=s["charts"], visible=bool(s["charts"])))

    def reuse(run_id):
        if not run_id:
            return (*[gr.update()] * (len(form_inputs) + 1), error_box("No run selected."))
        try:
            cfg = st.run_config(run_id)
        except ValueError as ex:
            return (*[gr.update()] * (len(form_inputs) + 1), error_box(str(ex)))
        return fill_form(cfg, ok_box(f"The form holds run {run_id}'s settings now (its data filters too); the data "
                                     "is frozen anew when you start."))

    def restore(done, request: gr.Request):
        """First open of the tab in this page: the settings this user last started a run with."""
        if done:
            return (*[gr.update()] * (len(form_inputs) + 1), gr.update(), True)
        try:
            cfg = st.last_train_form(ctx.user(request))
        except gr.Error:
            cfg = None
        if not cfg:
            return (*[gr.update()] * (len(form_inputs) + 1), gr.update(), True)
        return (*fill_form(cfg, ok_box("The form holds the settings of the last run you started.")), True)

    restored = gr.State(False)
    reuse_btn.click(reuse, [run_sel], [*form_inputs, extra, msg]).then(do_estimate, cfg_inputs, estimate)
    ctx.admin_only.append(reuse_btn)
    for comp in cfg_inputs:
        if isinstance(comp, (gr.Number, gr.Checkbox, gr.Dropdown, gr.Radio)):
            comp.change(do_estimate, cfg_inputs, estimate, show_progress="hidden")
    start_btn.click(start, {run_sel, confirm, *cfg_inputs}, [msg, run_sel, history, *view_outs, confirm])
    stop_btn.click(stop, [run_sel], [msg, *view_outs])
    resume_btn.click(resume, [run_sel], [msg, run_sel, history, *view_outs])
    run_sel.input(lambda r: view(r), [run_sel], view_outs, show_progress="hidden")
    refresh_btn.click(on_show, [negs_auto, *cfg_inputs], show_outs)
    timer.tick(tick, [run_sel, plot_key, hist_key], [*view_outs, history, run_sel, hist_key], show_progress="hidden")
    history.select(select_history, [history], [run_sel, *view_outs])
    report_btn.click(open_report, [run_sel], [report_msg, report_md, report_gallery, config_code])
    eval_btn.click(evaluate_run, [run_sel, eval_n], [report_msg, report_md, report_gallery])

    return {"model": base, "method": method, "negatives": negs, "positives": poss, "annotated_only": annotated_only,
            "include_imported": imported, "tags": tags, "estimate": estimate, "start": start_btn, "stop": stop_btn,
            "resume": resume_btn, "message": msg, "run": run_sel, "progress": prog, "loss_plot": loss_plot,
            "acc_plot": acc_plot, "gap_plot": gap_plot, "error": err, "log": log, "timer": timer,
            "history": history, "report": report_md, **{f"hp_{h[0]}": c for h, c in zip(HYPER, hyper)},
            "lora": lora, "dtype": dtype, "name": name, "reuse": reuse_btn, "recipe": recipe,
            "_on_show": (on_show, [negs_auto, *cfg_inputs], show_outs),
            "_restore": (restore, [restored], [*form_inputs, extra, msg, restored])}
