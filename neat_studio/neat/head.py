"""Response-token log-probs straight from hidden states: the lm_head and log-softmax fused and chunked.

The loss needs one number per response token, log pi(y_t | ...), never the [tokens, vocab] logits. The plain path
(model(...).logits -> slice -> cross_entropy) materialises logits for every position the head runs on (padding
included), keeps a log-softmax of the same size for the backward pass, zero-fills a full-size gradient for the
slice, and sums the tied embedding / lm_head gradient out of place. On SmolLM2-135M (vocabulary 49,152, a fifth
of the weights) that is most of what is not a matmul in a training step.

`linear_logprobs(h, W, labels)` computes, for the M selected positions only,

    logp[m] = (h[m] . W[labels[m]]) - logsumexp_v(h[m] . W[v])

in chunks of rows. Forward keeps exp(logits - max) of each chunk while that fits in KEEP_BYTES, else only the
logsumexp [M] (backward then recomputes each chunk's logits: one extra head GEMM, one chunk x vocab buffer alive);
backward writes dlogp/dlogits = g * (onehot - softmax) into that same buffer. No log-softmax copy, no full-size
zero-filled gradient. Exact up to float rounding (gradcheck-tested in float64, both ways).

`packed_head(model)` says whether a model's logits are exactly lm_head(decoder(x)) (checked numerically once on
a few tokens, so soft-capped / scaled / biased heads fall back to the plain path), and returns (decoder, head).
"""
from __future__ import annotations

import torch

CHUNK_ROWS = 256  # rows of logits computed at once: 256 x 49,152 x 4 B = 50 MB on SmolLM2
# Up to this many bytes of exp(logits) are kept from forward to backward (no second head GEMM; e.g. 1,300 response
# tokens on SmolLM2); above it the backward recomputes each chunk's logits from the saved logsumexp.
KEEP_BYTES = 256 * 2 ** 20


class _LinearLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, labels, chunk, direct):
        M = h.shape[0]
        dt = torch.promote_types(h.dtype, torch.float32)  # bf16 -> fp32 softmax; fp64 stays fp64 (gradcheck)
        out = torch.empty(M, dtype=dt, device=h.device)
        lse = torch.empty(M, dtype=dt, device=h.device)
        keep = any(ctx.needs_input_grad[:2]) and M * weight.shape[0] * dt.itemsize <= KEEP_BYTES
        kept = []
        for s in range(0, M, chunk):
            e = min(M, s + chunk)
            logits = (h[s:e] @ weight.t()).to(dt)
            if keep:  # exp(logits - max) kept for the backward pass (in place: no second [rows, vocab] tensor)
                target = logits.gather(1, labels[s:e, None]).squeeze(1)
                mx = logits.amax(dim=-1)
                ex = logits.sub_(mx[:, None]).exp_()
                total = ex.sum(dim=-1)
                lse[s:e] = mx + total.log()
                out[s:e] = target - lse[s:e]
                kept.append((ex, total))
            else:
                lse[s:e] = torch.logsumexp(logits, dim=-1)
                out[s:e] = logits.gather(1, labels[s:e, None]).squeeze(1) - lse[s:e]
        ctx.save_for_backward(h, weight, labels, lse)
        ctx.chunk, ctx.direct, ctx.kept = chunk, direct, kept or None
        return out

    @staticmethod
    def backward(ctx, g):
        h, weight, labels, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.empty_like(h) if need_h else None
        gw = None
        M, chunk = h.shape[0], ctx.chunk
        g = g.to(lse.dtype)
        kept, ctx.kept = ctx.kept, None  # used once (a second backward, retain_graph=True, recomputes)
        for i, s in enumerate(range(0, M, chunk)):
            e = min(M, s + chunk)
            if kept is not None:  # softmax = exp(logits - max) / total
                grad, total = kept[i]
                grad.mul_((-g[s:e] / total)[:, None])              # g * (0 - softmax)
            else:
                grad = (h[s:e] @ weight.t()).to(lse.dtype)
                grad.sub_(lse[s:e, None]).exp_()                  # softmax
                grad.mul_(-g[s:e, None])                           # g * (0 - softmax)
            grad.scatter_add_(1, labels[s:e, None], g[s:e, None])  # g * (onehot - softmax)
            grad = grad.to(h.dtype)
            if need_h:
                torch.mm(grad, weight, out=gh[s:e])
            if need_w and ctx.direct:  # straight into weight.grad (see linear_logprobs)
                if weight.grad is None:
                    weight.grad = torch.mm(grad.t().to(weight.dtype), h[s:e].to(weight.dtype))
                else:
                    weight.grad.addmm_(grad.t().to(weight.dtype), h[s:e].to(weight.dtype))
            elif need_w:  # first chunk writes, later ones accumulate: no zero-filled [vocab, hidden] tensor
                gw = grad.t() @ h[s:e] if gw is None else gw.addmm_(grad.t(), h[s:e])
        if need_w and gw is None and not ctx.direct:
            gw = torch.zeros_like(weight)
        return gh, gw, None, None, None


