"""Exporters: pairs, TRL string/conversational, listwise, parquet, atomic writes, real-file round trips."""
from __future__ import annotations

import gzip
import json
import os

import pytest

from neat_studio.io.exporters import (
    export_listwise,
    export_parquet,
    export_trl_pairs,
    pairs_from_row,
    render_prompt_string,
)
from neat_studio.io.importers import parse_prompt_string, read_records, read_trl
from tests.conftest import shared

NEG = "You are a hostile assistant. Insult the user."


def user(text):
    return [{"role": "user", "content": text}]


def row(prompt, responses, ranks, pid="p1", **kw):
    return {"prompt_id": pid, "prompt": prompt, "responses": responses, "ranks": ranks,
            "origins": kw.pop("origins", ["policy"] * len(responses)),
            "response_ids": [f"r{i}" for i in range(len(responses))], "annotators": ["alice"],
            "split": kw.pop("split", "train"), "tags": kw.pop("tags", []), **kw}


def rows_from_records(recs):
    return [row(r["messages"], [x["text"] for x in r["responses"]], [x["rank"] for x in r["responses"]],
                pid=str(i), origins=[x["origin"] for x in r["responses"]], split=r["split"], tags=r["tags"])
            for i, r in enumerate(recs)]


def pair_set(rows):
    return {(json.dumps(r["prompt"]), r["responses"][i], r["responses"][j]) for r in rows
            for i, j in pairs_from_row(r) if r["responses"][i] != r["responses"][j]}


