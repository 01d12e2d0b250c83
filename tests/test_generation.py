import pytest

from neat_studio.generation import GenParams, Sample, generate, sample_seed, stream_chat
from neat_studio.models import encode_chat, end_of_turn_ids, load_model

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Please explain how to bake bread with flour, water, salt and yeast, in detail."}],
    "What is the weather like today?",
    [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "the sea"}],
    [{"role": "user", "content": "Write a poem about the sea."}],
]
GREEDY = GenParams(temperature=0, max_new_tokens=12)
SAMPLED = GenParams(temperature=1.0, top_p=0.95, max_new_tokens=12, k=3, seed=7)


@pytest.fixture(scope="module")
def lm(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def _texts(res):
    return [[s.text for s in ss] for ss in res]


def test_genparams():
    p = GenParams()
    assert (p.temperature, p.top_p, p.max_new_tokens, p.k, p.seed, p.do_sample) == (0.7, 0.95, 128, 1, 0, True)
    assert GenParams(temperature=0).do_sample is False
    assert p.to_dict() == {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 128, "k": 1, "seed": 0}
    assert GenParams(**p.to_dict()) == p
    assert GenParams.from_dict({"k": 2, "do_sample": True, "other": 1}) == GenParams(k=2)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"max_new_tokens": 0}, {"k": 0}, {"k": 1.5}):
        with pytest.raises(ValueError):
            GenParams(**bad)


def test_shapes_order_k_and_records(lm):
    calls = []
    res = generate(lm, PROMPTS, params=SAMPLED, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert len(res) == len(PROMPTS) and all(len(ss) == 3 for ss in res)
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # 4 // k = 1 prompt per batch
    for i, ss in enumerate(res):
        for j, s in enumerate(ss):
            assert isinstance(s, Sample) and isinstance(s.text, str)
            assert s.params == SAMPLED.to_dict() and s.sample_index == j
            assert s.seed == sample_seed(7, i, j)
            assert 1 <= s.n_tokens <= 12 and s.finish_reason in ("stop", "length")
            assert (s.n_tokens == 12) if s.finish_reason == "length" else True
    # order: each prompt's samples are the same whether generated alone (at the same position) or in the batch
    alone = generate(lm, [PROMPTS[0]], params=SAMPLED)
    assert _texts(alone)[0] == _texts(res)[0]
    assert generate(lm, [], params=SAMPLED) == []


def test_same_seed_reproduces_and_other_seeds_differ(lm):
    a = generate(lm, PROMPTS, params=SAMPLED, batch_size=6)
    b = generate(lm, PROMPTS, params=SAMPLED, batch_size=6)
    assert _texts(a) == _texts(b)
    assert [[s.seed for s in ss] for ss in a] == [[s.seed for s in ss] for ss in b]
    c = generate(lm, PROMPTS, params=GenParams(**{**SAMPLED.to_dict(), "seed": 8}), batch_size=6)
    flat_a, flat_c = sum(_texts(a), []), sum(_texts(c), [])
    assert sum(x == y for x, y in zip(flat_a, flat_c)) == 0
    assert all(len(set(ss)) == 3 for ss in _texts(a))  # k samples of a prompt differ
    # per-sample seeds: the batch layout does not change the samples
    assert _texts(generate(lm, PROMPTS, params=SAMPLED, batch_size=1)) == _texts(a)


def test_generation_does_not_touch_the_global_rng(lm):
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(lm, PROMPTS[:2], params=SAMPLED)
    assert torch.equal(torch.rand(3), expected)


def test_left_padding_equivalence_greedy(lm):
    alone = [generate(lm, [p], params=GREEDY)[0][0] for p in PROMPTS]
    batched = generate(lm, PROMPTS, params=GREEDY, batch_size=8)
    assert [s.text for s in alone] == [ss[0].text for ss in batched]
    assert [s.n_tokens for s in alone] == [ss[0].n_tokens for ss in batched]
    assert all(s.text for s in alone)


def test_greedy_matches_transformers_generate(lm):
    import torch

    tok = lm.tokenizer
    for p in PROMPTS[:3]:
        ids = encode_chat(tok, p)
        ref = lm.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=12, do_sample=False, eos_token_id=end_of_turn_ids(tok),
                                pad_token_id=tok.pad_token_id)
        want = tok.decode(ref[0, len(ids):], skip_special_tokens=True).strip()
        assert generate(lm, [p], params=GREEDY)[0][0].text == want


