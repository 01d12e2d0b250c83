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
    """While the app owns the database file, `backup` goes through its API and yields a consistent copy."""
    from neat_studio.store import Store

    out = tmp_path / "bk.duckdb"
    rep = json.loads(client.predict(str(out), True, api_name="/backup"))
    assert rep["path"] == str(out.resolve()) and out.exists()
    with Store(out) as b:
        assert b.counts()["prompts"] == rep["counts"]["prompts"]
    assert (tmp_path / "bk-parquet" / "schema.sql").exists()
    with pytest.raises(Exception, match="already exists"):
        client.predict(str(out), False, api_name="/backup")
