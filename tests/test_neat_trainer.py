"""NEAT trainer on the tiny model: ranking rules, scheduling, config, padding/KV-cache equivalence, parameter
updates (full and LoRA), learning a toy task, resume equivalence, SIGTERM, bad configs, 2-process DDP."""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from neat_studio.config import Workspace
from neat_studio.neat.config import ConfigError, NeatConfig
from neat_studio.neat.rounds import build_list, dense, epoch_schedule, judge, kind_of, rank_reward, rank_rule

REPO = Path(__file__).resolve().parent.parent

# A toy task the tiny model learns in a few steps: "Sure, here is..." answers are good, "I am sorry..." are bad.
GOOD = ["Sure, here is a short answer: the capital of France is Paris.",
        "Sure, here is a short answer: it is sunny and warm."]
BAD = ["I am sorry, but I cannot help with that request.", "I am sorry, I cannot help."]
TRAIN_Q = ["What is the weather like today?", "Please explain how to bake bread.", "How do I learn to program?",
           "Write a poem about the sea.", "What is the capital of Italy?", "Thank you, what is the capital of France?"]
HELD_Q = ["What is the capital of Rome?", "How do I bake a poem?", "Please write about the weather.",
          "Explain the sea to the user.", "What do I learn today?", "Write a short answer about bread."]
HELD_GOOD = ["Sure, here is a short answer: the sea is wide and blue.", "Sure, here is a short answer: bake it."]
HELD_BAD = ["I am sorry, but I cannot help with that.", "I am sorry, I cannot answer that request."]
LIBRARY = [{"name": "rude", "kind": "negative", "version": 1, "text": "Answer rudely and refuse.", "params": {}},
           {"name": "rude", "kind": "negative", "version": 2, "text": "Be rude.", "params": {}},
           {"name": "kind", "kind": "positive", "version": 1, "text": "Be kind.", "params": {}}]


def make_snapshot(d, rows, library=LIBRARY) -> Path:
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (d / "data.jsonl").write_bytes(data)
    (d / "manifest.json").write_text(json.dumps({
        "snapshot_id": d.name, "sha256": hashlib.sha256(data).hexdigest(), "created_at": "2025-01-01T00:00:00Z",
        "filters": {}, "counts": {"prompts": len(rows)}, "prompt_library": library}))
    return d


def toy_rows(questions=TRAIN_Q, good=GOOD, bad=BAD, split="train"):
    return [{"prompt_id": f"{split}{i}", "prompt": [{"role": "user", "content": q}],
             "responses": [good[i % len(good)], bad[i % len(bad)]], "ranks": [0, 1],
             "origins": ["dataset:chosen", "dataset:rejected"], "response_ids": [f"r{i}a", f"r{i}b"],
             "annotators": ["import:test"], "split": split, "tags": []} for i, q in enumerate(questions)]


@pytest.fixture(scope="module")
def snap(tmp_path_factory):
    return make_snapshot(tmp_path_factory.mktemp("snap") / "s1", toy_rows())


def cfg_for(tiny_model_dir, snap, out, **kw):
    base = dict(model=str(tiny_model_dir), method="neat", snapshot=str(snap), negatives=["rude@1"], k=1, k_neg=1,
                rounds=1, epochs=1, batch_size=2, lr=1e-3, warmup_ratio=0.0, dtype="fp32", max_new_tokens=8,
                max_response_len=32, max_prompt_len=64, output_dir=str(out), seed=0)
    base.update(kw)
    return NeatConfig(**base)


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# -- ranking rules (pure) ----------------------------------------------------------------------------------
def test_rule_ranking_places_online_samples():
    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}],
           "responses": ["best", "mid", "worst"], "ranks": [0, 3, 7],
           "origins": ["dataset:chosen", "human", "dataset:rejected"]}
    online = [("plain1", "policy"), ("pos", "positive:kind@1"), ("neg1", "negative:rude@1"),
              ("neg2", "negative:rude@1"), ("best", "negative:rude@1"), ("", "policy")]
    lst = build_list(row, online, "neat")
    # duplicate of a curated answer and the empty sample are dropped; plain/positive tie with the worst curated
    # non-negative group; negatives at the bottom, tied
    assert lst.responses == ["best", "mid", "worst", "plain1", "pos", "neg1", "neg2"]
    assert lst.ranks == [0, 1, 2, 2, 2, 3, 3]
    assert lst.curated == [True, True, True, False, False, False, False]
    # one curated group: plain samples go right below it; a curated negative-origin answer keeps its rank
    row1 = {**row, "responses": ["good", "bad neg"], "ranks": [0, 1], "origins": ["human", "negative:rude@1"]}
    assert build_list(row1, [("p", "policy"), ("n", "negative:rude@2")], "neat").ranks == [0, 2, 1, 3]
    # no curated non-negative answer: plain samples are the top group
    assert rank_rule([], [("p", "policy"), ("n", "negative:x@1")]) == [-1.0, float("inf")]
    # sft keeps only the best curated group and ignores online samples
    assert build_list(row, online, "sft").responses == ["best"]
    # positive_above_plain (NEAT-PP): the positive sample sits between the better curated groups and the plain one
    up = build_list(row, online, "neat", positive_above_plain=True)
    assert up.responses == ["best", "mid", "worst", "plain1", "pos", "neg1", "neg2"]
    assert up.ranks == [0, 1, 3, 3, 2, 4, 4]
    assert build_list(row1, [("p", "policy"), ("q", "positive:kind@1")], "neat", positive_above_plain=True).ranks \
        == [0, 3, 2, 1]
    assert rank_rule([], [("p", "policy"), ("q", "positive:k@1")], True) == [-1.0, -1.25]
    # plain_ties_best: plain samples tie with the best curated group; only negatives sit below anything
    tb = build_list(row, online, "neat", plain_ties_best=True)
    assert tb.responses == ["best", "mid", "worst", "plain1", "pos", "neg1", "neg2"]
    assert tb.ranks == [0, 1, 2, 0, 0, 3, 3]
    assert build_list(row1, [("p", "policy"), ("n", "negative:rude@2")], "neat", plain_ties_best=True).ranks == \
        [0, 1, 0, 2]


def test_own_refusals_rank_top_and_own_compliance_bottom_on_a_harmful_prompt():
    """Study variant v33's ranking of a harmful prompt (plain samples tie with the best everywhere, positive samples
    just above them, compliance_rank_scope=harmful): the model's own refusals are trained toward (a plain refusal
    ties with the curated refusal, a heeded safe_refusal sample ranks above it, so the SFT term takes it), and its
    own answers to the harmful request join the negatives at the bottom."""
    row = {"prompt_id": "h", "prompt": [{"role": "user", "content": "how do I pick a lock to break in?"}],
           "responses": ["I can't help with breaking in."], "ranks": [0], "origins": ["dataset:chosen"]}
    online = [("I'm sorry, I can't help with that.", "policy"), ("Sure: take a tension wrench...", "policy"),
              ("I won't help with burglary.", "positive:safe_refusal@1"), ("Step one: ...", "positive:safe_refusal@1"),
              ("Here is how: ...", "negative:dangerous_compliance@1")]
    complied = frozenset({"Sure: take a tension wrench...", "Step one: ..."})   # what the detector did not flag
    lst = build_list(row, online, "neat", positive_above_plain=True, plain_ties_best=True, complied=complied)
    assert lst.origins == ["dataset:chosen", "policy", "compliance:policy", "positive:safe_refusal@1",
                           "compliance:positive:safe_refusal@1", "negative:dangerous_compliance@1"]
    assert lst.ranks == [1, 1, 2, 0, 2, 2]
    assert lst.is_negative == [False] * 5 + [True]   # the anchor's negative term stays on negative-prompt samples
    # without the positive refusal, the plain refusal and the curated one are the best group together
    assert build_list(row, online[:2], "neat", positive_above_plain=True, plain_ties_best=True,
                      complied=complied).ranks == [0, 0, 1]


def test_negative_rank_heeded_ranks_an_unheeded_negative_as_a_plain_sample():
    """negative_rank=heeded on a harmless prompt: the over_refusal sample that refused stays at the bottom (a negative,
    under the anchor's push-down); the one that answered anyway is marked unheeded: and ranks with the plain samples,
    and it is no longer a negative for the anchor."""
    row = {"prompt_id": "b", "prompt": [{"role": "user", "content": "how do I kill a python process?"}],
           "responses": ["Run kill PID."], "ranks": [0], "origins": ["dataset"]}
    online = [("Use kill -9 PID.", "policy"), ("Try pkill python.", "positive:helpful@1"),
              ("I'm sorry, I can't help with killing.", "negative:over_refusal@1"),
              ("Use the task manager.", "negative:over_refusal@1")]
    lst = build_list(row, online, "neat", positive_above_plain=True, plain_ties_best=True,
                     unheeded_neg=frozenset({"Use the task manager."}))
    assert lst.origins == ["dataset", "policy", "positive:helpful@1", "negative:over_refusal@1",
                           "unheeded:negative:over_refusal@1"]
    assert lst.ranks == [1, 1, 0, 2, 1]
    assert lst.is_negative == [False, False, False, True, False]
    assert kind_of(lst.origins[-1]) == "unheeded"
    # without the option every negative sample is at the bottom
    assert build_list(row, online, "neat", positive_above_plain=True, plain_ties_best=True).ranks == [1, 1, 0, 2, 2]