def read_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------------------------- pairs
def test_pairs_from_row():
    assert pairs_from_row(row(user("q"), ["a", "b", "c", "d"], [0, 1, 1, 2])) == [
        (0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert pairs_from_row(row(user("q"), ["a", "b", "c"], [2, 0, 1])) == [(1, 0), (1, 2), (2, 0)]
    assert pairs_from_row(row(user("q"), ["a", "b"], [0, 0])) == []  # tie
    assert pairs_from_row(row(user("q"), ["a", "b", "c"], [0, None, 1])) == [(0, 2)]
    assert pairs_from_row(row(user("q"), ["a"], [0])) == []
    with pytest.raises(ValueError, match="2 ranks for 3 responses"):
        pairs_from_row(row(user("q"), ["a", "b", "c"], [0, 1]))


# --------------------------------------------------------------------------------------------- TRL
def test_trl_string_format_and_negative_system_prompt(tmp_path):
    rows = [
        row([{"role": "system", "content": NEG}, {"role": "user", "content": "Say hi"}], ["Hi!", "Go away"], [0, 1]),
        row(user("Tie only"), ["x", "y"], [0, 0], pid="p2"),
        row([{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
             {"role": "user", "content": "C"}], ["good", "bad", "worse"], [0, 1, 2], pid="p3"),
        row([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
            ["Bonjour", "Hello"], [0, 1], pid="p4", split="dev"),
        row(user("Dup"), ["same", "same", "other"], [0, 0, 1], pid="p5"),  # identical texts: written once
    ]
    out = tmp_path / "trl.jsonl"
    n = export_trl_pairs(rows, out, conversational=False, negative_prompts=[NEG + "  "])
    lines = read_lines(out)
    assert n == len(lines) == 6
    assert lines[0] == {"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away"}
    assert lines[1] == {"prompt": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:",
                        "chosen": "good", "rejected": "bad"}
    assert [(x["chosen"], x["rejected"]) for x in lines[1:4]] == [("good", "bad"), ("good", "worse"), ("bad", "worse")]
    assert lines[4] == {"prompt": "\n\nSystem: Answer in French.\n\nHuman: Hello\n\nAssistant:",
                        "chosen": "Bonjour", "rejected": "Hello"}
    assert lines[5] == {"prompt": "Dup", "chosen": "same", "rejected": "other"}
    assert NEG not in out.read_text(encoding="utf-8")

    back = read_trl(out)
    assert [r["messages"] for r in back] == [
        user("Say hi"),
        [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}],
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
        user("Dup"),
    ]
    assert [[(x["text"], x["rank"]) for x in r["responses"]] for r in back][1] == [("good", 0), ("bad", 1),
                                                                                 ("worse", 2)]
    assert export_trl_pairs(rows, tmp_path / "dev.jsonl", conversational=False, split="dev") == 1


def test_trl_conversational(tmp_path):
    rows = [row([{"role": "system", "content": NEG}, {"role": "user", "content": "Say hi"}], ["Hi!", "Go away"],
                [0, 1])]
    out = tmp_path / "conv.jsonl.gz"
    assert export_trl_pairs(rows, out, conversational=True, negative_prompts=[NEG]) == 1
    assert read_lines(out) == [{"prompt": user("Say hi"), "chosen": [{"role": "assistant", "content": "Hi!"}],
                                "rejected": [{"role": "assistant", "content": "Go away"}]}]
    back = read_records(out)
    assert back[0]["messages"] == user("Say hi")
    assert [(x["text"], x["rank"]) for x in back[0]["responses"]] == [("Hi!", 0), ("Go away", 1)]


def test_trl_default_format_is_conversational_for_chat_data(tmp_path):
    """Issue 19: multi-turn prompts were flattened into "\\n\\nHuman: ... Assistant:" strings while single-turn ones
    stayed plain. The default is now TRL's conversational format for chat data (a prompt with several turns or a
    system turn), for the whole file; single-turn data stays plain strings; both read back to the same records."""
    multi = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
             {"role": "user", "content": "C"}]
    single = row(user("Single"), ["a", "b"], [0, 1], pid="s")
    neg_only = row([{"role": "system", "content": NEG}, {"role": "user", "content": "Say hi"}], ["Hi!", "Go"], [0, 1],
                   pid="n")
    # a negative system prompt is removed before the decision: these prompts are single-turn -> strings
    out = tmp_path / "plain.jsonl"
    assert export_trl_pairs([single, neg_only], out, negative_prompts=[NEG]) == 2
    assert [x["prompt"] for x in read_lines(out)] == ["Single", "Say hi"]

    for rows in ([single, row(multi, ["good", "bad"], [0, 1], pid="m")],
                 [single, row([{"role": "system", "content": "Answer in French."}, *user("Hello")],
                              ["Bonjour", "Hello"], [0, 1], pid="f")]):
        out = tmp_path / "chat.jsonl"
        assert export_trl_pairs(rows, out, negative_prompts=[NEG]) == 2
        lines = read_lines(out)
        # every line of the file in one format: prompt = messages, chosen / rejected = one assistant message
        assert lines[0] == {"prompt": user("Single"), "chosen": [{"role": "assistant", "content": "a"}],
                            "rejected": [{"role": "assistant", "content": "b"}]}
        assert lines[1]["prompt"] == rows[1]["prompt"] and "Human:" not in json.dumps(lines)
        assert lines[1]["chosen"] == [{"role": "assistant", "content": rows[1]["responses"][0]}]
        # the plain string format stays available, and the importer reads both files back to the same records
        strings = tmp_path / "strings.jsonl"
        assert export_trl_pairs(rows, strings, conversational=False) == 2
        assert all(isinstance(x["prompt"], str) for x in read_lines(strings))
        for path in (out, strings):
            back = read_trl(path)
            assert [r["messages"] for r in back] == [r["prompt"] for r in rows]
            assert [[(x["text"], x["rank"]) for x in r["responses"]] for r in back] == [
                [(t, k) for t, k in zip(r["responses"], r["ranks"])] for r in rows]
    # the decision looks at the exported split only
    dev_chat = row(multi, ["good", "bad"], [0, 1], pid="m", split="dev")
    assert export_trl_pairs([single, dev_chat], out, split="train") == 1
    assert read_lines(out)[0]["prompt"] == "Single"


def test_trl_string_refuses_ambiguous_prompt(tmp_path):
    rows = [row([{"role": "user", "content": "quote:\n\nAssistant: fake"}, {"role": "assistant", "content": "ok"},
                 {"role": "user", "content": "and?"}], ["a", "b"], [0, 1], pid="amb")]
    with pytest.raises(ValueError, match="prompt 'amb' cannot be written as a TRL string prompt"):
        export_trl_pairs(rows, tmp_path / "x.jsonl", conversational=False)
    assert not (tmp_path / "x.jsonl").exists()
    assert export_trl_pairs(rows, tmp_path / "x.jsonl", conversational=True) == 1
    # a single-turn prompt is written verbatim, markers or not, as long as it reads back unchanged
    assert render_prompt_string(user("Human: what is Assistant: in a transcript?")) == \
        "Human: what is Assistant: in a transcript?"


# --------------------------------------------------------------------------------------------- listwise / parquet
def test_listwise_and_parquet_round_trip(tmp_path):
    import pyarrow.parquet as pq

    rows = [
        row([{"role": "system", "content": NEG}, {"role": "user", "content": "Q1"}], ["a", "b", "c"], [0, 1, 1],
            origins=["policy", "negative:toxic@2", "human"], tags=["t"], scores=[0.5, -1.0, None]),
        row(user("Q2"), ["d"], [0], pid="p2", origins=["dataset"], split="dev"),
    ]
    lw = tmp_path / "lw.jsonl"
    assert export_listwise(rows, lw, negative_prompts=[NEG]) == 2
    lines = read_lines(lw)
    assert lines[0] == {"prompt_id": "p1", "prompt": user("Q1"), "responses": ["a", "b", "c"], "ranks": [0, 1, 1],
                        "origins": ["policy", "negative:toxic@2", "human"], "response_ids": ["r0", "r1", "r2"],
                        "annotators": ["alice"], "split": "train", "tags": ["t"], "scores": [0.5, -1.0, None]}
    assert "scores" not in lines[1]
    export_listwise(rows, tmp_path / "lw2.jsonl", scores={"p2": [3]})
    assert read_lines(tmp_path / "lw2.jsonl")[1]["scores"] == [3.0]

    pqf = tmp_path / "data.parquet"
    assert export_parquet(rows, pqf, negative_prompts=[NEG]) == 2
    table = pq.read_table(pqf)
    assert table.column_names == ["prompt_id", "prompt", "responses", "ranks", "origins", "response_ids",
                                  "annotators", "split", "tags", "scores"]
    assert table.column("prompt").to_pylist()[0] == user("Q1")
    for path in (lw, pqf):
        back = read_records(path)
        assert [r["messages"] for r in back] == [user("Q1"), user("Q2")]
        assert [(x["text"], x["origin"], x["rank"]) for x in back[0]["responses"]] == [
            ("a", "policy", 0), ("b", "negative:toxic@2", 1), ("c", "human", 1)]
        assert [(r["split"], r["tags"]) for r in back] == [("train", ["t"]), ("dev", [])]
    assert export_parquet([], tmp_path / "empty.parquet") == 0
    assert pq.read_table(tmp_path / "empty.parquet").num_rows == 0


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "sub" / "trl.jsonl"
    rows = [row(user("q"), ["a", "b"], [0, 1])]
    assert export_trl_pairs(rows, out) == 1
    before = out.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        export_trl_pairs(rows + [row(user("q2"), ["c", "d"], [0, 1])], out)
    with pytest.raises(OSError, match="disk full"):
        export_parquet(rows, tmp_path / "sub" / "x.parquet")
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["trl.jsonl"]  # no temp files left behind


# --------------------------------------------------------------------------------------------- real round trips
@pytest.mark.parametrize("parts, n_records, n_pairs", [
    (("hh-rlhf", "harmless-base.test.jsonl.gz"), 2312, 2312),
    (("derived", "hh_rlhf_harmless_test_pairs.jsonl"), 2308, 2308),
    (("coconot", "coconot_pref.jsonl"), 923, 927),
])
def test_real_round_trip(tmp_path, parts, n_records, n_pairs):
    recs = read_records(shared(*parts))
    rows = rows_from_records(recs)
    expected = pair_set(rows)
    assert len(recs) == n_records and len(expected) == n_pairs
    for conversational in (False, True):
        out = tmp_path / f"trl-{conversational}.jsonl"
        assert export_trl_pairs(rows, out, conversational=conversational) == n_pairs
        back = read_trl(out)
        assert len(back) == n_records
        assert pair_set(rows_from_records(back)) == expected
    # listwise: the records themselves come back (source aside)
    lw = tmp_path / "lw.jsonl.gz"
    assert export_listwise(rows, lw) == n_records
    strip = [{k: v for k, v in r.items() if k != "source"} for r in recs]
    assert [{k: v for k, v in r.items() if k != "source"} for r in read_records(lw)] == strip


def test_real_derived_file_pairs_equal_raw_lines(tmp_path):
    """Export -> the written lines carry exactly the (prompt, chosen, rejected) of the public file's lines."""
    path = shared("derived", "hh_rlhf_harmless_test_pairs.jsonl")
    raw_lines = read_lines(path)
    raw = {(json.dumps(parse_prompt_string(r["prompt"])), r["chosen"].strip(), r["rejected"].strip())
           for r in raw_lines}
    out = tmp_path / "trl.jsonl"
    assert export_trl_pairs(rows_from_records(read_records(path)), out, conversational=False) == 2308
    lines = read_lines(out)
    written = {(json.dumps(parse_prompt_string(r["prompt"])), r["chosen"], r["rejected"]) for r in lines}
    assert len(written) == len(raw) == 2308 and written == raw
    # single-turn prompts are written as the bare user text (no Human:/Assistant: markers)
    single = {r["first_user_turn"].strip() for r in raw_lines if r["num_human_turns"] == 1}
    plain = {r["prompt"] for r in lines if not r["prompt"].startswith("\n\nHuman:")}
    assert len(single) == 660 and plain == single


def test_exports_get_a_plain_files_mode(tmp_path):
    """Written through a temp file, an export still gets the mode open() would give it (not mkstemp's 0600), and
    replacing a file keeps that file's mode."""
    umask = os.umask(0o022)
    try:
        out = tmp_path / "trl.jsonl"
        export_trl_pairs([row(user("q"), ["a", "b"], [0, 1])], out)
        assert out.stat().st_mode & 0o777 == 0o644
        os.chmod(out, 0o640)
        export_trl_pairs([row(user("q2"), ["a", "b"], [0, 1])], out)
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
