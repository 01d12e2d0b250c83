"""Accounts in the store (issue 20): users and roles in DuckDB, one-time passwords changed at first login, login
attempts limited per user and per address without burning CPU, sessions that expire or end when disabled."""
from __future__ import annotations

import time

import bcrypt
import pytest

from neat_studio.store import Store
from neat_studio.ui import auth as A


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "s.duckdb")
    yield s
    s.close()


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def fast_hash(pw: str) -> str:
    return bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()


def test_store_keeps_accounts_and_refuses_bad_changes(store):
    store.add_user("boss", "admin", fast_hash("pw-boss-123"), must_change=False, actor="system")
    store.add_user("ann", "annotator", fast_hash("pw-ann-1234"), actor="boss")
    with pytest.raises(ValueError, match="exists already"):
        store.add_user("BOSS", "annotator", fast_hash("x"), actor="boss")
    with pytest.raises(ValueError, match="role must be"):
        store.add_user("eve", "root", fast_hash("x"), actor="boss")
    with pytest.raises(ValueError, match="bcrypt hash"):
        store.add_user("eve", "annotator", "plain text", actor="boss")
    with pytest.raises(ValueError, match="last admin"):
        store.update_user("boss", actor="boss", disabled=True)
    with pytest.raises(ValueError, match="last admin"):
        store.update_user("boss", actor="boss", role="annotator")
    assert [(u["username"], u["role"], u["must_change"]) for u in store.list_users()] == \
        [("ann", "annotator", True), ("boss", "admin", False)]
    assert all("password_hash" not in u for u in store.list_users())
    store.update_user("ann", actor="boss", role="admin")
    store.update_user("boss", actor="ann", disabled=True)  # another admin exists now
    assert store.get_user("boss")["disabled"] and store.count_users() == 2
    audit = [a for a in store.audit(20) if a["entity"] == "user"]
    assert {a["action"] for a in audit} == {"add_user", "update_user"}
    assert not any("$2b$" in str(a["detail"]) for a in audit)  # no hash in the audit log


def test_first_admin_one_time_password_and_the_change_at_first_login(store):
    auth = A.StoreAuth(store)
    pw = auth.ensure_admin()
    assert pw and auth.ensure_admin() is None  # only on a store without accounts
    assert auth.check("admin", pw) and auth.must_change("admin")
    with pytest.raises(ValueError, match="current password is wrong"):
        auth.change_password("admin", "nope", "a-long-new-password")
    with pytest.raises(ValueError, match="at least 10"):
        auth.change_password("admin", pw, "short")
    auth.change_password("admin", pw, "a-long-new-password")
    assert not auth.must_change("admin") and auth.check("admin", "a-long-new-password") and not auth.check("admin", pw)
    otp = auth.add_user("bob", "annotator", actor="admin")
    assert auth.check("bob", otp) and auth.must_change("bob") and auth.role("bob") == "annotator"
    store.update_user("bob", actor="admin", disabled=True)
    assert not auth.check("bob", otp) and auth.role("bob") is None and not auth.active("bob")


def test_seeding_from_a_users_file_keeps_its_hashes(store):
    db = A.UserDB({"alice": (fast_hash("alice-pass-1"), "admin"), "bob": (fast_hash("bob-pass-12"), "annotator")})
    auth = A.StoreAuth(store)
    assert auth.seed(db) == 2 and auth.seed(db) == 0
    assert auth.ensure_admin() is None  # the file gave an admin
    assert auth.check("alice", "alice-pass-1") and not auth.must_change("alice") and auth.role("bob") == "annotator"


