"""Compare tab: two models side by side (base, a run's final or checkpoint model, any HF name / local path).

One message box sends the same conversation turn to both (same sampling settings and seed), the replies stream,
the chat is multi-turn (each side keeps its own history), Regenerate re-samples the last turn with the next seed.
Each side shows its model id and weights fingerprint. Votes (A / B / tie / both bad) are stored as a ranking
annotation by the signed-in user (Studio.save_compare_vote), so they flow into the next snapshot / export.
"Evaluate" runs neat_studio.evaluate in a background thread and shows the report; "Use as generator" switches the
studio's generation policy (admin) and is remembered for the next start.

Model A / B default to `Studio.default_compare_models()` (B = the newest finished run, A = its base model) and follow
new runs: on page load, when the tab is opened and (a timer) when a run finishes, unless the user chose a model.

Everything a model or user wrote is escaped before display (the chat shows escaped text; nothing is rendered as
HTML)."""
from __future__ import annotations


import gradio as gr

from .common import Ctx, error_box, esc, names_text, ok_box, report_for_page

VOTES = [("A is better", "A"), ("B is better", "B"), ("Tie", "tie"), ("Both bad", "both_bad")]


def display(history: list[dict]) -> list[dict]:
    """Chatbot messages with every text escaped (inert)."""
    return [{"role": m["role"], "content": esc(m.get("content") or "") or "<i>(empty)</i>"}
            if m["role"] == "assistant" else {"role": m["role"], "content": esc(m.get("content") or "")}
            for m in history or [] if m.get("role") in ("user", "assistant")]


def info_html(side: str, info: dict | None, error: str | None = None) -> str:
    if error:
        return error_box(f"Model {side}: {error}")
    if not info:
        return f"<div class='neat-empty'>Model {esc(side)}: not loaded</div>"
    return (f"<div class='neat-model-info' data-fingerprint='{esc(info['fingerprint'])}' id='cmp-info-{esc(side)}'>"
            f"<b>{esc(side)}</b>: <code>{esc(info['model_id'])}</code> · weights "
            f"<code class='neat-fp'>{esc(info['fingerprint'])}</code>"
            f"{' · ' + esc(info['dtype']) if info.get('dtype') else ''}<br><span style='font-size:.8rem'>"
            f"{esc(info['spec'])}</span></div>")


def follow(current: tuple, auto: tuple | None, defaults: tuple) -> list:
    """New values of (Model A, Model B): a side still showing the default it was given (`auto`; or nothing)
    takes the new default, a side the user changed keeps the user's choice. None = leave the side as it is."""
    out = []
    for cur, was, new in zip(current, auto or (None, None), defaults):
        out.append(new if (not cur or cur == was) and cur != new else None)
    return out