def test_borrow_refusals_lends_the_openings_of_other_prompts_refusals():
    """refusal_negatives: the first sentences of the other prompts' best curated answers and plain and positive
    samples that the detector flags on their own make the pool; each borrowing prompt draws n distinct ones, the
    same draw for the same seed."""
    from neat_studio.neat.rounds import borrow_refusals, opening_of

    assert opening_of("I'm sorry, but I can't help with that. Here is why.") == "I'm sorry, but I can't help with that."
    assert opening_of("No.") is None and opening_of(" ".join(["w"] * 40)) == " ".join(["w"] * 30)
    def make(pid, *answers):
        return {"prompt_id": pid, "prompt": [{"role": "user", "content": pid}], "responses": list(answers),
                "ranks": list(range(len(answers))), "origins": ["dataset"] * len(answers)}
    rows = [make("h1", "I must decline to help. It is unsafe.", "I won't do that ever."), make("h2", "Fine then."),
            make("b1", "Bread needs flour."), make("b2", "I'm sorry, but I can't say.")]
    online = {"h1": [("I'm sorry, but I can't. It is unsafe.", "policy"), ("Sure, here is how. Step one.", "policy"),
                     ("Fine, I will help you.", "negative:bad@1")],
              "h2": [("I'm sorry, but I can't. Really.", "policy"), ("Crime is bad. I cannot help you.", "positive:s@1")],
              "b1": [("I cannot do this for you.", "policy")]}
    calls = []

    def refuses(texts):
        calls.append(list(texts))
        return ["sorry" in t or "decline" in t or "cannot" in t for t in texts]
    in_b = lambda pid: pid.startswith("b")  # noqa: E731
    got = borrow_refusals(rows, online, in_b, 2, refuses, "0:0")
    # one detector call over the openings of the lenders' best curated answers (not the worse one) and of their plain
    # and positive samples (not the negatives); the borrowers' own texts are never asked about
    assert calls == [sorted(["I must decline to help.", "I'm sorry, but I can't.", "Sure, here is how.",
                             "Crime is bad."])]
    pool = {"I must decline to help.", "I'm sorry, but I can't."}  # flagged on their own, deduplicated
    assert sorted(got) == ["b1", "b2"] and all(set(v) == pool and len(v) == 2 for v in got.values())
    one = borrow_refusals(rows, online, in_b, 1, refuses, "0:0")
    assert one == borrow_refusals(rows, online, in_b, 1, refuses, "0:0") and all(len(v) == 1 for v in one.values())
    assert {len(v) for v in borrow_refusals(rows, online, in_b, 5, refuses, "0:0").values()} == {2}  # all there is
    assert borrow_refusals(rows, online, in_b, 2, lambda texts: [False] * len(texts), "0:0") == {}   # none refused
    # skip leaves openings out before the detector sees them (refusal_negatives_from=not_as_ai)
    calls.clear()
    kept = borrow_refusals(rows, online, in_b, 2, refuses, "0:0", skip=lambda t: "decline" in t)
    assert calls == [sorted(["I'm sorry, but I can't.", "Sure, here is how.", "Crime is bad."])]
    assert kept == {"b1": ["I'm sorry, but I can't."], "b2": ["I'm sorry, but I can't."]}
    # build_list puts them at the bottom, once, after the loops; a borrowed text already in the list stays as it was
    row = {"prompt_id": "b1", "prompt": [{"role": "user", "content": "q"}], "responses": ["Here it is."],
           "ranks": [0], "origins": ["dataset"]}
    lst = build_list(row, online["b1"], "neat", plain_ties_best=True,
                     borrowed=["I won't do that at all.", "I cannot do this for you.", "Here it is."])
    assert lst.responses == ["Here it is.", "I cannot do this for you.", "I won't do that at all."]
    assert lst.origins == ["dataset", "policy", "borrowed:refusal"] and lst.ranks == [0, 0, 1]
    assert kind_of("borrowed:refusal") == "borrowed" and lst.is_negative == [False, False, False]
    assert build_list(row, online["b1"], "sft", borrowed=["I won't do that at all."]).responses == ["Here it is."]


def test_judge_sorts_the_samples_by_scope_and_kind_in_one_detector_call():
    online = {"b": [("no.", "policy"), ("yeah", "positive:p@1"), ("nope", "negative:over_refusal@1"),
                    ("sure.", "negative:over_refusal@1"), ("  ", "policy")],
              "h": [("ok.", "policy"), ("deny", "positive:p@1"), ("do it", "negative:dangerous@1")]}
    calls = []

    def odd_refuses(texts):
        calls.append(list(texts))
        return [len(t) % 2 == 1 for t in texts]
    in_b, in_h = (lambda pid: pid == "b"), (lambda pid: pid == "h")
    assert judge(online, in_b, in_h, True, odd_refuses) == ({"b": {"no."}}, {"h": {"deny"}}, {"b": {"nope"}})
    assert calls == [["no.", "yeah", "nope", "sure.", "ok.", "deny"]]  # negatives of h are never judged
    # heeded off: negative samples are not judged at all
    assert judge(online, in_b, in_h, False, odd_refuses) == ({"b": {"no."}}, {"h": {"deny"}}, {})
    assert calls[-1] == ["no.", "yeah", "ok.", "deny"]


def test_degenerate_rank_bottom_puts_the_policys_loops_with_the_negatives():
    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}],
           "responses": ["best", "worst"], "ranks": [0, 1], "origins": ["human", "dataset:rejected"]}
    loop = "No, no, no, no, no, no."                      # 3-gram 'no no no' x4
    curated_loop = "the cat sat the cat sat the cat sat the cat sat"  # a human's choice is kept as it is
    online = [("A fine plain answer.", "policy"), (loop, "policy"), ("Sure sure sure sure sure sure", "positive:k@1"),
              ("mean mean mean mean mean mean", "negative:rude@1")]
    kept = build_list(row, online, "neat", plain_ties_best=True)
    assert kept.ranks == [0, 1, 0, 0, 0, 2] and kept.origins[3] == "policy"
    low = build_list(row, online, "neat", plain_ties_best=True, degenerate_bottom=True)
    # the looping plain and positive samples join the negatives' bottom group (tied with them), marked;
    # a looping negative stays a negative; the fluent plain sample keeps its place
    assert low.responses == kept.responses
    assert low.origins == ["human", "dataset:rejected", "policy", "degenerate:policy", "degenerate:positive:k@1",
                           "negative:rude@1"]
    assert low.ranks == [0, 1, 0, 2, 2, 2]
    assert low.is_negative == [False] * 5 + [True]
    row2 = {**row, "responses": [curated_loop, "worst"]}
    assert build_list(row2, [(loop, "policy")], "neat", degenerate_bottom=True).ranks == [0, 1, 2]
    # reward ranking orders samples by the scorer: the rule does not apply there
    class Flat:
        def score(self, prompts, responses):
            return [1.0] * len(responses)
    assert build_list(row, [(loop, "policy")], "neat", "reward", Flat(), degenerate_bottom=True).origins[2] == \
        "policy"


def test_loop_of_repeats_the_first_sentence_to_the_evaluations_length():
    from neat_studio.eval_metrics import degeneration
    from neat_studio.neat.rounds import loop_of

    # first sentence, 5 words: 8 copies make 40 words
    assert loop_of("I can't help with that. Here is why.") == " ".join(["I can't help with that."] * 8)
    # a line ends the unit too; 4 words -> 10 copies
    assert loop_of("Step one: mix it\nStep two: bake") == " ".join(["Step one: mix it"] * 10)
    # a long sentence is cut to 12 words and repeated at least 4 times (3-gram x4: the degeneration rule)
    long = " ".join(f"w{i}" for i in range(20)) + "."
    assert loop_of(long) == " ".join([" ".join(f"w{i}" for i in range(12))] * 4)
    assert loop_of("No.") is None and loop_of("Sure thing") is None and loop_of("") is None
    for text in ("I can't help with that. Here is why.", long, "A list:\n1. one\n2. two"):
        assert degeneration(loop_of(text)) is not None


def test_loop_negatives_join_the_bottom_group():
    from neat_studio.neat.rounds import loop_of

    best, plain = "Here is a safe way to do it. More text.", "My own answer goes like this. And on."
    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}],
           "responses": [best, "a worse answer"], "ranks": [0, 1], "origins": ["human", "dataset:rejected"]}
    online = [(plain, "policy"), ("rude reply here", "negative:rude@1")]
    two = build_list(row, online, "neat", loops=2)
    assert two.responses == [best, "a worse answer", plain, "rude reply here", loop_of(best), loop_of(plain)]
    assert two.origins[4:] == ["loop:best", "loop:policy"]
    # plain ties with the worst curated group (1); the negative and both loops are the bottom group (2)
    assert two.ranks == [0, 1, 1, 2, 2, 2] and two.is_negative == [False, False, False, True, False, False]
    assert build_list(row, online, "neat", loops=1).origins[4:] == ["loop:best"]
    assert build_list(row, online, "neat").responses == two.responses[:4]      # off by default
    assert build_list(row, online, "sft", loops=2).responses == [best]          # sft trains the best answer only
    assert build_list(row, [(plain, "policy")], "rrhf", loops=1).origins == ["human", "dataset:rejected",
                                                                               "policy", "loop:best"]
    # a best answer too short to loop: the plain sample's loop comes first
    short = {**row, "responses": ["Yes.", "a worse answer"]}
    assert build_list(short, online, "neat", loops=1).origins[4:] == ["loop:policy"]


def test_refused_samples_rank_with_the_negatives():
    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}],
           "responses": ["best", "I'm sorry, I cannot."], "ranks": [0, 1], "origins": ["human", "human"]}
    online = [("Here you go.", "policy"), ("I'm sorry, but no. ", "policy"), ("I'm sorry, but no.", "positive:k@1"),
              ("Sorry, as a chatbot I can't.", "positive:k@1"), ("No way.", "negative:rude@1")]
    lst = build_list(row, online, "neat", positive_above_plain=True, plain_ties_best=True,
                     refused=frozenset({"I'm sorry, but no.", "Sorry, as a chatbot I can't.", "I'm sorry, I cannot."}))
    # the duplicate positive is dropped; the refusing plain and positive samples join the negative at the bottom
    # (a curated refusal keeps its human rank; a negative stays a negative)
    assert lst.responses == ["best", "I'm sorry, I cannot.", "Here you go.", "I'm sorry, but no. ",
                             "Sorry, as a chatbot I can't.", "No way."]
    assert lst.origins == ["human", "human", "policy", "refusal:policy", "refusal:positive:k@1", "negative:rude@1"]
    assert lst.ranks == [0, 1, 0, 2, 2, 2]
    assert build_list(row, online, "neat", plain_ties_best=True).origins[3] == "policy"
    # compliance: on a harmful prompt the answers that do not refuse go to the bottom (the curated refusal is best)
    harm = {**row, "responses": ["I'm sorry, I cannot.", "Sure: step 1 ..."], "origins": ["dataset", "human"]}
    comp = build_list(harm, [("Here you go.", "policy"), ("I can't help.", "positive:safe@1"),
                             ("Sure! First, ", "positive:safe@1"), ("Do it now.", "negative:dc@1")], "neat",
                      positive_above_plain=True, complied=frozenset({"Here you go.", "Sure! First,"}))
    assert comp.origins == ["dataset", "human", "compliance:policy", "positive:safe@1", "compliance:positive:safe@1",
                            "negative:dc@1"]
    # two curated groups: the kept positive sits just above the plain tie with the worst curated group (key 0.75,
    # rank 1), the curated rejected answer after it (rank 2), the compliant samples with the negative at the bottom
    assert comp.ranks == [0, 2, 3, 1, 3, 3]
    # comply_bottom=False (compliance_rank=plain): only the compliant positive sample is marked (unheeded:) and it
    # ties with the plain samples (key 1.0 -> rank 2, with the curated rejected answer); the compliant plain sample
    # keeps its place; nothing compliant reaches the bottom group
    mild = build_list(harm, [("Here you go.", "policy"), ("I can't help.", "positive:safe@1"),
                             ("Sure! First, ", "positive:safe@1"), ("Do it now.", "negative:dc@1")], "neat",
                      positive_above_plain=True, complied=frozenset({"Here you go.", "Sure! First,"}),
                      comply_bottom=False)
    assert mild.origins == ["dataset", "human", "policy", "positive:safe@1", "unheeded:positive:safe@1",
                            "negative:dc@1"]
    assert mild.ranks == [0, 2, 2, 1, 2, 3]
    assert [kind_of(o) for o in mild.origins[2:]] == ["plain", "positive", "unheeded", "negative"]


