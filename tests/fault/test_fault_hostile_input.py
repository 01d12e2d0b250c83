"""Hostile and broken input at the app's API routes (gradio_client against a live in-process app) and at the CLI:
each gets a clear message, writes nothing (store.counts() unchanged), and the app keeps serving afterwards.
The input policies live in neat_studio/safety.py."""
from __future__ import annotations

import json
import os

import pytest

from tests.browser.live import start_app, stop_app

MB_PROMPT = "x" * (1024 * 1024)
HTML = "<script>alert('xss')</script><img src=x onerror=alert(1)>"
SQL_NAME = "x'; DROP TABLE prompts; --"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = start_app(tmp_path_factory.mktemp("hostile"))
    st = a.studio
    recs = [{"messages": [{"role": "user", "content": f"hostile test question {i}?"}], "source": "hostile",
             "tags": ["hostile"], "split": "train",
             "responses": [{"text": f"answer {j} {HTML}", "origin": "dataset", "rank": None} for j in range(2)]}
            for i in range(2)]
    st.store.import_records(recs, actor="t")
    yield a
    stop_app(a)


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def item(app):
    p = app.studio.store.list_prompts(tag="hostile")[0]
    return p["id"], [r["id"] for r in app.studio.store.list_responses(p["id"])]


def unchanged(st, before):
    assert st.store.counts() == before