def build(ctx: Ctx) -> dict:
    st = ctx.studio
    choices = st.model_choices()
    default_a, default_b = st.default_compare_models()
    with gr.Row():
        with gr.Column():
            model_a = gr.Dropdown(label="Model A", choices=choices, value=default_a, allow_custom_value=True,
                                  elem_id="cmp-model-a", info="base, a run's model, or an HF name / local path")
            info_a = gr.HTML(info_html("A", None), js_on_load=None, elem_id="cmp-info-a-box")
            chat_a = gr.Chatbot(label="A", height=360, elem_id="cmp-chat-a", render_markdown=False,
                                sanitize_html=True, allow_tags=False, latex_delimiters=[], feedback_options=None,
                                buttons=["copy"])
        with gr.Column():
            model_b = gr.Dropdown(label="Model B", choices=choices, value=default_b,
                                  allow_custom_value=True, elem_id="cmp-model-b",
                                  info="base, a run's model, or an HF name / local path")
            info_b = gr.HTML(info_html("B", None), js_on_load=None, elem_id="cmp-info-b-box")
            chat_b = gr.Chatbot(label="B", height=360, elem_id="cmp-chat-b", render_markdown=False,
                                sanitize_html=True, allow_tags=False, latex_delimiters=[], feedback_options=None,
                                buttons=["copy"])
    with gr.Row():
        box = gr.Textbox(label="Message (sent to both)", lines=2, scale=5, elem_id="cmp-input")
        with gr.Column(scale=1, min_width=140):
            send = gr.Button("Send", variant="primary", elem_id="cmp-send")
            regen = gr.Button("Regenerate", size="sm", elem_id="cmp-regen")
            clear = gr.Button("New chat", size="sm", elem_id="cmp-clear")
    with gr.Accordion("Sampling (the same for both sides)", open=False):
        with gr.Row():
            temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature (0 = greedy)",
                                    elem_id="cmp-temp")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p", elem_id="cmp-topp")
            max_new = gr.Number(value=96, precision=0, minimum=1, maximum=2048, label="max new tokens",
                                elem_id="cmp-maxnew")
            seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="cmp-seed")
    with gr.Row():
        vote_btns = [gr.Button(label, elem_id=f"cmp-vote-{v}", size="sm") for label, v in VOTES]
    vote_msg = gr.HTML("", js_on_load=None, elem_id="cmp-vote-msg")
    with gr.Row():
        use_a = gr.Button("Use A as generator", size="sm", elem_id="cmp-use-a")
        use_b = gr.Button("Use B as generator", size="sm", elem_id="cmp-use-b")
    ctx.admin_only.extend([use_a, use_b])

    with gr.Accordion("Evaluate A vs B (refusal, over-refusal, ranking accuracy)", open=False):
        with gr.Row():
            sets = gr.CheckboxGroup(label="Prompt sets", choices=st.eval_set_choices(),
                                    value=st.eval_set_choices(), elem_id="cmp-eval-sets",
                                    info="the standard sets shipped with the studio (data/evalsets; dev split)")
            n_per = gr.Number(value=10, precision=0, minimum=1, maximum=500, label="prompts per set",
                              elem_id="cmp-eval-n")
            eval_btn = gr.Button("Evaluate", elem_id="cmp-eval")
        with gr.Row():
            own_set = gr.File(label="Your own prompt set (optional)", file_types=[".jsonl", ".json", ".csv", ".gz"],
                              type="filepath", elem_id="cmp-eval-file", scale=2)
            own_expected = gr.Radio([("rows say it ('expected' per row)", "rows"), ("refuse", "refuse"),
                                     ("comply", "comply")], value="rows", label="Expected behaviour of its prompts",
                                    elem_id="cmp-eval-expected", scale=2,
                                    info="a set file (JSONL rows with prompt + expected) says it per row; for a "
                                         "plain prompt file (CSV / JSONL / JSON), say what every prompt should get")
        eval_msg = gr.HTML("", js_on_load=None, elem_id="cmp-eval-msg")
        eval_md = gr.Markdown("", elem_id="cmp-eval-report")
        eval_gallery = gr.Gallery(label="charts", columns=3, height="auto", visible=False, elem_id="cmp-eval-charts")
    ctx.admin_only.append(eval_btn)

    hist_a, hist_b = gr.State([]), gr.State([])
    auto = gr.State((default_a, default_b))  # the defaults the two dropdowns were last given (not user choices)
    follow_timer = gr.Timer(5.0)

    # -- handlers --------------------------------------------------------------------------------------------
    def load_info(spec, side):
        if not spec:
            return info_html(side, None)
        try:
            return info_html(side, st.compare_info(spec))
        except Exception as e:  # noqa: BLE001 - ModelLoadError, ValueError, OSError: shown in plain words
            return info_html(side, None, str(e))

    def params_of(t, p, m, s):
        return {"temperature": float(t), "top_p": float(p), "max_new_tokens": int(m or 96), "seed": int(s or 0)}

    def run_turn(sa, sb, ha, hb, text, t, p, m, s):
        """Generator: stream both replies to `text` appended to each side's history."""
        text = (text or "").strip()
        if not text:
            yield gr.update(), gr.update(), ha, hb, error_box("Write a message first."), gr.update(), \
                gr.update(), gr.update()
            return
        user = {"role": "user", "content": text}
        try:
            params = params_of(t, p, m, s)
            ta = tb = ""
            for ta, tb in st.compare_stream(sa, sb, ha, hb, text, params):
                na = ha + [user, {"role": "assistant", "content": ta}]
                nb = hb + [user, {"role": "assistant", "content": tb}]
                yield display(na), display(nb), ha, hb, "", "", gr.update(), gr.update()
        except Exception as e:  # noqa: BLE001
            yield display(ha), display(hb), ha, hb, error_box(f"Generation failed: {e}"), gr.update(), \
                gr.update(), gr.update()
            return
        na = ha + [user, {"role": "assistant", "content": ta}]
        nb = hb + [user, {"role": "assistant", "content": tb}]
        # the models are loaded now: their ids and fingerprints are cheap to show
        yield display(na), display(nb), na, nb, "", "", load_info(sa, "A"), load_info(sb, "B")

    outs = [chat_a, chat_b, hist_a, hist_b, vote_msg, box, info_a, info_b]
    gen_inputs = [model_a, model_b, hist_a, hist_b, box, temperature, top_p, max_new, seed]
    send.click(run_turn, gen_inputs, outs)
    box.submit(run_turn, gen_inputs, outs)

    def regenerate(sa, sb, ha, hb, t, p, m, s):
        if len(ha) < 2 or len(hb) < 2:
            yield (gr.update(), gr.update(), ha, hb, error_box("Nothing to regenerate yet."), gr.update(),
                   gr.update(), gr.update(), gr.update())
            return
        text = ha[-2]["content"]
        s2 = int(s or 0) + 1
        for out in run_turn(sa, sb, ha[:-2], hb[:-2], text, t, p, m, s2):
            yield (*out[:5], gr.update(), *out[6:], s2)

    regen.click(regenerate, [model_a, model_b, hist_a, hist_b, temperature, top_p, max_new, seed],
                [*outs, seed])

    def new_chat():
        return [], [], [], [], "", "", gr.update(), gr.update()

    clear.click(new_chat, None, outs)
    # the chat windows' own trash buttons start a new chat on BOTH sides (the histories stay paired for votes)
    chat_a.clear(new_chat, None, outs)
    chat_b.clear(new_chat, None, outs)

    def change_model(spec, side):
        return load_info(spec, side), [], [], [], [], ""

    model_a.change(lambda s: change_model(s, "A"), [model_a], [info_a, chat_a, chat_b, hist_a, hist_b, vote_msg])
    model_b.change(lambda s: change_model(s, "B"), [model_b], [info_b, chat_a, chat_b, hist_a, hist_b, vote_msg])

    def make_vote(v):
        def vote(sa, sb, ha, hb, t, p, m, s, request: gr.Request):
            user = ctx.user(request)
            try:
                r = st.save_compare_vote(ha, hb, sa, sb, v, annotator=user, params=params_of(t, p, m, s))
            except (ValueError, RuntimeError) as e:
                return error_box(f"Vote not saved: {e}")
            label = dict((b, a) for a, b in VOTES)[v]
            return ok_box(f"Saved '{label}' by {user} for prompt {r['prompt_id']} (annotation {r['annotation_id']}); "
                          "it will be part of the next snapshot.")
        return vote

    for btn, (_, v) in zip(vote_btns, VOTES):
        btn.click(make_vote(v), [model_a, model_b, hist_a, hist_b, temperature, top_p, max_new, seed], vote_msg)

    def use(spec, request: gr.Request):
        actor = ctx.require_admin(request, "switch the generation model")
        try:
            mid = st.use_model(spec, actor=actor)
        except Exception as e:  # noqa: BLE001
            return error_box(f"Not switched: {e}")
        return ok_box(f"The generator is now {mid} ({st.model_label(st.model_spec)}); new candidates in the "
                      "studio come from it, and the studio starts with it next time.")

    use_a.click(use, [model_a], vote_msg)
    use_b.click(use, [model_b], vote_msg)

    def evaluate(sa, sb, chosen, own, expected, n, request: gr.Request):
        actor = ctx.require_admin(request, "run evaluations")
        try:
            for spec in (sa, sb):  # user-typed: only allowed model folders (the operator's model is always fine)
                if spec:
                    st.checked_model(spec)
            sets_ = st.evaluation_sets(list(chosen or []), own or None,
                                       expected if expected in ("refuse", "comply") else None, actor=actor)
            eid = st.start_evaluation([sa, sb] if sa != sb else [sa], sets_, n_per_set=int(n or 10),
                                      max_new_tokens=64, actor=actor)
        except (ValueError, RuntimeError) as e:
            yield error_box(f"Not started: {e}"), gr.update(), gr.update(visible=False)
            return
        for s in st.watch_evaluation(eid):
            if s["status"] == "running":
                yield ok_box(f"Evaluating in the background: {s['stage']} {s['done']}/{s['total']}…"), \
                    gr.update(), gr.update()
        if s["status"] == "failed":
            yield error_box(f"Evaluation failed: {s['error']}"), "", gr.update(visible=False)
            return
        yield ok_box(f"Report written to {s['out_dir']}.{names_text(s.get('model_names'))}"), \
            report_for_page(s["markdown"]), gr.update(value=s["charts"], visible=bool(s["charts"]))

    eval_btn.click(evaluate, [model_a, model_b, sets, own_set, own_expected, n_per],
                   [eval_msg, eval_md, eval_gallery])

    def refresh(cur_a, cur_b, was, force=True):
        """Model choices and defaults after new runs: a side still on its default follows the new default (B = the
        newest finished run), a side the user chose stays. Without `force` (the timer) nothing is sent unless the
        defaults changed. Models load on first use (a changed side loads its info), not on page load."""
        defaults = st.default_compare_models()
        was = tuple(was) if was else (None, None)
        if not force and defaults == was:
            return gr.update(), gr.update(), was, gr.update()
        ch = st.model_choices()
        new_a, new_b = follow((cur_a, cur_b), was, defaults)
        sets_ = st.eval_set_choices()
        return (gr.update(choices=ch) if new_a is None else gr.update(choices=ch, value=new_a),
                gr.update(choices=ch) if new_b is None else gr.update(choices=ch, value=new_b), defaults,
                gr.update(choices=sets_) if force else gr.update())

    def on_show(cur_a, cur_b, was):
        return refresh(cur_a, cur_b, was, True)

    def follow_runs(cur_a, cur_b, was):
        return refresh(cur_a, cur_b, was, False)

    follow_timer.tick(follow_runs, [model_a, model_b, auto], [model_a, model_b, auto, sets],
                      show_progress="hidden")

    return {"model_a": model_a, "model_b": model_b, "info_a": info_a, "info_b": info_b, "chat_a": chat_a,
            "chat_b": chat_b, "input": box, "send": send, "regenerate": regen, "clear": clear, "seed": seed,
            "temperature": temperature, "max_new_tokens": max_new, "vote_message": vote_msg,
            **{f"vote_{v}": b for b, (_, v) in zip(vote_btns, VOTES)}, "use_a": use_a, "use_b": use_b,
            "evaluate": eval_btn, "eval_report": eval_md, "eval_sets": sets, "eval_file": own_set,
            "eval_expected": own_expected, "eval_message": eval_msg,
            "_on_show": (on_show, [model_a, model_b, auto], [model_a, model_b, auto, sets])}