def test_system_prompt_changes_the_conditioning(lm):
    plain = generate(lm, PROMPTS[:2], params=GREEDY)
    with_sys = generate(lm, PROMPTS[:2], system="You are a pirate.", params=GREEDY)
    assert _texts(plain) != _texts(with_sys)
    explicit = [[{"role": "system", "content": "You are a pirate."}] + generate_msgs for generate_msgs in PROMPTS[:2]]
    assert _texts(generate(lm, explicit, params=GREEDY)) == _texts(with_sys)


def test_stop_at_end_of_turn_and_strip_special_tokens(lm):
    # bias a copy's head so <|im_end|> wins at the first step
    import copy

    import torch

    m2 = copy.deepcopy(lm)
    bias = torch.zeros(m2.model.config.vocab_size)
    bias[m2.tokenizer.eos_token_id] = 1e4
    m2.model.lm_head.register_forward_hook(lambda mod, inp, out: out + bias)
    s = generate(m2, PROMPTS[:2], params=SAMPLED)
    for ss in s:
        for x in ss:
            assert (x.text, x.n_tokens, x.finish_reason) == ("", 1, "stop")
    assert list(stream_chat(m2, PROMPTS[0], SAMPLED)) == []


def test_too_long_prompt_is_a_clear_error(lm):
    with pytest.raises(ValueError, match=r"prompt 1 has \d+ tokens; the model's context is 512"):
        generate(lm, ["ok", "word " * 600], params=GREEDY)


def test_stream_chat_grows_to_the_generated_text(lm):
    for params in (SAMPLED, GREEDY, GenParams(temperature=0.8, max_new_tokens=30, seed=3)):
        chunks = list(stream_chat(lm, PROMPTS[1], params))
        assert chunks, params
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(chunks, chunks[1:]))
        assert chunks[-1] == generate(lm, [PROMPTS[1]], params=params)[0][0].text
    with_sys = list(stream_chat(lm, PROMPTS[0], GREEDY, system="You are a pirate."))
    assert with_sys[-1] == generate(lm, [PROMPTS[0]], system="You are a pirate.", params=GREEDY)[0][0].text


def test_stream_chat_stops_when_the_consumer_stops(lm):
    it = stream_chat(lm, PROMPTS[1], GenParams(temperature=1.0, max_new_tokens=200, seed=1))
    first = next(it)
    assert isinstance(first, str)
    it.close()  # no thread to leak; the decoding loop is simply abandoned
    with pytest.raises(StopIteration):
        next(it)


def test_inference_layout_keeps_values_ties_saving_and_training(tiny_model_dir, tmp_path):
    import torch

    from neat_studio.generation import prepare_for_inference
    from neat_studio.models import fingerprint

    lm = load_model(str(tiny_model_dir))
    fp = lm.fingerprint
    ids = torch.tensor([encode_chat(lm.tokenizer, PROMPTS[1])])
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
    prepare_for_inference(lm.model)
    w = lm.model.model.layers[0].mlp.up_proj.weight
    assert w.stride() == (1, w.shape[0])  # stored transposed
    assert lm.model.lm_head.weight is lm.model.model.embed_tokens.weight  # still tied, and left contiguous
    assert lm.model.lm_head.weight.is_contiguous()
    assert fingerprint(lm.model) == fp
    with torch.no_grad():
        after = lm.model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    # the tied lm_head's decoding fast path ((W @ x.T).T for 2..48 rows, inference mode only) gives F.linear's values
    x = torch.randn(5, 3, lm.model.config.hidden_size)
    with torch.inference_mode():
        fast = lm.model.lm_head(x[:, -1:])
    assert "forward" in vars(lm.model.lm_head)
    assert torch.allclose(fast, torch.nn.functional.linear(x[:, -1:], lm.model.lm_head.weight), atol=1e-5)
    from neat_studio.neat.sampling import restore_training_layout

    restore_training_layout(lm.model)
    assert "forward" not in vars(lm.model.lm_head)
    prepare_for_inference(lm.model)
    lm.model.save_pretrained(tmp_path / "saved")
    lm.tokenizer.save_pretrained(tmp_path / "saved")
    assert load_model(str(tmp_path / "saved")).fingerprint == fp
    lm.model.train()  # a training step still works on the re-laid-out weights
    opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-3)
    lm.model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert fingerprint(lm.model) != fp