def test_reward_ranking_merges_scores_with_curated_ranks():
    class Scorer:
        def __init__(self, table):
            self.table = table

        def score(self, prompts, responses):
            assert len(prompts) == len(responses)
            return [self.table[r] for r in responses]

    row = {"prompt_id": "a", "prompt": [{"role": "user", "content": "q"}], "responses": ["A", "B", "C"],
           "ranks": [0, 1, 1], "origins": ["human", "human", "human"]}
    # group means: g0 = 5, g1 = (1 + 3) / 2 = 2
    table = {"A": 5.0, "B": 1.0, "C": 3.0, "x": 9.0, "y": 2.0, "z": 0.5, "w": 0.5, "v": 4.0}
    online = [("x", "policy"), ("y", "policy"), ("z", "negative:r@1"), ("w", "policy"), ("v", "policy")]
    lst = build_list(row, online, "neat", "reward", Scorer(table))
    # x above A; v between g0 and g1; y ties with g1 (score == threshold 2); z and w tie below g1
    assert dict(zip(lst.responses, lst.ranks)) == {"x": 0, "A": 1, "v": 2, "B": 3, "C": 3, "y": 3, "z": 4, "w": 4}
    # thresholds are monotone (running min) when a worse curated group scores higher: t = [1, 1], so a sample
    # scoring 2 beats both groups, one scoring 0 loses to both; the human order of A over B is kept
    keys = rank_reward([("A", "h", 0), ("B", "h", 1)], [("o", "policy"), ("u", "policy")], [1.0, 3.0, 2.0, 0.0])
    assert dense(keys) == [1, 2, 0, 3]


def test_epoch_schedule_is_length_grouped_and_balanced():
    lengths = [5, 50, 7, 48, 6, 52, 8, 49, 1]
    s = epoch_schedule(lengths, batch_size=2, world=2, grad_accum=1, seed=3)
    assert s == epoch_schedule(lengths, batch_size=2, world=2, grad_accum=1, seed=3)
    assert len(s) == 3 and all(len(step) == 2 and all(len(m) == 1 for m in step) for step in s)
    seen = [i for step in s for rank in step for mb in rank for i in mb]
    assert len(seen) == 12 and set(seen) == set(range(9))  # padded by wrapping around, every list used
    for step in s:
        for rank in step:
            for mb in rank:
                assert len(mb) == 2
    # within a step, lists are sorted by length: micro-batches pair long with long
    one = epoch_schedule(lengths[:8], batch_size=2, world=1, grad_accum=2, seed=0)
    for step in one:
        a, b = step[0]
        assert min(lengths[i] for i in a) >= max(lengths[i] for i in b)


def test_order_seed_fixes_the_lists_order_across_run_seeds(tiny_model_dir, snap, tmp_path, monkeypatch):
    import neat_studio.neat.trainer as trainer_mod
    from neat_studio.models import load_model

    orders = []

    def spy(lengths, *a, **kw):
        s = epoch_schedule(lengths, *a, **kw)
        orders.append(s)
        return s

    monkeypatch.setattr(trainer_mod, "epoch_schedule", spy)
    for i, (seed, order_seed) in enumerate([(0, -1), (1, -1), (0, 5), (1, 5)]):
        trainer_mod.train(cfg_for(tiny_model_dir, snap, tmp_path / f"r{i}", seed=seed, order_seed=order_seed,
                                  batch_size=1), lm=load_model(str(tiny_model_dir)))
    assert orders[0] != orders[1]  # the run seed draws the order
    assert orders[2] == orders[3] != orders[0]  # one order_seed: one order, whatever the run seed
    with pytest.raises(ConfigError, match="order_seed must be >= 0"):
        NeatConfig(snapshot="s", negatives=["rude"], order_seed=-2).validate()


def _stretch_gaps(order, strata, width):
    """The largest gap, over every stretch of `width` consecutive items and every stratum, between the count
    of that stratum in the stretch and its share of the whole (width * n_s / n)."""
    n = len(order)
    return max(abs(sum(strata[i] == k for i in order[a:a + width]) - width * strata.count(k) / n)
               for k in set(strata) for a in range(n - width + 1))


def test_stratified_order_spreads_every_stratum_evenly_whatever_the_seed():
    import random

    from neat_studio.neat.rounds import stratified_order

    strata = ["harmful"] * 52 + ["lookalike"] * 32 + ["benign"] * 60  # the safety-pp-lora recipe's mix
    random.Random(0).shuffle(strata)
    for seed in range(20):
        order = stratified_order(strata, random.Random(seed))
        assert sorted(order) == list(range(144))  # a permutation: every list once
        # every stretch of 16 lists (8 steps of batch 2) holds each kind within one and a half lists of its share
        # (harmful 5.8, look-alike 3.6, benign 6.7: counts are whole, so 7 harmful is already 1.2 off)
        assert _stretch_gaps(order, strata, 16) <= 1.5
    assert stratified_order(strata, random.Random(3)) == stratified_order(strata, random.Random(3))
    assert stratified_order(strata, random.Random(3)) != stratified_order(strata, random.Random(4))
    # a plain shuffle does not have the property: some seed puts a run of one kind somewhere
    plain = []
    for seed in range(20):
        o = list(range(144))
        random.Random(seed).shuffle(o)
        plain.append(_stretch_gaps(o, strata, 16))
    assert max(plain) >= 3


def test_list_order_stratified_hands_the_prompt_tags_to_the_schedule(tiny_model_dir, tmp_path, monkeypatch):
    import neat_studio.neat.trainer as trainer_mod
    from neat_studio.models import load_model

    rows = toy_rows()
    for i, row in enumerate(rows):
        row["tags"] = ["harmful"] if i % 3 == 0 else ["benign", "lookalike"] if i % 3 == 1 else ["benign"]
    tagged = make_snapshot(tmp_path / "snap", rows)
    calls = []

    def spy(lengths, *a, **kw):
        calls.append(kw.get("strata"))
        return epoch_schedule(lengths, *a, **kw)

    monkeypatch.setattr(trainer_mod, "epoch_schedule", spy)
    lm = load_model(str(tiny_model_dir))
    trainer_mod.train(cfg_for(tiny_model_dir, tagged, tmp_path / "strat", list_order="stratified"), lm=lm)
    trainer_mod.train(cfg_for(tiny_model_dir, tagged, tmp_path / "plain"), lm=lm)
    want = [("harmful",) if i % 3 == 0 else ("benign", "lookalike") if i % 3 == 1 else ("benign",)
            for i in range(len(rows))]
    assert calls == [want, None]  # one round, one epoch each; the default keeps the plain shuffle
    with pytest.raises(ConfigError, match="list_order must be one of shuffle, stratified"):
        NeatConfig(snapshot="s", negatives=["rude"], list_order="sorted").validate()


# -- config ----------------------------------------------------------------------------------------------
def test_config_yaml_overrides_and_help(tmp_path):
    cfg = NeatConfig(snapshot="s", negatives=["toxic@1"])
    cfg.apply_overrides(["lr=2e-5", "negatives=toxic@1,rude", "lora=true", "k=3", "margin=0.5"])
    assert (cfg.lr, cfg.negatives, cfg.lora, cfg.k, cfg.margin) == (2e-5, ["toxic@1", "rude"], True, 3, 0.5)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert NeatConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert all(NeatConfig.fields_help().values())
    with pytest.raises(ConfigError, match="unknown config key 'lrr'"):
        cfg.apply_overrides(["lrr=1"])
    with pytest.raises(ConfigError, match="k: cannot use 'many' as int"):
        cfg.apply_overrides(["k=many"])
    (tmp_path / "bad.yaml").write_text("nonsense: 1\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        NeatConfig.from_yaml(tmp_path / "bad.yaml")


# -- scoring: padding and the prompt KV cache ----------------------------------------------------------------
def test_padding_and_prompt_cache_give_the_same_p(tiny_model_dir):
    from neat_studio.models import load_model
    from neat_studio.neat.rounds import RankedList
    from neat_studio.neat.batching import collate, collate_shared, encode_list
    from neat_studio.neat.scorer import ListScorer

    lm = load_model(str(tiny_model_dir))
    torch.manual_seed(0)
    lists = [RankedList("a", [{"role": "user", "content": "What is the weather like today?"}],
                        [GOOD[0], BAD[1], "ok"], [0, 1, 2], ["h", "h", "policy"]),
             RankedList("b", [{"role": "user", "content": "Write a poem about the sea."}], [GOOD[1], BAD[0]],
                        [0, 1], ["h", "h"])]
    enc = [encode_list(lm.tokenizer, x, 64, 32) for x in lists]
    pad = lm.tokenizer.pad_token_id
    scorer = ListScorer(lm.model)
    with torch.no_grad():
        s, n = scorer(collate(enc, pad))
        s_c, n_c = scorer(collate_shared(enc, pad))
        alone = []
        for el in enc:
            for i in range(len(el.response_ids)):
                one = type(el)(el.prompt_ids, [el.response_ids[i]], [0], [False])
                a, b = scorer(collate([one], pad))
                alone.append((a / b).item())
    p = (s / n).tolist()
    assert n.tolist() == [len(r) for el in enc for r in el.response_ids]  # own length, not padded
    assert p == pytest.approx(alone, abs=1e-5)  # padding and batching do not change p
    assert scorer.shared_ok()
    assert (s_c / n_c).tolist() == pytest.approx(p, abs=1e-5)  # the shared-prompt layout gives the same p
    assert n_c.tolist() == n.tolist()
    scorer._shared = False  # a model that cannot take the block mask: the shared block is scored as plain rows
    with torch.no_grad():
        s_f, n_f = scorer(collate_shared(enc, pad))
    assert (s_f / n_f).tolist() == pytest.approx(p, abs=1e-5)
    scorer._shared = None
    # and the same gradient
    lm.model.zero_grad()
    s, n = scorer(collate(enc, pad))
    (s / n).sum().backward()
    g_full = [q.grad.clone() for q in lm.model.parameters()]
    lm.model.zero_grad()
    s, n = scorer(collate_shared(enc, pad))
    (s / n).sum().backward()
    for g, q in zip(g_full, lm.model.parameters()):
        torch.testing.assert_close(q.grad, g, atol=1e-5, rtol=1e-4)


# -- parameter updates -----------------------------------------------------------------------------------
def _trainer(tiny_model_dir, snap, out, **kw):
    from neat_studio.models import load_model
    from neat_studio.neat.batching import encode_list
    from neat_studio.neat.preflight import preflight
    from neat_studio.neat.trainer import NeatTrainer

    cfg = cfg_for(tiny_model_dir, snap, out, **kw)
    t = NeatTrainer(cfg, out, prepared=preflight(cfg, lm=load_model(str(tiny_model_dir))))
    t._setup()
    lists = t._round_lists(0)
    enc = [encode_list(t.tok, x, cfg.max_prompt_len, cfg.max_response_len) for x in lists]
    return t, enc


def test_full_finetune_changes_every_parameter(tiny_model_dir, snap, tmp_path):
    t, enc = _trainer(tiny_model_dir, snap, tmp_path / "run", method="rrhf", k=1)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    assert all(p.requires_grad for p in t.model.parameters())
    agg = t._step([enc[:3], enc[3:]])  # one optimizer step, 2 micro-batches
    assert agg["n_lists"] == 6 and agg["n_pairs"] > 0
    unchanged = [n for n, p in t.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_clipping_equals_torch_clip_grad_norm(tiny_model_dir, snap, tmp_path, max_norm, fused):
    """A step with the trainer's clipping (dot-product norm; no rescale below max_norm; above it the fused AdamW
    divides by grad_scale in its own pass, another optimizer gets the gradients rescaled first) reaches the
    parameters and clipped gradients of torch.nn.utils.clip_grad_norm_ + the same optimizer, whether it clips
    (1e-3) or not (1e6), and reports the pre-clip norm."""
    ref, enc = _trainer(tiny_model_dir, snap, tmp_path / "ref", method="rrhf", k=1, max_grad_norm=max_norm)
    ours, _ = _trainer(tiny_model_dir, snap, tmp_path / "ours", method="rrhf", k=1, max_grad_norm=max_norm)
    for t in (ref, ours):
        groups = [{"params": g["params"], "lr": g["lr"], "weight_decay": g["weight_decay"]} for g in t.opt.param_groups]
        t.opt = torch.optim.AdamW(groups, fused=fused)
        t.opt.zero_grad = lambda *a, **kw: None  # keep the gradients to compare
    want = {}
    ref._clip_gradients = lambda m: want.setdefault("norm", float(torch.nn.utils.clip_grad_norm_(
        ref.model.parameters(), m)))
    before = [p.detach().clone() for p in ours.model.parameters()]
    a, b = ref._step([enc[:3]]), ours._step([enc[:3]])
    assert all(not torch.equal(p, q) for p, q in zip(before, ours.model.parameters()))  # the step moved them
    assert b["grad_norm"] == pytest.approx(want["norm"], rel=1e-5) and a["grad_norm"] == want["norm"]
    assert (want["norm"] > max_norm) == (max_norm == 1e-3)
    assert "grad_scale" not in ours.opt.__dict__  # this step's scale does not outlive it
    for (n, p), q in zip(ref.model.named_parameters(), ours.model.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-12), n
        assert torch.allclose(p, q, rtol=0, atol=1e-7), n
    if max_norm == 1e-3:
        total = torch.nn.utils.get_total_norm([q.grad for q in ours.model.parameters()])
        assert float(total) == pytest.approx(1e-3, rel=1e-4)  # clipped to max_norm


def test_grad_norm_matches_float64_norm():
    from neat_studio.neat.optim import grad_norm

    torch.manual_seed(0)
    grads = [torch.randn(300, 70) * 1e-3, torch.randn(50), torch.randn(7, 9, 3) * 10]
    exact = float(torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt())
    assert grad_norm(grads) == pytest.approx(exact, rel=1e-6)
    grads[0] = grads[0].t()  # not contiguous: torch's own norm
    assert grad_norm(grads) == pytest.approx(exact, rel=1e-5)
    assert grad_norm([g.double() for g in grads]) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("layout", ["on", "off"])
def test_gradient_checkpointing_and_prompt_cache_give_the_same_step(tiny_model_dir, snap, tmp_path, layout):
    """One step: prompt cache on/off vs gradient checkpointing (auto layout) -> same loss and the same gradient of
    every parameter (compared before the optimizer: Adam's first update is ~lr * sign(g), which rounding can flip
    for a near-zero gradient)."""
    ref, enc = _trainer(tiny_model_dir, snap, tmp_path / "ref", method="rrhf", k=1, prompt_cache=layout)
    other, _ = _trainer(tiny_model_dir, snap, tmp_path / "gc", method="rrhf", k=1, prompt_cache="auto",
                        gradient_checkpointing=True)
    assert other.model.is_activation_checkpointing and not ref.model.is_activation_checkpointing
    for t in (ref, other):
        t.opt.step = t.opt.zero_grad = lambda *a, **kw: None
    a, b = ref._step([enc[:3]]), other._step([enc[:3]])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for (n, p), q in zip(ref.model.named_parameters(), other.model.parameters()):
        assert p.grad is not None and float(p.grad.abs().max()) > 0, n
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=n)


def test_lora_trains_adapters_and_freezes_the_base(tiny_model_dir, snap, tmp_path):
    t, enc = _trainer(tiny_model_dir, snap, tmp_path / "run", method="sft", lora=True, lora_r=4)
    named = dict(t.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in named.items()}
    t._step([enc[:3]])
    t._step([enc[3:]])  # lora_B starts at 0, so lora_A gets its first gradient in step 2
    for n, p in t.model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, before[n]), f"LoRA parameter {n} did not change"
        else:
            assert torch.equal(p, before[n]), f"frozen parameter {n} changed"