def raw_call(url: str, api: str, body: bytes, timeout: float = 60.0) -> tuple[int, str]:
    """POST raw JSON bytes to gradio's HTTP API (/gradio_api/call/<api>) and read the result stream: lets a test
    send what gradio_client cannot encode (lone surrogates, invalid UTF-8). Returns (HTTP status, text)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{url}gradio_api/call/{api}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            event = json.loads(r.read())["event_id"]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    with urllib.request.urlopen(f"{url}gradio_api/call/{api}/{event}", timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


# -- model specs: the policy, and where user-typed specs enter --------------------------------------------------
def test_model_spec_policy(app, tmp_path, monkeypatch):
    from neat_studio.safety import allowed_model_roots, check_model_spec

    ws = app.studio.workspace
    for ok in ("default", "tiny", "HuggingFaceTB/SmolLM2-135M-Instruct", " tiny "):
        assert check_model_spec(ok, ws) == ok.strip()
    run = ws.runs / "r1"
    run.mkdir(parents=True, exist_ok=True)
    assert check_model_spec(str(run), ws) == str(run.resolve())
    for bad in ("../../../../etc", "/etc", "/etc/passwd", str(tmp_path), "org/../../etc", "~/x", "",
                "tiny\x00", "a" * 5000, str(ws.runs / ".." / ".." / ".."), "./../../.."):
        with pytest.raises(ValueError):
            check_model_spec(bad, ws)
    (tmp_path / "link").symlink_to("/etc")  # a symlink inside an allowed root that points out of it
    monkeypatch.setenv("NEAT_STUDIO_MODEL_ROOTS", str(tmp_path))
    assert tmp_path.resolve() in allowed_model_roots(ws)
    assert check_model_spec(str(tmp_path / "m"), ws) == str((tmp_path / "m").resolve())
    with pytest.raises(ValueError, match="outside the allowed"):
        check_model_spec(str(tmp_path / "link"), ws)


def test_compare_use_and_train_refuse_escaping_model_paths(app, client):
    st = app.studio
    before = st.store.counts()
    for spec in ("../../../../etc", "/etc", "/root/.ssh"):
        html = client.predict(spec, api_name="/use")
        assert "neat-error" in html and "outside the allowed" in html, html
        with pytest.raises(ValueError, match="outside the allowed"):
            st.compare_info(spec)
        with pytest.raises(ValueError, match="outside the allowed"):
            st.use_model(spec)
    out = client.predict("/etc", "tiny", "hello", 0.7, 0.9, 8, 0, api_name="/run_turn")
    assert any("outside the allowed" in str(o) for o in out), out
    out = client.predict("tiny", "../../../../etc", [], None, "rows", 2, api_name="/evaluate")  # + own set, expected
    assert "Not started" in str(out[0]) and "outside the allowed" in str(out[0]), out
    assert st.model_spec == "tiny"
    # Train tab: the start handler refuses the path before anything is frozen or recorded
    ctx = app.demo.neat_ctx
    start = next(f.fn for f in app.demo.fns.values() if f.name == "start")
    out = start({ctx.components["train.model"]: "../../../../etc"}, None)
    assert "neat-error" in out[0] and "outside the allowed" in out[0], out[0]
    unchanged(st, before)


# -- text: size, control characters, invalid UTF-8, HTML ---------------------------------------------------------
def test_huge_and_control_character_prompts_are_refused(app, client):
    st = app.studio
    before = st.store.counts()
    for text, why in ((MB_PROMPT, "too large"), ("a\x00b", "control character"), ("bell\x07", "control character")):
        msg, _ = client.predict(text, "", "", "train", api_name="/add_prompt")
        assert "neat-error" in msg and why in msg, msg[:300]
    # a lone surrogate (what a lossy decode of invalid UTF-8 yields), sent as a JSON escape
    code, text = raw_call(app.url, "add_prompt", b'{"data": ["bad \\udcff utf8", "", "", "train"]}')
    assert code == 200 and "invalid UTF-8" in text, (code, text[:300])
    # invalid UTF-8 bytes in the request body itself
    code, text = raw_call(app.url, "add_prompt", b'{"data": ["bad \xff\xfe utf8", "", "", "train"]}')
    assert code >= 400 or "error" in text.lower(), (code, text[:300])
    msg, _ = client.predict("fine prompt", "sys\x1b[31m", "", "train", api_name="/add_prompt")
    assert "neat-error" in msg and "system prompt" in msg
    unchanged(st, before)
    msg, _ = client.predict("Tabs\tand\nnewlines are fine", "", "", "train", api_name="/add_prompt")
    assert "Added prompt" in msg


def test_html_and_js_are_stored_as_text_and_rendered_escaped(app, client, item):
    from neat_studio.ui.annotate import ranker_html

    st = app.studio
    msg, _ = client.predict(HTML, "", "", "train", api_name="/add_prompt")
    assert "Added prompt" in msg and "<script>" not in msg
    p = st.store.list_prompts(search="alert('xss')")[0]
    assert p["text"] == HTML  # stored as written
    view = ranker_html(st.annotation_item(item[0], "local", suggest=False))
    assert "<script>" not in view and "<img" not in view and "&lt;script&gt;" in view


def test_malformed_and_oversized_files_import_nothing(app, client, tmp_path):
    from gradio_client import handle_file

    st = app.studio
    before = st.store.counts()
    files = {
        "garbage.jsonl": bytes(range(256)) * 64,
        "badutf8.jsonl": b'{"prompt": "ok"}\n{"prompt": "bad \xff\xfe here"}\n',
        "huge.jsonl": json.dumps({"prompt": MB_PROMPT}).encode() + b"\n",
        "nul.csv": b"prompt\nfine\nbad\x00value\n",
        "notjson.json": b"[{\"prompt\": \"a\"}, {\"prompt\": ",
        "empty.jsonl": b"",
    }
    for name, data in files.items():
        f = tmp_path / name
        f.write_bytes(data)
        html = client.predict(handle_file(str(f)), "auto", "prompt", "", "", api_name="/import_file")
        assert ("neat-error" in html and "Nothing was imported" in html) or "records 0" in html, (name, html[:300])
        unchanged(st, before)


def test_sql_metacharacters_in_names_and_ids(app, client, item):
    st = app.studio
    before = st.store.counts()
    out = client.predict(SQL_NAME, "negative", "Be bad.", "", 0.9, 0.95, 32, 1, "all", api_name="/save_library_prompt")
    assert "neat-error" in out[0] and "Nothing was saved" in out[0]
    with pytest.raises(Exception, match="unknown prompt id"):
        client.predict("' OR 1=1 --", json.dumps([[item[1][0]]]), "", "", api_name="/save_ranking")
    with pytest.raises(Exception, match="does not belong"):
        client.predict(item[0], json.dumps([["x' OR '1'='1"]]), "", "", api_name="/save_ranking")
    unchanged(st, before)
    assert st.store.count_prompts() > 0 and st.store.get_system_prompt(SQL_NAME) is None  # tables intact


def test_save_ranking_route_refuses_broken_input_then_serves(app, client, item):
    st = app.studio
    pid, rids = item
    before = st.store.counts()
    bad = [(pid, "not json", "", ""), (pid, json.dumps([rids, rids]), "", ""), (pid, "[]", "", ""),
           (pid, json.dumps([rids]), "[1, 2]", ""), (pid, json.dumps([rids]), json.dumps({rids[0]: "evil"}), ""),
           (pid, json.dumps([rids]), "", "nul\x00byte"), (pid, json.dumps([rids]), "", "c" * 50_000),
           (pid, json.dumps({"a": 1}), "", ""),
           ("", json.dumps([rids]), "", "")]
    for args in bad:
        with pytest.raises(Exception, match="Not saved"):
            client.predict(*args, api_name="/save_ranking")
    body = json.dumps({"data": [pid, json.dumps([rids]), "", "bad \udcff comment"]}).encode()  # lone surrogate
    code, text = raw_call(app.url, "save_ranking", body)
    assert "Not saved" in text and "invalid UTF-8" in text, (code, text[:300])
    unchanged(st, before)
    out = json.loads(client.predict(pid, json.dumps([[rids[0]], rids[1:]]), json.dumps({rids[0]: "pos"}),
                                    HTML, api_name="/save_ranking"))
    ann = st.store.latest_annotation(pid, "local")
    assert out["annotator"] == "local" and ann["id"] == out["annotation_id"] and ann["comment"] == HTML


# -- the CLI -----------------------------------------------------------------------------------------------------
def test_cli_hostile_input_clear_errors_and_nothing_written(tmp_path, capsys):
    from neat_studio.cli import main
    from neat_studio.store import Store

    ws = tmp_path / "cliws"
    base = ["--workspace", str(ws)]
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "cli prompt"}\n', encoding="utf-8")
    assert main(base + ["import", str(good)]) == 0
    with Store(ws / "studio.duckdb") as s:
        before = s.counts()
        pid = s.list_prompts()[0]["id"]
    bad_utf8 = tmp_path / "bad.jsonl"
    bad_utf8.write_bytes(b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n')
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"prompt": MB_PROMPT}) + "\n", encoding="utf-8")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(os.urandom(4096))
    cases = [["import", str(bad_utf8)], ["import", str(huge)], ["import", str(garbage)],
             ["import", str(tmp_path / "missing.jsonl")],
             ["library", "save", SQL_NAME, "--text", "x"], ["library", "show", SQL_NAME],
             ["annotate", pid, "--ranking", "no-such-response"], ["annotate", "' OR 1=1 --", "--ranking", "a"],
             ["annotate", pid, "--ranking", "", "--mark", "nope=evil"]]
    for argv in cases:
        capsys.readouterr()
        rc = main(base + argv)
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, (argv, rc, err[-500:])
    with Store(ws / "studio.duckdb") as s:
        assert s.counts() == before


# -- identity comes from the session, never from the body ------------------------------------------------------
def test_save_ranking_annotator_is_the_signed_in_user(tmp_path):
    import bcrypt
    from gradio_client import Client

    from neat_studio.ui.auth import UserDB

    h = bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(4)).decode()
    a = start_app(tmp_path, auth=UserDB({"bob": (h, "annotator")}), seed=False)
    try:
        st = a.studio
        st.store.import_records([{"messages": [{"role": "user", "content": "who am i?"}], "source": "t",
                                  "tags": [], "split": "train", "responses": [
                                      {"text": "one", "origin": "dataset", "rank": None},
                                      {"text": "two", "origin": "dataset", "rank": None}]}], actor="t")
        pid = st.store.list_prompts()[0]["id"]
        rids = [r["id"] for r in st.store.list_responses(pid)]
        before = st.store.counts()
        with pytest.raises(Exception):  # no session: refused before any handler runs
            Client(a.url, verbose=False, download_files=False).predict(pid, json.dumps([rids]), "", "",
                                                                       api_name="/save_ranking")
        code, _ = raw_call(a.url, "save_ranking", json.dumps({"data": [pid, json.dumps([rids]), "", ""]}).encode())
        assert code == 401
        assert st.store.counts() == before
        c = Client(a.url, verbose=False, download_files=False, auth=("bob", "bob-pw"))
        out = json.loads(c.predict(pid, json.dumps([rids]), "", "annotator: admin", api_name="/save_ranking"))
        assert out["annotator"] == "bob" and st.store.latest_annotation(pid, "bob")["id"] == out["annotation_id"]
        assert st.store.latest_annotation(pid, "local") is None
    finally:
        stop_app(a)
