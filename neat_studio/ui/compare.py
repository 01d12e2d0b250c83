"""Compare tab: two models side by side (base, a run's final or checkpoint model, any HF name / local path).

One message box sends the same conversation turn to both (same sampling settings and seed), the replies stream,
the chat is multi-turn (each side keeps its own history), Regenerate re-samples the last turn with the next seed.
Each side shows its model id and weights fingerprint. Votes (A / B / tie / both bad) are stored as a ranking
annotation by the signed-in user (Studio.save_compare_vote), so they flow into the next snapshot / export.
"Evaluate" runs neat_studio.evaluate in a background thread and shows the report; "Use as generator" switches the
studio's generation policy (admin) and is remembered for the next start.

Model A / B default to `Studio.default_compare_models()` (B = the newest finished run, A = its base model) and follow
new runs: on page load, when the tab is opened and (a timer) when a run finishes, unless the user chose a model.

`build()` lays out the components (by name, in `CompareTab.c`) and binds them to `CompareTab`'s handlers, which call
Studio's compare and evaluation services (studio/compare.py, studio/evaluation.py). Everything a model or user wrote
is escaped before display (the chat shows escaped text; nothing is rendered as HTML)."""
from __future__ import annotations

import gradio as gr

from .common import Ctx, Tab, error_box, esc, evaluation_updates, ok_box

VOTES = [("A is better", "A"), ("B is better", "B"), ("Tie", "tie"), ("Both bad", "both_bad")]

# the handlers' inputs and outputs by name (CompareTab.c)
TURN_IN = ("model_a", "model_b", "hist_a", "hist_b", "input", "temperature", "top_p", "max_new_tokens", "seed")
SAMPLING_IN = ("model_a", "model_b", "hist_a", "hist_b", "temperature", "top_p", "max_new_tokens", "seed")
TURN_OUT = ("chat_a", "chat_b", "hist_a", "hist_b", "vote_message", "input", "info_a", "info_b")
REGEN_OUT = (*TURN_OUT, "seed")
MODEL_OUT = {side: (f"info_{side.lower()}", "chat_a", "chat_b", "hist_a", "hist_b", "vote_message") for side in "AB"}
EVAL_IN = ("model_a", "model_b", "eval_sets", "eval_file", "eval_expected", "eval_n")
EVAL_OUT = ("eval_message", "eval_report", "eval_charts")
MODELS_IN = ("model_a", "model_b", "auto")
MODELS_OUT = ("model_a", "model_b", "auto", "eval_sets")
# what other tabs and tests find as "compare.<name>"
EXPORTED = ("model_a", "model_b", "info_a", "info_b", "chat_a", "chat_b", "input", "send", "regenerate", "clear",
            "seed", "temperature", "max_new_tokens", "vote_message", *(f"vote_{v}" for _, v in VOTES), "use_a",
            "use_b", "evaluate", "eval_report", "eval_sets", "eval_file", "eval_expected", "eval_message")


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
            f"{esc(info['spec'])}</span>{check_line(info.get('check'))}</div>")


def check_line(check: str | None) -> str:
    """A checked run's verdict against its base under its name (a warning when it is worse on any axis)."""
    if not check:
        return ""
    cls = "neat-warn" if check.startswith("WORSE") else "neat-ok"
    return f"<div class='{cls}' style='font-size:.8rem;margin-top:.2rem'>checked against its base: {esc(check)}</div>"