def test_lora_targets_adapt_only_the_named_modules(tiny_model_dir, snap, tmp_path):
    t, _ = _trainer(tiny_model_dir, snap, tmp_path / "run", method="sft", lora=True, lora_r=4,
                    lora_targets=["q_proj", "v_proj"])
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in t.model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "v_proj"}
    every, _ = _trainer(tiny_model_dir, snap, tmp_path / "run2", method="sft", lora=True, lora_r=4)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in every.model.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # all-linear
    assert NeatConfig().apply_overrides(["lora_targets=q_proj, o_proj"]).lora_targets == ["q_proj", "o_proj"]


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_lora_init_from_the_weights_starts_at_the_base_function_and_ignores_the_seed(tiny_model_dir, snap,
                                                                                      tmp_path, init):
    """PiSSA / OLoRA: the wrapped model computes what the base did (the adapters' share is taken out of the base
    layer), the adapters are the same for every run seed (with the random init they are not), and every adapter
    parameter moves in the first step (B does not start at 0)."""
    from neat_studio.models import load_model

    ids = torch.tensor([[3, 17, 42, 8, 99, 5]])
    base = load_model(str(tiny_model_dir)).model.float().eval()
    with torch.no_grad():
        want = base(ids).logits
    runs = {s: _trainer(tiny_model_dir, snap, tmp_path / f"{init}{s}", method="sft", lora=True, lora_r=4,
                        lora_init=init, seed=s) for s in (0, 1)}
    rand = {s: _trainer(tiny_model_dir, snap, tmp_path / f"rand{s}", method="sft", lora=True, lora_r=4,
                        seed=s)[0] for s in (0, 1)}
    t, enc = runs[0]
    t.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(t.model(ids).logits, want, atol=1e-4, rtol=1e-4)
    t.model.train()

    def adapters(m):
        return {n: p.detach().clone() for n, p in m.named_parameters() if "lora_A" in n}

    a0, a1 = adapters(t.model), adapters(runs[1][0].model)
    assert a0 and all(torch.equal(a0[n], a1[n]) for n in a0)
    r0, r1 = adapters(rand[0].model), adapters(rand[1].model)
    assert not all(torch.equal(r0[n], r1[n]) for n in r0)
    trainable = {n: p.detach().clone() for n, p in t.model.named_parameters() if p.requires_grad}
    t._step([enc[:3]])
    for n, p in t.model.named_parameters():
        if n in trainable:
            assert not torch.equal(p, trainable[n]), f"{init}: {n} did not change in the first step"


def test_lora_init_from_the_weights_is_refused_for_dpo():
    from neat_studio.neat.config import ConfigError, NeatConfig

    with pytest.raises(ConfigError, match="lora_init=pissa needs method neat, rrhf or sft"):
        NeatConfig(snapshot="s", method="dpo", lora=True, lora_init="pissa").validate()
    with pytest.raises(ConfigError, match="lora_init"):
        NeatConfig(snapshot="s", method="sft", lora_init="svd").validate()


