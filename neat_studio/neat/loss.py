"""The NEAT / RRHF loss, small enough to read in one sitting.

For one prompt x with responses y_1..y_n and ranks r (lower = better, equal = tie):

    p_i    = (1/|y_i|) * sum_t log pi(y_i,t | x, y_i,<t)        |y_i| = the response's OWN token count
    L_rank = sum_{(i, j): r_i > r_j} max(0, p_i - p_j + margin)  tied pairs contribute nothing
             (anchor=round: p_i - p_j becomes (p_i - ref_i) - (p_j - ref_j), the gains over the round's
             starting policy; rank_reduction=mean: divided by the list's number of pairs)
    L_sft  = mean over the best (rank == min rank) responses of -p_best
    L      = L_rank + sft_weight * L_sft (+ anchor_weight * L_anchor, with anchor=round; see neat_loss)
             (+ kl_weight * L_kl, token_kl: the policy's full next-token distribution against the starting model's
             on the plain samples of the kl_scope prompts)

Per list L_rank is a SUM over its pairs (as in the design); a batch of lists is AVERAGED over lists, so the
learning rate does not depend on the batch size. Prompt and padding tokens never count: `mask` selects the
response tokens. Two bugs of RRHF's reference code are avoided on purpose and tested: normalising by the
padded length instead of the response's length, and taking the NLL of the first batch item instead of the
best response of each list.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor):
    """Summed log-probs of the masked tokens of each row.

    logits [B, T, V] are ALIGNED with labels [B, T]: logits[b, t] is the distribution that scores labels[b, t]
    (the caller does the usual one-position shift). mask [B, T] is 1 on counted (response) tokens.
    Returns (sum_logp [B] float32, n_tokens [B] float32).
    """
    B, T, V = logits.shape
    # fused log-softmax + pick (cross_entropy): no [B, T, V] log-prob tensor kept for the backward pass
    tok = -F.cross_entropy(logits.float().reshape(B * T, V), labels.clamp_min(0).reshape(B * T),
                           reduction="none").reshape(B, T)
    m = mask.to(tok.dtype)
    return (tok * m).sum(-1), m.sum(-1)


def rrhf_rank_loss(p: torch.Tensor, ranks: torch.Tensor, margin: float = 0.0, reduction: str = "sum"):
    """Hinge over every ordered pair of one list. p [n], ranks [n] (lower = better).

    Returns (loss = sum over pairs i-worse-than-j of max(0, p_i - p_j + margin), n_pairs, n_correct), where a
    pair is correct when the better response has the strictly higher p. reduction="mean" divides the sum by the
    number of pairs (0 for a list without pairs), so a long list does not outweigh a short one quadratically.
    """
    worse = ranks[:, None] > ranks[None, :]           # worse[i, j]: i is ranked below j
    diff = p[:, None] - p[None, :]                     # p_i - p_j
    loss = (F.relu(diff + margin) * worse).sum()
    n_pairs = int(worse.sum())
    if reduction == "mean" and n_pairs:
        loss = loss / n_pairs
    return loss, n_pairs, int(((diff < 0) & worse).sum())


def neat_loss(sum_logp: torch.Tensor, n_tokens: torch.Tensor, list_index: torch.Tensor, ranks: torch.Tensor,
              margin: float = 0.0, sft_weight: float = 1.0, is_negative: torch.Tensor | None = None,
              ref_p: torch.Tensor | None = None, rank_reduction: str = "sum", anchor_weight: float = 0.0) -> dict:
    """Loss of a micro-batch holding several lists, flattened.

    sum_logp, n_tokens: [R] from `sequence_logprobs`; list_index [R]: which list each response belongs to;
    ranks [R]: rank inside its list; is_negative [R] (bool, optional): marks negative-prompt samples, only for
    the p_gap metric. ref_p [R] (optional, anchor=round): p of each response under the policy that started the
    round; the hinge then ranks the gains p - ref_p instead of p. Why: curated best answers are off-policy texts
    the model finds less likely than its own samples (recipe data, default model: p -2.18 for the references, -1.87
    for plain samples at temperature 0.8), so a raw-p hinge keeps pushing the model's own text down until it falls
    below the reference, and it never stops while new samples keep being likelier. Gains start at 0 and ask only
    for a `margin` of relative change.
    The NLL term always uses p.
    anchor_weight (with ref_p and is_negative): the starting policy also counts as a member of each list, ranked
    below the best answers and above the negative-prompt samples: L_anchor = mean over negatives of
    max(0, gain_neg + margin) + mean over the best of max(0, margin - gain_best), averaged over lists. The relative
    hinge alone lets every response of a list drift up together (a global refusal prior raised by the NLL of
    refusals made the benign prompts' negative samples, needless refusals, likelier, not less likely); this term
    asks each negative to lose `margin` against the round's start, and no more.
    Returns a dict: loss, rank_loss, sft_loss, anchor_loss (tensors, mean over lists), n_pairs, n_correct,
    p_best_sum / n_best and p_neg_sum / n_neg (floats for p_gap), n_lists.
    """
    p = sum_logp / n_tokens.clamp_min(1)
    q = p if ref_p is None else p - ref_p.to(p.dtype)  # what the hinge ranks
    rank_losses, sft_losses, anchor_losses = [], [], []
    n_pairs = n_correct = n_best = n_neg = 0
    p_best_sum = p_neg_sum = 0.0
    lists = torch.unique(list_index, sorted=True)
    for li in lists.tolist():
        sel = list_index == li
        p_l, r_l = p[sel], ranks[sel]
        rl, n, c = rrhf_rank_loss(q[sel], r_l, margin, rank_reduction)
        best = r_l == r_l.min()
        rank_losses.append(rl)
        sft_losses.append(-p_l[best].mean())
        if anchor_weight and ref_p is not None and is_negative is not None:
            q_l, neg_l = q[sel], is_negative[sel]
            a = F.relu(margin - q_l[best]).mean()
            if bool(neg_l.any()):
                a = a + F.relu(q_l[neg_l] + margin).mean()
            anchor_losses.append(a)
        n_pairs, n_correct = n_pairs + n, n_correct + c
        p_best_sum += float(p_l[best].detach().sum())
        n_best += int(best.sum())
        if is_negative is not None:
            neg = is_negative[sel]
            p_neg_sum += float(p_l[neg].detach().sum())
            n_neg += int(neg.sum())
    rank_loss = torch.stack(rank_losses).mean()
    sft_loss = torch.stack(sft_losses).mean()
    anchor_loss = torch.stack(anchor_losses).mean() if anchor_losses else torch.zeros((), device=p.device)
    return {"loss": rank_loss + sft_weight * sft_loss + anchor_weight * anchor_loss, "rank_loss": rank_loss,
            "sft_loss": sft_loss, "anchor_loss": anchor_loss,
            "n_pairs": n_pairs, "n_correct": n_correct, "p_best_sum": p_best_sum, "n_best": n_best,
            "p_neg_sum": p_neg_sum, "n_neg": n_neg, "n_lists": len(lists)}


def token_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of KL(policy || reference) = sum_v pi(v) * (log pi(v) - log ref(v)).

    logp, ref_logp [M, V]: log-softmax of the policy and of the frozen starting model at the same M tokens.
    Why the whole vocabulary and not the sampled token: a response's kind (answer or refusal) is decided at its
    first tokens, and a sequence log-prob only sees the token that was sampled; the full distribution also holds
    down the mass the policy moves to tokens the starting model gave little (an "I'm sorry" at the start of a
    harmless request). Reverse direction (policy first): what the policy newly puts where the reference had
    little costs the most.
    """
    if logp.shape[0] == 0:
        return logp.sum() * 0
    return (logp.exp() * (logp - ref_logp)).sum(-1).mean()