def test_growing_cache_survives_row_removal_and_matches_concatenation(lm):
    """The decoding cache writes new positions in place (no whole-cache copy per step); rows that finish leave
    the batch through DynamicLayer.batch_select_indices, after which the layer re-adopts the smaller tensors."""
    import torch
    from transformers import DynamicCache

    from neat_studio.kv_cache import growing_cache

    torch.manual_seed(0)
    k0, v0 = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    plain = DynamicCache(ddp_cache_data=[(k0.clone(), v0.clone())])
    grow = DynamicCache(ddp_cache_data=[(k0.clone(), v0.clone())])
    growing_cache(grow, reserve=2)
    assert type(grow.layers[0]).__name__ == "GrowingLayer"
    for step in range(4):  # past the reserve: the buffer grows
        k, v = torch.randn(3 if step < 2 else 2, 2, 1, 4), torch.randn(3 if step < 2 else 2, 2, 1, 4)
        if step == 2:
            for c in (plain, grow):
                c.batch_select_indices(torch.tensor([0, 2]))
        a, b = plain.layers[0].update(k, v), grow.layers[0].update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert grow.get_seq_length() == plain.get_seq_length() == 9


def test_sliding_window_model_takes_the_padded_prefill_and_matches_alone(lm, tiny_model_dir):
    """A model whose cache layers are not plain DynamicLayers (sliding-window attention) cannot have its prompts'
    K/V assembled into the growing buffers: it takes one left-padded prefill, repeated k times. Batched decoding
    still equals decoding each prompt alone (greedy) and per-sample seeds still hold (sampled, k=2)."""
    import torch
    from transformers import DynamicCache, MistralConfig, MistralForCausalLM
    from transformers.cache_utils import DynamicLayer

    from neat_studio.models import LoadedModel

    src = lm.model.config
    cfg = MistralConfig(vocab_size=src.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        sliding_window=16, initializer_range=0.2, tie_word_embeddings=True,
                        bos_token_id=src.bos_token_id, eos_token_id=src.eos_token_id, pad_token_id=src.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = MistralForCausalLM(cfg).eval()
    assert not all(type(x) is DynamicLayer for x in DynamicCache(config=cfg).layers)
    swa = LoadedModel(model=model, tokenizer=lm.tokenizer, model_id="tiny-swa", spec="tiny-swa", path=None)
    alone = [generate(swa, [p], params=GREEDY)[0][0] for p in PROMPTS]
    batched = generate(swa, PROMPTS, params=GREEDY, batch_size=8)
    assert [s.text for s in alone] == [ss[0].text for ss in batched]
    assert [s.n_tokens for s in alone] == [ss[0].n_tokens for ss in batched]
    two = GenParams(temperature=1.0, top_p=0.95, max_new_tokens=12, k=2, seed=3)
    assert _texts(generate(swa, PROMPTS, params=two, batch_size=8)) == _texts(generate(swa, PROMPTS, params=two,
                                                                                       batch_size=2))


def test_prefix_classes_partition_by_shared_prefix():
    from neat_studio.kv_cache import prefix_classes

    head, other = list(range(100, 110)), list(range(200, 210))
    prompts = [head + [1], other + [5, 6], head + [2, 3], [7, 8], head + [1, 4], other + [5]]
    classes = prefix_classes(prompts, 8)
    # head+[1] and head+[1,4] share 11 tokens, but P stops one short of the shortest member (its last logits)
    assert sorted((p, sorted(c)) for p, c in classes) == [(0, [3]), (10, [0, 2, 4]), (10, [1, 5])]
    assert prefix_classes(prompts, 11) == [(0, [0, 1, 2, 3, 4, 5])]  # nothing shares 11 tokens with a suffix left
    assert prefix_classes(prompts, 0) == [(0, [0, 1, 2, 3, 4, 5])]
    assert prefix_classes([head + [1]], 8) == [(0, [0])]
    # two system turns that start alike (10 common tokens) stay two classes of 20 shared tokens each
    a, b = list(range(100, 120)), list(range(100, 110)) + list(range(300, 310))
    assert prefix_classes([a + [1], b + [1], a + [2], b + [2]], 8) == [(20, [0, 2]), (20, [1, 3])]


def test_shared_prefix_prefill_equals_whole_prompt_prefill(lm, monkeypatch):
    """Prompts under one system turn share its prefill: the prefix runs once, the suffixes after its K/V. The
    decoding cache (valid positions) and the last logits equal a whole-prompt prefill, greedy and sampled texts are
    the same, and the model sees fewer tokens."""
    import torch

    import neat_studio.generation as G
    import neat_studio.kv_cache as KV

    systems = ["You are a pirate who answers every question at length."] * 3 + ["Be terse and rude."] * 2 + [None]
    prompts = PROMPTS + ["Tell me about the sea."]
    enc = [encode_chat(lm.tokenizer, p, system=s) for p, s in zip(prompts, systems)]
    classes = KV.prefix_classes(enc, KV.SHARED_PREFIX_MIN)
    assert len(classes) >= 2 and all(p >= KV.SHARED_PREFIX_MIN for p, c in classes if len(c) > 1)
    width = max(map(len, enc))
    seen = []
    hook = lm.model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0].numel()))
    G.prepare_for_inference(lm.model)
    try:
        with torch.inference_mode():
            out = {}
            for share in (True, False):
                seen.clear()
                cache, logits = KV.prefill(lm.model, enc, width, G._pad_id(lm.tokenizer), "cpu", k=2, reserve=3,
                                           share_prefix=share)
                out[share] = (cache, logits, sum(seen))
    finally:
        hook.remove()
    (c1, l1, n1), (c0, l0, n0) = out[True], out[False]
    assert torch.allclose(l1, l0, atol=1e-4) and l1.shape == (2 * len(enc), l0.shape[-1])
    valid = torch.zeros(2 * len(enc), width, dtype=torch.bool)
    for i, ids in enumerate(enc):
        valid[2 * i:2 * i + 2, width - len(ids):] = True
    for a, b in zip(c1.layers, c0.layers):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            assert x.shape == y.shape
            assert torch.allclose(x.transpose(1, 2)[valid], y.transpose(1, 2)[valid], atol=1e-4)
    assert n1 < n0  # fewer prefill tokens (padding included) with the shared prefixes
    assert n1 <= sum(map(len, enc)) - sum((len(c) - 1) * p for p, c in classes) + 2 * width
    texts, default = {}, KV.SHARED_PREFIX_MIN
    for share_min in (default, 0):
        monkeypatch.setattr(KV, "SHARED_PREFIX_MIN", share_min)
        texts[share_min] = (_texts(generate(lm, prompts, systems=systems, params=GREEDY, batch_size=8)),
                            _texts(generate(lm, prompts, systems=systems, params=SAMPLED, batch_size=9)))
    assert texts[default] == texts[0]


