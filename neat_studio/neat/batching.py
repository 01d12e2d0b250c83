"""Encoding and collation: a ranked list -> token ids -> padded blocks for the scorer (see trainer.py's notes on
the two layouts: one row per response, or the shared-prompt block with one row per list)."""
from __future__ import annotations

import dataclasses

import torch

from .rounds import RankedList


@dataclasses.dataclass
class EncodedList:
    prompt_ids: list
    response_ids: list   # list[list[int]]
    ranks: list
    is_negative: list
    ref_p: list | None = None  # per kept response (anchor=round)
    src: list = dataclasses.field(default_factory=list)  # index in the RankedList of each kept response
    kl: list | None = None     # per kept response: does the KL term (kl_weight) cover its tokens

    @property
    def cost(self) -> int:  # tokens of the padded block (what a micro-batch costs)
        return len(self.response_ids) * (len(self.prompt_ids) + max(len(r) for r in self.response_ids))


def encode_list(tokenizer, lst: RankedList, max_prompt_len: int, max_response_len: int) -> EncodedList | None:
    from ..models import encode_prompt_and_response

    prompt_ids, resp, ranks, neg, src = None, [], [], [], []
    for i, (text, rank, is_neg) in enumerate(zip(lst.responses, lst.ranks, lst.is_negative)):
        p, r = encode_prompt_and_response(tokenizer, lst.prompt, text)
        r = list(r)[:max_response_len]
        if not r:
            continue
        prompt_ids = list(p)[-max_prompt_len:] if prompt_ids is None else prompt_ids
        resp.append(r)
        ranks.append(rank)
        neg.append(is_neg)
        src.append(i)
    if not resp:
        return None
    ref = [float(lst.ref_p[i]) for i in src] if lst.ref_p is not None else None
    return EncodedList(prompt_ids, resp, ranks, neg, ref, src)


def _ref_tensor(lists: list[EncodedList]):
    return (torch.tensor([x for el in lists for x in el.ref_p], dtype=torch.float32)
            if all(el.ref_p is not None for el in lists) else None)


def _kl_tokens(lists: list[EncodedList]):
    """[response tokens] bool in the scorer's token order (list-major, response by response): the tokens the KL
    term covers; None when no list marks any (kl_weight off)."""
    if not any(el.kl and any(el.kl) for el in lists):
        return None
    return torch.tensor([bool(el.kl and el.kl[j]) for el in lists for j, r in enumerate(el.response_ids)
                         for _ in r], dtype=torch.bool)


def collate(lists: list[EncodedList], pad_id: int) -> dict:
    """Right-padded block: one row per response, prompt + response; resp_mask marks response tokens."""
    rows = [(li, el.prompt_ids, r) for li, el in enumerate(lists) for r in el.response_ids]
    T = max(len(p) + len(r) for _, p, r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    rmask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (_, p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        att[i, : len(p) + len(r)] = 1
        rmask[i, len(p): len(p) + len(r)] = 1
    return {
        "input_ids": ids, "attention_mask": att, "resp_mask": rmask,
        "start": min(len(el.prompt_ids) for el in lists),
        "list_index": torch.tensor([li for li, _, _ in rows]),
        "ranks": torch.tensor([rk for el in lists for rk in el.ranks]),
        "is_negative": torch.tensor([n for el in lists for n in el.is_negative], dtype=torch.bool),
        "ref_p": _ref_tensor(lists), "kl_tok": _kl_tokens(lists),
        "n_tokens": int(att.sum()),
    }


def collate_shared(lists: list[EncodedList], pad_id: int) -> dict:
    """Shared prompt: ONE row per list, [prompt, response 1, response 2, ...], right-padded ([L, T]). A block mask
    (`allowed` [L, T, T]) lets every response see the prompt and its own earlier tokens only, and each response's
    positions continue from the prompt's end, so every response token gets exactly the context (and the rotary
    positions) it has in its own prompt + response row, while the prompt runs once per list. Token m of the
    output is predicted at (pred_row[m], pred_pos[m]) (the prompt's last position for a response's first token)
    and belongs to response row resp_row[m] (list-major order, as in `collate`)."""
    L = len(lists)
    T = max(len(el.prompt_ids) + sum(len(r) for r in el.response_ids) for el in lists)
    ids = torch.full((L, T), pad_id, dtype=torch.long)
    pos = torch.zeros((L, T), dtype=torch.long)
    seg = torch.full((L, T), -1, dtype=torch.long)   # -1 padding, 0 prompt, j + 1 response j
    pred_row, pred_pos, labels, resp_row = [], [], [], []
    n = 0
    for li, el in enumerate(lists):
        P = len(el.prompt_ids)
        ids[li, :P] = torch.tensor(el.prompt_ids)
        pos[li, :P] = torch.arange(P)
        seg[li, :P] = 0
        off = P
        for j, r in enumerate(el.response_ids):
            k = len(r)
            ids[li, off: off + k] = torch.tensor(r)
            pos[li, off: off + k] = torch.arange(P, P + k)
            seg[li, off: off + k] = j + 1
            pred_row += [li] * k
            pred_pos += [P - 1] + list(range(off, off + k - 1))
            labels += r
            resp_row += [n] * k
            off, n = off + k, n + 1
    q, kk = seg[:, :, None], seg[:, None, :]
    allowed = torch.ones((T, T), dtype=torch.bool).tril() & (kk >= 0) & ((kk == 0) | (kk == q))
    allowed |= torch.eye(T, dtype=torch.bool)  # a padding query sees itself (no all-masked row: no NaN)
    return {
        "input_ids": ids, "position_ids": pos, "allowed": allowed, "pred_row": torch.tensor(pred_row),
        "pred_pos": torch.tensor(pred_pos), "labels": torch.tensor(labels), "resp_row": torch.tensor(resp_row),
        "n_resp": n, "lists": lists, "pad_id": pad_id,
        "list_index": torch.tensor([li for li, el in enumerate(lists) for _ in el.response_ids]),
        "ranks": torch.tensor([rk for el in lists for rk in el.ranks]),
        "is_negative": torch.tensor([x for el in lists for x in el.is_negative], dtype=torch.bool),
        "ref_p": _ref_tensor(lists), "kl_tok": _kl_tokens(lists),
        "n_tokens": int((seg >= 0).sum()),
    }


def to_device(batch: dict, device) -> dict:
    """A collated batch with its tensors on `device` (other values as they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# prompt_cache=auto takes the shared-prompt layout when it runs at most this share of the plain layout's padded
# tokens. Both run one forward of the same kind, so a token costs about the same; the shared rows are longer
# (attention grows with the square of the row), hence a little below 1.
CACHE_PAYS = 0.9


def cache_pays(lists: list[EncodedList]) -> bool:
    """prompt_cache=auto: would collate_shared run at most CACHE_PAYS of collate's padded tokens?"""
    rows = [(len(el.prompt_ids), len(r)) for el in lists for r in el.response_ids]
    plain = len(rows) * max(p + r for p, r in rows)
    shared = len(lists) * max(len(el.prompt_ids) + sum(len(r) for r in el.response_ids) for el in lists)
    return shared <= CACHE_PAYS * plain
