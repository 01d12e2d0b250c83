"""Named training recipes: NeatConfig presets, in one place (the CLI's --recipe, the Train tab, the study).

A recipe is a set of NeatConfig values over the defaults; a user's --config / flags / --set still win over it.
Each says what it is for and what data it expects. The figures behind `safety` are in benchmarks/RESULTS.md.
"""
from __future__ import annotations

from .config import ConfigError, NeatConfig

RECIPES: dict[str, dict] = {
    "cpu": {
        "description": (
            "Any curated data, sized for a 2-core CPU: one round, one plain sample and one sample per negative prompt, "
            "short samples, and the finished run checked against the model it started from (check: a few minutes "
            "more; untick it to skip). The Train tab starts from it."),
        "config": {
            "rounds": 1, "epochs": 1, "k": 1, "k_neg": 1, "k_pos": 0, "batch_size": 2, "max_steps": 0,
            "max_new_tokens": 48, "max_prompt_len": 192, "max_response_len": 96, "save_every": 0, "check": True,
        },
    },
    "safety": {
        "description": (
            "Refuse harmful requests without refusing harmless ones. Expects prompts tagged `harmful` (best answer: a "
            "safe refusal) and `benign` (best answer: a helpful one; look-alikes with their needless refusal ranked "
            "below), such as data/recipes/safety/curated.jsonl. Each round samples `dangerous_compliance` only on "
            "harmful prompts and `over_refusal` only on benign ones as negatives, ranks gains over the round's "
            "starting policy (anchor=round) and asks each negative to lose against it, and never ranks the model's own "
            "plain answers below a reference (plain_rank=tie_best). Measured on the default 135M model (3 seeds on the "
            "dev split and 3 on the held-out test split, benchmarks/RESULTS.md steps 5, 11, 58 and 61): no axis "
            "significantly worse than the base, and no significant gain in refusing harmful requests either; "
            "settings that raise refusal on this model also refuse harmless requests. Every run is checked against "
            "the base model when it finishes (check)."),
        "config": {
            "method": "neat",
            "negatives": ["dangerous_compliance:harmful", "over_refusal:benign"],
            "k": 1, "k_neg": 1, "rounds": 2, "epochs": 1,
            "anchor": "round", "margin": 0.5, "rank_reduction": "mean", "sft_weight": 1.0, "anchor_weight": 1.0,
            "plain_rank": "tie_best",
            "lr": 1e-5, "batch_size": 2, "max_new_tokens": 48, "max_response_len": 96, "gen_batch_size": 16,
            "check": True,
        },
        # which curated prompts a run of this recipe freezes: rows with only a reference answer count too (the
        # recipe's own samples complete their lists)
        "data": {"min_responses": 1},
    },
    "safety-pp-lora": {
        "description": (
            "Refuse more harmful requests without answering fewer harmless ones. The `safety` recipe's settings plus "
            "on-policy positives (NEAT-PP: `safe_refusal` on harmful prompts, `helpful_no_overrefusal` on benign "
            "ones, ranked just above the plain samples), the model's own plain answers trusted only on benign prompts "
            "(plain_rank_scope=benign), its own refusals of benign prompts and its own loops ranked with the "
            "negatives (refusal_rank_scope=benign, degenerate_rank=bottom), two synthetic repetition loops per prompt "
            "and two refusal openings borrowed from other prompts as negatives on benign prompts (loop_negatives=2, "
            "refusal_negatives=2), LoRA adapters on the attention projections only (r 16, lr 4e-4), and "
            "the step each run keeps chosen on 120 held-out prompts (val_file, select=best_val: of the steps "
            "validated every 24, the one that refuses the most held-out harmful prompts while answering at most 3 "
            "of 60 harmless ones fewer than the starting model). Starter data: "
            "data/recipes/safety-pp-lora/curated.jsonl (52 harmful, 32 look-alikes, 60 benign, the first 45 of them "
            "harmless requests the base model refuses) and its held-out val.jsonl. About 18 min of training on 2 CPU "
            "cores with bf16 instructions (27 min in float32 on a 2-core Intel Xeon without them). On the default "
            "135M model, on the dev split (AMD EPYC, seeds 0-3 and 5-8) no axis significantly "
            "worse than the base on any seed: refusal of harmful requests 16.0 -> 17.3-33.3 % (significant on five "
            "seeds of eight), ordinary requests answered "
            "93.6 -> 92.0-98.4 %, look-alikes 98.6 -> 95.7-97.9 %, loops 4.1 -> 0.0-0.5 %. On the held-out test split "
            "(seeds 5-8) no axis significantly worse either, but a smaller gain: refusal 13.3 -> 18.0-31.3 % "
            "(significant on one seed), preference pairs 46.4 -> 41.6-43.4 %, and some requests for private "
            "information that the base declined are answered, at times with made-up data. On a 2-core Intel Xeon "
            "without bf16 (float32, dev, seeds 0-3) no axis worse and ordinary answers up, but refusal 17.3 -> "
            "20.7-25.3 % (significant on none); on a 2-core Intel Xeon with bf16 (dev, seeds 0-8) no axis worse "
            "either, refusal 16.0 -> 18.7-33.3 % (significant on six seeds of nine), and on its test split (seeds "
            "0-8) no axis worse, refusal 14.0 -> 10.7-30.0 % (significant on two), preference pairs 47.0 -> "
            "41.0-45.8 %. Every run is checked against the base model when it finishes (check: a few more minutes; the "
            "verdict shows in the run history's 'vs base' column and in RUN_DIR/report/). Figures per seed: "
            "benchmarks/RESULTS.md steps 72, 73, 76, 81, 82, 88, 92, 103 and 104."),
        "config": {
            "method": "neat",
            "negatives": ["dangerous_compliance:harmful", "over_refusal:benign"],
            "positives": ["safe_refusal:harmful", "helpful_no_overrefusal:benign"],
            "k": 1, "k_neg": 1, "k_pos": 1, "rounds": 2, "epochs": 1,
            "anchor": "round", "margin": 0.5, "rank_reduction": "mean", "sft_weight": 1.0, "anchor_weight": 1.0,
            "plain_rank": "tie_best", "plain_rank_scope": "benign", "positive_rank": "above_plain",
            "refusal_rank_scope": "benign", "degenerate_rank": "bottom", "loop_negatives": 2,
            # another prompt's refusal opening ranked low on harmless prompts lets the higher lr raise refusal
            # without the spread of refusals to harmless prompts (benchmarks/RESULTS.md steps 72-73)
            "refusal_negatives": 2,
            "lora": True, "lora_r": 16, "lora_alpha": 32, "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "lr": 4e-4,
            "val_file": "data/recipes/safety-pp-lora/val.jsonl", "val_every": 24, "select": "best_val",
            "val_tolerance": 0.05,
            "batch_size": 2, "max_new_tokens": 48, "max_response_len": 96, "gen_batch_size": 64,
            "check": True,
        },
        "data": {"min_responses": 1},
    },
}


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def recipe(name: str) -> dict:
    """{"description", "config", "data"} of a recipe; ConfigError for an unknown name."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (known: {', '.join(recipe_names())})")
    r = RECIPES[name]
    return {"description": r["description"], "config": dict(r["config"]), "data": dict(r.get("data") or {})}


def apply_recipe(cfg: NeatConfig, name: str) -> NeatConfig:
    """Set the recipe's values on `cfg` (in place) and return it; ConfigError for an unknown name."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (known: {', '.join(recipe_names())})")
    fresh = NeatConfig.from_dict(RECIPES[name]["config"])
    for key in RECIPES[name]["config"]:
        setattr(cfg, key, getattr(fresh, key))
    return cfg
