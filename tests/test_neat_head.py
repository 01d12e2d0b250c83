"""The fused, chunked lm_head + log-softmax (neat/head.py), the sparse tied-embedding gradient, and prompt_cache=auto."""
import pytest
import torch

from neat_studio.neat.config import ConfigError, NeatConfig
from neat_studio.neat.head import linear_logprobs, packed_head, sparse_tied_embedding
from neat_studio.neat.rounds import RankedList
from neat_studio.neat.batching import EncodedList, cache_pays, collate, collate_shared, encode_list
from neat_studio.neat.scorer import ListScorer


def test_linear_logprobs_values_and_gradcheck(monkeypatch):
    from neat_studio.neat import head

    torch.manual_seed(0)
    h = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 3, 3, 10, 5, 0, 7])  # repeated labels: scatter_add must accumulate, not overwrite
    want = torch.log_softmax(h @ w.t(), -1).gather(1, labels[:, None]).squeeze(1)
    for keep in (head.KEEP_BYTES, 0):  # exp(logits) kept from forward to backward, or recomputed
        monkeypatch.setattr(head, "KEEP_BYTES", keep)
        for chunk in (1, 3, 7, 100):  # chunks that split, divide and exceed the rows
            torch.testing.assert_close(linear_logprobs(h, w, labels, chunk), want)
            # (nondet_tol: a repeated backward recomputes instead of reusing the kept values: rounding differs)
            assert torch.autograd.gradcheck(lambda a, b: linear_logprobs(a, b, labels, chunk), (h, w), nondet_tol=1e-12)
        out = linear_logprobs(h, w, labels, 3)  # a second backward (retain_graph) gives the same gradient
        gw1, = torch.autograd.grad(out.sum(), w, retain_graph=True)
        gw2, = torch.autograd.grad(out.sum(), w)
        torch.testing.assert_close(gw1, gw2)
    # fp32 in -> fp32 out, and the same gradient as autograd through log_softmax
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    out = linear_logprobs(h32, w32, labels, 2)
    assert out.dtype == torch.float32
    g = torch.randn(7)
    (out * g).sum().backward()
    h2, w2 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    (torch.log_softmax(h2 @ w2.t(), -1).gather(1, labels[:, None]).squeeze(1) * g).sum().backward()
    torch.testing.assert_close(h32.grad, h2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w32.grad, w2.grad, atol=1e-5, rtol=1e-4)
    assert linear_logprobs(h32[:0], w32, labels[:0]).shape == (0,)
    # direct=True: the weight's gradient is added straight into .grad (here on top of an earlier micro-batch's)
    w3 = w.detach().float().requires_grad_()
    w3.grad = torch.ones_like(w3)
    (linear_logprobs(h.detach().float(), w3, labels, 3, direct=True) * g).sum().backward()
    torch.testing.assert_close(w3.grad, w2.grad + 1, atol=1e-5, rtol=1e-4)


def _lists(lm):
    from tests.test_neat_trainer import BAD, GOOD

    lists = [RankedList("a", [{"role": "user", "content": "What is the weather like today?"}],
                        [GOOD[0], BAD[1], "ok", "Sure."], [0, 1, 2, 2], ["h", "h", "policy", "policy"]),
             RankedList("b", [{"role": "user", "content": "Write a poem about the sea, please, a long one."}],
                        [GOOD[1], BAD[0]], [0, 1], ["h", "h"])]
    return [encode_list(lm.tokenizer, x, 64, 32) for x in lists]


def _p_and_grads(model, scorer, batch):
    from torch.profiler import profile

    model.zero_grad(set_to_none=True)
    with profile() as prof:
        s, n = scorer(batch)
        (s / n * torch.linspace(1, 2, len(n))).sum().backward()
    ops = {e.key for e in prof.key_averages()}
    return (s / n).detach(), {k: q.grad.clone() for k, q in model.named_parameters()}, ops


