"""UI building blocks without a server: escaping of untrusted text, auth configuration, roles, agreement service."""
from __future__ import annotations

import json

import bcrypt
import gradio as gr
import pytest

from neat_studio.ui import auth as A
from neat_studio.ui.annotate import ranker_html
from neat_studio.ui.common import Ctx
from neat_studio.ui.studio_tab import diff_html, preview_html
from tests.helpers import bread_records

EVIL = '<img src=x onerror=alert(1)><script>alert(2)</script>"\'&'


def _item():
    return {"prompt": {"id": "p1", "messages": [{"role": "user", "content": EVIL}], "tags": [EVIL]},
            "responses": [{"id": "r1", "text": EVIL, "origin": "policy"},
                          {"id": "r2", "text": "ok", "origin": "negative:toxic@1"}],
            "annotation": {"ranking": [["r2"], ["r1"]], "marks": {"r1": "neg"}, "created_at": "2026-01-01T00:00:00Z"},
            "suggestion": {"ranking": [["r1", "r2"]], "scorer": EVIL}}


def test_ranker_html_escapes_everything_and_loads_saved_ranking():
    h = ranker_html(_item())
    assert "<img" not in h and "<script" not in h
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in h
    assert "data-rid='r1' data-rank='2' data-mark='neg'" in h and "data-rid='r2' data-rank='1'" in h
    assert "data-suggest='[[&quot;r1&quot;, &quot;r2&quot;]]'" in h
    assert "no dev accuracy measured" in h and "Weak evidence" in h  # a scorer without held-out figures
    good = dict(_item(), suggestion={"ranking": [["r1", "r2"]], "scorer": "v1", "dev_acc": 0.8123, "n_dev_pairs": 40})
    hg = ranker_html(good)
    assert "dev accuracy 0.81 on 40 pairs" in hg and "Weak" not in hg
    low = dict(good, suggestion=dict(good["suggestion"], dev_acc=0.55))
    assert "Weak scorer: it orders only 55% of held-out pairs" in ranker_html(low)
    # a draft for the same item wins over the saved annotation
    h2 = ranker_html(_item(), {"item": "p1", "ranks": {"r1": 1, "r2": 1}, "marks": {}})
    assert "data-rid='r1' data-rank='1' data-mark=''" in h2


def test_preview_and_diff_html_escape():
    rows = [{"prompt_id": "p<1>", "prompt": [{"role": "user", "content": EVIL}],
             "normal": [{"text": EVIL, "seed": 1, "n_tokens": 3}], "negative": [{"text": "", "seed": 2}]}]
    h = preview_html(rows, "<b>n</b>", "neg@1", 7, 1, 1)
    assert "<img" not in h and "<script" not in h and "<b>n</b>" not in h and "(empty)" in h
    d = diff_html("a <x> b", "a <y> b", "v@1", "v@2")
    assert "<del>&lt;x&gt; </del>" in d and "<ins>&lt;y&gt; </ins>" in d


def _hash(pw):
    return bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()


def test_users_file_json_yaml_env(tmp_path):
    h = _hash("s3cret")
    jf = tmp_path / "users.json"
    jf.write_text(json.dumps({"users": [{"username": "ann", "password_hash": h, "role": "annotator"}]}))
    db = A.load_users_file(jf)
    assert db.check("ann", "s3cret") and not db.check("ann", "nope") and not db.check("zed", "s3cret")
    assert db.role("ann") == "annotator"
    yf = tmp_path / "users.yaml"
    yf.write_text(f"boss:\n  password_hash: '{h}'\n  role: admin\n")
    assert A.load_users_file(yf).role("boss") == "admin"
    env = {"NEAT_STUDIO_USERS": f"a1:{h}:admin,b2:{h}:annotator"}
    assert A.load_auth(None, env).usernames == ["a1", "b2"]
    assert A.load_auth(None, {}) is None


@pytest.mark.parametrize("data,msg", [
    ({"users": [{"username": "x", "password": "plain", "role": "admin"}]}, "plain-text"),
    ({"users": [{"username": "x", "password_hash": "plain", "role": "admin"}]}, "bcrypt"),
    ({"users": [{"username": "x", "password_hash": "$2b$04$" + "a" * 53, "role": "root"}]}, "role"),
    ({"users": []}, "no users"),
])
def test_bad_users_files_are_refused(tmp_path, data, msg):
    f = tmp_path / "u.json"
    f.write_text(json.dumps(data))
    with pytest.raises(A.AuthConfigError, match=msg):
        A.load_users_file(f)


def test_ctx_roles():
    db = A.UserDB({"boss": (_hash("x"), "admin"), "ann": (_hash("y"), "annotator")})
    ctx = Ctx(studio=None, auth=db)

    class Req:
        def __init__(self, u):
            self.username = u

    assert ctx.user(Req("boss")) == "boss" and ctx.is_admin(Req("boss"))
    with pytest.raises(gr.Error, match="Only admins"):
        ctx.require_admin(Req("ann"), "edit")
    with pytest.raises(gr.Error):
        ctx.user(Req(None))
    local = Ctx(studio=None)
    assert local.user(None) == "local" and local.role(None) == "admin"


