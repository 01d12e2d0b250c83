"""AI suggestion in the Annotate tab, in a real browser: shown with the scorer version and its confidence per
response; a weak scorer's suggestion (here: few held-out pairs) is accepted only with a second A (issue 19)."""
from __future__ import annotations

import pytest

from tests.browser.live import open_tab, start_app, stop_app, wait_text
from tests.helpers import bread_records

pytestmark = pytest.mark.browser


def test_weak_suggestion_shown_and_accepted_with_a_second_key(tmp_path, browser, page_errors):
    app = start_app(tmp_path, seed=False)
    try:
        st = app.studio
        recs = bread_records(12)
        st.store.import_records(recs, actor="t")
        version = st.train_scorer(actor="t")["scorer_version"]
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page_errors(page)
        page.goto(app.url)
        open_tab(page, "Annotate")
        page.wait_for_selector("#ann-ranker .neat-card")
        text = wait_text(page.locator("#ann-ranker .neat-suggest"), r"AI suggestion")
        assert version in text and "press A twice to accept" in text and "Weak evidence" in text
        assert page.locator("#ann-ranker .neat-card .neat-ai-conf").count() == 2  # confidence on each card
        pid = page.locator("#ann-ranker .neat-ranker").get_attribute("data-item")
        expected = st.annotation_item(pid, "local")["suggestion"]["ranking"]
        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("a")  # the first A only asks
        wait_text(page.locator("#ann-ranker .neat-rk-status"), r"Press A again")
        assert [c.get_attribute("data-rank") for c in page.locator("#ann-ranker .neat-card").all()] == ["", ""]
        page.keyboard.press("Escape")  # another key cancels: the next A asks again
        page.keyboard.press("a")
        wait_text(page.locator("#ann-ranker .neat-rk-status"), r"Press A again")
        assert [c.get_attribute("data-rank") for c in page.locator("#ann-ranker .neat-card").all()] == ["", ""]
        page.keyboard.press("a")  # the confirming second A accepts
        wait_text(page.locator("#ann-ranker .neat-rk-status"), r"AI suggestion applied")
        page.keyboard.press("Enter")
        wait_text(page.locator("#ann-msg"), r"Saved prompt")
        saved = st.store.latest_annotation(pid, "local")
        assert saved["ranking"] == expected
        assert not [e for e in page_errors.events if not e.startswith("console-")]
        page.close()
    finally:
        stop_app(app)
