"""The list scorer: a batch of encoded lists -> length-normalised response log-probs (p in loss.py), on either
collation layout, through the fused head (head.py) when the model allows it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .batching import EncodedList, collate, collate_shared, encode_list, to_device
from .head import linear_logprobs, probe_tokens
from .loss import sequence_logprobs
from .rounds import RankedList


class ListScorer(torch.nn.Module):
    """Wraps the causal LM: batch -> (sum of response-token log-probs, response token count) per response.

    Takes a `collate` block (one row per response) or a `collate_shared` block (one row per list; scored as
    plain rows when the model cannot take its mask, see shared_ok). Where the model allows (checked once, see
    head.packed_head) the decoder's hidden states of the response positions only go through
    head.linear_logprobs: no [rows, T, vocab] logits, no padding rows in the lm_head; otherwise the model's
    logits (`logits_to_keep` in the plain layout).
    """

    def __init__(self, model, packed: bool = True):
        super().__init__()
        self.model = model
        self._packed = None if packed else False  # None: not checked yet (checked on the first forward)
        self._shared = None
        self.direct_head_grad = False  # head.linear_logprobs(direct=...): the trainer sets it with one process

    def packed(self):
        if self._packed is None:
            from .head import packed_head

            self._packed = packed_head(self.model) or False
        return self._packed

    def shared_ok(self) -> bool:
        """Can this model take collate_shared's block mask? (sdpa or eager attention, no sliding window, which the
        custom mask would replace, and a one-off numeric check that a shared block gives the plain layout's
        log-probs.)"""
        if self._shared is None:
            self._shared = False
            cfg = getattr(self.model, "config", None)
            impl = getattr(cfg, "_attn_implementation", None)
            window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
            if impl in ("sdpa", "eager") and not window:
                try:
                    self._shared = _shared_matches_plain(self)
                except Exception:  # an architecture that rejects a custom 4D mask or position ids
                    self._shared = False
        return self._shared

    def forward(self, batch: dict):
        """(sum of response-token log-probs [R], response token count [R]); with a `kl_tok` selector in the batch
        (kl_weight) also the log-softmax over the whole vocabulary at those tokens [M, V] (fp32), from the same
        forward pass."""
        if "allowed" in batch:
            if not self.shared_ok():
                dev = batch["input_ids"].device
                plain = collate(batch["lists"], batch["pad_id"])
                return self.forward(to_device(plain, dev))
            return self._shared_forward(batch)
        ph = self.packed()
        if ph:
            dec, head = ph
            ids, rm = batch["input_ids"], batch["resp_mask"]
            h = dec(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
            sel = rm[:, 1:].bool()                          # position t predicts token t + 1
            hs = h[:, :-1][sel]
            out = _packed_sums(hs, head.weight, ids[:, 1:][sel], sel, self.direct_head_grad)
            return _with_kl(out, batch, lambda t: hs[t] @ head.weight.t())
        s = batch["start"] - 1                              # first position that predicts a response token
        keep = batch["input_ids"].shape[1] - s              # positions s..T-1: the lm_head (vocab x hidden, a
        try:                                                # fifth of the model) never runs on prompt positions
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                             logits_to_keep=keep)
        except TypeError:  # an architecture without logits_to_keep
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[:, -keep:][:, :-1]
        mask = batch["resp_mask"][:, s + 1:]
        res = sequence_logprobs(logits, batch["input_ids"][:, s + 1:], mask)
        return _with_kl(res, batch, lambda t: logits[mask.bool()][t])

    def _shared_forward(self, batch: dict):
        """One forward of the shared-prompt block (collate_shared)."""
        allowed = batch["allowed"][:, None]
        if self.model.config._attn_implementation == "eager":  # additive float mask; sdpa takes the boolean one
            dt = next(self.model.parameters()).dtype
            allowed = torch.zeros(allowed.shape, dtype=dt, device=allowed.device).masked_fill_(
                ~allowed, torch.finfo(dt).min)
        ph = self.packed()
        kw = dict(input_ids=batch["input_ids"], attention_mask=allowed, position_ids=batch["position_ids"],
                  use_cache=False)
        rows, where, labels = batch["resp_row"], (batch["pred_row"], batch["pred_pos"]), batch["labels"]
        if ph:
            hs = ph[0](**kw).last_hidden_state[where]
            tok = linear_logprobs(hs, ph[1].weight, labels, direct=self.direct_head_grad)
            kl_logits = lambda t: hs[t] @ ph[1].weight.t()  # noqa: E731
        else:
            logits = self.model(**kw).logits[where]
            tok = -F.cross_entropy(logits.float(), labels, reduction="none")
            kl_logits = lambda t: logits[t]  # noqa: E731
        n = batch["n_resp"]
        sums = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
        return _with_kl((sums, torch.bincount(rows, minlength=n).to(tok.dtype)), batch, kl_logits)


def _with_kl(out: tuple, batch: dict, token_logits) -> tuple:
    """`out` as it is, or with the log-softmax of `token_logits(kl_tok)` appended when the batch selects KL tokens
    (the response tokens in the scorer's order, see batching._kl_tokens)."""
    sel = batch.get("kl_tok")
    if sel is None:
        return out
    return (*out, torch.log_softmax(token_logits(sel).float(), dim=-1))


@torch.no_grad()
def _shared_matches_plain(scorer: "ListScorer") -> bool:
    model = scorer.model
    dev = next(model.parameters()).device
    t = probe_tokens(model.get_input_embeddings().weight.shape[0], 14)
    lists = [EncodedList(t[:5], [t[5:8], t[8:12]], [0, 1], [False, False]),
             EncodedList(t[10:13], [t[1:3], t[3:9], t[9:10]], [0, 1, 1], [False] * 3)]
    was = model.training
    model.eval()
    try:  # _shared_forward directly: forward() would consult shared_ok(), which is what is being decided
        s1, n1 = scorer._shared_forward(to_device(collate_shared(lists, 0), dev))
        s2, n2 = scorer(to_device(collate(lists, 0), dev))
    finally:
        model.train(was)
    return bool(torch.equal(n1, n2) and torch.allclose(s1 / n1, s2 / n2, atol=1e-4, rtol=1e-4))


def _packed_sums(h, weight, labels, sel, direct=False):
    """Per-row (sum of log-probs, token count) of the packed positions `sel` [rows, T] (row-major order)."""
    tok = linear_logprobs(h, weight, labels, direct=direct)
    rows = sel.nonzero()[:, 0]
    sums = torch.zeros(sel.shape[0], dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
    return sums, sel.sum(-1).to(tok.dtype)


@torch.no_grad()
def score_responses(model, tokenizer, prompt, responses: list[str], max_prompt_len: int = 256,
                    max_response_len: int = 128) -> list[float]:
    """p (mean response-token log-prob, plain prompt as context) of each response: what the loss ranks."""
    lst = RankedList("x", prompt, list(responses), [0] * len(responses), ["policy"] * len(responses))
    enc = encode_list(tokenizer, lst, max_prompt_len, max_response_len)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        batch = to_device(collate([enc], pad), dev)
        s, n = ListScorer(model)(batch)
    finally:
        model.train(was)
    return (s / n).tolist()