def test_sampling_under_autocast_casts_each_weight_once(tiny_model_dir):
    """The trainer samples its rounds with fp32 master weights under bf16 autocast. Autocast keeps its bf16 copy
    of a weight for the whole block only outside inference_mode, so decoding runs under no_grad there: each weight
    is cast once per generate call, not once per decoding step (as it was: 2x slower sampling on a bf16 CPU)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    lm = load_model(str(tiny_model_dir))
    for p in lm.model.parameters():
        p.requires_grad_(True)  # as in training
    params = GenParams(temperature=0, max_new_tokens=10)

    class CountWeightCasts(TorchDispatchMode):
        def __init__(self, ptrs):
            super().__init__()
            self.ptrs, self.cast = ptrs, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.ptrs:
                self.cast.append(args[0].data_ptr())
            return func(*args, **(kwargs or {}))

    generate(lm, PROMPTS[:2], params=params)  # the decoding layout is set up once, outside the count
    ptrs = {p.data_ptr() for p in lm.model.parameters() if p.dim() == 2}
    with torch.autocast("cpu", dtype=torch.bfloat16), CountWeightCasts(ptrs) as c:
        res = generate(lm, PROMPTS[:2], params=params)
    steps = max(s.n_tokens for ss in res for s in ss)
    # (under inference_mode the ops would not even reach this dispatch mode: c.cast would be empty)
    assert steps >= 5 and c.cast and len(c.cast) == len(set(c.cast)), (len(c.cast), len(set(c.cast)), steps)
