"""Evaluation prompt sets: normalisation, dedup against training data, deterministic split, readers, builder."""
import json

import pytest

from neat_studio import evalsets as E
from tests.conftest import shared


def test_normalize_text():
    assert E.normalize_text("  Hello,   WORLD!\n How’s it going? ") == "hello world hows it going"
    assert E.normalize_text("Don't") == E.normalize_text("dont") == E.normalize_text("DON’T!!")
    assert E.normalize_text("") == ""


def test_prompt_key_is_the_same_for_string_messages_and_hh_dialogue():
    s = "How do I bake bread?"
    assert E.prompt_key(s) == E.prompt_key([{"role": "user", "content": "how do i bake bread"}])
    assert E.prompt_key({"prompt": s}) == E.prompt_key(s)
    hh = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    msgs = E.as_messages(hh)
    assert msgs == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "How do I bake bread?"}]
    assert E.prompt_key(hh) == E.prompt_key(msgs) == "hi there how do i bake bread"


def test_dedupe_against_constructed():
    prompts = ["How do I bake bread?", "how do I  bake bread", "Tell me a joke.", "What is 2+2?",
               [{"role": "user", "content": "Write a poem."}]]
    training = [[{"role": "user", "content": "TELL ME A JOKE"}],
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                 {"role": "user", "content": "write a poem!"}]]  # a later user turn counts too
    out = E.dedupe_against(prompts, training)
    assert out == ["How do I bake bread?", "What is 2+2?"]
    # within-set duplicates only
    assert E.dedupe_against(prompts) == [prompts[0], prompts[2], prompts[3], prompts[4]]
    # pairs keep several rows per prompt with within=False
    rows = [{"prompt": "a b"}, {"prompt": "A, b."}, {"prompt": "c"}]
    assert E.dedupe_against(rows, ["c"], within=False) == rows[:2]


def test_split_is_deterministic_and_text_only():
    texts = [f"prompt number {i}" for i in range(400)]
    a = [E.split_of(t) for t in texts]
    assert a == [E.split_of(t) for t in texts]
    assert a == [E.split_of(t.upper() + "!!") for t in texts]  # normalised text decides
    assert 0.4 < a.count("dev") / len(a) < 0.6
    # fixed values: the rule must not drift silently (it decides what is test data)
    import hashlib
    for t in texts[:20]:
        h = hashlib.sha256(("neat-eval-split:" + E.normalize_text(t)).encode()).digest()
        assert E.split_of(t) == ("dev" if int.from_bytes(h[:8], "big") / 2**64 < 0.5 else "test")


def test_set_file_roundtrip_limit_and_split(tmp_path):
    rows = E.make_rows([f"Question {i}?" for i in range(30)], "comply", "mine")
    rows += E.make_rows(["Question 3"], "comply", "dup")  # duplicate after normalisation
    p = tmp_path / "s.jsonl"
    E.write_jsonl(p, rows)
    allr = E.load_prompt_set(p)
    assert len(allr) == 30 and all(r["messages"][0]["role"] == "user" for r in allr)
    dev = E.load_prompt_set(p, split="dev")
    test = E.load_prompt_set(p, split="test")
    assert len(dev) + len(test) == 30 and not {r["id"] for r in dev} & {r["id"] for r in test}
    a = E.load_prompt_set(p, limit=7, seed=3)
    assert [r["id"] for r in a] == [r["id"] for r in E.load_prompt_set(p, limit=7, seed=3)]
    assert len(a) == 7 and len({r["id"] for r in a}) == 7
    assert [r["id"] for r in a] != [r["id"] for r in E.load_prompt_set(p, limit=7, seed=4)]
    excl = E.load_prompt_set(p, exclude=["question 1", "Question 2!"])
    assert len(excl) == 28


def test_sample_rows_is_stratified_by_source():
    rows = E.make_rows([f"a{i}" for i in range(100)], "refuse", "big")
    rows += E.make_rows(["b1", "b2", "b3"], "refuse", "small")
    got = E.sample_rows(rows, 6, seed=0)
    assert sum(r["source"] == "small" for r in got) == 3


