"""Issue 19, "Friction a real user hits", without a browser (Studio services, the CLI and the tabs' handlers as
Gradio calls them): TRL's conversational export format for chat data, import errors in the form's words, long
prompts warned about and folded, one-key acceptance only for a useful scorer, a confirmation before a long run."""
from __future__ import annotations

import html
import json

import pytest

from neat_studio.io.importers import read_records

SYSTEM = {"role": "system", "content": "Answer in French."}


def _fns(demo, name, module):
    fns = [f for f in demo.fns.values() if getattr(f.fn, "__name__", "") == name
           and f.fn.__module__ == f"neat_studio.ui.{module}"]
    assert fns, (name, module)
    return fns



@pytest.fixture
def studio(workspace):
    from neat_studio.studio import Studio

    st = Studio(workspace, model_spec="tiny")
    yield st
    st.close()


@pytest.fixture
def demo(studio):
    from neat_studio.ui.app import build_app

    return build_app(studio)


def _lines(path) -> list[dict]:
    return [json.loads(x) for x in open(path, encoding="utf-8").read().splitlines()]


# -- TRL export: conversational format for chat data -------------------------------------------------------------
CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Tell me a joke."}], "source": "t",
     "responses": [{"text": "Why did the chicken cross the road?", "origin": "dataset:chosen", "rank": 0},
                   {"text": "No.", "origin": "dataset:rejected", "rank": 1}]},
    {"messages": [SYSTEM, {"role": "user", "content": "Hello"}], "source": "t",
     "responses": [{"text": "Bonjour", "origin": "dataset:chosen", "rank": 0},
                   {"text": "Hello", "origin": "dataset:rejected", "rank": 1}]},
    {"messages": [{"role": "user", "content": "One turn only"}], "source": "t",
     "responses": [{"text": "good", "origin": "dataset:chosen", "rank": 0},
                   {"text": "bad", "origin": "dataset:rejected", "rank": 1}]},
]


def _pairs(records) -> set:
    return {(json.dumps(r["messages"]), r["responses"][i]["text"], r["responses"][j]["text"])
            for r in records for i in range(len(r["responses"])) for j in range(len(r["responses"]))
            if r["responses"][i]["rank"] < r["responses"][j]["rank"]}