def test_without_login_each_browser_annotates_under_its_own_name():
    """No accounts: the name a browser chose (cookie) is the annotator; a missing or invalid one is `local`."""
    local = Ctx(studio=None)

    class Req:
        def __init__(self, cookie):
            self.headers = {"cookie": cookie} if cookie is not None else {}
            self.username = "ignored"  # never a name the request claims otherwise

    assert local.user(Req("theme=dark; neat_annotator=alice")) == "alice"
    assert local.user(Req("neat_annotator=bob%40lab")) == "bob@lab"
    assert local.user(Req(None)) == "local" and local.user(Req("other=1")) == "local"
    assert local.user(Req("neat_annotator=import%3Ax")) == "local"  # reserved / invalid: not a name
    assert local.user(Req('neat_annotator="<script>"')) == "local"
    from neat_studio.ui.common import valid_annotator_name

    with pytest.raises(ValueError, match="1-64 letters"):
        valid_annotator_name(" ")
    assert valid_annotator_name(" carol ") == "carol"


def test_studio_agreement_and_build_app(workspace):
    from neat_studio import metrics as M
    from neat_studio.studio import Studio
    from neat_studio.ui import app as app_mod

    with Studio(workspace, model_spec="tiny") as st:
        pid = st.add_prompt("Which is best?", actor="t")["id"]
        ids = st.store.add_responses([{"prompt_id": pid, "text": t, "origin": "policy"} for t in "abc"], actor="t")
        st.save_annotation(pid, "alice", [[ids[0]], [ids[1]], [ids[2]]])
        st.save_annotation(pid, "bob", [[ids[0], ids[1]], [ids[2]]])
        st.save_annotation(pid, "bob", [[ids[1]], [ids[0]], [ids[2]]])  # only the latest counts
        a = st.agreement()
        assert a["shared_prompts"] == 1
        assert a["kendall_tau"] == pytest.approx(1 / 3)          # C=2, D=1 of 3 pairs
        assert a["pairwise_agreement"] == pytest.approx(2 / 3)
        assert a["pairs"][0]["a"] == "alice" and a["pairs"][0]["b"] == "bob"
        assert M.kendall_tau_b([0, 1, 2], [1, 0, 2]) == pytest.approx(1 / 3)
        demo = app_mod.build_app(st)
        assert isinstance(demo, gr.Blocks)
        comps = demo.neat_ctx.components
        assert "annotate.ranker" in comps
        # every tab registered its components under its module name
        assert {k.split(".")[0] for k in comps if "." in k} >= {"prompts", "studio_tab", "annotate", "data",
                                                                 "train", "compare"}


def test_export_files_and_preview_pool_origins(workspace):
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        pid = st.add_prompt("Rank these", actor="t")["id"]
        ids = st.store.add_responses([{"prompt_id": pid, "text": t, "origin": "policy"} for t in ("good", "bad")],
                                     actor="t")
        st.save_annotation(pid, "alice", [[ids[0]], [ids[1]]])
        for kind in ("trl", "listwise", "parquet"):
            r = st.export_file(kind, actor="t")
            assert r["written"] == 1 and __import__("pathlib").Path(r["path"]).exists()
        with pytest.raises(ValueError):
            st.export_file("xml")
        st.save_library_prompt("meanie", "negative", "Be mean.", {"k": 1}, actor="t")
        with pytest.raises(ValueError, match="run a preview first"):
            st.add_preview_to_pool("meanie@1")
        with pytest.raises(ValueError, match="unknown prompt"):
            st.sample_for_preview("manual", ids=["nope"])