def test_failed_logins_are_limited_per_user_and_per_address_without_bcrypt(store, monkeypatch):
    clock = Clock()
    auth = A.StoreAuth(store, limiter=A.LoginLimiter(per_user=5, per_address=8, window_s=900, clock=clock))
    store.add_user("ann", "annotator", fast_hash("right-password"), must_change=False, actor="t")
    store.add_user("bo", "annotator", fast_hash("bo-password-1"), must_change=False, actor="t")
    tok = A.CLIENT_ADDRESS.set("10.0.0.1")
    try:
        assert [auth.check("ann", "wrong") for _ in range(5)] == [False] * 5
        calls = []
        real = bcrypt.checkpw
        monkeypatch.setattr(A.bcrypt, "checkpw", lambda *a: calls.append(1) or real(*a))
        assert not auth.check("ann", "right-password")  # locked: even the right password waits
        assert calls == []  # refused before any bcrypt work
        # the address has 5 failures; 3 more on another name reach its limit of 8
        assert [auth.check("bo", "wrong") for _ in range(3)] == [False] * 3
        assert not auth.check("bo", "bo-password-1") and len(calls) == 3
        A.CLIENT_ADDRESS.set("10.0.0.2")  # another address: bo is fine (3 < 5 failures on his name)
        assert auth.check("bo", "bo-password-1")
        clock.t += 901  # the window has passed
        assert auth.check("ann", "right-password")
    finally:
        A.CLIENT_ADDRESS.reset(tok)


def test_parallel_guesses_beyond_the_bcrypt_slots_are_refused_at_once(store):
    lim = A.LoginLimiter(parallel=1)
    auth = A.StoreAuth(store, limiter=lim)
    store.add_user("ann", "annotator", fast_hash("right-password"), must_change=False, actor="t")
    assert lim.slot()  # another check holds the only slot
    t0 = time.perf_counter()
    assert not auth.check("ann", "right-password")
    assert time.perf_counter() - t0 < 0.05
    lim.release()
    assert auth.check("ann", "right-password")


def test_sessions_expire_and_end_when_the_account_is_disabled():
    clock = Clock()
    active = {"ann": True, "bo": True}
    tokens = A.ExpiringTokens({}, ttl_s=60, active=lambda u: active.get(u, False), clock=clock)
    tokens["t1"] = "ann"
    tokens["t2"] = "bo"
    assert tokens.get("t1") == "ann" and "t2" in tokens
    active["bo"] = False
    assert tokens.get("t2") is None and "t2" not in tokens
    clock.t += 61
    assert tokens.get("t1") is None and "t1" not in dict.keys(tokens)  # expired and forgotten


def test_through_the_running_app_login_limit_and_first_login(tmp_path):
    """HTTP as a browser or script meets it: the login route is limited per name, a one-time password works once
    and only for changing it (every action says so until then)."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from gradio_client import Client

    from tests.browser.live import start_app, stop_app

    made = {}

    def accounts(st):
        auth = A.StoreAuth(st.store, limiter=A.LoginLimiter(per_user=3, per_address=50))
        made["admin"] = auth.ensure_admin()
        made["bob"] = auth.add_user("bob", "annotator", actor="admin")
        return auth

    app = start_app(tmp_path, auth=accounts)
    try:
        def login(user, pw):
            data = urllib.parse.urlencode({"username": user, "password": pw}).encode()
            try:
                with urllib.request.urlopen(urllib.request.Request(app.url + "login", data=data), timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        with urllib.request.urlopen(app.url, timeout=10) as r:  # the page before signing in: no API schema
            page = r.read().decode()
        assert "window.gradio_api_info = {};" in page and "save_ranking" not in page and "/backup" not in page
        assert [login("admin", "guess") for _ in range(3)] == [400, 400, 400]
        assert login("admin", made["admin"]) == 400  # locked for now, even with the right password
        assert login("bob", made["bob"]) == 200  # another name is not locked
        # a session works until logout, then nothing answers it
        import http.cookiejar

        jar = http.cookiejar.CookieJar()
        op = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        op.open(app.url + "login", data=urllib.parse.urlencode({"username": "bob", "password": made["bob"]}).encode(),
                timeout=10)
        assert op.open(app.url + "config", timeout=10).status == 200
        op.open(app.url + "logout", timeout=10)
        with pytest.raises(urllib.error.HTTPError) as e:
            op.open(app.url + "config", timeout=10)
        assert e.value.code == 401
        c = Client(app.url, auth=("bob", made["bob"]), verbose=False)
        with pytest.raises(Exception, match="one-time password first"):
            c.predict("p", json.dumps([]), "", "", api_name="/save_ranking")
        assert app.studio.store.counts()["annotations"] == 0
    finally:
        stop_app(app)