def test_plain_prompt_file_needs_expected(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("prompt\nHello there\nHow are you\n")
    with pytest.raises(ValueError, match="expected"):
        E.load_prompt_set(p)
    rows = E.load_prompt_set(p, expected="comply")
    assert [r["prompt"] for r in rows] == ["Hello there", "How are you"]
    with pytest.raises(FileNotFoundError):
        E.load_prompt_set(tmp_path / "nope.jsonl")


def test_read_pairs_from_snapshot_rows(tmp_path):
    snap = tmp_path / "snap"
    snap.mkdir()
    row = {"prompt_id": "p1", "prompt": [{"role": "user", "content": "Q"}], "responses": ["a", "b", "c"],
           "ranks": [0, 1, 1], "split": "train"}
    (snap / "data.jsonl").write_text(json.dumps(row) + "\n")
    pairs = E.read_pairs(snap)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a", "b"), ("a", "c")]
    assert E.training_prompts(snap) == [row["prompt"]]


def test_real_sets_readers():
    assert len(E.read_prompts(shared("advbench", "harmful_behaviors.csv"))) == 520
    assert len(E.read_prompts(shared("harmfulqa", "catqa_english.json"))) == 550
    assert len(E.read_prompts(shared("harmfulqa", "dangerousqa.json"))) == 200
    assert len(E.read_prompts(shared("coconot", "coconot_contrast_eval.jsonl"))) == 379
    seed = E.read_prompts(shared("self-instruct-seed", "seed_tasks.jsonl"))
    assert len(seed) == 175 and all(isinstance(s, str) and s for s in seed)
    look = E.load_prompt_set(shared("coconot", "coconot_contrast_eval.jsonl"), expected="comply")
    assert all(r["expected"] == "comply" for r in look)


def test_build_sets_on_real_files_never_overlap_training(tmp_path):
    """A fake 'training snapshot' made of real AdvBench + CoCoNot + HH prompts: the built eval sets must not
    contain any of them (normalised text), and the numbers removed must add up."""
    adv = E.read_prompts(shared("advbench", "harmful_behaviors.csv"))
    look = E.read_prompts(shared("coconot", "coconot_contrast_eval.jsonl"))
    pairs = E.read_pairs(shared("derived", "hh_rlhf_harmless_test_pairs.jsonl"))
    train_prompts = ([[{"role": "user", "content": p.upper() + " ?"}] for p in adv[:100]] +
                     [[{"role": "user", "content": p}] for p in look[::2]] +
                     [p["prompt"] for p in pairs[:50]])
    snap = tmp_path / "snap"
    snap.mkdir()
    with open(snap / "data.jsonl", "w") as f:
        for i, p in enumerate(train_prompts):
            f.write(json.dumps({"prompt_id": str(i), "prompt": p, "responses": ["x"], "ranks": [0]}) + "\n")
    sources = {"harmful": [shared("advbench", "harmful_behaviors.csv")],
               "lookalike": [shared("coconot", "coconot_contrast_eval.jsonl")],
               "pairs": [shared("derived", "hh_rlhf_harmless_test_pairs.jsonl")]}
    m = E.build_sets(tmp_path / "sets", sources, exclude=[snap])
    train_keys = E._training_keys(train_prompts)
    for name in ("harmful", "lookalike", "pairs"):
        rows = [json.loads(x) for x in open(tmp_path / "sets" / f"{name}.jsonl")]
        assert rows and not any(E.prompt_key(r["prompt"]) in train_keys for r in rows), name
        assert m["sets"][name]["total"] == len(rows)
        assert set(r["split"] for r in rows) == {"dev", "test"}
    assert m["sets"]["harmful"]["removed_overlap_with_training"] == 100
    assert m["sets"]["lookalike"]["removed_overlap_with_training"] == len(E.dedupe_against(look[::2]))
    assert m["sets"]["pairs"]["removed_overlap_with_training"] >= 50
    # loading with exclude at eval time gives the same answer
    again = E.load_prompt_set(tmp_path / "sets" / "harmful.jsonl", exclude=E.training_prompts(snap))
    assert len(again) == m["sets"]["harmful"]["total"]


def test_real_public_sets_overlap_is_removed_between_sources():
    """AdvBench and the other harmful sets share some prompts: the combined set holds each only once."""
    shared("do-not-answer")
    rows = E.load_prompt_set("harmful")
    keys = [E.prompt_key(r["prompt"]) for r in rows]
    assert len(keys) == len(set(keys))
    raw = sum(len(E.read_prompts(E.default_data_root() / rel)) for rel in E.DEFAULT_SOURCES["harmful"])
    assert len(rows) < raw


def _eval_parser():
    import argparse

    from neat_studio.eval_cli import register

    p = argparse.ArgumentParser()
    p.add_argument("--workspace")
    register(p.add_subparsers(dest="command"))
    return p


def test_cli_build_sets_from_given_paths(tmp_path, capsys):
    harm = tmp_path / "harm.csv"
    harm.write_text("goal,target\nDo a bad thing,Sure\nDo another bad thing,Sure\nDo a bad thing!,Sure\n")
    look = tmp_path / "look.jsonl"
    look.write_text('{"prompt": "How do I kill a process?"}\n{"prompt": "Do another bad thing"}\n')
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "data.jsonl").write_text(json.dumps({"prompt": [{"role": "user", "content": "do ANOTHER bad thing"}],
                                                 "responses": ["no"], "ranks": [0]}) + "\n")
    args = _eval_parser().parse_args(["eval", "--build-sets", str(tmp_path / "out"), "--exclude", str(snap),
                                      "--source", f"harmful={harm}", "--source", f"lookalike={look}"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["harmful"]["total"] == 1 and printed["harmful"]["removed_overlap_with_training"] == 1
    rows = [json.loads(x) for x in open(tmp_path / "out" / "lookalike.jsonl")]
    assert [(r["prompt"], r["expected"]) for r in rows] == [("How do I kill a process?", "comply")]
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(man["sets"]) == {"harmful", "lookalike"} and man["n_training_prompts"] == 1
