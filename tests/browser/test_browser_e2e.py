"""End to end in a real browser (Debian chromium), tiny model, tmp workspace:
create a negative prompt, edit it (v2 + diff), preview 3 prompts, add to pool, edit a response (new human
response), rank 3 responses with a tie using only the keyboard, reload and see the saved ranking; screenshots."""
from __future__ import annotations

import pytest

from tests.browser.live import field, open_tab, ranker_state, shot, start_app, stop_app, wait_text

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = start_app(tmp_path_factory.mktemp("e2e"))
    yield a
    stop_app(a)


def test_full_flow(app, browser, page_errors):
    st = app.studio
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = page_errors(ctx.new_page())
    page.goto(app.url)
    page.wait_for_selector("#prompts-table")
    wait_text(page.locator("#prompts-summary"), r"72 prompt")
    shot(page, "prompts")

    # -- create a negative prompt, then edit it: version 2 and a diff ---------------------------------------
    open_tab(page, "Negative Prompt Studio")
    field(page, "lib-tags").fill("sentinel")  # New clears it: typing before New has answered would be lost
    page.locator("#lib-new").click()
    page.wait_for_function("() => (document.querySelector('#lib-tags input, #lib-tags textarea') || {}).value === ''",
                           timeout=30000)
    field(page, "lib-name").fill("curt")
    field(page, "lib-text").fill("Answer in a curt and dismissive way.")
    field(page, "lib-tags").fill("tone, test")
    field(page, "lib-maxtok").fill("12")
    field(page, "lib-k").fill("1")
    page.locator("#lib-save").click()
    wait_text(page.locator("#lib-save-msg"), r"Saved curt@1")
    field(page, "lib-text").fill("Answer in a curt, rude and dismissive way.")
    page.locator("#lib-save").click()
    wait_text(page.locator("#lib-save-msg"), r"Saved curt@2")
    assert [v["version"] for v in st.store.list_versions("curt")] == [1, 2]
    assert st.store.get_system_prompt("curt", 1)["text"] == "Answer in a curt and dismissive way."  # immutable
    wait_text(page.locator("#lib-versions"), r"2")
    diff = page.locator("#lib-diff")
    wait_text(diff, r"curt@1")
    assert "rude" in diff.locator("ins").all_inner_texts()[0]
    assert "curt," in " ".join(diff.locator("ins").all_inner_texts()) or "curt" in diff.inner_text()
    assert "+Answer in a curt, rude" in field(page, "lib-diff-raw").input_value()

    # -- preview on 3 prompts, streamed, seeded; then add to pool ------------------------------------------
    assert "curt@2" in field(page, "pv-neg").input_value()
    field(page, "pv-seed").fill("7")
    page.locator("#pv-run").click()
    wait_text(page.locator("#pv-msg"), r"Preview of curt@2 saved", timeout=120)
    assert page.locator("#pv-out .neat-pv-row").count() == 3
    assert "seed" in page.locator("#pv-out .neat-preview-head").inner_text()
    wait_text(page.locator("#pv-compare"), r"curt@2")
    wait_text(page.locator("#pv-metrics"), r"undesirability")
    pv = st.get_preview("curt@2")
    assert pv["seed"] == 7 and len(pv["prompt_ids"]) == 3 and pv["metrics"]["n"] == 3
    page.locator("#pv-out").scroll_into_view_if_needed()
    shot(page, "negative_prompt_studio")
    page.locator("#pv-pool").click()
    wait_text(page.locator("#pv-msg"), r"Added 6 new candidate")
    origins = sorted({r["origin"] for pid in pv["prompt_ids"] for r in st.store.list_responses(pid)})
    assert origins == ["negative:curt@2", "policy"]

    # -- unsaved editor text is not replaced by a library click without a second click ---------------------
    import re

    field(page, "lib-text").fill("Answer in a curt way. (draft, not saved)")
    # the table is virtualised (max_height): with every seeded preset listed, `toxic` may be scrolled out of the DOM;
    # filtering to negatives (a user's own way to shorten the list) keeps it rendered
    page.locator("#lib-kind-filter label", has_text="negative").click()
    toxic_cell = page.locator("#lib-table [data-testid^='cell-']", has_text=re.compile(r"^\s*toxic\s*$")).first
    toxic_cell.click()
    wait_text(page.locator("#lib-save-msg"), r"unsaved changes.*click toxic again")
    assert field(page, "lib-text").input_value() == "Answer in a curt way. (draft, not saved)"
    assert field(page, "lib-current").input_value() == "curt@2"
    toxic_cell.click()  # the second click discards the draft and loads toxic
    page.wait_for_function("() => (document.querySelector('#lib-current input, #lib-current textarea') || {})"
                           ".value?.startsWith('toxic@')", timeout=30000)
    assert field(page, "lib-text").input_value() == st.store.get_system_prompt("toxic")["text"]
    assert page.locator("#lib-save-msg").inner_text().strip() == ""

    # -- annotate: edit one response (E), then rank 3 responses with a tie, keyboard only ------------------
    open_tab(page, "Annotate")
    page.wait_for_selector("#ann-ranker .neat-card")
    pid = page.locator("#ann-ranker .neat-ranker").get_attribute("data-item")
    assert pid in pv["prompt_ids"]
    assert page.locator("#ann-ranker .neat-card").count() == 2
    assert not page.locator("#ann-ranker .neat-origin").first.is_visible()  # origins hidden by default
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("h")
    assert page.locator("#ann-ranker .neat-origin").first.is_visible()
    page.keyboard.press("h")
    page.keyboard.press("1")
    page.keyboard.press("e")
    page.wait_for_selector("#ann-edit-box", state="visible")
    field(page, "ann-edit-text").fill("A short, polite and helpful answer.")
    page.locator("#ann-edit-save").click()
    wait_text(page.locator("#ann-msg"), r"new human response")
    page.wait_for_function("document.querySelectorAll('#ann-ranker .neat-card').length === 3")
    assert any(r["origin"] == "human" for r in st.store.list_responses(pid))
    # keys: select #1 -> group 1, #2 -> group 1 (tie), #3 -> group 2, Enter
    page.locator("body").click(position={"x": 5, "y": 5})
    for k in ["1", "1", "2", "1", "3", "3", "u", "3", "2"]:  # includes a mistake undone with U
        page.keyboard.press(k)
    cards = ranker_state(page)
    assert [c["rank"] for c in cards] == ["1", "1", "2"]
    shot(page, "annotate")
    page.keyboard.press("Enter")
    wait_text(page.locator("#ann-msg"), rf"Saved prompt {pid}: #1 = #2\s+>\s+#3")
    ann = st.store.latest_annotation(pid, "local")
    expect = [sorted([cards[0]["rid"], cards[1]["rid"]]), [cards[2]["rid"]]]
    assert [sorted(g) for g in ann["ranking"]] == expect
    # the next prompt is loaded
    page.wait_for_function(f"document.querySelector('#ann-ranker .neat-ranker').dataset.item !== '{pid}'")

    # -- a draft (ranked, not submitted) survives a reload: it comes back from the browser's storage ----------
    pid2 = page.locator("#ann-ranker .neat-ranker").get_attribute("data-item")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("1")
    page.keyboard.press("2")
    assert ranker_state(page)[0]["rank"] == "2"
    comment = "half done <b>not bold</b>, back after lunch"
    field(page, "ann-comment").fill(comment)  # the comment and the flag are part of the draft too
    page.locator("#ann-flag input[type=checkbox]").check()
    page.wait_for_timeout(500)  # let the next prompt's follow-up requests finish before reloading
    page.reload()
    page.wait_for_selector("#prompts-table")
    open_tab(page, "Annotate")
    page.wait_for_function(f"(document.querySelector('#ann-ranker .neat-ranker') || {{}}).dataset?.item === '{pid2}'")
    page.wait_for_function("document.querySelector('#ann-ranker .neat-card').dataset.rank === '2'")
    assert "draft restored" in page.locator("#ann-ranker .neat-rk-status").inner_text()
    page.wait_for_timeout(1000)  # the restored fields must also survive whatever the page renders after load
    assert field(page, "ann-comment").input_value() == comment
    assert page.locator("#ann-flag input[type=checkbox]").is_checked()
    assert st.store.latest_annotation(pid2, "local") is None  # a draft, not an annotation
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("u")  # back to what the server sent: unranked (the comment and flag stay)
    assert ranker_state(page)[0]["rank"] == ""
    page.keyboard.press("Enter")  # the restored comment and flag reach the server: a flag-only annotation
    wait_text(page.locator("#ann-msg"), rf"Saved prompt {pid2}: \(flag only\)")
    ann2 = st.store.latest_annotation(pid2, "local")
    assert ann2["comment"] == comment and ann2["flagged"] is True
    assert ann2["ranking"] == []

    # -- reload: the saved ranking is there -----------------------------------------------------------------
    page.reload()
    page.wait_for_selector("#prompts-table")
    open_tab(page, "Annotate")
    page.wait_for_selector("#ann-ranker .neat-card")
    dd = field(page, "ann-open")
    dd.fill(pid)
    page.locator("#ann-open-btn").click()
    page.wait_for_function(f"document.querySelector('#ann-ranker .neat-ranker').dataset.item === '{pid}'")
    after = {c["rid"]: c["rank"] for c in ranker_state(page)}
    assert after == {c["rid"]: c["rank"] for c in cards}
    assert "saved" in page.locator("#ann-ranker .neat-rk-top").inner_text()

    # -- data tab: counts and the annotator ---------------------------------------------------------------
    open_tab(page, "Data")
    wait_text(page.locator("#data-people"), r"local")
    # a reload aborts the page's in-flight fetches/streams: the browser logs those aborts, they are not app errors
    errors = [e for e in page_errors.events if not e.startswith(("console-error:Failed to load resource",
                                                                 "console-error:AbortError"))
              and not (e.startswith("console-error:") and "Connection errored out" in e)]
    assert errors == []
    ctx.close()


