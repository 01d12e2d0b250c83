"""Every check that can fail before training, done once before a run starts (config, snapshot, prompt refs,
model, lengths, scorer), and the precision a run trains in."""
from __future__ import annotations

import dataclasses

import torch

from ..models import bf16_compute, native_bf16
from .config import ConfigError, NeatConfig
from .rundir import read_snapshot, resolve_prompt


def bf16_supported() -> bool:
    return native_bf16("cuda" if torch.cuda.is_available() else "cpu")


def use_bf16(cfg: NeatConfig) -> bool:
    return bf16_compute(cfg.dtype, "cuda" if torch.cuda.is_available() else "cpu")


@dataclasses.dataclass
class Prepared:
    cfg: NeatConfig
    rows: list
    manifest: dict
    sha256: str
    negatives: list      # resolved prompt_library entries
    positives: list
    lm: object           # models.LoadedModel
    scorer: object = None


def preflight(cfg: NeatConfig, workspace=None, lm=None) -> Prepared:
    """Every check that can fail before training: config, snapshot, prompt refs, model, lengths, scorer."""
    cfg.validate()
    rows, manifest, sha = read_snapshot(cfg.snapshot)
    train_rows = [r for r in rows if r.get("split", "train") == "train" and r.get("responses")]
    if not train_rows:
        raise ConfigError(f"snapshot {cfg.snapshot} has no training rows (split=train with >= 1 response)")
    for r in train_rows:
        if not (len(r["responses"]) == len(r["ranks"]) == len(r["origins"])):
            raise ConfigError(f"snapshot row {r.get('prompt_id')}: responses, ranks and origins differ in length")
    negs = [resolve_prompt(manifest, ref, "negative") for ref in cfg.negatives] if cfg.method == "neat" else []
    poss = ([resolve_prompt(manifest, ref, "positive") for ref in cfg.positives]
            if cfg.method in ("neat", "rrhf") and cfg.k_pos > 0 else [])
    for e in negs + poss:
        if e["scope"] and not any(e["scope"] in (r.get("tags") or []) for r in train_rows):
            raise ConfigError(f"{e['ref']}:{e['scope']}: no training prompt of snapshot {cfg.snapshot} is tagged "
                              f"{e['scope']!r}")
    if cfg.kl_weight > 0 and cfg.kl_scope and not any(cfg.kl_scope in (r.get("tags") or []) for r in train_rows):
        raise ConfigError(f"kl_scope {cfg.kl_scope!r}: no training prompt of snapshot {cfg.snapshot} is tagged "
                          f"{cfg.kl_scope!r}")
    if cfg.val_file:
        from ..evalsets import normalize_text as key  # the build script's deduplication key
        from .validation import load_val_prompts

        trained = {key(str(r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]))
                   for r in train_rows}
        shared = [p.prompt for p in load_val_prompts(cfg.val_file)[0] if key(p.prompt) in trained]
        if shared:  # weights chosen on prompts they trained on would be chosen for remembering them
            raise ConfigError(f"val_file {cfg.val_file}: {len(shared)} of its prompts are training prompts of "
                              f"snapshot {cfg.snapshot} (first: {shared[0][:80]!r}); validation needs held-out prompts")
    scorer = None
    if cfg.ranking == "reward" and cfg.method in ("neat", "rrhf"):
        try:
            from ..scoring.reward import RewardScorer

            scorer = RewardScorer.load(cfg.scorer_path)
        except Exception as e:  # noqa: BLE001 - any failure here is a configuration problem
            raise ConfigError(f"reward scorer {cfg.scorer_path!r} cannot be loaded: {e}") from None
    if lm is None:
        from ..models import load_model

        try:
            lm = load_model(cfg.model, workspace=workspace, dtype=torch.float32)
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"model {cfg.model!r} cannot be loaded: {type(e).__name__}: {e}") from None
    max_pos = getattr(lm.model.config, "max_position_embeddings", None)
    if max_pos and cfg.max_prompt_len + cfg.max_response_len > max_pos:
        raise ConfigError(f"max_prompt_len + max_response_len = {cfg.max_prompt_len + cfg.max_response_len} "
                          f"exceeds the model's maximum length {max_pos}")
    return Prepared(cfg, train_rows, manifest, sha, negs, poss, lm, scorer)