def test_packed_head_equals_full_logits_path_with_sparse_tied_embedding(tiny_model_dir):
    from neat_studio.models import load_model

    lm = load_model(str(tiny_model_dir))
    model = lm.model.float().train()
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied, like SmolLM2
    enc, pad = _lists(lm), lm.tokenizer.pad_token_id
    full = ListScorer(model, packed=False)
    packed = ListScorer(model)
    packed.direct_head_grad = True
    assert packed.packed() and not full.packed()
    for layout in (collate, collate_shared):
        sparse_tied_embedding(model, False)
        p_ref, g_ref, ops = _p_and_grads(model, full, layout(enc, pad))
        assert "aten::embedding_dense_backward" in ops
        assert sparse_tied_embedding(model, True)
        p, g, ops = _p_and_grads(model, packed, layout(enc, pad))
        # the lookup's gradient is sparse (no zero-filled vocab x hidden tensor); the head's is dense
        assert "aten::embedding_sparse_backward" in ops and "aten::embedding_dense_backward" not in ops
        torch.testing.assert_close(p, p_ref, atol=1e-5, rtol=1e-5)
        assert set(g) == set(g_ref)
        for k in g_ref:
            assert g[k].layout == torch.strided  # the optimiser sees a dense gradient
            torch.testing.assert_close(g[k], g_ref[k], atol=1e-5, rtol=1e-4, msg=k)
    sparse_tied_embedding(model, False)


def test_packed_head_refuses_a_head_that_is_not_plain_linear(tiny_model_dir):
    from neat_studio.models import load_model

    lm = load_model(str(tiny_model_dir))
    model = lm.model
    forward = model.forward

    def capped(*a, **kw):  # a soft-capped head (as in Gemma 2): logits != lm_head(hidden)
        out = forward(*a, **kw)
        out.logits = 3.0 * torch.tanh(out.logits / 3.0)
        return out

    model.forward = capped
    assert packed_head(model) is None
    assert ListScorer(model).packed() is False  # -> the full-logits path, which applies the cap
    lm2 = load_model(str(tiny_model_dir))
    assert packed_head(lm2.model) is not None
    assert ListScorer(lm2.model).shared_ok()
    lm2.model.config.sliding_window = 64  # a windowed model: the shared block's mask would drop the window
    assert not ListScorer(lm2.model).shared_ok()


def test_cache_pays_and_config_values():
    pair = EncodedList(list(range(130)), [list(range(60)), list(range(55))], [0, 1], [False, False])
    four = EncodedList(list(range(130)), [list(range(60))] * 4, [0, 1, 2, 2], [False, False, True, True])
    # plain 2 x 190 = 380 tokens vs shared 130 + 60 + 55 = 245: shared
    assert cache_pays([pair]) and cache_pays([four])
    # one list of 4 x 95-token responses to a 5-token prompt beside a 100-token prompt with one 3-token response:
    # plain 5 rows x 103 = 515 tokens, shared 2 rows x (5 + 4 x 95) = 770 (> 0.9 x 515): plain
    long4 = EncodedList(list(range(5)), [list(range(95))] * 4, [0, 1, 2, 2], [False] * 4)
    short = EncodedList(list(range(100)), [list(range(3))], [0], [False])
    assert not cache_pays([long4, short])
    # nothing to share: a 5-token prompt (plain 4 x 100 = 400, shared 385 > 360), a single response (equal)
    assert not cache_pays([long4]) and not cache_pays([short])
    assert NeatConfig().prompt_cache == "auto"
    cfg = NeatConfig(snapshot="s")
    assert cfg.apply_overrides(["prompt_cache=true"]).prompt_cache == "on"
    assert cfg.apply_overrides(["prompt_cache=off"]).prompt_cache == "off"  # YAML reads off as False
    assert NeatConfig.from_dict({"prompt_cache": "auto"}).prompt_cache == "auto"
    with pytest.raises(ConfigError, match="prompt_cache must be one of auto, on, off"):
        NeatConfig(snapshot="s", negatives=["x"], prompt_cache="sometimes").validate()