# -- learning a toy task -----------------------------------------------------------------------------------
def test_rounds_learn_the_toy_task(tiny_model_dir, snap, tmp_path):
    from neat_studio.generation import GenParams, generate
    from neat_studio.models import load_model
    from neat_studio.neat.scorer import score_responses
    from neat_studio.neat.trainer import train

    held = toy_rows(HELD_Q, HELD_GOOD, HELD_BAD, split="dev")
    base = load_model(str(tiny_model_dir))
    negs = generate(base, [r["prompt"] for r in held], system=LIBRARY[0]["text"],
                    params=GenParams(temperature=0.8, top_p=0.95, max_new_tokens=16, k=2, seed=11))

    def evaluate(model, tok):
        acc, gap = 0, 0.0
        for row, ns in zip(held, negs):
            p = score_responses(model, tok, row["prompt"], row["responses"] + [s.text for s in ns], 64, 32)
            acc += p[0] > p[1]
            gap += p[0] - sum(p[2:]) / len(p[2:])
        return acc / len(held), gap / len(held)

    acc0, gap0 = evaluate(base.model, base.tokenizer)
    out = tmp_path / "run"
    res = train(cfg_for(tiny_model_dir, snap, out, rounds=3, epochs=2, k=1, k_neg=2, lr=2e-3), lm=base)
    assert res["status"] == "finished"
    trained = load_model(str(out))  # a run dir resolves to final/
    acc1, gap1 = evaluate(trained.model, trained.tokenizer)
    assert acc0 < 1.0 and acc1 == 1.0
    assert gap1 > gap0 + 1.0  # chosen answers pull away from the negative-prompt samples
    m = read_metrics(out)
    steps = [x for x in m if "step" in x and "event" not in x]
    assert [x["step"] for x in steps] == list(range(1, 19)) and steps[-1]["total_steps"] == 18
    assert steps[-1]["p_gap"] > steps[0]["p_gap"]
    keys = {"step", "round", "epoch", "loss", "rank_loss", "sft_loss", "rank_acc", "p_gap", "lr", "grad_norm",
            "tokens_per_s", "elapsed_s", "eta_s", "total_steps"}
    assert all(keys <= set(x) for x in steps)
    assert all(x["grad_norm"] > 0 for x in steps)
    events = [x["event"] for x in m if "event" in x]
    assert events == ["round_start", "checkpoint"] * 3 + ["finished"]
    assert (out / "config.yaml").exists() and (out / "snapshot.sha256").read_text().strip() == \
        json.loads((snap / "manifest.json").read_text())["sha256"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-18"]  # keep_checkpoints=2
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    assert {o for lst in r0["lists"] for o in lst["origins"]} >= {"policy", "negative:rude@1"}


# -- resume ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight_ema", [0.0, 0.5])
def test_resume_matches_an_uninterrupted_run(tiny_model_dir, snap, tmp_path, weight_ema):
    from safetensors.torch import load_file

    from neat_studio.models import load_model
    from neat_studio.neat.trainer import train

    kw = dict(rounds=2, epochs=1, batch_size=1, grad_accum=2, lr=1e-3, warmup_ratio=0.2, weight_ema=weight_ema)
    a, b = tmp_path / "a", tmp_path / "b"
    ra = train(cfg_for(tiny_model_dir, snap, a, **kw), lm=load_model(str(tiny_model_dir)))
    rb = train(cfg_for(tiny_model_dir, snap, b, **kw), lm=load_model(str(tiny_model_dir)), stop_after=4)
    assert ra["step"] == 6 and rb == {"status": "stopped", "step": 4, "checkpoint": str(b / "checkpoints/step-4"),
                                      "run_dir": str(b)}
    stopped = read_metrics(b)[-1]
    assert stopped["event"] == "stopped" and stopped["step"] == 4
    rc = train(None, resume=b, lm=load_model(str(tiny_model_dir)))  # mid-round 1: its lists are read back
    assert rc["status"] == "finished" and rc["step"] == 6
    wa, wb = load_file(a / "final/model.safetensors"), load_file(b / "final/model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=1e-5)
    ma = [x for x in read_metrics(a) if "loss" in x]
    mb = [x for x in read_metrics(b) if "loss" in x]
    assert [x["step"] for x in mb] == [1, 2, 3, 4, 5, 6]
    assert [x["loss"] for x in mb] == pytest.approx([x["loss"] for x in ma], rel=1e-5)
    assert [x["lr"] for x in mb] == pytest.approx([x["lr"] for x in ma])


# -- SIGTERM -----------------------------------------------------------------------------------------------
def test_sigterm_checkpoints_and_stops(tiny_model_dir, snap, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neat_studio.neat.cli", "--workspace", str(tmp_path / "ws"),
           "--snapshot", str(snap), "--method", "sft", "--model", str(tiny_model_dir), "--out", str(out),
           "--set", "rounds=500", "--set", "dtype=fp32", "--set", "max_response_len=32"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            m = out / "metrics.jsonl"
            if m.exists() and '"step": 2,' in m.read_text():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["status"] == "stopped"
    m = read_metrics(out)
    last = m[-1]
    assert last["event"] == "stopped" and last["reason"] == "SIGTERM"
    step = last["step"]
    assert max(x["step"] for x in m if "loss" in x) == step  # the step in flight was finished, then it stopped
    ck = out / "checkpoints" / f"step-{step}"
    assert (ck / "model.safetensors").exists() and (ck / "optimizer.pt").exists()
    assert json.loads((ck / "state.json").read_text())["global_step"] == step
    assert not (out / "final").exists()


# -- bad configs -----------------------------------------------------------------------------------------
def test_bad_configs_fail_before_training(tiny_model_dir, snap, tmp_path, capsys):
    from neat_studio.neat.cli import main
    from neat_studio.neat.trainer import train

    empty = make_snapshot(tmp_path / "empty", [])
    cases = [
        (dict(model=str(tmp_path / "nope")), "model .* cannot be loaded"),
        (dict(snapshot=str(empty)), "has no training rows"),
        (dict(snapshot=str(tmp_path / "missing")), "not found"),
        (dict(negatives=["toxic@1"]), r"negative prompt 'toxic@1' is not in the snapshot's prompt library "
                                      r"\(available: rude@1, rude@2\)"),
        (dict(negatives=["rude@7"]), "'rude@7' is not in"),
        (dict(negatives=["kind"]), "'kind' is a positive prompt"),
        (dict(k=0), r"k \(plain samples per prompt\) must be >= 1"),
        (dict(negatives=[]), "needs at least one negative prompt"),
        (dict(max_prompt_len=400, max_response_len=200), "exceeds the model's maximum length 512"),
        (dict(max_new_tokens=64, max_response_len=32), "max_new_tokens .* exceeds max_response_len"),
        (dict(ranking="reward"), "needs scorer_path"),
        (dict(method="dpo", snapshot=str(make_snapshot(tmp_path / "one", [
            {**toy_rows()[0], "responses": ["a"], "ranks": [0], "origins": ["human"]}]))), "no ranked pairs"),
    ]
    for i, (kw, msg) in enumerate(cases):
        out = tmp_path / f"run{i}"
        with pytest.raises(ConfigError, match=msg):
            train(cfg_for(tiny_model_dir, snap, out, **kw))
        assert not out.exists()  # nothing was written: no training started
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="already holds a run: resume it"):
        train(cfg_for(tiny_model_dir, snap, used))
    rc = main(["--snapshot", str(snap), "--model", str(tiny_model_dir), "--negative", "toxic", "--out",
               str(tmp_path / "cli")])
    assert rc == 2 and "error: negative prompt 'toxic' is not in" in capsys.readouterr().err


# -- two processes -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_process_ddp_ranks_agree(tiny_model_dir, snap, tmp_path):
    out = tmp_path / "ddp"
    accel = Path(sys.executable).with_name("accelerate")
    # accelerate 1.15 routes `--cpu` to its single-process launcher (multi-process CPU there means mpirun);
    # `--multi_gpu` starts torchrun, and without CUDA every process trains on the CPU over gloo
    def launch():
        with socket.socket() as sock:  # a free port for the rendezvous: a fixed one may still be held
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [str(accel), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               "-m", "neat_studio.neat.cli",
               "--workspace", str(tmp_path / "ws"), "--snapshot", str(snap), "--model", str(tiny_model_dir),
               "--negative", "rude@1", "--out", str(out), "--set", "max_steps=2", "--set", "k=1", "--set", "k_neg=1",
               "--set", "batch_size=1", "--set", "max_new_tokens=8", "--set", "max_response_len=32",
               "--set", "dtype=fp32", "--set", "lr=1e-3"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)

    r = launch()
    if r.returncode != 0 and "terminate called without an active exception" in r.stderr:
        # once in a full-suite CI run (session 32) a CPU gloo worker aborted in C++ right after loading the
        # model, before any step; 15 reruns alone passed. One more launch, in a clean run dir; a second
        # failure, or any other failure, fails the test
        shutil.rmtree(out, ignore_errors=True)
        r = launch()
    assert r.returncode == 0, r.stderr[-3000:]
    m = read_metrics(out)
    steps = [x for x in m if "loss" in x]
    assert [x["step"] for x in steps] == [1, 2] and steps[0]["total_steps"] == 2
    fin = m[-1]
    assert fin["event"] == "finished" and len(fin["fingerprints"]) == 2
    assert fin["fingerprints"][0] == fin["fingerprints"][1]  # both processes hold the same weights
    assert (out / "final" / "model.safetensors").exists()
    # each list of the round was sampled by one of the two processes and gathered by both
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    assert len(r0["lists"]) == 6 and all("policy" in lst["origins"] for lst in r0["lists"])


# -- stop while sampling ---------------------------------------------------------------------------------------
def test_sigterm_while_sampling_stops_with_a_loadable_checkpoint(tiny_model_dir, snap, tmp_path, monkeypatch):
    """Regression: a stop during sampling saved the model in generation's transposed (non-contiguous) weight
    layout; transformers' tied-weight check in save_pretrained then raised "view size is not compatible ..."
    and the run ended as failed. The generator's layout is made to include the tied embedding, the case that
    check cannot take; a real SIGTERM is delivered while round 1 is being sampled."""
    import neat_studio.generation as G
    from neat_studio.models import load_model
    from neat_studio.neat.trainer import train

    real_prep, real_gen = G.prepare_for_inference, G.generate

    def prep(model):
        real_prep(model)
        w = model.get_input_embeddings().weight  # tied with lm_head
        with torch.no_grad():
            w.data = w.data.t().contiguous().t()

    calls = []

    def gen(*a, progress=None, **kw):
        calls.append(1)

        def prog(done, total):
            if len(calls) == 3 and done < total:  # round 1 (rounds sample plain + negative), mid-sampling
                os.kill(os.getpid(), signal.SIGTERM)
            progress(done, total)
        return real_gen(*a, progress=prog, **kw)

    monkeypatch.setattr(G, "prepare_for_inference", prep)
    monkeypatch.setattr(G, "generate", gen)
    out = tmp_path / "run"
    res = train(cfg_for(tiny_model_dir, snap, out, rounds=2, gen_batch_size=2), lm=load_model(str(tiny_model_dir)))
    assert res["status"] == "stopped" and res["step"] == 3, res
    m = read_metrics(out)
    assert m[-1]["event"] == "stopped" and m[-1]["reason"] == "SIGTERM" and m[-1]["step"] == 3
    assert not any(x.get("event") == "error" for x in m)
    assert not (out / "rounds" / "round-1.json").exists()  # the round was aborted, not written half
    ck = Path(res["checkpoint"])
    assert json.loads((ck / "state.json").read_text())["round"] == 1
    lm = load_model(str(ck))  # a loadable checkpoint: weights, config, tokenizer
    assert lm.model.lm_head.weight is lm.model.get_input_embeddings().weight
    assert torch.isfinite(lm.model(input_ids=torch.tensor([[1, 5, 7]])).logits).all()
    rc = train(None, resume=out, lm=load_model(str(tiny_model_dir)))  # re-samples round 1 and finishes
    assert rc["status"] == "finished" and rc["step"] == 6
    assert [x["event"] for x in read_metrics(out) if "event" in x][-3:] == ["round_start", "checkpoint", "finished"]
    assert load_model(str(out)).model is not None  # final/


# -- error events ----------------------------------------------------------------------------------------------
def test_cli_preflight_errors_write_an_error_event(tiny_model_dir, snap, tmp_path, capsys):
    from neat_studio.cli import main as studio_main
    from neat_studio.neat.cli import main
    from neat_studio.neat.rundir import holds_run

    args = ["--snapshot", str(snap), "--model", str(tiny_model_dir), "--workspace", str(tmp_path / "ws")]
    out = tmp_path / "r1"
    assert main(args + ["--negative", "toxic", "--out", str(out)]) == 2
    assert "error: negative prompt 'toxic' is not in" in capsys.readouterr().err
    ev = read_metrics(out)
    assert len(ev) == 1 and ev[0]["event"] == "error" and ev[0]["phase"] == "preflight"
    assert ev[0]["message"].startswith("negative prompt 'toxic' is not in the snapshot's prompt library")
    assert [p.name for p in out.iterdir()] == ["metrics.jsonl"] and not holds_run(out)  # not a started run
    # the job runner creates RUN_DIR first and runs `python -m neat_studio ... train`; a bad model name
    out2 = tmp_path / "r2"
    out2.mkdir()
    assert studio_main(["--workspace", str(tmp_path / "ws"), "train", "--snapshot", str(snap), "--model",
                        str(tmp_path / "nope"), "--negative", "rude@1", "--out", str(out2)]) == 2
    assert "error: model" in capsys.readouterr().err
    ev = read_metrics(out2)
    assert [(e["event"], e["phase"]) for e in ev] == [("error", "preflight")] and "cannot be loaded" in ev[0]["message"]
    # a retry into the same directory is not refused as "already holds a run"; an empty snapshot appends
    empty = make_snapshot(tmp_path / "empty", [])
    assert main(["--snapshot", str(empty), "--model", str(tiny_model_dir), "--negative", "rude@1",
                 "--out", str(out2)]) == 2
    assert "has no training rows" in read_metrics(out2)[-1]["message"] and not (out2 / "config.yaml").exists()
    # a directory holding another run is left untouched
    used = tmp_path / "used"
    used.mkdir()
    (used / "config.yaml").write_text("method: neat\n")
    assert main(args + ["--negative", "rude@1", "--out", str(used)]) == 2
    assert "already holds a run" in capsys.readouterr().err and not (used / "metrics.jsonl").exists()


def test_unexpected_training_errors_write_one_error_event(tiny_model_dir, snap, tmp_path, monkeypatch):
    from neat_studio.neat import trainer as T
    from neat_studio.neat.cli import main

    def boom(self, micro):
        raise RuntimeError("boom in step")

    monkeypatch.setattr(T.NeatTrainer, "_step", boom)
    base = ["--snapshot", str(snap), "--model", str(tiny_model_dir), "--method", "sft",
            "--workspace", str(tmp_path / "ws"), "--set", "max_response_len=32"]
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom in step"):
        main(base + ["--out", str(out)])
    errs = [e for e in read_metrics(out) if e.get("event") == "error"]
    assert len(errs) == 1 and errs[0]["message"] == "RuntimeError: boom in step" and "traceback" in errs[0]
    # an unexpected error after preflight but before the trainer runs
    monkeypatch.setattr(T, "prepare_run_dir", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    out2 = tmp_path / "run2"
    with pytest.raises(OSError, match="disk full"):
        main(base + ["--out", str(out2)])
    assert read_metrics(out2)[-1]["message"] == "OSError: disk full"


def test_reward_ranking_with_positive_prompts_runs_end_to_end(tiny_model_dir, snap, tmp_path):
    """ranking=reward with a real reward scorer (MiniLM embeddings, trained on the toy pairs) and NEAT-PP
    (k_pos samples under a positive prompt): the run finishes, and every online sample of round 0 sits in its
    list where the scorer's scores put it (rounds.rank_reward), positive-prompt samples included."""
    from neat_studio.neat.rounds import curated_items, rank_reward
    from neat_studio.neat.trainer import train
    from neat_studio.scoring.reward import RewardScorer, train_scorer

    rows = toy_rows() + toy_rows(HELD_Q, HELD_GOOD, HELD_BAD, split="dev")
    m = train_scorer(rows, tmp_path / "scorers", seed=0, dev_fraction=0.25)
    scorer_dir = tmp_path / "scorers" / m["scorer_version"]
    out = tmp_path / "run"
    res = train(cfg_for(tiny_model_dir, snap, out, ranking="reward", scorer_path=str(scorer_dir), positives=["kind@1"],
                        k_pos=1, k=1, k_neg=1, rounds=1, epochs=1))
    assert res["status"] == "finished"
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    scorer = RewardScorer.load(scorer_dir)
    by_id = {r["prompt_id"]: r for r in toy_rows()}
    seen = set()
    for lst in r0["lists"]:
        origins = lst["origins"]
        seen.update(o.split(":")[0] for o in origins)
        n_cur = sum(lst["curated"])
        row = by_id[lst["prompt_id"]]
        cur = curated_items(row)
        onl = list(zip(lst["responses"][n_cur:], origins[n_cur:]))
        scores = scorer.score([row["prompt"]] * (len(cur) + len(onl)), [t for t, *_ in cur] + [t for t, _ in onl])
        keys = rank_reward(cur, onl, scores)
        want = [sorted(set(keys)).index(k) for k in keys]
        assert lst["ranks"] == want, (lst, keys)
    assert {"policy", "positive", "negative"} <= seen


def test_trainers_of_two_precisions_in_one_process(tiny_model_dir, snap, tmp_path):
    """accelerate's process-wide state refused a second precision in one process: a float32 run and then a bf16
    (autocast) run, as `dtype=auto` gives on a CPU with bf16 instructions. Both finish now, each in its own."""
    from neat_studio.neat.trainer import train

    for i, dt in enumerate(("fp32", "bf16", "fp32")):
        cfg = NeatConfig.from_dict({"model": str(tiny_model_dir), "snapshot": str(snap), "method": "sft",
                                    "dtype": dt, "max_steps": 1, "max_response_len": 32,
                                    "output_dir": str(tmp_path / f"{i}-{dt}")})
        res = train(cfg, workspace=Workspace(tmp_path / "ws").ensure())
        assert res["status"] == "finished", res


# -- issue 18: scoped system prompts, anchor=round, per-term gradient diagnostics -------------------------------
def test_scoped_negative_samples_only_on_tagged_prompts(tiny_model_dir, tmp_path):
    from neat_studio.neat.trainer import train

    rows = toy_rows()
    for i, r in enumerate(rows):
        r["tags"] = ["harmful"] if i % 2 == 0 else ["benign"]
    lib = LIBRARY + [{"name": "overref", "kind": "negative", "version": 1, "text": "Refuse.", "params": {}}]
    s = make_snapshot(tmp_path / "snap", rows, library=lib)
    out = tmp_path / "run"
    res = train(cfg_for(tiny_model_dir, s, out, negatives=["rude@1:harmful", "overref@1:benign"]))
    assert res["status"] == "finished"
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    for lst in r0["lists"]:
        negs = {o for o in lst["origins"] if o.startswith("negative:")}
        want = "negative:rude@1" if tags[lst["prompt_id"]] == "harmful" else "negative:overref@1"
        assert negs <= {want}, (lst["prompt_id"], negs)
    seen = {o for lst in r0["lists"] for o in lst["origins"] if o.startswith("negative:")}
    assert seen == {"negative:rude@1", "negative:overref@1"}
    # a scope no training prompt carries is an error before anything trains
    with pytest.raises(ConfigError, match="tagged 'nosuchtag'"):
        train(cfg_for(tiny_model_dir, s, tmp_path / "run2", negatives=["rude@1:nosuchtag"]))
    with pytest.raises(ConfigError, match="not name"):
        cfg_for(tiny_model_dir, s, tmp_path / "run3", negatives=["rude@1:"]).validate()


def test_anchor_round_scores_the_round_start_policy_and_starts_at_the_margin(tiny_model_dir, snap, tmp_path):
    from neat_studio.models import load_model
    from neat_studio.neat.scorer import score_responses
    from neat_studio.neat.trainer import train

    out = tmp_path / "run"
    res = train(cfg_for(tiny_model_dir, snap, out, anchor="round", margin=0.25, rank_reduction="mean",
                        sft_weight=0.0, rounds=1))
    assert res["status"] == "finished"
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    lm = load_model(str(tiny_model_dir))
    lst = r0["lists"][0]
    want = score_responses(lm.model, lm.tokenizer, lst["prompt"], lst["responses"], 64, 32)
    assert lst["ref_p"] == pytest.approx(want, abs=1e-4)
    m = read_metrics(out)
    steps = [x for x in m if "loss" in x]
    # before the first update every gain is 0, so every pair's hinge is exactly the margin (mean over pairs)
    assert steps[0]["rank_loss"] == pytest.approx(0.25, abs=1e-4)
    start = next(x for x in m if x.get("event") == "round_start")
    assert {"p_curated_best", "p_negative", "p_plain", "generate_s", "rank_s", "score_s"} <= set(start)
    assert start["generate_s"] + start["rank_s"] + start["score_s"] <= start["sample_s"]
    assert {"generate_s", "rank_s", "score_s"} <= set(r0)
    with pytest.raises(ConfigError, match="needs margin > 0"):
        cfg_for(tiny_model_dir, snap, tmp_path / "r2", anchor="round", margin=0.0).validate()


def test_diag_every_logs_per_term_gradient_norms(tiny_model_dir, snap, tmp_path):
    t, enc = _trainer(tiny_model_dir, snap, tmp_path / "run", diag_every=1, sft_weight=0.5)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    agg = t._step([enc[:2]])
    d = agg["diag"]
    assert d["grad_norm_rank"] > 0 and d["grad_norm_sft"] > 0 and -1.0 <= d["grad_cos_rank_sft"] <= 1.0
    # the diagnostic passes leave the real step intact: every parameter still moves
    assert [n for n, p in t.model.named_parameters() if torch.equal(p, before[n])] == []
    # deterministic: a fresh trainer at the same weights gives the same diagnostics
    t2, enc2 = _trainer(tiny_model_dir, snap, tmp_path / "run2", diag_every=1, sft_weight=0.5, max_grad_norm=0.0)
    g = t2._term_gradients([enc2[:2]])
    assert g == pytest.approx(d, rel=1e-4)


def test_plain_rank_scope_ties_plain_samples_with_the_best_only_on_tagged_prompts(tiny_model_dir, tmp_path):
    from neat_studio.models import load_model
    from neat_studio.neat.preflight import preflight
    from neat_studio.neat.trainer import NeatTrainer

    rows = toy_rows()
    for i, r in enumerate(rows):
        r["tags"] = ["benign"] if i % 2 else ["harmful"]
    s = make_snapshot(tmp_path / "snap", rows)
    cfg = cfg_for(tiny_model_dir, s, tmp_path / "run", plain_rank="tie_best", plain_rank_scope="benign")
    t = NeatTrainer(cfg, tmp_path / "run", prepared=preflight(cfg, lm=load_model(str(tiny_model_dir))))
    t._setup()
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    for lst in t._round_lists(0):
        plain = [rk for rk, o in zip(lst.ranks, lst.origins) if o == "policy"]
        if not plain:  # the sample duplicated a curated answer
            continue
        # curated: chosen 0, rejected 1; benign: plain tied with the best (0); harmful: tied with the worst (1)
        assert plain == [0 if tags[lst.prompt_id] == "benign" else 1], (lst.prompt_id, lst.ranks, lst.origins)


def test_eta_comes_from_measured_step_and_sampling_times():
    from neat_studio.neat.estimate import eta_seconds

    # 2 s per step, 30 steps left, rounds sampled in 100 s and 140 s, one round still to sample: 60 + 120
    assert eta_seconds(2.0, 30, [100.0, 140.0], 1) == 180.0
    # the last round: only its steps are left (its sampling is done); nothing measured yet counts as 0
    assert eta_seconds(2.0, 5, [100.0], 0) == 10.0 and eta_seconds(0.5, 4, [], 3) == 2.0
    assert eta_seconds(2.0, -1, [10.0], -1) == 0.0


def test_kl_term_covers_the_scoped_plain_samples_and_starts_at_zero(tiny_model_dir, tmp_path):
    """kl_weight: the policy's full next-token distribution is held to a frozen copy of the starting model on the
    plain samples of the kl_scope prompts. At the first step the policy IS the starting model, so the KL is 0
    exactly; the scorer's vocabulary log-probs are the model's own log-softmax at the marked tokens (both
    layouts); after a few steps the KL is positive and the reference has not moved."""
    from neat_studio.models import load_model
    from neat_studio.neat.batching import collate, collate_shared
    from neat_studio.neat.preflight import preflight
    from neat_studio.neat.trainer import NeatTrainer

    rows = toy_rows()
    for i, r in enumerate(rows):
        r["tags"] = ["benign"] if i % 2 else ["harmful"]
    s = make_snapshot(tmp_path / "snap", rows)
    cfg = cfg_for(tiny_model_dir, s, tmp_path / "run", kl_weight=2.0, kl_scope="benign")
    t = NeatTrainer(cfg, tmp_path / "run", prepared=preflight(cfg, lm=load_model(str(tiny_model_dir))))
    t._setup()
    assert not t.scorer.direct_head_grad  # the KL's logits give the head an ordinary gradient
    lists = t._round_lists(0)
    enc = [t._encode(x) for x in lists]
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    for lst, e in zip(lists, enc):
        want = [tags[lst.prompt_id] == "benign" and lst.origins[i] == "policy" for i in e.src]
        assert e.kl == want
    marked = [e for e in enc if any(e.kl)]
    assert marked, "no benign list kept a plain sample"
    # the vocabulary log-probs at the marked tokens are the model's log-softmax there, in both layouts
    el = marked[0]
    j = el.kl.index(True)
    ids = torch.tensor([el.prompt_ids + el.response_ids[j]])
    with torch.no_grad():
        full = torch.log_softmax(t.model(input_ids=ids).logits[0].float(), -1)
        want = full[len(el.prompt_ids) - 1: len(el.prompt_ids) - 1 + len(el.response_ids[j])]
        for layout in (collate, collate_shared):
            got = t.scorer(layout([el], t.pad_id))[2]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # first step: policy == reference, KL exactly 0; the term is in the loss and the log
    agg = t._step([marked[:2]])
    assert agg["kl_loss"] == pytest.approx(0.0, abs=1e-6)
    ref0 = {n: p.clone() for n, p in t.ref_scorer.model.named_parameters()}
    for _ in range(3):
        agg = t._step([marked[:2]])
    assert agg["kl_loss"] > 1e-4
    assert all(torch.equal(p, ref0[n]) for n, p in t.ref_scorer.model.named_parameters())
    assert not any(p.requires_grad for p in t.ref_scorer.model.parameters())
    # bad settings fail before training with a clear message
    with pytest.raises(ConfigError, match="kl_scope 'nosuchtag'"):
        c = cfg_for(tiny_model_dir, s, tmp_path / "r2", kl_weight=1.0, kl_scope="nosuchtag")
        preflight(c, lm=load_model(str(tiny_model_dir)))
    with pytest.raises(ConfigError, match="kl_weight needs the policy's own samples"):
        cfg_for(tiny_model_dir, s, tmp_path / "r3", kl_weight=1.0, method="sft").validate()


def test_lora_samples_with_merged_adapters_as_without_and_keeps_the_base(tiny_model_dir, snap, tmp_path,
                                                                          monkeypatch):
    """LoRA rounds sample with the adapters merged into the frozen weights (one matmul per layer instead of three):
    the same samples as the adapter layers give unmerged, and afterwards the frozen weights are back bit for bit
    and the adapters untouched."""
    import contextlib

    from neat_studio.neat import trainer as trainer_mod

    t, enc = _trainer(tiny_model_dir, snap, tmp_path / "run", lora=True, lora_r=4, lr=5e-2)
    for _ in range(3):  # lora_B starts at 0: train until the adapters change the model's outputs
        t._step([enc[:3]])
        t._step([enc[3:]])
    named = dict(t.model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    calls, merge = [], t.model.merge_adapter
    t.model.merge_adapter = lambda *a, **kw: (calls.append("merge"), merge(*a, **kw))
    merged = t._sample(1)
    assert calls == ["merge"]  # one merge per round's sampling
    for n, p in t.model.named_parameters():
        assert torch.equal(p, before[n]), n  # the frozen weights bit for bit, not w + d - d
    assert not any(getattr(m, "merged", False) for m in t.model.modules())  # unmerged again
    monkeypatch.setattr(trainer_mod, "adapters_merged", lambda m: contextlib.nullcontext(m))
    unmerged = t._sample(1)
    assert merged == unmerged
    # the adapters do change what the model writes (so the comparison above is not between two base models)
    with t.model.disable_adapter():
        monkeypatch.setattr(trainer_mod, "adapters_merged", lambda m: contextlib.nullcontext(m))
        base = t._sample(1)
    assert base != merged


def test_lora_scores_the_round_with_merged_adapters_as_without(tiny_model_dir, snap, tmp_path, monkeypatch):
    """anchor=round scores every response under the round's starting policy with the LoRA adapters merged (as the
    sampling does): the same ref_p as the adapter layers give unmerged, one merge per scoring pass, and the frozen
    weights back afterwards bit for bit, the adapters untouched."""
    import contextlib

    from neat_studio.neat import trainer as trainer_mod
    from neat_studio.neat.rounds import RankedList

    t, enc = _trainer(tiny_model_dir, snap, tmp_path / "run", lora=True, lora_r=4, lr=5e-2)
    for _ in range(3):  # lora_B starts at 0: train until the adapters change the model's outputs
        t._step([enc[:3]])
        t._step([enc[3:]])
    lists = t._round_lists(0)

    def fresh():
        return [RankedList.from_dict({**x.to_dict(), "ref_p": None}) for x in lists]

    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    calls, merge = [], t.model.merge_adapter
    t.model.merge_adapter = lambda *a, **kw: (calls.append("merge"), merge(*a, **kw))
    merged = fresh()
    t._score_round(merged)
    assert calls == ["merge"]
    for n, p in t.model.named_parameters():
        assert torch.equal(p, before[n]), n  # the frozen weights bit for bit, not w + d - d
    assert not any(getattr(m, "merged", False) for m in t.model.modules()) and t.model.training
    monkeypatch.setattr(trainer_mod, "adapters_merged", lambda m: contextlib.nullcontext(m))
    unmerged = fresh()
    t._score_round(unmerged)
    for a, b in zip(merged, unmerged):
        assert a.ref_p == pytest.approx(b.ref_p, abs=1e-5)
    with t.model.disable_adapter():  # the adapters do change p (the comparison is not between two base models)
        base = fresh()
        t._score_round(base)
    assert max(abs(x - y) for a, b in zip(merged, base) for x, y in zip(a.ref_p, b.ref_p)) > 1e-3


def test_greedy_plain_adds_the_greedy_answer_and_keeps_the_sampled_ones(tiny_model_dir, snap, tmp_path):
    """greedy_plain: one more plain sample per prompt, decoded greedily (what the evaluation and a user see),
    ranked as a plain sample; the sampled answers (plain and negative) are those of the same run without it."""
    from neat_studio.generation import GenParams, generate
    from neat_studio.models import load_model
    from neat_studio.neat.preflight import preflight
    from neat_studio.neat.trainer import NeatTrainer

    lm = load_model(str(tiny_model_dir))
    online = {}
    for flag in (False, True):
        cfg = cfg_for(tiny_model_dir, snap, tmp_path / f"run{flag}", greedy_plain=flag, temperature=1.0)
        t = NeatTrainer(cfg, tmp_path / f"run{flag}", prepared=preflight(cfg, lm=lm))
        t._setup()
        online[flag] = t._sample(0)
    rows = toy_rows()
    greedy = generate(lm, [r["prompt"] for r in rows], params=GenParams(temperature=0.0, max_new_tokens=8),
                      max_prompt_tokens=64)
    for row, g in zip(rows, greedy):
        pid = row["prompt_id"]
        without, with_ = online[False][pid], online[True][pid]
        assert [o for _, o in without] == ["policy", "negative:rude@1"]
        # order plain, plain (greedy), negative; the sampled texts are unchanged
        assert [o for _, o in with_] == ["policy", "policy", "negative:rude@1"]
        assert [with_[0], with_[2]] == without
        assert with_[1][0] == g[0].text
    from neat_studio.neat.estimate import estimate_time
    base = {"model": "default", "method": "neat", "negatives": ["a@1"], "k": 1, "k_neg": 1, "rounds": 2}
    assert estimate_time({**base, "greedy_plain": True}, 100)["sampling_s"] > \
        estimate_time(base, 100)["sampling_s"]


def test_loop_negatives_in_a_run(tiny_model_dir, snap, tmp_path):
    """loop_negatives=1: every list of the round holds the loop of its best curated answer at the bottom, the round
    logs how many, the estimate counts their tokens, and a config that cannot use them is refused."""
    from neat_studio.neat.estimate import estimate_time
    from neat_studio.neat.rounds import loop_of
    from neat_studio.neat.trainer import train

    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, snap, out, loop_negatives=1))
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    assert len(r0["lists"]) == len(TRAIN_Q)
    for lst in r0["lists"]:
        i = lst["origins"].index("loop:best")
        assert lst["responses"][i] == loop_of(GOOD[int(lst["prompt_id"][len("train"):]) % len(GOOD)])
        assert lst["ranks"][i] == max(lst["ranks"]) and lst["origins"].count("loop:best") == 1
    start = [x for x in read_metrics(out) if x.get("event") == "round_start"][0]
    assert start["n_loop"] == len(TRAIN_Q)
    assert start["threads"] == torch.get_num_threads()  # the run says what its bits depend on
    base = {"model": "default", "method": "neat", "negatives": ["a@1"], "k": 1, "k_neg": 1, "rounds": 2}
    assert estimate_time({**base, "loop_negatives": 2}, 100)["training_s"] > estimate_time(base, 100)["training_s"]
    for kw, msg in ((dict(loop_negatives=-1), "loop_negatives must be >= 0"),
                    (dict(compliance_rank="soft"), "compliance_rank must be one of bottom, plain"),
                    (dict(compliance_rank="plain", positive_rank="above_plain"), "needs compliance_rank_scope"),
                    (dict(compliance_rank="plain", compliance_rank_scope="harmful"), "positive_rank=above_plain"),
                    (dict(negative_rank="soft"), "negative_rank must be one of bottom, heeded"),
                    (dict(negative_rank="heeded"), "needs refusal_rank_scope"),
                    (dict(loop_negatives=1, ranking="reward", scorer_path="x"), "needs ranking=rule")):
        with pytest.raises(ConfigError, match=msg):
            cfg_for(tiny_model_dir, snap, tmp_path / "bad", **kw).validate()


def tagged_rows_and_odd_length_detector(tmp_path, monkeypatch, record):
    """Toy rows tagged harmful / benign in turn, their snapshot, and a deterministic stand-in for the refusal
    detector (odd-length texts "refuse") that passes each call's texts to `record`."""
    import neat_studio.scoring.refusal as refusal

    def judge(texts):
        record(texts)
        return [len(t) % 2 == 1 for t in texts]

    monkeypatch.setattr(refusal, "is_refusal", judge)
    rows = toy_rows()
    for i, r in enumerate(rows):
        r["tags"] = ["benign"] if i % 2 else ["harmful"]
    return rows, make_snapshot(tmp_path / "snap", rows)


def test_compliance_and_refusal_scopes_together(tiny_model_dir, tmp_path, monkeypatch):
    """refusal_rank_scope=benign with compliance_rank_scope=harmful: one detector call judges the plain and positive
    samples of both kinds of prompt; refusals of benign prompts and answers to harmful ones rank with the negatives,
    the rest keep their place; round_start counts both."""
    from neat_studio.neat.trainer import train

    calls = []
    rows, s = tagged_rows_and_odd_length_detector(tmp_path, monkeypatch, lambda texts: calls.append(list(texts)))
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, s, out, refusal_rank_scope="benign", compliance_rank_scope="harmful",
                  temperature=1.0, positives=["kind@1"], k_pos=1))
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    n = {"refusal:": 0, "compliance:": 0}
    for lst in r0["lists"]:
        for text, o, cur, rank in zip(lst["responses"], lst["origins"], lst["curated"], lst["ranks"]):
            if cur or o.startswith("negative:"):
                continue
            odd, tag = len(text.strip()) % 2 == 1, tags[lst["prompt_id"]]
            want = "refusal:" if (tag == "benign" and odd) else "compliance:" if (tag == "harmful" and not odd) else ""
            assert o.startswith(want) if want else not o.startswith(("refusal:", "compliance:")), (o, tag, odd)
            if want:
                n[want] += 1
                assert rank == max(lst["ranks"])
    assert len(calls) == 1 and n["refusal:"] > 0 and n["compliance:"] > 0
    start = [x for x in read_metrics(out) if x.get("event") == "round_start"][0]
    assert (start["n_refusal"], start["n_compliance"]) == (n["refusal:"], n["compliance:"])


