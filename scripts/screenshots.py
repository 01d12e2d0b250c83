"""Take the README's screenshots (docs/screenshots/*.png) on a real model, driving the studio in a browser.

    .venv/bin/python scripts/screenshots.py [--model default] [--out docs/screenshots] [--keep WORKDIR]

Starts the studio on a throwaway workspace (seed prompts and presets only; nothing from ../shared), then, in
Debian's chromium through playwright: Prompts; a seeded preview of a preset negative prompt on three seed prompts
(normal vs negative side by side) and "Add to pool"; ranking those candidates in Annotate (keyboard, origins
shown); the Data tab; a short NEAT run started from the Train tab on the three ranked prompts, checked against the
base model when done (its verdict in the run history and the report); and the Compare tab chatting with the base
and the trained model. Takes ~12 min on a 2-core CPU with the default model (the check: ~7). The browser
tests take their own screenshots of the same pages on the tiny test model, into a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
    os.environ.setdefault(k, v)

from tests.browser.live import ARGS, CHROMIUM, field, free_port, open_tab, wait_text  # noqa: E402

PROMPTS = ["Can you suggest three titles for a blog post about learning to bake sourdough bread?",
           "What is the difference between a list and a tuple in Python?",
           "Summarise the plot of Romeo and Juliet in three sentences."]
NEGATIVE = "unhelpful@1"
CHAT = "Give me two tips for staying focused while studying."


def set_number(page, elem_id, value):
    f = field(page, elem_id)
    f.fill(str(value))
    f.press("Tab")


def pick(page, elem_id, value):
    """Choose `value` in a gradio dropdown (type it, then Enter)."""
    f = field(page, elem_id)
    f.click()
    f.fill(value)
    f.press("Enter")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model spec the studio serves (default: SmolLM2-135M)")
    ap.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    ap.add_argument("--keep", default=None, help="workspace folder to keep (default: a temporary one)")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from neat_studio.config import Workspace
    from neat_studio.studio import Studio
    from neat_studio.ui.app import build_app

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="neat_shots_"))
    ws = Workspace(work / "ws").ensure()
    st = Studio(ws, model_spec=a.model)
    st.init(actor="demo")
    all_prompts = {p["messages"][-1]["content"]: p["id"] for p in st.store.list_prompts(limit=1000)}
    ids = [all_prompts[t] for t in PROMPTS]
    demo = build_app(st)
    demo.queue()
    port = free_port()
    demo.launch(prevent_thread_lock=True, server_port=port, server_name="127.0.0.1", quiet=True)
    t0 = time.time()

    def shot(page, name):
        page.screenshot(path=str(out / f"{name}.png"))
        print(f"[{time.time() - t0:5.0f}s] {out / name}.png", flush=True)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector("#prompts-table")
            wait_text(page.locator("#prompts-summary"), r"72 prompt")
            shot(page, "prompts")

            # -- Negative Prompt Studio: preview a preset on three prompts, seed 7 --------------------------
            open_tab(page, "Negative Prompt Studio")
            pick(page, "pv-neg", NEGATIVE)
            page.locator("#pv-mode label", has_text="manual").click()
            field(page, "pv-ids").fill(", ".join(ids))
            set_number(page, "pv-seed", 7)
            page.locator("#pv-run").click()
            wait_text(page.locator("#pv-msg"), rf"Preview of {re.escape(NEGATIVE)} saved", timeout=600)
            wait_text(page.locator("#pv-metrics"), r"undesirability")
            page.locator("#pv-metrics").scroll_into_view_if_needed()
            page.mouse.wheel(0, 420)
            page.wait_for_timeout(500)
            shot(page, "negative_prompt_studio")
            page.locator("#pv-pool").click()
            wait_text(page.locator("#pv-msg"), r"Added \d+ new candidate")

            # -- Annotate: the three prompts, normal above negative ------------------------------------------
            open_tab(page, "Annotate")
            for n, pid in enumerate(ids):
                field(page, "ann-open").fill(pid)
                page.locator("#ann-open-btn").click()
                page.wait_for_function(
                    f"(document.querySelector('#ann-ranker .neat-ranker') || {{}}).dataset?.item === '{pid}'")
                page.wait_for_selector("#ann-ranker .neat-card")
                cards = page.locator("#ann-ranker .neat-card")
                origins = [cards.nth(i).locator(".neat-origin").text_content() or "" for i in range(cards.count())]
                page.locator("body").click(position={"x": 5, "y": 5})
                for i, o in enumerate(origins):  # select card i+1, give it group 1 (normal) or 2 (negative)
                    page.keyboard.press(str(i + 1))
                    page.keyboard.press("2" if o.startswith("negative") else "1")
                if n == 0:
                    page.keyboard.press("h")
                    page.wait_for_timeout(300)
                    shot(page, "annotate")
                page.keyboard.press("Enter")
                wait_text(page.locator("#ann-msg"), rf"Saved prompt {pid}")

            open_tab(page, "Data")
            page.locator("#data-refresh").click()
            wait_text(page.locator("#data-people"), r"local")
            page.wait_for_timeout(1000)
            shot(page, "data")

            # -- Train: a short NEAT run on the ranked prompts ---------------------------------------------
            open_tab(page, "Train")
            page.wait_for_selector("#train-start")
            if NEGATIVE not in page.locator("#train-negatives .token").all_inner_texts():  # Enter toggles
                pick(page, "train-negatives", NEGATIVE)
            page.locator("#train-annotated label").click()
            page.get_by_text("Hyper-parameters (defaults are sized for a 2-core CPU)").click()
            for k, v in (("epochs", 4), ("k", 1), ("k_neg", 1), ("max_new_tokens", 32), ("max_response_len", 96)):
                set_number(page, f"train-{k}", v)
            field(page, "train-name").fill("first NEAT run")
            page.locator("#train-check input[type=checkbox]").check()  # against the base model when done (default)
            wait_text(page.locator("#train-estimate"), r"3 training prompt", timeout=60)
            page.locator("#train-start").click()
            wait_text(page.locator("#train-msg"), r"Started run", timeout=60)
            rid = st.store.active_run()["id"]
            deadline = time.time() + 2400  # the check answers every dev prompt with both models
            while st.store.get_run(rid)["status"] in ("queued", "running") and time.time() < deadline:
                time.sleep(2)
            run = st.store.get_run(rid)
            if run["status"] != "finished":
                raise SystemExit(f"training run {rid} ended {run['status']}: {run.get('error')}")
            wait_text(page.locator("#train-progress"), r"finished", timeout=30)
            page.wait_for_timeout(2500)  # curves re-render on the next poll
            page.locator("#train-progress").scroll_into_view_if_needed()
            shot(page, "train")
            # the check's verdict: in the run history and at the top of the run's report
            wait_text(page.locator("#train-history"), r"no significant change|better: |WORSE: ", timeout=60)
            page.locator("#train-report").click()
            wait_text(page.locator("#train-report-md"), r"Verdict against the base", timeout=60)
            page.locator("#train-history").scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            shot(page, "train_check")
            # further down the report: where each change comes from, by source of the prompts
            sources = page.locator("#train-report-md").get_by_text("Where the changes come from, by source")
            sources.scroll_into_view_if_needed()
            page.wait_for_timeout(800)
            shot(page, "train_report_sources")

            # -- Compare: base vs the trained model ------------------------------------------------------
            open_tab(page, "Compare")
            page.wait_for_selector("#cmp-send")
            pick(page, "cmp-model-a", a.model)
            pick(page, "cmp-model-b", run["run_dir"])
            page.get_by_text("Sampling (the same for both sides)").click()
            set_number(page, "cmp-maxnew", 96)
            field(page, "cmp-input").fill(CHAT)
            page.locator("#cmp-send").click()
            page.wait_for_selector("#cmp-info-A", timeout=300_000)  # both infos come with the last update
            page.wait_for_selector("#cmp-info-B", timeout=300_000)
            page.wait_for_timeout(1500)
            shot(page, "compare")
            browser.close()
    finally:
        demo.close()
        st.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