def test_train_scorer_from_studio_gives_annotate_suggestions(workspace):
    """The Data tab's "Train reward scorer" service: a scorer version trained on the curated rankings, which
    then serves the AI suggestion of the Annotate view (a ranking of exactly that prompt's responses)."""
    from neat_studio.studio import Studio

    with Studio(workspace, model_spec="tiny") as st:
        with pytest.raises(ValueError, match="no ranked prompts"):
            st.train_scorer(actor="t")
        recs = bread_records(12)
        st.store.import_records(recs, actor="t")
        m = st.train_scorer(actor="t")
        assert m["scorer_version"] and m["n_train_pairs"] + m["n_dev_pairs"] == 12
        assert st.reward_scorer() is not None
        pid = st.store.list_prompts(limit=1)[0]["id"]
        item = st.annotation_item(pid, "ann")
        ids = {r["id"] for r in item["responses"]}
        sugg = item["suggestion"]
        assert sugg is not None and {i for g in sugg["ranking"] for i in g} == ids
        # the suggestion carries the scorer's held-out figures; with so few dev pairs the view says it is weak
        assert sugg["n_dev_pairs"] == m["n_dev_pairs"] and sugg["dev_acc"] == m["dev_acc"]
        h = ranker_html(item)
        assert "Weak evidence: this scorer was checked on" in h and f"{m['n_dev_pairs']} held-out pair" in h
        assert any(a["action"] == "train_scorer" for a in st.store.audit(limit=5))

        # active learning: the queue can be ordered by scorer uncertainty / scorer-vs-human disagreement
        def prompt_with(text, responses):
            pid = st.store.add_prompts([{"text": text, "source": "t"}], actor="t")[0]
            rids = st.store.add_responses([{"prompt_id": pid, "text": r, "origin": "policy"} for r in responses],
                                          actor="t")
            return pid, rids

        clear, clear_r = prompt_with("How do I bake rye bread?", [
            "Mix rye flour, water, yeast and salt; knead, rise, bake (recipe 99).", "I cannot help with that request."])
        close, close_r = prompt_with("How do I bake spelt bread?", [
            "Mix flour, water, yeast and salt; knead, rise, bake (recipe 7).",
            "Mix flour, water, yeast and salt; knead, rise, bake (recipe 8)."])
        order_ids = {clear, close}
        first_queue = st.next_prompt("newbie", search="bake", order="queue")
        assert first_queue not in order_ids  # the plain queue is oldest first: an imported bread prompt
        assert st.next_prompt("newbie", search="How do I bake", order="uncertainty",
                              skip_ids=[p["id"] for p in st.store.list_prompts(limit=50)
                                        if p["id"] not in order_ids]) == close
        # a human who prefers the refusal disagrees with the scorer more than one who agrees
        st.store.save_annotation(clear, "ann", [[clear_r[1]], [clear_r[0]]])
        agree_pid = st.store.list_prompts(search="variant 3", limit=1)[0]["id"]
        agree_rs = st.store.list_responses(agree_pid)
        good = next(r["id"] for r in agree_rs if "Mix" in r["text"])
        st.store.save_annotation(agree_pid, "ann", [[good], [r["id"] for r in agree_rs if r["id"] != good]])
        assert st.next_prompt("ann", order="disagreement") == clear
        with pytest.raises(ValueError, match="unknown queue order"):
            st.next_prompt("ann", order="random")


def test_prompt_editor_change_detection():
    """The library editor warns before a row click or New replaces unsaved changes: what counts as a change."""
    from neat_studio.studio.preview import EDITOR_FIELDS, editor_changed
    from neat_studio.ui.common import parse_tags

    def ed(*values):  # the editor's fields by name, its tags text parsed as the tab does
        return {**dict(zip(EDITOR_FIELDS, values)), "tags": parse_tags(values[4])}

    raw = ("toxic", "negative", "toxic@1", "Be rude.", "tone, test", 0.9, 0.95, 128, 1)
    loaded = ed(*raw)
    assert not editor_changed(loaded, loaded)
    assert not editor_changed(loaded, ed("toxic", "negative", "toxic@1", "Be rude.  ", "test,tone", 0.9, 0.95, 128.0,
                                         1))
    for i, v in ((0, "toxic2"), (1, "positive"), (3, "Be very rude."), (4, "tone"), (5, 1.0), (7, 64), (8, 2)):
        changed = list(raw)
        changed[i] = v
        assert editor_changed(loaded, ed(*changed)), i
    assert not editor_changed(None, ed("", "negative", "", "  ", "", 0.9, 0.95, 128, 1))  # empty editor
    assert editor_changed(None, ed("new", "negative", "", "Answer rudely.", "", 0.9, 0.95, 128, 1))


def test_snapshot_message_counts_in_words_not_a_dict():
    """Issue 19: the Data tab's snapshot message printed a Python dict ("{'train': 2313} by_split")."""
    from neat_studio.studio.core import snapshot_counts_text

    t = snapshot_counts_text({"rows": 3, "responses": 6, "pairs": 3, "by_split": {"dev": 1, "train": 2},
                              "human_rows": 3})
    assert t == "3 prompt(s) (dev 1, train 2), 6 response(s), 3 ranked pair(s), 3 ranked by people"
    assert "{" not in t and "'" not in t
    assert snapshot_counts_text({}) == "" and snapshot_counts_text(None) == ""


def test_code_html_numbers_each_line_in_its_own_row_and_renders_inert():
    from neat_studio.ui.common import code_html

    h = code_html("lr: 1.0e-05\n\nname: <b>x</b>", "config.yaml")
    assert h == ("<div class='neat-code'><div class='neat-code-title'>config.yaml</div>"
                 "<div class='neat-code-line'><span class='neat-code-n'>1</span><span class='neat-code-t'>lr: 1.0e-05"
                 "</span></div><div class='neat-code-line'><span class='neat-code-n'>2</span><span class='neat-code-t'>"
                 "&#8203;</span></div><div class='neat-code-line'><span class='neat-code-n'>3</span>"
                 "<span class='neat-code-t'>name: &lt;b&gt;x&lt;/b&gt;</span></div></div>")