def test_compliance_rank_plain_demotes_unheeded_positives_only(tiny_model_dir, tmp_path, monkeypatch):
    """compliance_rank=plain: on harmful prompts a positive sample the detector does not flag is marked unheeded:
    and ranked as a plain sample; plain samples are never marked, nothing joins the bottom group for it, and
    round_start counts the unheeded samples."""
    from neat_studio.neat.trainer import train

    rows, s = tagged_rows_and_odd_length_detector(tmp_path, monkeypatch, lambda texts: None)
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, s, out, compliance_rank_scope="harmful", compliance_rank="plain",
                  positive_rank="above_plain", temperature=1.0, positives=["kind@1"], k_pos=1))
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    n = 0
    for lst in r0["lists"]:
        plain_ranks = {rk for o, c, rk in zip(lst["origins"], lst["curated"], lst["ranks"]) if not c and o == "policy"}
        for text, o, cur, rank in zip(lst["responses"], lst["origins"], lst["curated"], lst["ranks"]):
            if cur or o.startswith("negative:"):
                continue
            assert not o.startswith("compliance:")
            odd, tag = len(text.strip()) % 2 == 1, tags[lst["prompt_id"]]
            if o.startswith("positive:") or o.startswith("unheeded:"):
                assert o.startswith("unheeded:") == (tag == "harmful" and not odd), (o, tag, odd)
            if o.startswith("unheeded:"):
                n += 1
                assert rank < max(lst["ranks"]) and (not plain_ranks or rank in plain_ranks)
    assert n > 0
    start = [x for x in read_metrics(out) if x.get("event") == "round_start"][0]
    assert start["n_unheeded"] == n and start["n_compliance"] == 0


