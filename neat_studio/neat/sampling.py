"""Sampling with the live training model: the generator's fast weight layout is undone before training goes on."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext

import torch


def restore_training_layout(model) -> int:
    """Undo generation.prepare_for_inference on `model`: every parameter contiguous again (values, shapes, names,
    parameter objects and ties unchanged) and the model marked for the next prepare_for_inference. Returns the
    number of parameters re-laid out."""
    n = 0
    with torch.no_grad():
        for p in model.parameters():  # each shared (tied) parameter once
            if not p.is_contiguous():
                p.data = p.data.contiguous()
                n += 1
    for mod in model.modules():  # generation's fast forward of tied Linears (see generation._tied_linear_forward)
        if getattr(mod, "_neat_tied_forward", False):
            vars(mod).pop("forward", None)
            mod._neat_tied_forward = False
    for m in {id(x): x for x in (model, getattr(model, "get_base_model", lambda: None)())}.values():
        if m is not None and getattr(m, "_neat_inference_layout", False):
            m._neat_inference_layout = False
    return n


def with_model(lm, model):
    """`lm` (a LoadedModel-like record) with its model replaced by `model` (the live training model)."""
    if dataclasses.is_dataclass(lm):
        return dataclasses.replace(lm, model=model)
    try:
        return lm._replace(model=model)
    except AttributeError:
        lm.model = model
        return lm


@contextmanager
def adapters_merged(model):
    """LoRA (peft): the adapters merged into the frozen weights while the model samples (peft's merge_adapter /
    unmerge_adapter, as TRL's online trainers do around generation), so a sample costs what the base model's does
    instead of two more matmuls and a dropout in every adapted layer. The frozen weights come back exactly: peft's
    unmerge computes (w + d) - d, which is w only within float32 rounding, and a run that samples and validates a
    dozen times would drift by that (a run that kept its starting weights answered a few prompts unlike the base,
    benchmarks/RESULTS.md step 69); so the adapted layers' weights are copied (to the CPU) before the merge and
    copied back after it. Any other model: as it is."""
    merge = getattr(model, "merge_adapter", None)
    if merge is None:
        yield model
        return
    frozen = [m.get_base_layer().weight for m in model.modules()
              if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
    with torch.no_grad():
        saved = [w.detach().to("cpu", copy=True) for w in frozen]
    merge()
    try:
        yield model
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for w, c in zip(frozen, saved):
                w.copy_(c)


def adapters_scaled(model, scale: float):
    """LoRA (peft): the adapters at `scale` times their own scaling while the context lasts (peft's
    rescale_adapter_scale; a merge inside it adds scale x the adapter's change); scale 1: as they are."""
    if scale == 1:
        return nullcontext()
    from peft.helpers import rescale_adapter_scale

    return rescale_adapter_scale(model, scale)
