"""A team in the browser (issue 20): an admin signs in with the first one-time password, chooses a password,
creates two annotators in the Admin tab; both work at once in their own browser contexts. With one ranking per
prompt they get different prompts; with two, the same prompt, and the Data tab computes their agreement. A save
from a stale tab is refused with nothing lost, and an annotator reaches no admin function (UI or API)."""
from __future__ import annotations

import pytest

from neat_studio import metrics as M
from neat_studio.ui.auth import LoginLimiter, StoreAuth
from tests.browser.live import field, open_tab, shot, start_app, stop_app, wait_text

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    first = {}

    def accounts(st):
        auth = StoreAuth(st.store, limiter=LoginLimiter(per_address=1000))
        first["admin"] = auth.ensure_admin()
        return auth

    a = start_app(tmp_path_factory.mktemp("team"), auth=accounts)
    st = a.studio
    a.pids = [p["id"] for p in st.store.list_prompts(limit=2, order="created")]
    for i, pid in enumerate(a.pids):
        st.store.add_responses([{"prompt_id": pid, "text": f"A careful, helpful answer {i}.", "origin": "policy"},
                                {"prompt_id": pid, "text": f"Whatever {i}. Figure it out.",
                                 "origin": "negative:toxic@1"}], actor="test")
    a.first = first["admin"]
    yield a
    stop_app(a)