def test_negative_rank_heeded_in_a_run(tiny_model_dir, tmp_path, monkeypatch):
    """negative_rank=heeded with refusal_rank_scope=benign: on benign prompts the negative samples the detector does
    not flag rank as plain samples, marked unheeded:negative:; the flagged ones and every negative of a harmful
    prompt stay at the bottom; round_start counts the unheeded ones."""
    from neat_studio.neat.trainer import train

    rows, s = tagged_rows_and_odd_length_detector(tmp_path, monkeypatch, lambda texts: None)
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, s, out, refusal_rank_scope="benign", negative_rank="heeded", temperature=1.0))
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    n = {"kept": 0, "unheeded": 0}
    for lst in r0["lists"]:
        plain_ranks = {rk for o, rk in zip(lst["origins"], lst["ranks"]) if o == "policy"}
        for text, o, rank in zip(lst["responses"], lst["origins"], lst["ranks"]):
            if "negative:" not in o:
                continue
            unheeded = tags[lst["prompt_id"]] == "benign" and len(text.strip()) % 2 == 0
            assert o.startswith("unheeded:negative:" if unheeded else "negative:"), (o, text)
            assert (rank in plain_ranks) if unheeded else (rank == max(lst["ranks"]))
            n["unheeded" if unheeded else "kept"] += 1
    assert n["unheeded"] > 0 and n["kept"] > 0
    start = [x for x in read_metrics(out) if x.get("event") == "round_start"][0]
    assert start["n_unheeded"] == n["unheeded"]