XSS = '<img src=x onerror="window.__xss=1;alert(1)"> <script>window.__xss=2;alert(2)</script> <b>bold?</b>'


def test_untrusted_text_renders_inert(app, browser, page_errors):
    st = app.studio
    pid = st.add_prompt("Tell me about " + XSS, ["xss"], "train", actor="test")["id"]
    st.store.add_responses([
        {"prompt_id": pid, "text": XSS, "origin": "policy"},
        {"prompt_id": pid, "text": "plain <i>answer</i> & more", "origin": "dataset"},
    ], actor="test")
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = page_errors(ctx.new_page())
    page.goto(app.url)
    page.wait_for_selector("#prompts-table")
    wait_text(page.locator("#prompts-summary"), r"prompt\(s\) match")  # initial load done
    # Prompts tab: search shows it as text
    field(page, "prompts-query").fill("onerror")
    page.locator("#prompts-search").click()
    wait_text(page.locator("#prompts-table"), r"<img src=x onerror=")
    page.locator("#prompts-table [data-testid='cell-0-1']").first.click()
    page.wait_for_function(f"document.querySelector('#prompts-selected input, #prompts-selected textarea').value === '{pid}'")
    assert XSS in field(page, "prompts-detail").input_value()
    assert page.locator("#prompts-table img, #prompts-table script").count() == 0
    # Annotate: open by id, the cards show the literal markup
    open_tab(page, "Annotate")
    page.wait_for_selector("#ann-ranker .neat-ranker")
    field(page, "ann-open").fill(pid)
    page.locator("#ann-open-btn").click()
    page.wait_for_function(f"document.querySelector('#ann-ranker .neat-ranker').dataset.item === '{pid}'")
    texts = [c["text"] for c in ranker_state(page)]
    assert XSS in texts
    assert XSS in page.locator("#ann-ranker .neat-conv").inner_text()
    assert page.locator("#ann-ranker img, #ann-ranker script").count() == 0
    assert page.locator("#ann-ranker .neat-card-text *, #ann-ranker .neat-turn-text *").count() == 0
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    assert not [e for e in page_errors.events if e.startswith("dialog")]
    ctx.close()


