"""Login on: unauthenticated HTTP requests are refused (page and API routes); two annotators rank the same prompt
with the keyboard and the Data tab shows their agreement (exact Kendall tau-b of their saved rankings);
an annotator does not see admin controls and the server refuses admin actions from them."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import bcrypt
import pytest

from neat_studio import metrics as M
from neat_studio.ui.auth import UserDB
from tests.browser.live import open_tab, ranker_state, shot, start_app, stop_app, wait_text

pytestmark = pytest.mark.browser

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}


def _users() -> UserDB:
    h = {u: bcrypt.hashpw(p.encode(), bcrypt.gensalt(4)).decode() for u, p in PASSWORDS.items()}
    return UserDB({"alice": (h["alice"], "admin"), "bob": (h["bob"], "annotator")})


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = start_app(tmp_path_factory.mktemp("auth"), auth=_users())
    st = a.studio
    pid = st.store.list_prompts(limit=1)[0]["id"]
    st.store.add_responses([
        {"prompt_id": pid, "text": "A careful, helpful answer.", "origin": "policy"},
        {"prompt_id": pid, "text": "Whatever. Figure it out yourself.", "origin": "negative:toxic@1"},
        {"prompt_id": pid, "text": "Here is a balanced answer with sources.", "origin": "positive:helpful_harmless@1"},
    ], actor="test")
    a.pid = pid
    st.set_annotations_per_prompt(2, actor="test")  # both rank the same prompt (agreement needs two rankings)
    yield a
    stop_app(a)


def _status(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def test_unauthenticated_requests_are_refused(app):
    base = app.url.rstrip("/")
    code, body = _status(base + "/")
    # the page answers only with the login form: no component, no tab, no data of the app
    assert code == 200 and '"auth_required":true' in body.replace(" ", "")
    assert "Negative Prompt Studio" not in body and "ann-ranker" not in body
    for path in ("/config", "/gradio_api/info", "/gradio_api/openapi.json", "/gradio_api/queue/data?session_hash=x",
                 "/gradio_api/file=/etc/hostname"):
        assert _status(base + path)[0] == 401, path
    payload = json.dumps({"data": ["x", "", "", "train"]}).encode()
    for path in ("/gradio_api/call/add_prompt", "/gradio_api/run/add_prompt", "/gradio_api/queue/join"):
        assert _status(base + path, "POST", payload)[0] == 401, path
    assert _status(base + "/gradio_api/upload", "POST", b"")[0] == 401
    # wrong password: refused too
    req = urllib.request.Request(base + "/login", method="POST",
                                 data=b"username=alice&password=wrong",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400


def _login(browser, app, user):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    r = ctx.request.post(app.url + "login", form={"username": user, "password": PASSWORDS[user]})
    assert r.ok, r.text()
    page = ctx.new_page()
    page.goto(app.url)
    page.wait_for_selector("#prompts-table")
    return ctx, page


def _rank(page, keys, pid):
    open_tab(page, "Annotate")
    page.wait_for_selector("#ann-ranker .neat-card")
    assert page.locator("#ann-ranker .neat-ranker").get_attribute("data-item") == pid
    page.locator("body").click(position={"x": 5, "y": 5})
    for k in keys:
        page.keyboard.press(k)
    cards = ranker_state(page)
    page.keyboard.press("Enter")
    wait_text(page.locator("#ann-msg"), r"Saved prompt")
    return cards


def test_two_annotators_agreement_and_roles(app, browser, page_errors):
    st = app.studio
    # alice (admin): strict order 1 > 2 > 3 by card position
    ctx_a, pa = _login(browser, app, "alice")
    page_errors(pa)
    wait_text(pa.locator("#neat-who"), r"alice.*admin")
    open_tab(pa, "Negative Prompt Studio")
    pa.wait_for_selector("#lib-save", state="visible")
    _rank(pa, ["1", "1", "2", "2", "3", "3"], app.pid)
    # bob (annotator): tie #1 = #2 > #3 in HIS card order (shuffled differently)
    ctx_b, pb = _login(browser, app, "bob")
    page_errors(pb)
    wait_text(pb.locator("#neat-who"), r"bob.*annotator")
    _rank(pb, ["1", "1", "2", "1", "3", "2"], app.pid)
    a = st.store.latest_annotation(app.pid, "alice")
    b = st.store.latest_annotation(app.pid, "bob")
    assert a and b and len(b["ranking"]) == 2
    ra, rb = M.ranking_to_ranks(a["ranking"]), M.ranking_to_ranks(b["ranking"])
    ids = sorted(ra)
    tau = M.kendall_tau_b([ra[i] for i in ids], [rb[i] for i in ids])
    pa_ = M.pairwise_agreement([ra[i] for i in ids], [rb[i] for i in ids])
    assert tau is not None

    # annotator: admin controls hidden, and refused server-side
    open_tab(pb, "Negative Prompt Studio")
    pb.wait_for_selector("#lib-text")
    assert not pb.locator("#lib-save").is_visible()
    open_tab(pb, "Data")
    pb.wait_for_selector("#data-counts")
    assert not pb.locator("#data-snapshot").is_visible()
    from gradio_client import Client

    c = Client(app.url, auth=("bob", PASSWORDS["bob"]), verbose=False)
    with pytest.raises(Exception) as e:
        c.predict("hacked", "negative", "text", "", 0.9, 0.95, 16, 1, "all", api_name="/save_library_prompt")
    assert "Only admins" in str(e.value)
    assert st.store.get_system_prompt("hacked") is None

    # Data tab (alice): agreement between alice and bob with the exact values
    open_tab(pa, "Data")
    pa.locator("#data-refresh").click()
    text = wait_text(pa.locator("#data-pairs"), r"alice")
    assert "bob" in text and f"{tau:.3f}" in text and f"{pa_:.3f}" in text
    wait_text(pa.locator("#data-agreement"), rf"1 shared prompt.*{tau:.3f}")
    pa.wait_for_timeout(1000)  # let the refresh finish fading in
    shot(pa, "data")
    errors = [e for e in page_errors.events if not e.startswith("console-error:Failed to load resource")]
    assert errors == []
    ctx_a.close()
    ctx_b.close()