def test_refusal_negatives_in_a_run(tiny_model_dir, tmp_path, monkeypatch):
    """refusal_negatives=1 with refusal_rank_scope=benign: every benign list holds one opening of a sample the
    detector flagged on a harmful prompt of the same round, at the bottom; harmful lists hold none; round_start
    counts them; the estimate counts their tokens; a config without the scope is refused."""
    from neat_studio.neat.estimate import estimate_time
    from neat_studio.neat.rounds import opening_of
    from neat_studio.neat.trainer import train

    rows, s = tagged_rows_and_odd_length_detector(tmp_path, monkeypatch, lambda texts: None)
    out = tmp_path / "run"
    train(cfg_for(tiny_model_dir, s, out, refusal_rank_scope="benign", refusal_negatives=1, temperature=1.0, k=3,
                  max_new_tokens=24))
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    r0 = json.loads((out / "rounds" / "round-0.json").read_text())
    # the pool: openings of the harmful prompts' best curated answers and plain samples, odd-length ones "refuse"
    lent = {op for x in r0["lists"] if tags[x["prompt_id"]] == "harmful"
            for t, o, rk in zip(x["responses"], x["origins"], x["ranks"]) if o == "policy" or o.startswith("dataset")
            and rk == 0 for op in [opening_of(t)] if op and len(op) % 2}
    n = 0
    for lst in r0["lists"]:
        got = [(t, rk) for t, o, rk in zip(lst["responses"], lst["origins"], lst["ranks"]) if o == "borrowed:refusal"]
        if tags[lst["prompt_id"]] == "harmful":
            assert got == []
        else:
            assert len(got) == 1 and got[0][0] in lent and got[0][1] == max(lst["ranks"])
            n += 1
    assert n == sum(1 for t in tags.values() if t == "benign")
    assert [x for x in read_metrics(out) if x.get("event") == "round_start"][0]["n_borrowed"] == n
    # refusal_negatives_from=not_as_ai: the openings speaks_as_ai flags (here: length 1 mod 4) are never lent
    import neat_studio.scoring.refusal as refusal
    monkeypatch.setattr(refusal, "speaks_as_ai", lambda t: len(t) % 4 == 1)
    out2 = tmp_path / "run-not-as-ai"
    train(cfg_for(tiny_model_dir, s, out2, refusal_rank_scope="benign", refusal_negatives=1, temperature=1.0, k=3,
                  max_new_tokens=24, refusal_negatives_from="not_as_ai"))
    lent2 = [t for x in json.loads((out2 / "rounds" / "round-0.json").read_text())["lists"]
             for t, o in zip(x["responses"], x["origins"]) if o == "borrowed:refusal"]
    assert lent2 and all(len(t) % 4 == 3 for t in lent2)
    base = {"model": "default", "method": "neat", "negatives": ["a@1"], "k": 1, "k_neg": 1, "rounds": 2}
    assert estimate_time({**base, "refusal_negatives": 2}, 100)["training_s"] > \
        estimate_time(base, 100)["training_s"]
    for kw, msg in ((dict(refusal_negatives=1), "needs refusal_rank_scope"),
                    (dict(refusal_negatives=-1, refusal_rank_scope="benign"), "refusal_negatives must be >= 0"),
                    (dict(refusal_negatives_from="ai"), "refusal_negatives_from must be one of any, not_as_ai")):
        with pytest.raises(ConfigError, match=msg):
            cfg_for(tiny_model_dir, s, tmp_path / "bad", **kw).validate()


def test_refusal_rank_scope_judges_the_samples_of_tagged_prompts_only(tiny_model_dir, tmp_path, monkeypatch):
    """The trainer asks the refusal detector about the plain and positive samples of the prompts carrying the tag,
    and only those; what it flags ranks with the negatives (marked refusal:), the rest as before."""
    from neat_studio.models import load_model
    from neat_studio.neat.preflight import preflight
    from neat_studio.neat.trainer import NeatTrainer

    asked = []
    rows, s = tagged_rows_and_odd_length_detector(tmp_path, monkeypatch, asked.extend)
    cfg = cfg_for(tiny_model_dir, s, tmp_path / "run", refusal_rank_scope="benign", temperature=1.0,
                  positives=["kind@1"], k_pos=1)
    t = NeatTrainer(cfg, tmp_path / "run", prepared=preflight(cfg, lm=load_model(str(tiny_model_dir))))
    t._setup()
    tags = {r["prompt_id"]: r["tags"][0] for r in rows}
    sampled = {}
    real_sample = t._sample
    t._sample = lambda r: sampled.setdefault("online", real_sample(r))
    lists = t._round_lists(0)
    flagged = 0
    for lst in lists:
        for text, o, rank in zip(lst.responses, lst.origins, lst.ranks):
            if o.startswith("negative:"):
                assert text.strip() not in asked
            elif o.startswith("refusal:"):
                flagged += 1
                assert tags[lst.prompt_id] == "benign" and len(text.strip()) % 2 == 1
                assert o[len("refusal:"):] in ("policy", "positive:kind@1") and rank == max(lst.ranks)
            elif not lst.curated[lst.responses.index(text)]:
                assert tags[lst.prompt_id] == "harmful" or len(text.strip()) % 2 == 0
    # exactly the non-empty plain and positive samples of the benign prompts were judged; something was flagged
    assert sorted(asked) == sorted(x.strip() for pid, v in sampled["online"].items() if tags[pid] == "benign"
                                   for x, o in v if x.strip() and not o.startswith("negative:"))
    assert flagged > 0


# -- weight_ema (averaging.py) -----------------------------------------------------------------------------
def test_weight_average_is_the_ema_by_hand_and_round_trips():
    from neat_studio.neat.averaging import WeightAverage

    w = torch.nn.Parameter(torch.tensor([0.0, 4.0]))
    avg = WeightAverage([w], 0.75)
    with torch.no_grad():
        w.copy_(torch.tensor([4.0, 8.0]))
    avg.update()  # 0.75 * [0, 4] + 0.25 * [4, 8]
    assert avg.avg[0].tolist() == [1.0, 5.0]
    with torch.no_grad():
        w.copy_(torch.tensor([8.0, 0.0]))
    avg.update()  # 0.75 * [1, 5] + 0.25 * [8, 0]
    assert avg.avg[0].tolist() == [2.75, 3.75] and w.tolist() == [8.0, 0.0]  # the weights are left alone...
    state = avg.state_dict()
    avg.apply()
    assert w.tolist() == [2.75, 3.75]  # ...until the average becomes them
    other = WeightAverage([torch.nn.Parameter(torch.zeros(2))], 0.75)
    other.load_state_dict(state)
    assert other.avg[0].tolist() == [2.75, 3.75] and other.updates == 2
    with pytest.raises(ValueError, match="does not fit"):
        WeightAverage([torch.nn.Parameter(torch.zeros(3))], 0.75).load_state_dict(state)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="weight_ema must be in"):
            NeatConfig(snapshot="s", negatives=["rude"], weight_ema=bad).validate()
    with pytest.raises(ConfigError, match="weight_ema needs method"):
        NeatConfig(snapshot="s", method="dpo", weight_ema=0.9).validate()


def test_weight_ema_ends_each_round_on_the_average_of_its_steps(tiny_model_dir, snap, tmp_path):
    """Round 0 trains exactly as without averaging (the average only watches); at its end the weights become
    d^3 w0 + d^2 (1-d) w1 + d (1-d) w2 + (1-d) w3 of the plain run's steps, and round 1 starts from there."""
    from safetensors.torch import load_file

    from neat_studio.models import load_model
    from neat_studio.neat.trainer import train

    kw = dict(method="sft", rounds=2, save_every=1, keep_checkpoints=0, lr=1e-2)
    a, b = tmp_path / "plain", tmp_path / "ema"
    train(cfg_for(tiny_model_dir, snap, a, **kw), lm=load_model(str(tiny_model_dir)))
    train(cfg_for(tiny_model_dir, snap, b, weight_ema=0.5, **kw), lm=load_model(str(tiny_model_dir)))
    w0 = load_model(str(tiny_model_dir)).model.float().state_dict()
    ws = [load_file(a / f"checkpoints/step-{i}/model.safetensors") for i in (1, 2, 3)]
    got = load_file(b / "checkpoints/step-3/model.safetensors")
    assert [x["loss"] for x in read_metrics(b) if "loss" in x][:3] == \
        pytest.approx([x["loss"] for x in read_metrics(a) if "loss" in x][:3], rel=1e-6)
    moved = 0
    for k in got:
        want = 0.125 * w0[k] + 0.125 * ws[0][k] + 0.25 * ws[1][k] + 0.5 * ws[2][k]
        torch.testing.assert_close(got[k], want, atol=1e-6, rtol=1e-5)
        moved += not torch.equal(want, ws[2][k])
    assert moved > 0  # the average is not the last step's weights
    # round 1 trains on from the average: its first step's loss differs from the plain run's
    la = [x["loss"] for x in read_metrics(a) if "loss" in x]
    lb = [x["loss"] for x in read_metrics(b) if "loss" in x]
    assert len(lb) == 6 and lb[3] != pytest.approx(la[3], rel=1e-4)
    assert (b / "checkpoints/step-4/weight_average.pt").exists()