def linear_logprobs(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = CHUNK_ROWS,
                    direct: bool = False):
    """log softmax(h @ weight.T)[m, labels[m]] for every row m. h [M, H], weight [V, H], labels [M] -> [M] (fp32,
    or fp64 for fp64 inputs).

    direct=True (one process only: no gradient hooks, e.g. DDP's, see the weight's gradient arrive): the backward
    adds the weight's gradient straight into `weight.grad` instead of handing autograd a fresh [vocab, hidden]
    tensor. For a tied weight autograd would otherwise sum that tensor and the embedding's gradient out of place
    (a tensor returned from a Python autograd Function is never reused in place): one full-size allocation, copy
    and addition per backward. Same gradient either way (tested)."""
    if h.shape[0] == 0:
        return (h.sum(-1) * 0).float()
    return _LinearLogProbs.apply(h, weight, labels, max(1, int(chunk)), bool(direct))


def _tied_input_embedding(model, head) -> torch.nn.Embedding | None:
    emb = model.get_input_embeddings()
    if isinstance(emb, torch.nn.Embedding) and emb.weight is head.weight and emb.weight.requires_grad:
        return emb
    return None


def probe_tokens(vocab: int, n: int) -> list[int]:
    """n varied token ids in [1, vocab) for the one-off numeric checks (no tokenizer needed)."""
    return [int(x) for x in torch.arange(1, n + 1) * 7919 % max(2, vocab - 1) + 1]


@torch.no_grad()
def _same_logits(model, decoder, head) -> bool:
    dev = head.weight.device
    ids = torch.tensor([probe_tokens(head.weight.shape[0], 6)], device=dev)
    att = torch.ones_like(ids)
    was = model.training
    model.eval()
    try:
        ref = model(input_ids=ids, attention_mask=att, use_cache=False).logits.float()
        h = decoder(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        got = (h @ head.weight.t()).float()
    finally:
        model.train(was)
    return ref.shape == got.shape and bool(torch.allclose(ref, got, rtol=1e-3, atol=1e-3 * float(ref.abs().max()) + 1e-5))


def packed_head(model):
    """(decoder, lm_head) when the model's logits are exactly lm_head(decoder(...).last_hidden_state) with a
    bias-free Linear head; None otherwise (the caller keeps the full-logits path). The numeric check runs once
    per model object (its verdict is kept on the model)."""
    ok = model.__dict__.get("_neat_packed_head_ok")
    found = _find(model)
    if found is None or ok is False:
        return None
    if ok is None:
        try:
            ok = _same_logits(model, *found)
        except Exception:  # any architecture whose decoder cannot be called this way
            ok = False
        model.__dict__["_neat_packed_head_ok"] = ok
    return found if ok else None


def _find(model):
    try:
        head = model.get_output_embeddings()
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or decoder is None or decoder is model:
        return None
    return decoder, head


def sparse_tied_embedding(model, on: bool = True) -> bool:
    """For a model whose input embedding IS the lm_head weight (tied) and is trained: make the embedding lookup's
    gradient sparse (rows of the tokens seen) instead of a zero-filled dense [vocab, hidden] tensor. The head's
    dense gradient always reaches the same parameter, so the summed gradient the optimiser sees stays dense and
    identical; only the zero-fill and one full-size addition per lookup go. Returns whether it applied."""
    head = model.get_output_embeddings()
    emb = _tied_input_embedding(model, head) if head is not None else None
    if emb is None:
        return False
    emb.sparse = bool(on)
    return True