# -- the handlers ----------------------------------------------------------------------------------------------
class CompareTab(Tab):
    """The Compare tab's handlers (see Tab); the chat, votes, evaluations and model defaults are Studio's compare
    and evaluation services."""

    def info(self, spec, side: str) -> str:
        return info_html(side, *self.st.compare_side(spec))

    def turn(self, model_a, model_b, hist_a, hist_b, message, temperature, top_p, max_new_tokens, seed):
        """Both replies to `message` appended to each side's history, as they stream: the outputs by name."""
        keep = {"hist_a": hist_a, "hist_b": hist_b}
        try:
            message = self.st.compare_message(message)
        except ValueError as e:
            yield {**keep, "vote_message": error_box(str(e))}
            return
        try:
            params = self.st.compare_params(temperature, top_p, max_new_tokens, seed)
            for new_a, new_b, done in self.st.compare_turn(model_a, model_b, hist_a, hist_b, message, params):
                if not done:
                    yield {"chat_a": display(new_a), "chat_b": display(new_b), **keep, "vote_message": "", "input": ""}
        except Exception as e:  # noqa: BLE001
            yield {"chat_a": display(hist_a), "chat_b": display(hist_b), **keep,
                   "vote_message": error_box(f"Generation failed: {e}")}
            return
        # the models are loaded now: their ids and fingerprints are cheap to show
        yield {"chat_a": display(new_a), "chat_b": display(new_b), "hist_a": new_a, "hist_b": new_b,
               "vote_message": "", "input": "", "info_a": self.info(model_a, "A"), "info_b": self.info(model_b, "B")}

    def run_turn(self, model_a, model_b, hist_a, hist_b, message, temperature, top_p, max_new_tokens, seed):
        """Generator: stream both replies to `message` appended to each side's history."""
        for out in self.turn(model_a, model_b, hist_a, hist_b, message, temperature, top_p, max_new_tokens, seed):
            yield self.pack(TURN_OUT, out)

    def regenerate(self, model_a, model_b, hist_a, hist_b, temperature, top_p, max_new_tokens, seed):
        """The last message again with the next seed, in place of the last replies (Studio.compare_retry)."""
        again = self.st.compare_retry(hist_a, hist_b, seed)
        if again is None:
            yield self.pack(REGEN_OUT, {"hist_a": hist_a, "hist_b": hist_b,
                                        "vote_message": error_box("Nothing to regenerate yet.")})
            return
        for out in self.turn(model_a, model_b, again["history_a"], again["history_b"], again["text"], temperature,
                             top_p, max_new_tokens, again["seed"]):
            out.pop("input", None)  # the message box keeps what is being written
            yield self.pack(REGEN_OUT, {**out, "seed": again["seed"]})

    def new_chat(self):
        return self.pack(TURN_OUT, {"chat_a": [], "chat_b": [], "hist_a": [], "hist_b": [], "vote_message": "",
                                    "input": ""})

    def change_model(self, spec, side: str):
        """Another model on one side: its info, and a new chat on both sides."""
        return self.pack(MODEL_OUT[side], {f"info_{side.lower()}": self.info(spec, side), "chat_a": [], "chat_b": [],
                                           "hist_a": [], "hist_b": [], "vote_message": ""})

    def vote_handler(self, choice: str):
        """The handler of one vote button (`choice`: A, B, tie or both_bad; Studio.save_compare_vote)."""
        label = dict((v, lb) for lb, v in VOTES)[choice]

        def vote(model_a, model_b, hist_a, hist_b, temperature, top_p, max_new_tokens, seed, request: gr.Request):
            user = self.ctx.user(request)
            try:
                r = self.st.save_compare_vote(hist_a, hist_b, model_a, model_b, choice, annotator=user,
                                              params=self.st.compare_params(temperature, top_p, max_new_tokens, seed))
            except (ValueError, RuntimeError) as e:
                return error_box(f"Vote not saved: {e}")
            return ok_box(f"Saved '{label}' by {user} for prompt {r['prompt_id']} (annotation {r['annotation_id']}); "
                          "it will be part of the next snapshot.")
        return vote

    def use(self, spec, request: gr.Request):
        actor = self.ctx.require_admin(request, "switch the generation model")
        try:
            mid = self.st.use_model(spec, actor=actor)
        except Exception as e:  # noqa: BLE001
            return error_box(f"Not switched: {e}")
        return ok_box(f"The generator is now {mid} ({self.st.model_label(self.st.model_spec)}); new candidates in the "
                      "studio come from it, and the studio starts with it next time.")

    def evaluate(self, model_a, model_b, eval_sets, eval_file, eval_expected, eval_n, request: gr.Request):
        actor = self.ctx.require_admin(request, "run evaluations")
        try:
            eid = self.st.start_compare_evaluation(model_a, model_b, eval_sets, eval_file, eval_expected, eval_n,
                                                   actor=actor)
        except (ValueError, RuntimeError) as e:
            yield error_box(f"Not started: {e}"), gr.update(), gr.update(visible=False)
            return
        yield from evaluation_updates(self.st, eid, "Evaluating in the background", "Report written to {out_dir}.",
                                      clear_report_on_failure=True)

    def models(self, model_a, model_b, auto, force: bool):
        """Model choices and defaults after new runs (Studio.compare_models_update): a side still on its default
        follows the new default, a side the user chose stays; from the timer (not `force`) only when they changed."""
        u = self.st.compare_models_update((model_a, model_b), auto, force)
        ch = u["choices"]
        a, b = (gr.update() if ch is None else gr.update(choices=ch) if v is None else gr.update(choices=ch, value=v)
                for v in u["values"])
        sets = {} if u["sets"] is None else {"eval_sets": gr.update(choices=u["sets"])}
        return self.pack(MODELS_OUT, {"model_a": a, "model_b": b, "auto": u["defaults"], **sets})

    def on_show(self, model_a, model_b, auto):
        return self.models(model_a, model_b, auto, True)

    def follow_runs(self, model_a, model_b, auto):
        return self.models(model_a, model_b, auto, False)


