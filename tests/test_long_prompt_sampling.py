"""Issue 19 #11: a prompt longer than the model's context no longer stops a NEAT run. Generation keeps the END of
each prompt's tokens when asked (`max_prompt_tokens`, what training does with `max_prompt_len`), and its errors
name the prompt by id instead of a batch position."""
from __future__ import annotations

import pytest

from neat_studio.generation import GenParams, generate
from neat_studio.models import encode_chat, load_model, model_max_length

GREEDY = GenParams(temperature=0.0, max_new_tokens=4)
LONG = "Tell me everything about bread. " + "word " * 900 + "Now, in one line: what is rye?"


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def test_max_prompt_tokens_keeps_the_end_of_a_prompt_longer_than_the_context(lm, monkeypatch):
    import neat_studio.generation as G

    full = encode_chat(lm.tokenizer, LONG)
    assert len(full) > model_max_length(lm)  # really longer than the tiny model's 512 positions
    seen = []
    real = G._decode_batch

    def spy(lm_, prompt_ids, **kw):
        seen.extend(prompt_ids)
        return real(lm_, prompt_ids, **kw)

    monkeypatch.setattr(G, "_decode_batch", spy)
    out = generate(lm, ["short question?", LONG], params=GREEDY, max_prompt_tokens=64, ids=["p-short", "p-long"])
    assert len(out) == 2 and all(len(s) == 1 for s in out)
    assert sorted(map(list, seen), key=len) == sorted([encode_chat(lm.tokenizer, "short question?"), full[-64:]],
                                                      key=len)
    assert full[-64:] in [list(x) for x in seen]  # the END is kept (latest turn + the assistant header)


def test_errors_name_the_prompt_id(lm):
    with pytest.raises(ValueError, match=r"prompt p-long has \d+ tokens; the model's context is 512 tokens"):
        generate(lm, ["ok", LONG], params=GREEDY, ids=["p-ok", "p-long"])
    with pytest.raises(ValueError, match=r"prompt p-long has \d+ tokens \(after keeping its last 600\)"):
        generate(lm, ["ok", LONG], params=GREEDY, ids=["p-ok", "p-long"], max_prompt_tokens=600)
    with pytest.raises(ValueError, match=r"^prompt bad-1: "):
        generate(lm, [[{"role": "nobody", "content": "x"}]], params=GREEDY, ids=["bad-1"])
    with pytest.raises(ValueError, match="numbered from 0"):  # without ids: a position, and it says so
        generate(lm, ["ok", LONG], params=GREEDY)
    with pytest.raises(ValueError, match="ids has 1 entries for 2 prompts"):
        generate(lm, ["a", "b"], params=GREEDY, ids=["x"])
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        generate(lm, ["a"], params=GREEDY, max_prompt_tokens=0)


def test_neat_round_sampling_takes_a_prompt_longer_than_the_context(tiny_model_dir, tmp_path):
    """The trainer's round sampling (Trainer._sample) on a snapshot holding a prompt of ~900 words: it used to stop
    the run with "prompt 0 has N tokens; the model's context is 512 tokens"."""
    from tests.test_neat_trainer import _trainer, make_snapshot, toy_rows

    rows = toy_rows()[:2]
    rows[0]["prompt"] = [{"role": "user", "content": LONG}]
    snap = make_snapshot(tmp_path / "snap", rows)
    t, enc = _trainer(tiny_model_dir, snap, tmp_path / "run")  # samples round 0 (k=1, k_neg=1)
    assert len(enc) == 2 and all(e is not None for e in enc)
    long_list = next(x for x in t._round_lists(0) if x.prompt[0]["content"] == LONG)
    assert {"policy", "negative:rude@1"} <= set(long_list.origins)  # both sides were sampled for the long prompt
