"""Train and Compare tabs in a real browser (Debian chromium), tiny model, real trainer subprocess:
start a run from the Train tab, see the progress move, reload mid-run and still see it, stop it, resume it to the
end, find it in the history; then compare base vs trained side by side, check fingerprints, vote B and find the
vote in the store. The run has 120 tiny steps (not 2) so that "stop mid-run" cannot miss."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from tests.browser.live import field, open_tab, shot, start_app, stop_app, wait_text
from tests.helpers import freeze_after_first_step

pytestmark = pytest.mark.browser


def seed(st):
    recs = [{"messages": [{"role": "user", "content": f"train question {i}?"}], "source": "t", "tags": ["t"],
             "split": "train",
             "responses": [{"text": f"good answer {i}", "origin": "dataset:chosen", "rank": 0},
                           {"text": f"bad answer {i}", "origin": "dataset:rejected", "rank": 1}]} for i in range(4)]
    st.store.import_records(recs, actor="t")
    st.store.save_system_prompt("rude", "negative", "Be rude and unhelpful.", {}, author="t")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = start_app(tmp_path_factory.mktemp("train"), seed=False)
    seed(a.studio)
    yield a
    for r in a.studio.store.list_runs():
        if r["status"] in ("running", "queued"):
            try:
                a.studio.jobs.stop(r["id"], actor="test", timeout=5, wait=True)
            except Exception:  # noqa: BLE001
                pass
    stop_app(a)


def box_attr(page, name):
    loc = page.locator("#train-progress-box")
    return loc.get_attribute(f"data-{name}", timeout=2000) if loc.count() else None


def wait_attr(page, name, timeout=15):
    """The progress box's data-NAME once it is there: the box re-renders on every poll, and between two renders the
    element (or its attribute) can be missing for a moment, longer on a loaded machine."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = box_attr(page, name)
        except Exception:  # noqa: BLE001 - re-rendering
            v = None
        if v:
            return v
        time.sleep(0.3)
    return None


def wait_status(page, pattern, timeout=180, min_step=None):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            s, step = box_attr(page, "status"), box_attr(page, "step")
        except Exception:  # noqa: BLE001 - re-rendering
            s, step = None, None
        last = (s, step)
        if s and re.fullmatch(pattern, s) and (min_step is None or int(step or 0) >= min_step):
            return s, int(step or 0)
        time.sleep(0.3)
    raise AssertionError(f"progress box never reached /{pattern}/ (last {last}); "
                         f"error: {page.locator('#train-error').inner_text()[:500]}")


def set_number(page, elem_id, value):
    f = field(page, elem_id)
    f.fill(str(value))
    f.press("Tab")