# -- the tab ---------------------------------------------------------------------------------------------------
def build(ctx: Ctx) -> dict:
    tab = CompareTab(ctx)
    st, c = ctx.studio, tab.c
    choices = st.model_choices()
    default_a, default_b = st.default_compare_models()
    with gr.Row():
        with gr.Column():
            c["model_a"] = gr.Dropdown(label="Model A", choices=choices, value=default_a, allow_custom_value=True,
                                       elem_id="cmp-model-a", info="base, a run's model, or an HF name / local path")
            c["info_a"] = gr.HTML(info_html("A", None), js_on_load=None, elem_id="cmp-info-a-box")
            c["chat_a"] = gr.Chatbot(label="A", height=360, elem_id="cmp-chat-a", render_markdown=False,
                                     sanitize_html=True, allow_tags=False, latex_delimiters=[], feedback_options=None,
                                     buttons=["copy"])
        with gr.Column():
            c["model_b"] = gr.Dropdown(label="Model B", choices=choices, value=default_b,
                                       allow_custom_value=True, elem_id="cmp-model-b",
                                       info="base, a run's model, or an HF name / local path")
            c["info_b"] = gr.HTML(info_html("B", None), js_on_load=None, elem_id="cmp-info-b-box")
            c["chat_b"] = gr.Chatbot(label="B", height=360, elem_id="cmp-chat-b", render_markdown=False,
                                     sanitize_html=True, allow_tags=False, latex_delimiters=[], feedback_options=None,
                                     buttons=["copy"])
    with gr.Row():
        c["input"] = gr.Textbox(label="Message (sent to both)", lines=2, scale=5, elem_id="cmp-input")
        with gr.Column(scale=1, min_width=140):
            c["send"] = gr.Button("Send", variant="primary", elem_id="cmp-send")
            c["regenerate"] = gr.Button("Regenerate", size="sm", elem_id="cmp-regen")
            c["clear"] = gr.Button("New chat", size="sm", elem_id="cmp-clear")
    with gr.Accordion("Sampling (the same for both sides)", open=False):
        with gr.Row():
            c["temperature"] = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature (0 = greedy)",
                                         elem_id="cmp-temp")
            c["top_p"] = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p", elem_id="cmp-topp")
            c["max_new_tokens"] = gr.Number(value=96, precision=0, minimum=1, maximum=2048, label="max new tokens",
                                            elem_id="cmp-maxnew")
            c["seed"] = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="cmp-seed")
    with gr.Row():
        for label, v in VOTES:
            c[f"vote_{v}"] = gr.Button(label, elem_id=f"cmp-vote-{v}", size="sm")
    c["vote_message"] = gr.HTML("", js_on_load=None, elem_id="cmp-vote-msg")
    with gr.Row():
        c["use_a"] = gr.Button("Use A as generator", size="sm", elem_id="cmp-use-a")
        c["use_b"] = gr.Button("Use B as generator", size="sm", elem_id="cmp-use-b")
    ctx.admin_only.extend(tab.comps(("use_a", "use_b")))

    with gr.Accordion("Evaluate A vs B (refusal, over-refusal, ranking accuracy)", open=False):
        with gr.Row():
            c["eval_sets"] = gr.CheckboxGroup(label="Prompt sets", choices=st.eval_set_choices(),
                                              value=st.eval_set_choices(), elem_id="cmp-eval-sets",
                                              info="the standard sets shipped with the studio (data/evalsets; dev "
                                                   "split)")
            c["eval_n"] = gr.Number(value=10, precision=0, minimum=1, maximum=500, label="prompts per set",
                                    elem_id="cmp-eval-n")
            c["evaluate"] = gr.Button("Evaluate", elem_id="cmp-eval")
        with gr.Row():
            c["eval_file"] = gr.File(label="Your own prompt set (optional)",
                                     file_types=[".jsonl", ".json", ".csv", ".gz"], type="filepath",
                                     elem_id="cmp-eval-file", scale=2)
            c["eval_expected"] = gr.Radio([("rows say it ('expected' per row)", "rows"), ("refuse", "refuse"),
                                           ("comply", "comply")], value="rows",
                                          label="Expected behaviour of its prompts", elem_id="cmp-eval-expected",
                                          scale=2, info="a set file (JSONL rows with prompt + expected) says it per "
                                          "row; for a plain prompt file (CSV / JSONL / JSON), say what every prompt "
                                          "should get")
        c["eval_message"] = gr.HTML("", js_on_load=None, elem_id="cmp-eval-msg")
        c["eval_report"] = gr.Markdown("", elem_id="cmp-eval-report")
        c["eval_charts"] = gr.Gallery(label="charts", columns=3, height="auto", visible=False,
                                      elem_id="cmp-eval-charts")
    ctx.admin_only.append(c["evaluate"])

    c["hist_a"], c["hist_b"] = gr.State([]), gr.State([])
    c["auto"] = gr.State((default_a, default_b))  # the defaults the two dropdowns were last given (not user choices)
    c["follow_timer"] = gr.Timer(5.0)

    turn_out = tab.comps(TURN_OUT)
    c["send"].click(tab.run_turn, tab.comps(TURN_IN), turn_out)
    c["input"].submit(tab.run_turn, tab.comps(TURN_IN), turn_out)
    c["regenerate"].click(tab.regenerate, tab.comps(SAMPLING_IN), tab.comps(REGEN_OUT))
    c["clear"].click(tab.new_chat, None, turn_out)
    # the chat windows' own trash buttons start a new chat on BOTH sides (the histories stay paired for votes)
    c["chat_a"].clear(tab.new_chat, None, turn_out)
    c["chat_b"].clear(tab.new_chat, None, turn_out)
    c["model_a"].change(lambda spec: tab.change_model(spec, "A"), [c["model_a"]], tab.comps(MODEL_OUT["A"]))
    c["model_b"].change(lambda spec: tab.change_model(spec, "B"), [c["model_b"]], tab.comps(MODEL_OUT["B"]))
    for _, v in VOTES:
        c[f"vote_{v}"].click(tab.vote_handler(v), tab.comps(SAMPLING_IN), c["vote_message"])
    c["use_a"].click(tab.use, [c["model_a"]], c["vote_message"])
    c["use_b"].click(tab.use, [c["model_b"]], c["vote_message"])
    c["evaluate"].click(tab.evaluate, tab.comps(EVAL_IN), tab.comps(EVAL_OUT))
    c["follow_timer"].tick(tab.follow_runs, tab.comps(MODELS_IN), tab.comps(MODELS_OUT), show_progress="hidden")
    return {**{k: c[k] for k in EXPORTED}, "_on_show": (tab.on_show, tab.comps(MODELS_IN), tab.comps(MODELS_OUT))}
