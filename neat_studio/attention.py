"""A CPU fast path for transformers' ``sdpa`` attention, registered once through its ``AttentionInterface``.

transformers' ``sdpa_attention_forward`` is written for GPU kernels: for grouped-query attention (SmolLM2: 9 query
heads share 3 key/value heads) with a padding mask -- every padded batch: the trainer's lists, generation's prefill
groups -- it copies each key/value head ``num_key_value_groups`` times (``repeat_kv``) before calling
``scaled_dot_product_attention``. torch's CPU kernel takes the grouped heads directly (``enable_gqa=True``) with
any mask, forward and backward, so on CPU that copy (and its backward) is skipped. Same values up to float rounding
(tested). Measured on one layer: forward+backward at the trainer's shapes (2 x 220 tokens) 8.9 -> 7.6 ms, forward
at 16 x 330 tokens 38 -> 30 ms.

Everything else (GPUs, no mask or a float mask, one query token -- transformers already avoids the copy there --,
position biases, soft-capping, paged caches) goes to transformers' own function unchanged. :func:`install` is
called by :func:`neat_studio.models.load_model`; it is idempotent.

(Also measured and not kept: cutting a left-padded decoding batch into runs of rows with similar padding so that
short prompts do not attend over the long ones' padding. With the benchmark's 16 prompts of 38..328 tokens it saved
only ~10 % of decoding attention, ~2 % of a generation call: more, smaller kernel calls eat most of the gain.)
"""
from __future__ import annotations

import threading

_LOCK = threading.Lock()
_ORIGINAL = None  # transformers' sdpa_attention_forward
_DELEGATE_KW = ("position_bias", "softcap", "cache", "s_aux", "sinks")


def install() -> None:
    """Register :func:`cpu_sdpa_attention` as the ``sdpa`` implementation (once per process)."""
    global _ORIGINAL
    with _LOCK:
        if _ORIGINAL is not None:
            return
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        _ORIGINAL = sdpa_attention_forward
        AttentionInterface.register("sdpa", cpu_sdpa_attention)


def cpu_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                       is_causal=None, **kwargs):
    """Drop-in for transformers' ``sdpa_attention_forward`` (same arguments, same ``(output, None)`` result)."""
    import torch

    groups = getattr(module, "num_key_value_groups", 1)
    if (query.device.type != "cpu" or attention_mask is None or attention_mask.dtype != torch.bool
            or attention_mask.dim() != 4 or any(kwargs.get(k) is not None for k in _DELEGATE_KW)
            or kwargs.get("output_attentions") or torch.jit.is_tracing()):
        return _ORIGINAL(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                         is_causal=is_causal, **kwargs)
    if groups > 1 and query.shape[2] > 1 and key.shape[-1] == value.shape[-1]:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=False,
            enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return _ORIGINAL(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                     is_causal=is_causal, **kwargs)

