"""API-level UI tests through gradio_client (no browser): bad input gives a clear error and writes nothing."""
from __future__ import annotations

import json

import pytest

from tests.browser.live import start_app, stop_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    a = start_app(tmp_path_factory.mktemp("api"))
    yield a
    stop_app(a)


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


def test_import_error_panel_and_nothing_written(app, client, tmp_path):
    from gradio_client import handle_file

    st = app.studio
    before = st.store.count_prompts()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": \n', encoding="utf-8")
    html = client.predict(handle_file(str(bad)), "auto", "prompt", "", "", api_name="/import_file")
    assert "neat-error" in html and "line 2" in html and "Nothing was imported" in html
    assert st.store.count_prompts() == before
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "api prompt one"}\n{"prompt": "api prompt two"}\n', encoding="utf-8")
    html = client.predict(handle_file(str(good)), "auto", "prompt", "dev", "apitag", api_name="/import_file")
    assert "neat-ok" in html and "prompts_added 2" in html
    rows = st.store.list_prompts(tag="apitag")
    assert len(rows) == 2 and {r["split"] for r in rows} == {"dev"}


def test_add_prompt_validation(app, client):
    st = app.studio
    before = st.store.count_prompts()
    msg, _ = client.predict("   ", "", "", "train", api_name="/add_prompt")
    assert "neat-error" in msg and "empty" in msg
    assert st.store.count_prompts() == before
    msg, _ = client.predict("How do I fix a flat tyre?", "", "bike, howto", "test", api_name="/add_prompt")
    assert "Added prompt" in msg
    p = st.store.list_prompts(search="flat tyre")[0]
    assert p["tags"] == ["bike", "howto"] and p["split"] == "test" and p["source"] == "manual"


def test_library_versions_are_immutable_and_validated(app, client):
    st = app.studio
    out = client.predict("bad name!", "negative", "text", "", 0.9, 0.95, 32, 1, "all", api_name="/save_library_prompt")
    assert "neat-error" in out[0] and "Nothing was saved" in out[0]
    assert st.store.get_system_prompt("bad name!") is None
    out = client.predict("sarcastic", "negative", "Be sarcastic.", "tone", 0.8, 0.9, 32, 2, "all",
                         api_name="/save_library_prompt")
    assert "Saved sarcastic@1" in out[0]
    out = client.predict("sarcastic", "negative", "Be sarcastic.", "tone", 0.8, 0.9, 32, 2, "all",
                         api_name="/save_library_prompt")
    assert "nothing was saved" in out[0]
    out = client.predict("sarcastic", "negative", "Be very sarcastic.", "tone", 0.8, 0.9, 64, 2, "all",
                         api_name="/save_library_prompt")
    assert "Saved sarcastic@2" in out[0]
    v1, v2 = st.store.get_system_prompt("sarcastic", 1), st.store.get_system_prompt("sarcastic", 2)
    assert v1["text"] == "Be sarcastic." and v1["params"]["max_new_tokens"] == 32
    assert v2["params"] == {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 64, "k": 2}
    assert "<ins>very </ins>" in out[6] and "max_new_tokens: 32 → 64" in out[6]
    with pytest.raises(Exception, match="maximum"):  # the slider's range is enforced server-side
        client.predict("sarcastic", "negative", "x", "", 5.5, 0.9, 64, 2, "all", api_name="/save_library_prompt")
    out = client.predict("sarcastic", "positive", "x", "", 0.5, 0.9, 64, 2, "all", api_name="/save_library_prompt")
    assert "neat-error" in out[0] and "negative prompt" in out[0]
    assert st.store.get_system_prompt("sarcastic")["version"] == 2


def test_backup_through_the_running_app(app, client, tmp_path):
    """While the app owns the database file, `backup` goes through its API and yields a consistent copy, always
    inside the workspace; the CLI then moves it to the path asked for."""
    import subprocess
    import sys

    from neat_studio.store import Store

    ws = app.studio.workspace.root.resolve()
    rep = json.loads(client.predict("bk.duckdb", True, api_name="/backup"))
    out = ws / "backups" / "bk.duckdb"
    assert rep["path"] == str(out) and out.exists()
    with Store(out) as b:
        assert b.counts()["prompts"] == rep["counts"]["prompts"]
    assert (ws / "backups" / "bk-parquet" / "schema.sql").exists()
    with pytest.raises(Exception, match="already exists"):
        client.predict("bk.duckdb", False, api_name="/backup")
    for outside in ("../../../../tmp/x.duckdb", str(tmp_path / "x.duckdb")):
        with pytest.raises(Exception, match="inside its workspace"):
            client.predict(outside, False, api_name="/backup")
    assert not (tmp_path / "x.duckdb").exists()
    # the CLI while the app runs: through --server, and the copy lands where the user asked
    cli = [sys.executable, "-m", "neat_studio", "--workspace", str(ws), "backup"]
    dest = tmp_path / "mine" / "copy.duckdb"
    r = subprocess.run(cli + [str(dest), "--server", app.url], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"] == str(dest) and dest.is_file()
    r = subprocess.run(cli + [str(tmp_path / "other.duckdb"), "--server", "http://127.0.0.1:9"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pass --server URL of the app that holds it" in r.stderr


def test_uploads_are_capped_and_the_upload_cache_is_cleaned(app, tmp_path):
    """Every upload has a size limit (256 MB by default) and gradio's cache is cleaned hourly of day-old files; the
    limit is enforced by the server before anything is stored."""
    import urllib.error
    import urllib.request
    import uuid

    from neat_studio.ui.app import MAX_UPLOAD_MB
    from tests.browser.live import start_app, stop_app

    assert app.demo.max_file_size == MAX_UPLOAD_MB * 1024 * 1024 == 256 * 1024 * 1024
    assert app.demo.delete_cache == (3600, 86400)
    small = start_app(tmp_path, seed=False, max_file_size="1kb")
    try:
        def upload(n: int) -> int:
            b = uuid.uuid4().hex
            body = (f"--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.jsonl\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * n + f"\r\n--{b}--\r\n".encode()
            req = urllib.request.Request(small.url + "gradio_api/upload", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={b}"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        assert upload(100) == 200 and upload(5000) == 413
    finally:
        stop_app(small)


def test_tag_every_prompt_of_a_search_and_toggle_rows(app, client):
    """Tagging many prompts: "select all prompts of this search" gives every matching id (not one row), and clicking
    a row adds it to the selection or removes it."""
    from neat_studio.ui.prompts import toggle_id

    assert toggle_id("", "a") == "a" and toggle_id("a, b", "c") == "a, b, c" and toggle_id("a, b, c", "b") == "a, c"
    st = app.studio
    for i in range(3):
        st.add_prompt(f"bulk zebra question {i}", tags=["bulk"], actor="t")
    ids, msg = client.predict("zebra", False, None, None, None, "any", api_name="/select_all")
    want = {p["id"] for p in st.store.list_prompts(search="zebra", limit=100)}
    assert set(ids.split(", ")) == want and len(want) == 3 and "3 prompt(s) selected" in msg
    html = client.predict(ids, "zebra-done", "add", api_name="/apply_tags")
    assert "3 prompt(s)" in html
    assert {p["id"] for p in st.store.list_prompts(tag="zebra-done", limit=100)} == want
