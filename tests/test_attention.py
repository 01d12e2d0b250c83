"""neat_studio.attention: the CPU sdpa path must give transformers' own results (values and gradients)."""
from __future__ import annotations

import pytest
import torch

import neat_studio.attention as A
import neat_studio.models as M


class _Attn:  # what sdpa_attention_forward reads from the attention module
    def __init__(self, groups):
        self.num_key_value_groups = groups
        self.is_causal = True


def _inputs(b=3, hq=6, hkv=2, t=11, d=8, q_len=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_len = t if q_len is None else q_len
    q = torch.randn(b, hq, q_len, d, generator=g, requires_grad=True)
    k = torch.randn(b, hkv, t, d, generator=g, requires_grad=True)
    v = torch.randn(b, hkv, t, d, generator=g, requires_grad=True)
    mask = torch.ones(b, 1, q_len, t, dtype=torch.bool).tril(diagonal=t - q_len)
    mask[1, :, :, :4] = False  # row 1 left-padded by 4
    mask[1, :, :, :4] |= torch.eye(q_len, t, dtype=torch.bool)[:, :4]  # keep every query row with a key
    return q, k, v, mask


@pytest.mark.parametrize("q_len", [11, 1])
def test_cpu_sdpa_equals_transformers_sdpa_values_and_grads(q_len):
    A.install()
    mod = _Attn(3)
    res = []
    for fn in (A._ORIGINAL, A.cpu_sdpa_attention):
        q, k, v, mask = _inputs(q_len=q_len)
        out, w = fn(mod, q, k, v, mask, dropout=0.0, scaling=0.3)
        assert w is None and out.shape == (3, q_len, 6, 8)  # [batch, query, heads, dim] like transformers
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        res.append((out.detach(), q.grad, k.grad, v.grad))
    for a, b in zip(*res):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_cpu_sdpa_takes_grouped_heads_without_copies(monkeypatch):
    """The fast path calls torch with the 2 key/value heads (enable_gqa) instead of repeating them to 6."""
    A.install()
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((k.shape[1], kw.get("enable_gqa", False)))
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    q, k, v, mask = _inputs()
    A.cpu_sdpa_attention(_Attn(3), q, k, v, mask, scaling=0.3)
    A._ORIGINAL(_Attn(3), q, k, v, mask, scaling=0.3)
    assert seen == [(2, True), (6, False)]  # ours: grouped heads; transformers': repeated heads
    seen.clear()
    A.cpu_sdpa_attention(_Attn(3), q, k, v, None, scaling=0.3)  # no mask: transformers' own path (already GQA)
    assert seen == [(2, True)]


def test_install_is_idempotent_and_routes_model_attention(tiny_model_dir):
    from transformers import AttentionInterface

    lm = M.load_model(str(tiny_model_dir))
    A.install()
    assert AttentionInterface._global_mapping["sdpa"] is A.cpu_sdpa_attention
    assert A._ORIGINAL is not A.cpu_sdpa_attention
    # a padded batch through the whole tiny model (2 KV heads for 4 query heads): same logits and gradients
    ids = torch.tensor([[0, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])
    att = (ids != 0).long()
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    grads = []
    try:
        for fn in (A._ORIGINAL, A.cpu_sdpa_attention):
            AttentionInterface.register("sdpa", fn)
            lm.model.zero_grad()
            out = lm.model(input_ids=ids, attention_mask=att, position_ids=pos).logits
            (out[att.bool()].square().mean()).backward()
            grads.append((out.detach(), [p.grad.clone() for p in lm.model.parameters()]))
    finally:
        AttentionInterface.register("sdpa", A.cpu_sdpa_attention)
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