def _sign_in(browser, app, user, password, new_password):
    """Sign in with a one-time password and choose a new one, as a person would."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    r = ctx.request.post(app.url + "login", form={"username": user, "password": password})
    assert r.ok, r.text()
    page = ctx.new_page()
    page.goto(app.url)
    page.wait_for_selector("#neat-password-row", state="visible")
    assert not page.locator("#neat-tabs").is_visible()  # nothing else until the password is changed
    field(page, "neat-pw-old").fill(password)
    field(page, "neat-pw-new").fill(new_password)
    page.locator("#neat-pw-save").click()
    wait_text(page.locator("#neat-pw-msg"), r"Password changed")
    page.wait_for_timeout(1500)  # the page reloads itself
    page.wait_for_selector("#prompts-table")
    wait_text(page.locator("#neat-who"), user)
    return ctx, page


def _item(page) -> str:
    open_tab(page, "Annotate")
    try:
        page.wait_for_selector("#ann-ranker .neat-card", timeout=20000)
    except Exception:  # noqa: BLE001 - say what the page shows instead
        shot(page, "team-no-card")
        raise AssertionError(page.locator("#ann-ranker").inner_text()[:300] + " | " +
                             page.locator("#ann-msg").inner_text()[:300]) from None
    return page.locator("#ann-ranker .neat-ranker").get_attribute("data-item")


def _open(page, pid):
    """Open Annotate and choose `pid` in "My annotated prompts", as a person would."""
    open_tab(page, "Annotate")
    page.wait_for_selector("#ann-ranker .neat-card")  # the tab has loaded (it resets the prompt chooser)
    page.wait_for_timeout(500)
    field(page, "ann-open").fill(pid)
    field(page, "ann-open").press("Enter")
    page.locator("#ann-open-btn").click()
    page.wait_for_selector(f"#ann-ranker .neat-ranker[data-item='{pid}']")


def _save(page, keys):
    page.locator("body").click(position={"x": 5, "y": 5})
    for k in keys:
        page.keyboard.press(k)
    page.keyboard.press("Enter")


def test_a_team_shares_the_work_without_losing_any(team, browser, page_errors):
    st = team.studio
    ctx_admin, admin = _sign_in(browser, team, "admin", team.first, "admin-password-1")
    page_errors(admin)
    open_tab(admin, "Admin")
    made = {}
    for name in ("ann", "ben"):
        field(admin, "admin-name").fill(name)
        admin.locator("#admin-add").click()
        text = wait_text(admin.locator("#admin-msg"), rf"One-time password for {name}")
        made[name] = admin.locator("#admin-msg code.neat-otp").inner_text().strip()
        assert made[name] and made[name] in text
    wait_text(admin.locator("#admin-users"), r"ben")
    shot(admin, "team-admin")

    ctx_ann, ann = _sign_in(browser, team, "ann", made["ann"], "ann-password-1")
    ctx_ben, ben = _sign_in(browser, team, "ben", made["ben"], "ben-password-1")
    for p in (ann, ben):
        page_errors(p)
    # one ranking per prompt (the default): both open Annotate at once and get different prompts
    a_item, b_item = _item(ann), _item(ben)
    assert a_item and b_item and a_item != b_item
    assert {(x["prompt_id"], x["annotator"]) for x in st.leases()} >= {(a_item, "ann"), (b_item, "ben")}

    # two rankings per prompt: the admin says so in the Data tab; both then rank the same prompt
    open_tab(admin, "Data")
    wait_text(admin.locator("#data-leases"), r"ben")  # the tab has loaded (it shows who holds what)
    field(admin, "data-overlap").fill("2")
    admin.locator("#data-overlap-save").click()
    wait_text(admin.locator("#data-overlap-msg"), r"2 ranking\(s\)")
    _save(ann, ["1", "1", "2", "2"])
    wait_text(ann.locator("#ann-msg"), r"Saved prompt")
    ben.reload()
    ben.wait_for_selector("#neat-tabs", state="visible")
    b_item = _item(ben)
    # ben's first prompt is still his (leased); once he ranks it he is handed ann's prompt too (overlap 2)
    _save(ben, ["1", "1", "2", "2"])
    wait_text(ben.locator("#ann-msg"), r"Saved prompt")
    b_next = ben.locator("#ann-ranker .neat-ranker").get_attribute("data-item")
    assert b_next == a_item
    _save(ben, ["1", "2", "2", "1"])  # ben disagrees with ann on her prompt
    wait_text(ben.locator("#ann-msg"), r"Saved prompt")
    open_tab(admin, "Data")
    admin.locator("#data-refresh").click()
    ra = M.ranking_to_ranks(st.store.latest_annotation(a_item, "ann")["ranking"])
    rb = M.ranking_to_ranks(st.store.latest_annotation(a_item, "ben")["ranking"])
    tau = M.kendall_tau_b([ra[i] for i in sorted(ra)], [rb[i] for i in sorted(ra)])
    assert tau in (1.0, -1.0)  # two responses, each ranked strictly: the same order or the opposite
    wait_text(admin.locator("#data-agreement"), rf"1 shared prompt.*{tau:.3f}")
    wait_text(admin.locator("#data-shares"), r"ben")
    shot(admin, "team-data")

    # a stale tab: ann opens her prompt in a second tab and saves there; the first tab's save is refused
    ann2 = ctx_ann.new_page()
    page_errors(ann2)
    ann2.goto(team.url)
    ann2.wait_for_selector("#neat-tabs", state="visible")
    _open(ann, a_item)
    _open(ann2, a_item)
    _save(ann2, ["1", "2", "2", "1"])
    wait_text(ann2.locator("#ann-msg"), r"Saved prompt")
    kept = st.store.latest_annotation(a_item, "ann")
    _save(ann, ["1", "1", "2", "2"])
    wait_text(ann.locator("#ann-msg"), r"Not saved: .*newer annotation by ann")
    assert st.store.latest_annotation(a_item, "ann")["id"] == kept["id"]  # nothing replaced ...
    refused = [x for x in st.store.audit(100) if x["action"] == "refuse_stale_annotation"]
    assert refused and refused[0]["detail"]["prompt_id"] == a_item  # ... and nothing lost
    shot(ann, "team-stale")

    # an annotator reaches no admin function: the Admin tab shows them nothing, the API refuses
    open_tab(ben, "Admin")
    ben.wait_for_timeout(500)
    assert not ben.locator("#admin-add").is_visible() and not ben.locator("#admin-users").is_visible()
    from gradio_client import Client

    c = Client(team.url, auth=("ben", "ben-password-1"), verbose=False)
    for args, api in ((("eve", "admin"), "/admin_add"), (("ann", "admin"), "/admin_role"), ((1,), "/save_overlap")):
        with pytest.raises(Exception, match="Only admins"):
            c.predict(*args, api_name=api)
    assert st.store.get_user("eve") is None and st.store.get_user("ann")["role"] == "annotator"
    assert st.annotations_per_prompt() == 2
    errors = [e for e in page_errors.events if not e.startswith("console-error:Failed to load resource")]
    assert errors == []
    for c_ in (ctx_admin, ctx_ann, ctx_ben):
        c_.close()