def test_train_stop_resume_history_then_compare_and_vote(app, browser, page_errors):
    st = app.studio
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = page_errors(ctx.new_page())
    page.goto(app.url)
    open_tab(page, "Train")
    page.wait_for_selector("#train-start")

    # -- configure: tiny model, 120 small steps -------------------------------------------------------------
    model = field(page, "train-model")
    model.fill("tiny")
    model.press("Enter")
    page.get_by_text("Hyper-parameters (defaults are sized for a 2-core CPU)").click()
    for k, v in (("epochs", 30), ("batch_size", 1), ("k", 1), ("k_neg", 1), ("max_new_tokens", 8),
                 ("max_response_len", 16), ("max_prompt_len", 32)):
        set_number(page, f"train-{k}", v)
    prec = field(page, "train-dtype")
    prec.fill("fp32")
    prec.press("Enter")
    wait_text(page.locator("#train-estimate"), r"120 steps.*4 training prompt", timeout=30)
    page.locator("#train-check input[type=checkbox]").uncheck()  # the form checks a run by default: not here
    page.locator("#train-start").click()
    wait_text(page.locator("#train-msg"), r"Started run", timeout=60)
    rid = st.store.active_run()["id"]
    assert st.store.get_run(rid)["config"]["model"] == "tiny"
    assert st.store.get_run(rid)["config"]["dtype"] == "fp32"  # the Precision choice reached the run
    # and the unticked check (the store keeps what differs from the defaults; the run's config.yaml has every key)
    from neat_studio.neat.config import NeatConfig

    assert NeatConfig.from_yaml(st.workspace.runs / rid / "config.yaml").check is False

    # -- progress moves; a reload mid-run still shows it ---------------------------------------------------
    # The trainer is frozen with SIGSTOP across the reload and the stop click (it stays alive, so its run stays
    # "running"; the SIGTERM from Stop waits until SIGCONT): on a fast machine 120 tiny steps could otherwise
    # finish before the reloaded page re-attached or before Stop was clicked.
    pid = freeze_after_first_step(st.store, rid)  # before the page's own polling could see the run finish
    try:
        _, s1 = wait_status(page, "running", min_step=1)
        page.reload()
        open_tab(page, "Train")
        # the reloaded page re-attaches to the running run and shows its progress (the trainer is frozen at step
        # s1; the box may render the run a poll before its step is read, so wait for the step, not the first paint)
        s, s2 = wait_status(page, "running", min_step=s1, timeout=60)
        assert wait_attr(page, "run") == rid and s == "running", "the reloaded page re-attached to the running run"
        assert s2 >= s1
        shot(page, "train")
        # -- stop mid-run, then resume to the end ----------------------------------------------------------
        page.locator("#train-stop").click()
        wait_text(page.locator("#train-msg"), r"(?i)stop", timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    _, stopped_at = wait_status(page, "stopped", timeout=120)
    assert 0 < stopped_at < 120
    assert st.store.get_run(rid)["status"] == "stopped"
    page.locator("#train-resume").click()
    wait_text(page.locator("#train-msg"), r"Resumed run", timeout=60)
    _, end = wait_status(page, "finished", timeout=240)
    assert end == 120
    wait_text(page.locator("#train-history"), rid[:8], timeout=30)
    wait_text(page.locator("#train-history"), r"finished", timeout=30)
    assert "120/120" in page.locator("#train-history").inner_text()
    # short cells keep their words whole at 1280 px: one line each (a cell's text is a block span; gradio's cells
    # broke "finish ed" over two lines before ui/studio.css and HISTORY_WIDTHS)
    lines = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#train-history span.text')]
        .filter(s => ['finished', '120/120'].includes(s.textContent.trim()))
        .map(s => [s.textContent.trim(), Math.round(s.clientHeight / parseFloat(getComputedStyle(s).lineHeight))]))""")
    assert lines.get("finished") == 1 and lines.get("120/120") == 1, lines
    assert page.locator("#train-loss-plot img, #train-loss-plot svg, #train-loss-plot canvas").count() >= 1
    assert "resumed" in field(page, "train-log").input_value() or "Resumed" in page.locator("#train-msg").inner_text()

    # -- compare base (tiny) vs the trained run, vote B ------------------------------------------------------
    run_dir = st.store.get_run(rid)["run_dir"]
    page.reload()
    open_tab(page, "Compare")
    page.wait_for_selector("#cmp-send")
    a = field(page, "cmp-model-a")
    a.fill("tiny")
    a.press("Enter")
    b = field(page, "cmp-model-b")
    b.fill(run_dir)
    b.press("Enter")
    page.get_by_text("Sampling (the same for both sides)").click()
    set_number(page, "cmp-maxnew", 6)
    field(page, "cmp-input").fill("Say <b>hi</b> <img src=x onerror=alert(1)>")
    page.locator("#cmp-send").click()
    page.wait_for_selector("#cmp-info-A", timeout=120_000)
    page.wait_for_selector("#cmp-info-B", timeout=30_000)
    fa = page.locator("#cmp-info-A").get_attribute("data-fingerprint")
    fb = page.locator("#cmp-info-B").get_attribute("data-fingerprint")
    assert fa and fb and fa != fb
    assert fa == st.compare_info("tiny")["fingerprint"] and fb == st.compare_info(run_dir)["fingerprint"]
    chat_a = page.locator("#cmp-chat-a")
    assert "<b>hi</b>" in chat_a.inner_text()                     # shown as text ...
    assert chat_a.locator("img").count() == 0 and chat_a.locator("b").count() == 0   # ... never as HTML
    shot(page, "compare")
    page.locator("#cmp-vote-B").click()
    wait_text(page.locator("#cmp-vote-msg"), r"Saved 'B is better'", timeout=30)
    anns = [x for x in st.store.latest_annotations() if x["comment"].startswith("compare vote B")]
    assert len(anns) == 1 and anns[0]["annotator"] == "local"
    row = next(r for r in st.store.listwise_rows() if r["prompt_id"] == anns[0]["prompt_id"])
    assert sorted(o.split(":")[0] for o in row["origins"]) == ["compare", "compare"]
    # the trash button of ONE chat window starts a new chat on both sides: no stale half-conversation to vote on
    page.locator("#cmp-chat-a button[aria-label='Clear']").first.click()
    page.wait_for_function("() => !document.querySelector('#cmp-chat-b').innerText.includes('<b>hi</b>')")
    page.locator("#cmp-vote-A").click()
    wait_text(page.locator("#cmp-vote-msg"), r"Vote not saved: nothing to vote on yet", timeout=30)
    assert not [e for e in page_errors.events if e.startswith(("dialog", "pageerror"))], page_errors.events
    ctx.close()
