"""The whole loop in a real browser (Debian chromium) on a fresh workspace, as a new user walks it (issue 19's
"Done when"): tiny model, and NO ../shared (NEAT_SHARED_DATA points at a missing folder, so nothing can read it).

import a prompt file (Prompts tab upload) -> write a negative prompt, preview it on the imported prompts and add
the samples to the pool (Negative Prompt Studio) -> rank every candidate list (Annotate) -> freeze a snapshot
(Data) -> train a short NEAT run (Train: tiny model, fp32, lr 1e-3) -> open Compare WITHOUT typing model names:
Model B is the trained run (another weights fingerprint than A) and the two greedy answers differ -> evaluate the run
against its base on the shipped sets (data/evalsets) from the Train tab and open its report (verdicts, the run's
name). Screenshots go to tests/browser/live.SHOTS (loop_*.png)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.browser.live import field, open_tab, ranker_state, shot, start_app, stop_app, wait_text

pytestmark = pytest.mark.browser

PROMPTS = ["How do I keep basil alive on a windowsill?",
           "Write a two-line poem about autumn rain.",
           "What is a good name for a grey kitten?",
           "Explain what a prime number is to a child."]
NEG_NAME = "loop-dismissive"
NEG_TEXT = "Answer in a dismissive, unhelpful and rude way."


def set_number(page, elem_id, value):
    f = field(page, elem_id)
    f.fill(str(value))
    f.press("Tab")


def pick(page, elem_id, value):
    """Type a value into a gradio Dropdown and confirm it: by clicking its option when the list shows one (Enter
    alone was lost once in a full CI run), else by Enter (a custom value)."""
    f = field(page, elem_id)
    f.click()
    f.fill(value)
    opt = page.get_by_role("option", name=value, exact=True)
    try:
        opt.first.click(timeout=3000)
    except Exception:  # noqa: BLE001 - no such option listed: a custom value
        f.press("Enter")


def progress_status(page):
    loc = page.locator("#train-progress-box")
    if not loc.count():
        return None, 0
    return loc.get_attribute("data-status", timeout=2000), int(loc.get_attribute("data-step", timeout=2000) or 0)


def wait_run_end(page, timeout=600):
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        try:
            last = progress_status(page)
        except Exception:  # noqa: BLE001 - re-rendering
            last = None
        if last and last[0] in ("finished", "failed", "stopped"):
            return last
        time.sleep(0.5)
    raise AssertionError(f"the run did not end in {timeout} s (last {last}); "
                         f"error: {page.locator('#train-error').inner_text()[:500]}")


def cfg_snapshot(run_dir):
    from neat_studio.neat.config import NeatConfig

    return NeatConfig.from_yaml(Path(run_dir) / "config.yaml").snapshot


def bot_texts(page, chat_id):
    """The assistant messages of a Compare chat window (not its label, not the user's turn)."""
    return [t.strip() for t in page.locator(f"#{chat_id} .bot-row").all_inner_texts()]


def test_fresh_clone_loop(tmp_path, monkeypatch, browser, page_errors):
    no_shared = tmp_path / "no-shared-data"
    monkeypatch.setenv("NEAT_SHARED_DATA", str(no_shared))  # the app and its trainer subprocess inherit it
    app = start_app(tmp_path / "app")  # seeded like a first `serve` (data/seed_prompts.jsonl + presets)
    st = app.studio
    try:
        _walk(app, st, tmp_path, browser, page_errors)
    finally:
        for r in st.store.list_runs():
            if r["status"] in ("running", "queued"):
                try:
                    st.jobs.stop(r["id"], actor="test", timeout=5, wait=True)
                except Exception:  # noqa: BLE001
                    pass
        stop_app(app)
    assert not no_shared.exists()


def _walk(app, st, tmp_path, browser, page_errors):
    assert st.eval_set_choices() == ["harmful", "lookalike", "benign"]  # shipped with the repository
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = page_errors(ctx.new_page())
    page.goto(app.url)
    page.wait_for_selector("#prompts-table")
    wait_text(page.locator("#prompts-summary"), r"prompt\(s\) match")
    n_seeded = st.store.count_prompts()

    # -- 1. import a small JSONL through the Prompts tab's upload ---------------------------------------------
    src = tmp_path / "loop_prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    page.get_by_text("Import a file", exact=True).click()
    page.locator("#prompts-import-file input[type=file]").set_input_files(str(src))
    wait_text(page.locator("#prompts-import-file"), r"loop_prompts\s*\.jsonl", timeout=60)  # name and extension may wrap
    page.get_by_label("Tags for all rows (comma separated)").fill("loop")
    page.locator("#prompts-import-btn").click()
    wait_text(page.locator("#prompts-import-msg"), r"Imported: .*prompts_added 4", timeout=60)
    mine = st.store.list_prompts(tag="loop", limit=100)
    assert sorted(p["messages"][-1]["content"] for p in mine) == sorted(PROMPTS)
    assert st.store.count_prompts() == n_seeded + 4
    wait_text(page.locator("#prompts-summary"), rf"\*?\*?{n_seeded + 4}\*?\*? prompt\(s\) match")
    shot(page, "loop_import")

    # Compare before any run: both sides are the generator (tiny); B must follow the run trained below
    open_tab(page, "Compare")
    page.wait_for_selector("#cmp-send")
    assert "tiny" in field(page, "cmp-model-b").input_value()

    # -- 2. a new negative prompt, previewed on the imported prompts, added to the pool -------------------------
    open_tab(page, "Negative Prompt Studio")
    field(page, "lib-tags").fill("sentinel")  # New clears it: typing before New has answered would be lost
    page.locator("#lib-new").click()
    page.wait_for_function("() => (document.querySelector('#lib-tags input, #lib-tags textarea') || {}).value === ''",
                           timeout=30000)
    field(page, "lib-name").fill(NEG_NAME)
    field(page, "lib-text").fill(NEG_TEXT)
    set_number(page, "lib-maxtok", 16)
    set_number(page, "lib-k", 1)
    page.locator("#lib-save").click()
    wait_text(page.locator("#lib-save-msg"), rf"Saved {NEG_NAME}@1")
    page.wait_for_function("() => (document.querySelector('#pv-neg input') || {}).value === '%s@1'" % NEG_NAME,
                           timeout=30000)
    page.locator("#pv-mode label", has_text=re.compile(r"^\s*tag\s*$")).click()
    pick(page, "pv-tag", "loop")
    set_number(page, "pv-n", 3)
    set_number(page, "pv-seed", 3)
    page.locator("#pv-run").click()
    wait_text(page.locator("#pv-msg"), rf"Preview of {NEG_NAME}@1 saved", timeout=300)
    pv = st.get_preview(f"{NEG_NAME}@1")
    loop_ids = {p["id"] for p in mine}
    assert len(pv["prompt_ids"]) == 3 and set(pv["prompt_ids"]) <= loop_ids  # the imported prompts, by tag
    assert page.locator("#pv-out .neat-pv-row").count() == 3
    page.locator("#pv-pool").click()
    wait_text(page.locator("#pv-msg"), r"Added \d+ new candidate", timeout=60)
    for pid in pv["prompt_ids"]:
        origins = sorted(r["origin"] for r in st.store.list_responses(pid))
        assert origins == [f"negative:{NEG_NAME}@1", "policy"], origins
    page.locator("#pv-out").scroll_into_view_if_needed()
    shot(page, "loop_preview")

    # -- 3. rank the three candidate lists in Annotate (keyboard) and submit each ------------------------------
    open_tab(page, "Annotate")
    ranked = {}
    for i in range(3):
        page.wait_for_selector("#ann-ranker .neat-card", timeout=60000)
        pid = page.locator("#ann-ranker .neat-ranker").get_attribute("data-item")
        assert pid in pv["prompt_ids"] and pid not in ranked
        page.locator("body").click(position={"x": 5, "y": 5})
        cards = ranker_state(page)
        assert len(cards) == 2
        # the negative prompt's answer last: select a card, then its rank group
        neg = [c for c in cards if st.store.get_response(c["rid"])["origin"].startswith("negative:")]
        assert len(neg) == 1
        for c in cards:
            page.keyboard.press(c["i"])  # data-i: the card's number (1-based)
            page.keyboard.press("2" if c is neg[0] else "1")
        assert sorted(c["rank"] for c in ranker_state(page)) == ["1", "2"]
        if i == 0:
            shot(page, "loop_annotate")
        page.keyboard.press("Enter")
        wait_text(page.locator("#ann-msg"), rf"Saved prompt {pid}: #\d\s+>\s+#\d")
        ann = st.store.latest_annotation(pid, "local")
        assert ann["ranking"][-1] == [neg[0]["rid"]]
        ranked[pid] = ann
        page.wait_for_function(
            f"(document.querySelector('#ann-ranker .neat-ranker') || {{dataset: {{}}}}).dataset.item !== '{pid}'")
    assert set(ranked) == set(pv["prompt_ids"])

    # -- 4. a snapshot of the human-ranked prompts (Data tab) --------------------------------------------------
    open_tab(page, "Data")
    page.locator("#data-snapshot").scroll_into_view_if_needed()
    box = page.get_by_label("only human-annotated prompts")
    deadline = time.time() + 30
    while not box.is_checked():  # the tab's refresh on opening can redraw the box just after a click (CI, busy CPU)
        if time.time() > deadline:
            raise AssertionError("the 'only human-annotated prompts' box could not be ticked")
        box.click()
        page.wait_for_timeout(500)
    page.locator("#data-snapshot").click()
    msg = wait_text(page.locator("#data-snapshot-msg"), r"Snapshot \S+ created", timeout=60)
    snap_id = re.search(r"Snapshot (\S+) created", msg).group(1)
    assert "{" not in msg and "3 prompt(s) (train 3)" in msg  # counts in words, not a Python dict
    assert st.store.get_snapshot(snap_id) is not None
    wait_text(page.locator("#data-snapshots"), re.escape(snap_id))
    shot(page, "loop_snapshot")

    # -- 5. a short NEAT run from the Train tab: tiny model, fp32, lr 1e-3, the ranked prompts ------------------
    open_tab(page, "Train")
    page.wait_for_selector("#train-start")
    # the negative prompt saved last is the default choice (not the newest at app start)
    page.wait_for_function("() => document.querySelector('#train-negatives').innerText.includes('%s@1')" % NEG_NAME,
                           timeout=30000)
    pick(page, "train-model", "tiny")
    page.locator("#train-annotated input[type=checkbox]").check()
    page.get_by_text("Hyper-parameters (defaults are sized for a 2-core CPU)").click()
    for k, v in (("epochs", 3), ("batch_size", 1), ("k", 1), ("k_neg", 1), ("lr", 0.001), ("max_new_tokens", 8),
                 ("max_response_len", 16), ("max_prompt_len", 48)):
        set_number(page, f"train-{k}", v)
    pick(page, "train-dtype", "fp32")
    field(page, "train-name").fill("loop-run")
    # the form checks a finished run against its base by default (every dev prompt: minutes); this walk evaluates
    # it below with a few prompts per set instead
    assert page.locator("#train-check input[type=checkbox]").is_checked()
    page.locator("#train-check input[type=checkbox]").uncheck()
    wait_text(page.locator("#train-estimate"), r"Estimated time.* 3 training prompt", timeout=30)
    # the typed dropdown value must be confirmed before Start reads the form (a CI run once started with dtype=auto);
    # focus has left the field, and an unconfirmed Dropdown shows its previous value again
    page.wait_for_function("() => document.querySelector('#train-dtype input').value === 'fp32'", timeout=30000)
    page.locator("#train-start").click()
    wait_text(page.locator("#train-msg"), r"Started run", timeout=60)
    run = st.store.active_run() or st.store.list_runs()[0]
    rid = run["id"]
    cfg = st.store.get_run(rid)["config"]
    assert cfg["model"] == "tiny" and cfg["dtype"] == "fp32" and abs(float(cfg["lr"]) - 1e-3) < 1e-12
    assert cfg["negatives"] == [f"{NEG_NAME}@1"]
    status, step = wait_run_end(page)
    assert status == "finished", page.locator("#train-error").inner_text()
    assert step == 9  # 3 epochs x 3 prompts, batch 1
    wait_text(page.locator("#train-history"), r"loop-run", timeout=30)
    page.locator("#train-progress").scroll_into_view_if_needed()
    shot(page, "loop_train")
    run = st.store.get_run(rid)
    run_dir = run["run_dir"]

    # -- 6. Compare without typing a model name: B is the trained run --------------------------------------------
    open_tab(page, "Compare")
    page.wait_for_function("() => (document.querySelector('#cmp-model-b input') || {}).value?.includes('%s')" % rid,
                           timeout=30000)
    assert "tiny" in field(page, "cmp-model-a").input_value()
    page.get_by_text("Sampling (the same for both sides)").click()
    set_number(page, "cmp-temp", 0)  # greedy: the answers depend only on the weights
    set_number(page, "cmp-maxnew", 24)
    field(page, "cmp-input").fill(PROMPTS[0])
    page.locator("#cmp-send").click()
    page.wait_for_selector("#cmp-info-A", timeout=180_000)
    page.wait_for_selector("#cmp-info-B", timeout=60_000)
    fa = page.locator("#cmp-info-A").get_attribute("data-fingerprint")
    fb = page.locator("#cmp-info-B").get_attribute("data-fingerprint")
    assert fa and fb and fa != fb
    assert fa == st.compare_info("tiny")["fingerprint"] and fb == st.compare_info(run_dir)["fingerprint"]
    assert run_dir in page.locator("#cmp-info-B").inner_text()
    ta, tb = bot_texts(page, "cmp-chat-a"), bot_texts(page, "cmp-chat-b")
    assert len(ta) == 1 and len(tb) == 1 and ta[0] and tb[0]
    assert ta != tb, f"base and trained run answered the same: {ta!r}"
    shot(page, "loop_compare")

    # -- 7. evaluate the shown run against its base on the shipped sets, then open its report --------------------
    open_tab(page, "Train")
    page.wait_for_function("() => (document.querySelector('#train-run input') || {}).value?.includes('%s')" % rid,
                           timeout=30000)
    set_number(page, "train-eval-n", 4)
    page.locator("#train-evaluate").scroll_into_view_if_needed()
    page.locator("#train-evaluate").click()
    wait_text(page.locator("#train-report-msg"), r"Evaluation done|Error", timeout=900)
    msg = page.locator("#train-report-msg").inner_text()
    assert "Evaluation done" in msg and "Verdict:" in msg, msg
    # the run history says what the check found, beside the run
    wait_text(page.locator("#train-history"), r"no significant change|better: |WORSE: ", timeout=30)
    wait_text(page.locator("#train-report-md"), r"Verdicts against the base", timeout=30)
    page.locator("#train-report").click()
    msg = wait_text(page.locator("#train-report-msg"), r"Report of run", timeout=60)
    assert f"run {rid} · loop-run" in msg
    md = wait_text(page.locator("#train-report-md"), r"Verdicts against the base", timeout=30)
    assert rid in md  # the report's models table names the run (its folder)
    page.locator("#train-report-md h2", has_text="Verdicts against the base").scroll_into_view_if_needed()
    shot(page, "loop_report")
    # the run's config.yaml: every line number sits on its own line of text (gr.Code's gutter, filled while hidden,
    # drifted: 14 px per number against 16.8 px per line)
    code = page.locator("#train-config")
    code.scroll_into_view_if_needed()
    want = (Path(run_dir) / "config.yaml").read_text().splitlines()
    rows = page.evaluate("""() => [...document.querySelectorAll('#train-config .neat-code-line')].map(r => {
        const n = r.querySelector('.neat-code-n'), t = r.querySelector('.neat-code-t');
        return [n.textContent, n.getBoundingClientRect().top, t.textContent, t.getBoundingClientRect().top];
    })""")
    assert [r[0] for r in rows] == [str(i) for i in range(1, len(want) + 1)] and len(want) > 20
    assert [r[2].replace("\u200b", "") for r in rows] == want
    assert all(abs(r[1] - r[3]) < 1 for r in rows), rows[:5]
    rep = st.run_report(rid)["report"]
    assert set(rep["sets"]) == set(st.eval_set_choices())
    assert all(0 < s["n"] <= 4 for s in rep["sets"].values())
    assert [m["spec"] for m in rep["models"]] == ["tiny", run_dir]  # the base first: verdicts judge against it
    assert rep["verdicts"] and {v["model"] for v in rep["verdicts"]} == {rep["models"][1]["label"]}
    assert rep["config"]["n_pairs"] > 0  # the shipped preference pairs too
    assert rep["config"]["exclude"] == [cfg_snapshot(run_dir)]  # the run's training prompts kept out
    assert [o["model"] for o in rep["overall"]] == [rep["models"][1]["label"]]

    errors = [e for e in page_errors.events if e.startswith(("dialog", "pageerror"))]
    assert errors == [], errors
    ctx.close()
