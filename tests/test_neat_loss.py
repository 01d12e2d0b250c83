"""Exact values of the NEAT loss on small hand-computed tensors."""
import math

import pytest
import torch

from neat_studio.neat.loss import neat_loss, rrhf_rank_loss, sequence_logprobs

L3 = math.log(3.0)


def test_sequence_logprobs_counts_only_masked_tokens():
    # row 0: positions 1, 2 are response tokens: log(3/4) + log(1/2); position 0 (prompt) is ignored
    logits = torch.tensor([[[0.0, 0.0], [L3, 0.0], [0.0, 0.0]],
                           [[0.0, L3], [5.0, -5.0], [7.0, 1.0]]])
    labels = torch.tensor([[1, 0, 1], [1, 0, 0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    s, n = sequence_logprobs(logits, labels, mask)
    assert s.tolist() == pytest.approx([math.log(3 / 8), math.log(3 / 4)], abs=1e-6)
    assert n.tolist() == [2.0, 1.0]


def test_padding_does_not_change_p():
    logits = torch.tensor([[[0.0, 0.0], [L3, 0.0]]])
    labels = torch.tensor([[1, 0]])
    mask = torch.tensor([[1, 1]])
    s, n = sequence_logprobs(logits, labels, mask)
    # the same row with 3 padded positions (arbitrary logits, pad label, mask 0)
    logits_p = torch.cat([logits, torch.tensor([[[9.0, -9.0], [-3.0, 4.0], [0.5, 0.1]]])], dim=1)
    labels_p = torch.tensor([[1, 0, 1, 1, 1]])
    mask_p = torch.tensor([[1, 1, 0, 0, 0]])
    s2, n2 = sequence_logprobs(logits_p, labels_p, mask_p)
    assert (s2 / n2).item() == pytest.approx((s / n).item(), abs=1e-7)
    assert (s2 / n2).item() == pytest.approx((math.log(0.5) + math.log(0.75)) / 2, abs=1e-6)
    assert n2.item() == 2.0  # the response's own length, not the padded length 5


def test_rank_loss_correct_order_is_zero_with_margin_zero():
    p, ranks = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([0, 1, 2])
    loss, n_pairs, n_correct = rrhf_rank_loss(p, ranks, 0.0)
    assert (loss.item(), n_pairs, n_correct) == (0.0, 3, 3)


def test_rank_loss_reversed_list_exact():
    p, ranks = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([2, 1, 0])
    loss, n_pairs, n_correct = rrhf_rank_loss(p, ranks, 0.0)
    # (0 below 1): 1, (0 below 2): 2, (1 below 2): 1
    assert loss.item() == pytest.approx(4.0)
    assert (n_pairs, n_correct) == (3, 0)
    loss_m, _, _ = rrhf_rank_loss(p, ranks, 0.5)
    assert loss_m.item() == pytest.approx(5.5)


def test_rank_loss_margin_on_correct_order():
    p, ranks = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([0, 1, 2])
    loss, _, _ = rrhf_rank_loss(p, ranks, 1.5)
    # pairs (1<0): -1+1.5=0.5, (2<0): -2+1.5 -> 0, (2<1): -1+1.5=0.5
    assert loss.item() == pytest.approx(1.0)


def test_rank_loss_ties_contribute_nothing():
    p, ranks = torch.tensor([-1.0, -3.0, -2.0]), torch.tensor([0, 0, 1])
    loss, n_pairs, n_correct = rrhf_rank_loss(p, ranks, 0.0)
    # tied pair (0, 1) ignored although p differs; (2 below 0): 0; (2 below 1): -2 - -3 = 1
    assert loss.item() == pytest.approx(1.0)
    assert (n_pairs, n_correct) == (2, 1)
    loss, n_pairs, _ = rrhf_rank_loss(p, torch.tensor([3, 3, 3]), 1.0)
    assert (loss.item(), n_pairs) == (0.0, 0)


def test_rank_loss_all_equal_scores():
    p, ranks = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([0, 1, 2])
    loss, n_pairs, n_correct = rrhf_rank_loss(p, ranks, 0.0)
    assert (loss.item(), n_pairs, n_correct) == (0.0, 3, 0)  # equal p is not "correct"
    loss, _, _ = rrhf_rank_loss(p, ranks, 0.1)
    assert loss.item() == pytest.approx(0.3)


def _two_lists():
    # list 0: p = [-1, -2, -3] (lengths 2, 3, 1), the BEST is item 1 (not the first item)
    # list 1: p = [-1, -1], two tied best responses of lengths 4 and 1
    sum_logp = torch.tensor([-2.0, -6.0, -3.0, -4.0, -1.0], requires_grad=True)
    n_tok = torch.tensor([2.0, 3.0, 1.0, 4.0, 1.0])
    list_index = torch.tensor([0, 0, 0, 1, 1])
    ranks = torch.tensor([1, 0, 2, 0, 0])
    neg = torch.tensor([False, False, True, False, False])
    return sum_logp, n_tok, list_index, ranks, neg


def test_neat_loss_exact_and_nll_on_the_best_response():
    sum_logp, n_tok, li, ranks, neg = _two_lists()
    out = neat_loss(sum_logp, n_tok, li, ranks, margin=0.0, sft_weight=0.5, is_negative=neg)
    # list 0: rank = (p0 - p1) = 1 (other pairs correct), sft = -p1 = 2; list 1: rank 0, sft = mean(1, 1) = 1
    assert out["rank_loss"].item() == pytest.approx(0.5)
    assert out["sft_loss"].item() == pytest.approx(1.5)
    assert out["loss"].item() == pytest.approx(0.5 + 0.5 * 1.5)
    assert (out["n_pairs"], out["n_correct"], out["n_lists"]) == (3, 2, 2)
    assert (out["n_best"], out["n_neg"]) == (3, 1)
    assert out["p_best_sum"] == pytest.approx(-2 - 1 - 1)
    assert out["p_neg_sum"] == pytest.approx(-3)
    # gradient of the SFT term alone: only on the best responses, 1/(n_tok * n_best * n_lists)
    sum_logp.grad = None
    neat_loss(sum_logp, n_tok, li, ranks, sft_weight=1.0)["sft_loss"].backward()
    g = sum_logp.grad.tolist()
    assert g == pytest.approx([0.0, -1 / (3 * 2), 0.0, -1 / (4 * 2 * 2), -1 / (1 * 2 * 2)])


def test_neat_loss_rank_gradient_pushes_the_right_pair():
    sum_logp, n_tok, li, ranks, _ = _two_lists()
    neat_loss(sum_logp, n_tok, li, ranks, sft_weight=0.0)["loss"].backward()
    # only the violated pair (0 below 1) of list 0 is active: d/dp0 = +1, d/dp1 = -1; mean over 2 lists
    assert sum_logp.grad.tolist() == pytest.approx([1 / 2 / 2, -1 / 3 / 2, 0.0, 0.0, 0.0])


# -- anchor=round and rank_reduction=mean (issue 18) ------------------------------------------------------------
def test_rank_loss_mean_reduction_divides_by_pairs():
    p, ranks = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([2, 1, 0])
    loss, n_pairs, n_correct = rrhf_rank_loss(p, ranks, 0.5, reduction="mean")
    assert loss.item() == pytest.approx(5.5 / 3)
    assert (n_pairs, n_correct) == (3, 0)
    # a list without pairs (all tied) stays 0, no division by zero
    loss0, n0, _ = rrhf_rank_loss(p, torch.tensor([0, 0, 0]), 0.5, reduction="mean")
    assert (loss0.item(), n0) == (0.0, 0)


def test_anchored_loss_ranks_gains_over_the_reference():
    # one list: best (rank 0) p = -2.0 (an off-policy reference), worse (rank 1) p = -0.8 (the model's own sample).
    # Raw p: the hinge wants the sample 1.2 + m below the reference. Anchored at the round's start (ref = p), the
    # gains are 0 and the hinge asks only for the margin m.
    sum_logp, n_tok = torch.tensor([-4.0, -1.6]), torch.tensor([2.0, 2.0])
    li, ranks = torch.tensor([0, 0]), torch.tensor([0, 1])
    raw = neat_loss(sum_logp, n_tok, li, ranks, margin=0.5, sft_weight=0.0)
    assert raw["rank_loss"].item() == pytest.approx(-0.8 + 2.0 + 0.5)
    ref = torch.tensor([-2.0, -0.8])
    anch = neat_loss(sum_logp, n_tok, li, ranks, margin=0.5, sft_weight=1.0, ref_p=ref)
    assert anch["rank_loss"].item() == pytest.approx(0.5)
    assert anch["sft_loss"].item() == pytest.approx(2.0)  # the NLL term still uses p itself
    assert anch["loss"].item() == pytest.approx(2.5)
    # after the model moved: the best gained 0.3 nats/token, the sample lost 0.1 -> hinge 0.5 - 0.4 = 0.1
    moved = neat_loss(torch.tensor([-3.4, -1.8]), n_tok, li, ranks, margin=0.5, sft_weight=0.0, ref_p=ref)
    assert moved["rank_loss"].item() == pytest.approx(0.1)
    assert moved["n_correct"] == 1  # gains in the right order
    # gradient: d rank_loss / d p = +1 for the worse, -1 for the best (same as raw p while the hinge is active)
    s = torch.tensor([-4.0, -1.6], requires_grad=True)
    neat_loss(s, n_tok, li, ranks, margin=0.5, sft_weight=0.0, ref_p=ref)["loss"].backward()
    assert s.grad.tolist() == pytest.approx([-0.5, 0.5])


def test_anchor_weight_asks_negatives_to_lose_and_the_best_to_gain():
    # list: best (rank 0), plain (1), negative (2); all at their round-start p (gains 0), margin 0.25
    sum_logp, n_tok = torch.tensor([-2.0, -1.0, -3.0]), torch.tensor([1.0, 1.0, 1.0])
    li, ranks, neg = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2]), torch.tensor([False, False, True])
    ref = sum_logp.clone()
    out = neat_loss(sum_logp, n_tok, li, ranks, margin=0.25, sft_weight=0.0, is_negative=neg, ref_p=ref,
                    rank_reduction="mean", anchor_weight=2.0)
    # best must gain 0.25 (0.25), the negative lose 0.25 (0.25): anchor 0.5; rank: 3 pairs of 0.25, mean 0.25
    assert out["anchor_loss"].item() == pytest.approx(0.5)
    assert out["rank_loss"].item() == pytest.approx(0.25)
    assert out["loss"].item() == pytest.approx(0.25 + 2.0 * 0.5)
    # everything drifted up by 0.4 together: the relative hinge is unchanged, the anchor sees the negative's gain
    up = neat_loss(sum_logp + 0.4, n_tok, li, ranks, margin=0.25, sft_weight=0.0, is_negative=neg, ref_p=ref,
                   rank_reduction="mean", anchor_weight=1.0)
    assert up["rank_loss"].item() == pytest.approx(0.25)
    assert up["anchor_loss"].item() == pytest.approx(0.0 + 0.65)    # best: max(0, 0.25 - 0.4); neg: 0.4 + 0.25
    # a plain sample is never anchored; without ref_p or with weight 0 the term is 0 and not in the loss
    assert neat_loss(sum_logp, n_tok, li, ranks, margin=0.25, is_negative=neg)["anchor_loss"].item() == 0.0


def test_token_kl_exact_values():
    from neat_studio.neat.loss import token_kl

    pi = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    ref = torch.tensor([[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    got = token_kl(pi.log(), ref.log())
    # token 1: 0.5 ln 2 + 0.25 ln 1 + 0.25 ln 0.5 = 0.25 ln 2; token 2: 0; mean over tokens
    assert float(got) == pytest.approx(0.125 * math.log(2), abs=1e-7)
    assert float(token_kl(ref.log(), ref.log())) == 0.0
    assert float(token_kl(torch.zeros(0, 3), torch.zeros(0, 3))) == 0.0
    # the gradient moves the policy toward the reference: d/dlogits at equal distributions is 0
    logits = ref.log().clone().requires_grad_(True)
    token_kl(torch.log_softmax(logits, -1), ref.log()).backward()
    assert float(logits.grad.abs().max()) < 1e-7