def test_trl_export_is_conversational_for_chat_data_and_reads_back(studio, demo, tmp_path, capsys):
    from neat_studio.cli import main

    studio.store.import_records(CHAT, actor="t")
    conv = tmp_path / "conv.jsonl"
    r = studio.export_details("trl", conv)  # the default: TRL's conversational format, since this is chat data
    assert r == {"written": 3, "format": "conversational"}
    lines = _lines(conv)
    assert all(isinstance(x["prompt"], list) for x in lines)
    assert {json.dumps(x["prompt"]) for x in lines} == {json.dumps(c["messages"]) for c in CHAT}
    assert all(x["chosen"][0]["role"] == "assistant" and len(x["chosen"]) == 1 == len(x["rejected"]) for x in lines)
    assert "Human:" not in conv.read_text(encoding="utf-8")
    # the plain string format stays available
    plain = tmp_path / "plain.jsonl"
    assert studio.export_details("trl", plain, trl_format="string") == {"written": 3, "format": "string"}
    assert all(isinstance(x["prompt"], str) for x in _lines(plain))
    # both read back to the same prompts and pairs (round trip through the importer)
    for path in (conv, plain):
        assert _pairs(read_records(path)) == _pairs(CHAT)
    with pytest.raises(ValueError, match="unknown TRL format"):
        studio.export_details("trl", tmp_path / "x.jsonl", trl_format="hh")
    assert not (tmp_path / "x.jsonl").exists()

    # the CLI: --trl-format, default auto
    ws = str(studio.workspace.root)
    studio.close()
    assert main(["--workspace", ws, "export", "trl", str(tmp_path / "c.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "conversational"
    assert main(["--workspace", ws, "export", "trl", str(tmp_path / "s.jsonl"), "--trl-format", "string"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "string"
    assert _lines(tmp_path / "s.jsonl") == _lines(plain) and _lines(tmp_path / "c.jsonl") == lines


def test_trl_export_of_single_turn_data_stays_plain_and_the_data_tab_offers_the_choice(studio, demo):
    studio.store.import_records(CHAT[2:], actor="t")
    r = studio.export_file("trl", actor="t")
    assert r["format"] == "string" and _lines(r["path"])[0]["prompt"] == "One turn only"
    fmt = demo.neat_ctx.components["data.export_trl_format"]
    assert [v for _, v in fmt.choices] == list(studio.TRL_FORMATS) and fmt.value == "auto"
    run = _fns(demo, "export_trl", "data")[0].fn
    msg, path = run("", False, "conversational", None)
    assert "conversational format" in msg and isinstance(_lines(path)[0]["prompt"], list)
    msg, path = run("", False, "auto", None)
    assert "string format" in msg and _lines(path)[0]["prompt"] == "One turn only"


# -- import errors in the form's words ---------------------------------------------------------------------------
def _no_progress(*a, **k):
    return None


def test_the_import_form_names_its_own_fields_in_errors(studio, demo, tmp_path):
    from neat_studio.io.importers import DataFormatError

    bad = tmp_path / "questions.jsonl"
    bad.write_text(json.dumps({"question": "What is 2 + 2?"}) + "\n", encoding="utf-8")
    do_import = _fns(demo, "do_import", "prompts")[0].fn
    msg = html.unescape(do_import(str(bad), "auto", "prompt", "", "", None, progress=_no_progress))
    comps = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    label = comps["prompts-import-column"].label
    assert f"'{label}' field" in msg and "--prompt-column" not in msg and "Nothing was imported" in msg
    assert studio.store.count_prompts() == 0
    # the right column typed into that field imports it
    assert "Imported" in do_import(str(bad), "auto", "question", "", "", None, progress=_no_progress)
    assert studio.store.count_prompts() == 1
    # a file whose name says nothing: the form's Format field, not --format
    odd = tmp_path / "export.data"
    odd.write_text("prompt\nQ\n", encoding="utf-8")
    msg = html.unescape(do_import(str(odd), "auto", "prompt", "", "", None, progress=_no_progress))
    assert f"'{comps['prompts-import-format'].label}' field" in msg and "--format" not in msg
    # the CLI keeps its own words
    with pytest.raises(DataFormatError, match="pass --prompt-column"):
        studio.import_file(bad)


# -- long prompts: a warning on import, folded in the cards ------------------------------------------------------
EVIL = '<img src=x onerror=alert(1)><script>alert(2)</script>"\'&'


def _long_text(n=20_000):
    """n characters of numbered words (every stretch unique) with markup at ~300 and at the end."""
    words = " ".join(f"w{i}" for i in range(n // 3))[: n - 2 * len(EVIL) - 1]
    return words[:300] + EVIL + words[300:] + " " + EVIL


def test_import_warns_about_prompts_longer_than_training_keeps(studio, demo, tmp_path, capsys):
    from neat_studio.cli import main
    from neat_studio.studio import LONG_PROMPT_CHARS

    long_text = _long_text()
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ("short one", long_text, "x" * LONG_PROMPT_CHARS)),
                 encoding="utf-8")
    rep = studio.import_file(f)
    stored = {p["text"]: p["id"] for p in studio.store.list_prompts(limit=10)}
    assert rep["long_prompts"] == 1 and rep["long_prompt_ids"] == [stored[long_text]]  # 4,000 exactly is fine
    do_import = _fns(demo, "do_import", "prompts")[0].fn
    msg = html.unescape(do_import(str(f), "auto", "prompt", "", "", None, progress=_no_progress))
    assert "Imported" in msg and "long_prompt_ids" not in msg and "[" not in msg
    assert "neat-warn" in msg and "1 prompt(s) are longer than 4,000 characters" in msg and stored[long_text] in msg
    assert "max_prompt_len" in msg
    # the CLI warns on stderr and reports the ids
    ws = str(studio.workspace.root)
    studio.close()
    assert main(["--workspace", ws, "import", str(f)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["long_prompt_ids"] == [stored[long_text]]
    assert "warning: 1 prompt(s) are longer than 4,000 characters" in out.err and stored[long_text] in out.err


def test_long_prompts_are_folded_and_escaped_in_annotate_and_preview_cards():
    from neat_studio.ui.annotate import ranker_html
    from neat_studio.ui.common import folded_html
    from neat_studio.ui.studio_tab import preview_html

    text = _long_text()
    item = {"prompt": {"id": "p1", "messages": [{"role": "user", "content": text}], "tags": []},
            "responses": [{"id": "r1", "text": "a", "origin": "policy"}, {"id": "r2", "text": "b", "origin": "policy"}],
            "annotation": None, "suggestion": None}
    rows = [{"prompt_id": "p1", "prompt": [{"role": "user", "content": text}],
             "normal": [{"text": "n", "seed": 1}], "negative": [{"text": "m", "seed": 2}]}]
    for h in (ranker_html(item), preview_html(rows, "none", "neg@1", 0, 1, 1)):
        assert "<img" not in h and "<script" not in h and h.count("&lt;img src=x onerror=alert(1)&gt;") == 2
        head, _, rest = h.partition("<details class='neat-fold'>")
        assert rest and "</details>" in rest
        shown = html.unescape(head)
        assert text[:550] in shown and text[620:640] not in shown  # ~600 characters shown, the rest folded
        assert text[620:640] in html.unescape(rest)
        assert "more characters; 20,000 in all" in rest
    short = "a short prompt <b>"
    assert folded_html(short) == "a short prompt &lt;b&gt;" and "neat-fold" not in ranker_html(
        dict(item, prompt=dict(item["prompt"], messages=[{"role": "user", "content": short}])))
    f = folded_html("word " * 300)
    assert len(html.unescape(f.split("<details")[0])) <= 600 and f.split("<details")[0].endswith(" ")


# -- AI suggestions from a weak scorer ---------------------------------------------------------------------------
class FakeScorer:
    scorer_version = "v-test"

    def __init__(self, dev_acc, n_dev_pairs, by_text):
        self.metrics = {"dev_acc": dev_acc, "n_dev_pairs": n_dev_pairs, "n_train_pairs": 100}
        self.by_text = by_text

    def score(self, prompts, responses):
        return [self.by_text[t] for t in responses]


def test_a_weak_scorers_suggestion_needs_a_second_key_and_shows_its_confidence(studio, monkeypatch):
    import math
    from pathlib import Path

    from neat_studio.ui.annotate import ranker_html

    pid = studio.store.add_prompts([{"text": "Is this toxic?", "source": "t"}], actor="t")[0]
    texts = {"toxic sample": 2.0, "polite answer": 0.0, "refusal": -1.0}
    rids = dict(zip(texts, studio.store.add_responses([{"prompt_id": pid, "text": t, "origin": "policy"}
                                                       for t in texts], actor="t")))
    # the scorer: 0.61 held-out accuracy (on enough pairs) puts the toxic sample first
    monkeypatch.setattr(studio, "reward_scorer", lambda: FakeScorer(0.61, 40, texts))
    item = studio.annotation_item(pid, "ann")
    s = item["suggestion"]
    assert s["ranking"] == [[rids["toxic sample"]], [rids["polite answer"]], [rids["refusal"]]]
    assert s["one_key"] is False and "Weak scorer: it orders only 61% of held-out pairs" in s["weak"]
    assert s["scores"] == {rids[t]: v for t, v in texts.items()}
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert s["p_better"][rids["toxic sample"]] == pytest.approx((sig(2) + sig(3)) / 2)
    h = ranker_html(item)
    assert "data-suggest-confirm='1'" in h and "press <b>A</b> twice to accept" in h and "accept AI (A, twice)" in h
    assert "press <b>A</b> to accept" not in h
    for t, v in texts.items():  # the scorer's confidence on every card
        card = h.split(f"data-rid='{rids[t]}'")[1].split("neat-card-text")[0]
        assert f"AI p {s['p_better'][rids[t]]:.2f} · score {v:+.2f}" in card
    # few held-out pairs is weak evidence too, however good the accuracy
    monkeypatch.setattr(studio, "reward_scorer", lambda: FakeScorer(0.9, 12, texts))
    assert studio.annotation_item(pid, "ann")["suggestion"]["one_key"] is False
    # a useful scorer: one key accepts, and its confidence is still shown
    monkeypatch.setattr(studio, "reward_scorer", lambda: FakeScorer(0.8, 40, texts))
    item = studio.annotation_item(pid, "ann")
    assert item["suggestion"]["one_key"] is True and item["suggestion"]["weak"] == ""
    h = ranker_html(item)
    assert "data-suggest-confirm" not in h and "press <b>A</b> to accept" in h and "AI p " in h
    # the browser side obeys the attribute: a first A on a weak suggestion only asks (tests/browser: the keys)
    js = (Path(__file__).resolve().parent.parent / "neat_studio" / "ui" / "ranker.js").read_text(encoding="utf-8")
    assert 'r.dataset.suggestConfirm === "1"' in js and "Press A again" in js


# -- Train: ask before a long run --------------------------------------------------------------------------------
def test_start_confirmation_rule():
    from neat_studio.studio import start_confirmation

    cfg = {"method": "neat", "rounds": 2, "data": {"split": "train"}}
    hour = {"seconds": 4140.0, "n_prompts": 2313, "text": "about 1 h 09 min (…; rough, ±2x)"}
    short = {"seconds": 900.0, "n_prompts": 12, "text": "about 15 min 00 s"}
    assert start_confirmation(cfg, short, None, 0.0) == {"start": True, "armed": None, "message": ""}  # <= 15 min
    assert start_confirmation(cfg, None, None, 0.0)["start"] is True  # no estimate: starting reports the problem
    first = start_confirmation(cfg, hour, None, 100.0)
    assert first["start"] is False and first["armed"] is not None
    assert "estimated at 1 h 09 min on 2313 training prompt(s)" in first["message"]
    assert "Press Start training again to confirm" in first["message"]
    # the second click with the same settings and data starts it
    assert start_confirmation(dict(cfg), dict(hour), first["armed"], 130.0) == {"start": True, "armed": None,
                                                                               "message": ""}
    # ... but not with other settings, other data, or much later: that click asks again
    for c, e, t in ((dict(cfg, rounds=3), hour, 130.0), (cfg, dict(hour, n_prompts=2400), 130.0),
                    (cfg, hour, 100.0 + 301)):
        again = start_confirmation(c, e, first["armed"], t)
        assert again["start"] is False and again["armed"]["at"] == t


def test_train_tab_asks_before_starting_a_long_run(studio, demo, monkeypatch):
    started = []
    monkeypatch.setattr(studio, "estimate_training", lambda cfg: {"seconds": 4140.0, "n_prompts": 2313,
                                                                  "text": "about 1 h 09 min"})
    monkeypatch.setattr(studio, "start_training", lambda cfg, actor="local": started.append(cfg) or "run1")
    dep = _fns(demo, "start", "train")[0]
    start = dep.fn
    comps = demo.neat_ctx.components
    state = next(b for b in dep.inputs if type(b).__name__ == "State")
    assert state in dep.outputs  # the first click's answer comes back with the second click
    data = {b: getattr(b, "value", None) for b in dep.inputs}
    out = start(data, None)
    msg = html.unescape(out[0])
    assert "neat-warn" in msg and "estimated at 1 h 09 min" in msg and "again to confirm" in msg and not started
    data[state] = out[-1]
    out = start(data, None)  # the second click, same settings: it starts
    assert started and "Started run run1" in out[0] and out[-1] is None
    # a second click after changing a setting asks again (for the new settings)
    data[state] = None
    first = start(data, None)
    assert "again to confirm" in first[0] and len(started) == 1
    data[state] = first[-1]
    data[comps["train.hp_rounds"]] = 5
    again = start(data, None)
    assert "again to confirm" in again[0] and len(started) == 1
    data[state] = again[-1]
    start(data, None)
    assert len(started) == 2 and started[1]["rounds"] == 5


def test_the_train_estimate_is_one_listener_over_the_form_where_the_last_change_wins(demo):
    """A recipe fills ~20 fields of the Train form at once. With one estimate listener per field they ran side by
    side, and the estimate of a half-filled form could land last and stay shown (seen in Chromium: "3
    validations" for safety-pp-lora's 7). One listener, one queue, the last trigger wins."""
    from neat_studio.ui.train import FORM_IN

    fns = _fns(demo, "do_estimate", "train")
    on_change = [f for f in fns if all(ev == "change" for _, ev in f.targets)]
    assert len(on_change) == 1
    f = on_change[0]
    assert f.trigger_mode == "always_last" and f.concurrency_limit == 1
    # every form field that can change the estimate triggers it (all but the free-text ones)
    assert len(f.targets) == len({t for t, _ in f.targets}) >= len(FORM_IN) - 4
    assert len(f.inputs) == len(FORM_IN)