def test_semantic_search_finds_a_paraphrase(app, browser, page_errors):
    """Prompts tab: a query that shares no word with the prompt it means finds nothing as text, and finds that
    prompt first once 'semantic' is ticked (MiniLM vectors, computed from the tab's admin button)."""
    st = app.studio
    target = next(p for p in st.store.list_prompts(limit=1000) if "sourdough" in p["messages"][-1]["content"])
    query = "naming ideas for an article on baking loaves"  # no substring of the sourdough prompt
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = page_errors(ctx.new_page())
    page.goto(app.url)
    page.wait_for_selector("#prompts-table")
    wait_text(page.locator("#prompts-summary"), r"prompt\(s\) match")
    field(page, "prompts-query").fill(query)
    page.locator("#prompts-search").click()
    wait_text(page.locator("#prompts-summary"), r"(^|\D)0 prompt\(s\) match")
    # the embeddings accordion (admin): compute what the background embedder has not done yet
    page.get_by_text("Embeddings (semantic search)").click()
    page.get_by_role("button", name="Compute missing prompt embeddings").click()
    n = len(st.store.list_prompts(limit=1000))
    wait_text(page.locator("#prompts-emb-info"), rf"{n} prompt\(s\) embedded, 0 missing", timeout=120)
    page.locator("#prompts-semantic input").check()  # the checkbox change runs the search
    wait_text(page.locator("#prompts-summary"), rf"most similar prompts \(semantic search over {n} embedded\)")
    page.wait_for_function(
        "document.querySelector('#prompts-table [data-testid=\"cell-0-0\"]')?.innerText.trim() === '%s'" % target["id"])
    assert "sourdough" in page.locator("#prompts-table [data-testid='cell-0-1']").inner_text()
    expect = st.search_prompts(query, semantic=True, limit=3)["rows"]
    assert [page.locator(f"#prompts-table [data-testid='cell-{i}-0']").inner_text().strip() for i in range(3)] \
        == [r["id"] for r in expect]
    assert [e for e in page_errors.events if not e.startswith("console-error:Failed to load resource")] == []
    ctx.close()
