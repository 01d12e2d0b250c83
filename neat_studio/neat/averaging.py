"""Weight averaging of a training run (`weight_ema`): an exponential moving average of the trainable weights that
becomes the policy at the end of every round.

Why: a run's final weights depend on the order its lists came in (benchmarks/RESULTS.md step 39: one order for
three seeds narrowed their refusal spread from 9.3 to 2.7 points), and most of all on the last stretch of that
order. The average over the round's last ~1 / (1 - decay) steps keeps the direction every stretch agreed on and
drops what only the last lists asked for. The next round samples from the average and trains on from it, and the
final model is the last round's average.

The update is torch's own (torch.optim.swa_utils.get_ema_multi_avg_fn: ema <- decay * ema + (1 - decay) * w after
every optimizer step); what is ours is when the average replaces the weights, and that it is checkpointed with the
run so that a resumed run averages on as if it had never stopped.
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """The EMA of `params` (the run's trainable parameters, in their order), starting at their current values."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.params = list(params)
        self.decay = decay
        self.avg = [p.detach().clone() for p in self.params]
        self.updates = 0
        self._update = get_ema_multi_avg_fn(decay)

    def update(self) -> None:
        """After an optimizer step: fold the new weights into the average."""
        self._update(self.avg, [p.detach() for p in self.params], self.updates)
        self.updates += 1

    @torch.no_grad()
    def apply(self) -> None:
        """Make the average the weights (end of a round): the next round samples from it and trains on from it."""
        for p, a in zip(self.params, self.avg, strict=True):
            p.copy_(a)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "avg": [a.clone() for a in self.avg]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["avg"]) != len(self.params) or any(a.shape != p.shape for a, p in zip(state["avg"], self.params)):
            raise ValueError("the checkpoint's weight average does not fit this run's trainable parameters")
        self.avg = [a.to(dtype=p.dtype, device=p.device).clone() for a, p in zip(state["avg"], self.params)]
        self.updates = int(state["updates"])


def weight_average(model, decay: float) -> WeightAverage | None:
    """The run's WeightAverage over the model's trainable parameters, or None when `decay` is 0 (off)."""
    if not decay:
        return None
    return WeightAverage([p for p in model.parameters() if p.requires_grad], decay)
