"""NeatConfig: every knob of a training run, with help text (the CLI and the UI read the `help` metadata)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

METHODS = ("neat", "rrhf", "sft", "dpo")
RANKINGS = ("rule", "reward")
ANCHORS = ("none", "round")
POSITIVE_RANKS = ("plain", "above_plain")
PLAIN_RANKS = ("below_curated", "tie_best")
DEGENERATE_RANKS = ("keep", "bottom")
COMPLIANCE_RANKS = ("bottom", "plain")
NEGATIVE_RANKS = ("bottom", "heeded")
BORROW_SOURCES = ("any", "not_as_ai")
RANK_REDUCTIONS = ("sum", "mean")
DTYPES = ("auto", "bf16", "fp32")
LORA_INITS = ("random", "pissa", "olora")
SELECTS = ("last", "best_val", "best_val_balanced")
LIST_ORDERS = ("shuffle", "stratified")
FLOAT_LISTS = ("adapter_scales",)  # list settings whose items are numbers
PROMPT_CACHE = ("auto", "on", "off")


class ConfigError(ValueError):
    """A run configuration that cannot work; raised before any training with one clear message."""


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class NeatConfig:
    # what to train
    model: str = _f("default", "policy model spec: default | tiny | local HF dir | run dir | cached hub name")
    method: str = _f("neat", "neat (negative-prompt samples) | rrhf (curated + plain samples) | sft (NLL on best) "
                             "| dpo (TRL DPOTrainer on pairs from the same rankings)", choices=METHODS)
    snapshot: str = _f("", "snapshot directory (data.jsonl + manifest.json)")
    negatives: list = _f([], "negative system prompts, name@version (name alone = latest in the snapshot manifest); "
                             "name@version:TAG samples it only on prompts tagged TAG (e.g. over_refusal on benign)")
    positives: list = _f([], "positive system prompts (NEAT-PP), name@version[:TAG] as for negatives")
    # sampling per round
    k: int = _f(2, "plain policy samples per prompt and round (neat, rrhf)")
    greedy_plain: bool = _f(False, "also one plain sample per prompt and round decoded greedily (temperature 0): the "
                                   "answer a user and the evaluation see, ranked as a plain sample (neat, rrhf)")
    k_neg: int = _f(2, "samples per prompt and round under EACH negative prompt (neat)")
    k_pos: int = _f(0, "samples per prompt and round under each positive prompt (0 = none)")
    rounds: int = _f(2, "rounds: sample from the current policy, rank, train `epochs` epochs")
    temperature: float = _f(0.8, "sampling temperature of the online samples")
    top_p: float = _f(0.95, "nucleus sampling of the online samples")
    gen_batch_size: int = _f(8, "prompts per generation batch")
    max_new_tokens: int = _f(96, "generation length of the online samples (<= max_response_len)")
    plain_rank: str = _f("below_curated", "rule ranking of plain policy samples: below_curated = below every curated "
                                          "answer but the worst (RRHF); tie_best = tied with the best curated answer "
                                          "(only negative-prompt samples are ranked below)", choices=PLAIN_RANKS)
    plain_rank_scope: str = _f("", "with plain_rank=tie_best: only on prompts carrying this tag (e.g. benign: the "
                                   "model's own answers are trusted there; on the other prompts they rank below the "
                                   "curated answers as with below_curated); empty = every prompt")
    positive_rank: str = _f("plain", "rule ranking of positive-prompt samples: plain = tied with the plain samples; "
                                     "above_plain = just above them (still below the curated answers they lose to)",
                            choices=POSITIVE_RANKS)
    degenerate_rank: str = _f("keep", "rule ranking of the policy's own plain and positive samples that loop "
                                      "(eval_metrics.degeneration: a word 3-gram 4+ times, under 40 % distinct words, "
                                      "or no word): keep = ranked like the other samples; bottom = with the negative-"
                                      "prompt samples, so a loop is pushed down and never trained toward",
                              choices=DEGENERATE_RANKS)
    refusal_rank_scope: str = _f("", "a tag (e.g. benign): on prompts carrying it, the policy's own plain and positive "
                                     "samples that the refusal detector (scoring/refusal.py) flags rank with the "
                                     "negatives, so a needless refusal is pushed down and never trained toward, even "
                                     "when a positive prompt produced it; empty = off")
    compliance_rank_scope: str = _f("", "a tag (e.g. harmful): on prompts carrying it, the policy's own plain and "
                                        "positive samples that the refusal detector does NOT flag (answers to a "
                                        "request that should be refused) rank with the negatives, even when the "
                                        "safe_refusal positive produced them; empty = off")
    compliance_rank: str = _f("bottom", "what compliance_rank_scope does with what it finds: bottom = the plain and "
                                        "positive samples rank with the negatives; plain = only the positive samples "
                                        "lose their place above the plain ones (ranked as plain samples, marked "
                                        "unheeded:), nothing is pushed down", choices=COMPLIANCE_RANKS)
    negative_rank: str = _f("bottom", "where the negative-prompt samples rank: bottom = all of them at the bottom of "
                                      "their list; heeded = on prompts tagged refusal_rank_scope (where the negative "
                                      "prompt asks for a needless refusal), a negative sample the refusal detector "
                                      "does not flag ranks as a plain sample (marked unheeded:) and is not pushed "
                                      "down: only the refusals it was asked for are", choices=NEGATIVE_RANKS)
    loop_negatives: int = _f(0, "synthetic repetition loops per prompt and round ranked with the negatives (rule "
                                "ranking): the first sentence of the best curated answer, then of the plain samples, "
                                "repeated to ~48 tokens, so the model learns that repeating itself is worse than "
                                "going on (neat, rrhf); 0 = off")
    refusal_negatives: int = _f(0, "on prompts tagged refusal_rank_scope, this many refusal openings (first sentence, "
                                   "flagged by the refusal detector on its own) of the OTHER prompts' best curated "
                                   "answers and of the policy's plain and positive samples of them this round (e.g. "
                                   "the refusals of harmful prompts) ranked with the negatives, so the refusal "
                                   "learned there is pushed down here (rule ranking; neat, rrhf); 0 = off")
    refusal_negatives_from: str = _f("any", "which refusal openings refusal_negatives lends: any = every one the "
                                            "detector flags; not_as_ai = those that speak as an AI about itself ('As "
                                            "an AI language model, I do not have access to …') left out, as that is "
                                            "also the model's honest answer about itself and its refusal of "
                                            "private-information requests (on the default model those refusals "
                                            "were lost either way: benchmarks/RESULTS.md step 74)",
                                     choices=BORROW_SOURCES)
    ranking: str = _f("rule", "how online samples are ranked: rule (negatives at the bottom) | reward (scorer)",
                      choices=RANKINGS)
    scorer_path: str = _f("", "reward scorer directory (ranking=reward)")
    # optimisation
    epochs: int = _f(1, "epochs over the round's lists per round")
    lr: float = _f(1e-5, "peak learning rate (AdamW)")
    warmup_ratio: float = _f(0.05, "share of all optimizer steps spent in linear warmup (cosine decay after)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    weight_ema: float = _f(0.0, "decay of an exponential moving average of the trained weights that becomes the "
                                "policy at the end of every round (averaging.py: the next round samples from it, "
                                "final/ is the last one's); 0 = off, e.g. 0.95 averages over ~20 steps")
    batch_size: int = _f(2, "lists (prompts) per micro-batch and process")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_steps: int = _f(0, "stop after this many optimizer steps (0 = rounds x epochs x steps per epoch)")
    margin: float = _f(0.0, "hinge margin m of the ranking loss")
    anchor: str = _f("none", "what the ranking loss ranks: none = the log-prob p itself (RRHF); round = the gain "
                             "p - p_ref over the policy that started the round (scored once per round), so the "
                             "ranking asks for a relative change of `margin` and no more (needs margin > 0)",
                     choices=ANCHORS)
    anchor_weight: float = _f(0.0, "anchor=round only: weight of the absolute anchored hinge (each negative-prompt "
                                    "sample must lose `margin` of log-prob per token against the round's starting "
                                    "policy, each best answer gain `margin`); 0 = off")
    rank_reduction: str = _f("sum", "the ranking loss of a list: sum over its pairs (RRHF) or mean (a list's weight "
                                    "does not grow with the square of its length)", choices=RANK_REDUCTIONS)
    sft_weight: float = _f(1.0, "lambda: weight of the NLL of the best response(s)")
    kl_weight: float = _f(0.0, "weight of a token-level KL(policy || starting model) over the whole vocabulary on "
                               "the plain samples of the prompts tagged kl_scope: the model keeps its own behaviour "
                               "where nothing asks it to change (a frozen copy of the starting model, one more "
                               "forward per step; neat, rrhf); 0 = off")
    kl_scope: str = _f("", "kl_weight > 0: only the plain samples of prompts carrying this tag (e.g. benign); "
                           "empty = every prompt")
    dpo_beta: float = _f(0.1, "beta of the dpo baseline")
    max_prompt_len: int = _f(256, "prompt tokens kept (longer prompts keep their END)")
    max_response_len: int = _f(128, "response tokens kept (longer responses are cut)")
    prompt_cache: str = _f("auto", "run a list's prompt once, shared by all its responses in one row (same p and "
                                   "gradient): on | off | auto (per micro-batch, when it runs at most "
                                   "batching.CACHE_PAYS of the plain layout's padded tokens; see bench_train.py)",
                           choices=PROMPT_CACHE)
    gradient_checkpointing: bool = _f(False, "recompute each layer's activations in the backward pass: less "
                                             "memory for long lists or big models, ~1/3 more compute")
    # parameter-efficient
    lora: bool = _f(False, "train LoRA adapters instead of all weights (merged into final/)")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha")
    lora_dropout: float = _f(0.05, "LoRA dropout")
    lora_targets: list = _f([], "the modules LoRA adapts, by name (e.g. q_proj,k_proj,v_proj,o_proj: attention only); "
                                "empty = every linear layer but the output head (PEFT's all-linear)")
    lora_init: str = _f("random", "LoRA initialisation: random = PEFT's default (A random from the seed, B zero) | "
                                  "pissa = A and B from the weights' top singular vectors (PiSSA, deterministic: the "
                                  "seed no longer draws the adapters' subspace) | olora = from a QR decomposition "
                                  "(OLoRA, deterministic)", choices=LORA_INITS)
    # validation (validation.py): held-out prompts decoded greedily while training, and which weights are kept
    val_file: str = _f("", "held-out prompts (JSONL: prompt, tags; tagged harmful = should be refused, the rest "
                           "should be answered; not training or evaluation prompts), decoded greedily at the start "
                           "and every val_every steps; empty = no validation")
    val_every: int = _f(0, "validate every N optimizer steps and at the last one (0 = at the end of each round)")
    val_max_new_tokens: int = _f(32, "tokens decoded per validation prompt (a refusal shows in its first words)")
    select: str = _f("last", "the weights a run keeps: last | best_val = of the validated ones (the starting model "
                             "included), those that refused the most held-out harmful prompts while answering at "
                             "most val_tolerance fewer harmless ones and looping at most val_tolerance more than "
                             "the starting model | best_val_balanced = of the same candidates, those that handled "
                             "the most held-out prompts right (refusal share + answered share)", choices=SELECTS)
    val_tolerance: float = _f(0.03, "select=best_val(_balanced): the share of held-out harmless prompts a kept "
                                    "model may answer fewer (and loop more) than the starting model")
    adapter_scales: list = _f([], "LoRA with select=best_val(_balanced): after training, also validate the kept "
                                  "adapter at these multiples of its scale (1.5 = half again the change training "
                                  "made, as ExPO extrapolates; 0.5 = halfway back to the starting model, as WiSE-FT "
                                  "interpolates); the same rule chooses, the trained scale winning ties, and final/ "
                                  "merges the chosen one (empty = off)")
    merge_scale: float = _f(1.0, "LoRA: keep the adapter at this multiple of its trained scale (0.7 = 70 % of the "
                                 "change training made, WiSE-FT's interpolation toward the starting model); the "
                                 "held-out validation decodes at this scale, so select=best_val chooses among the "
                                 "models a run would keep, while training and each round's sampling use the adapter "
                                 "as trained (1 = off)")
    # after the run (neat_studio/run_check.py)
    check: bool = _f(False, "when the run has finished, evaluate its final model against the model it started from on "
                            "every dev prompt of the shipped sets (its training prompts kept out) into RUN_DIR/report/"
                            " and say whether it got worse on any axis (a few minutes for the default model on 2 CPU "
                            "cores)")
    # run
    dtype: str = _f("auto", "compute dtype: bf16 (autocast, fp32 master weights) | fp32 | auto (bf16 where the "
                            "CPU has bf16 matrix instructions or on GPU)", choices=DTYPES)
    seed: int = _f(0, "seed of shuffling, sampling and initialisation")
    order_seed: int = _f(-1, "seed of the lists' order alone (-1 = seed): runs of different seeds with one order_seed "
                             "train on the same order with their own samples and adapters (a study of where the "
                             "seed spread comes from)")
    list_order: str = _f("shuffle", "order of a round's lists: shuffle | stratified (shuffled, but every stretch of "
                                    "the order holds the prompt tags (harmful, look-alike, benign...) in their "
                                    "overall proportions, so no seed trains on a run of one kind)",
                         choices=LIST_ORDERS)
    save_every: int = _f(0, "checkpoint every N optimizer steps (0 = at the end of each round only)")
    keep_checkpoints: int = _f(2, "checkpoints kept (newest first; 0 = keep all)")
    diag_every: int = _f(0, "every N steps also log each loss term's gradient norm and their cosine (two extra "
                            "forward+backward passes on those steps; one process; 0 = off)")
    output_dir: str = _f("", "run directory (default: <workspace>/runs/<timestamp>-<method>)")

    # -- (de)serialisation --------------------------------------------------------------------------------
    @classmethod
    def fields_help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "NeatConfig":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        cfg = cls()
        for k, v in d.items():
            setattr(cfg, k, _coerce(k, v))
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "NeatConfig":
        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"config {path} must be a mapping of key: value")
        return cls.from_dict(d)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def apply_overrides(self, items: list[str] | None) -> "NeatConfig":
        """`["lr=1e-5", "negatives=toxic@1,rude", "lora=true"]` -> set in place (values parsed as YAML)."""
        known = {f.name for f in dataclasses.fields(self)}
        for item in items or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not key=value")
            k, v = item.split("=", 1)
            k = k.strip().replace("-", "_")
            if k not in known:
                raise ConfigError(f"unknown config key {k!r} in override {item!r}")
            try:
                val = yaml.safe_load(v) if v.strip() else ""
            except yaml.YAMLError:
                val = v
            if _is_list(k) and isinstance(val, str):
                val = [x.strip() for x in val.split(",") if x.strip()]
            setattr(self, k, _coerce(k, val))
        return self

    def validate(self) -> "NeatConfig":
        """Checks that need no model and no data; `preflight.preflight` checks the rest."""
        def bad(msg):
            raise ConfigError(msg)

        if self.method not in METHODS:
            bad(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.ranking not in RANKINGS:
            bad(f"ranking must be one of {', '.join(RANKINGS)}, not {self.ranking!r}")
        if self.dtype not in DTYPES:
            bad(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.plain_rank not in PLAIN_RANKS:
            bad(f"plain_rank must be one of {', '.join(PLAIN_RANKS)}, not {self.plain_rank!r}")
        if self.compliance_rank not in COMPLIANCE_RANKS:
            bad(f"compliance_rank must be one of {', '.join(COMPLIANCE_RANKS)}, not {self.compliance_rank!r}")
        if self.compliance_rank == "plain" and not (self.compliance_rank_scope and self.positive_rank == "above_plain"):
            bad("compliance_rank=plain moves positive samples ranked above the plain ones: it needs "
                "compliance_rank_scope (a tag) and positive_rank=above_plain")
        if self.negative_rank not in NEGATIVE_RANKS:
            bad(f"negative_rank must be one of {', '.join(NEGATIVE_RANKS)}, not {self.negative_rank!r}")
        if self.negative_rank == "heeded" and not (self.refusal_rank_scope and self.ranking == "rule"):
            bad("negative_rank=heeded judges the negative samples on the prompts tagged refusal_rank_scope: it needs "
                "refusal_rank_scope (a tag) and ranking=rule")
        if self.degenerate_rank not in DEGENERATE_RANKS:
            bad(f"degenerate_rank must be one of {', '.join(DEGENERATE_RANKS)}, not {self.degenerate_rank!r}")
        if self.loop_negatives < 0 or (self.loop_negatives and self.ranking != "rule"):
            bad(f"loop_negatives must be >= 0 and needs ranking=rule, got {self.loop_negatives}")
        if self.refusal_negatives < 0 or (self.refusal_negatives and not (self.refusal_rank_scope
                                                                         and self.ranking == "rule")):
            bad(f"refusal_negatives must be >= 0 and needs refusal_rank_scope (a tag) and ranking=rule, got "
                f"{self.refusal_negatives}")
        if self.refusal_negatives_from not in BORROW_SOURCES:
            bad(f"refusal_negatives_from must be one of {', '.join(BORROW_SOURCES)}, not "
                f"{self.refusal_negatives_from!r}")
        if self.positive_rank not in POSITIVE_RANKS:
            bad(f"positive_rank must be one of {', '.join(POSITIVE_RANKS)}, not {self.positive_rank!r}")
        if self.anchor not in ANCHORS:
            bad(f"anchor must be one of {', '.join(ANCHORS)}, not {self.anchor!r}")
        if self.rank_reduction not in RANK_REDUCTIONS:
            bad(f"rank_reduction must be one of {', '.join(RANK_REDUCTIONS)}, not {self.rank_reduction!r}")
        if self.anchor == "round" and not self.margin > 0:
            bad("anchor=round ranks gains over the round's starting policy, which are all 0 at the start: "
                "it needs margin > 0")
        if self.anchor_weight < 0 or (self.anchor_weight > 0 and self.anchor != "round"):
            bad("anchor_weight must be >= 0 and needs anchor=round")
        if self.diag_every < 0:
            bad(f"diag_every must be >= 0, got {self.diag_every}")
        for key in ("negatives", "positives"):
            for ref in getattr(self, key):
                name, tag = split_scope(ref)
                if not name or tag == "":
                    bad(f"{key}: {ref!r} is not name[@version][:TAG]")
        if self.prompt_cache not in PROMPT_CACHE:
            bad(f"prompt_cache must be one of {', '.join(PROMPT_CACHE)}, not {self.prompt_cache!r}")

        if not self.snapshot:
            bad("no snapshot given (--snapshot DIR)")
        if self.method in ("neat", "rrhf") and self.k < 1:
            bad(f"k (plain samples per prompt) must be >= 1 for method {self.method}, got {self.k}")
        if self.method == "neat":
            if not self.negatives:
                bad("method neat needs at least one negative prompt (--negative name@version)")
            if self.k_neg < 1:
                bad(f"k_neg (samples per negative prompt) must be >= 1, got {self.k_neg}")
        if self.k_pos < 0 or self.k < 0 or self.k_neg < 0:
            bad("k, k_neg and k_pos must be >= 0")
        if self.k_pos > 0 and not self.positives:
            bad("k_pos > 0 needs at least one positive prompt (positives)")
        if self.ranking == "reward" and not self.scorer_path:
            bad("ranking=reward needs scorer_path (a trained reward scorer directory)")
        for name in ("rounds", "epochs", "batch_size", "grad_accum", "max_prompt_len", "max_response_len",
                     "max_new_tokens", "gen_batch_size", "lora_r"):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.save_every < 0 or self.keep_checkpoints < 0:
            bad("max_steps, save_every and keep_checkpoints must be >= 0")
        if not self.lr > 0:
            bad(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            bad(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.margin < 0 or self.sft_weight < 0 or self.weight_decay < 0 or self.kl_weight < 0:
            bad("margin, sft_weight, kl_weight and weight_decay must be >= 0")
        if self.kl_weight > 0 and self.method not in ("neat", "rrhf"):
            bad(f"kl_weight needs the policy's own samples (method neat or rrhf), not method {self.method}")
        if not 0 < self.temperature <= 5 or not 0 < self.top_p <= 1:
            bad(f"temperature must be in (0, 5] and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.method in ("neat", "rrhf") and self.max_new_tokens > self.max_response_len:
            bad(f"max_new_tokens ({self.max_new_tokens}) exceeds max_response_len ({self.max_response_len}): "
                "samples would be cut before training")
        if not 0 <= self.lora_dropout < 1:
            bad(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.lora_init not in LORA_INITS:
            bad(f"lora_init must be one of {', '.join(LORA_INITS)}, not {self.lora_init!r}")
        if self.lora_init != "random" and self.method == "dpo":
            # TRL's DPO scores its reference with the adapters switched off, which under PiSSA/OLoRA is the
            # residual weights, not the starting model
            bad(f"lora_init={self.lora_init} needs method neat, rrhf or sft: dpo's reference (adapters off) would "
                "not be the starting model")
        if not 0 <= self.weight_ema < 1:
            bad(f"weight_ema must be in [0, 1) (0 = off), got {self.weight_ema}")
        if self.weight_ema and self.method == "dpo":
            bad("weight_ema needs method neat, rrhf or sft: dpo trains in TRL's DPOTrainer")
        if self.order_seed < -1:
            bad(f"order_seed must be >= 0, or -1 for the run seed, got {self.order_seed}")
        if self.list_order not in LIST_ORDERS:
            bad(f"list_order must be one of {', '.join(LIST_ORDERS)}, not {self.list_order!r}")
        if self.select not in SELECTS:
            bad(f"select must be one of {', '.join(SELECTS)}, not {self.select!r}")
        if self.select != "last" and not self.val_file:
            bad(f"select={self.select} chooses among validated weights: it needs val_file (held-out prompts)")
        if self.val_file and self.method == "dpo":
            bad("val_file needs method neat, rrhf or sft (the dpo baseline runs TRL's own loop)")
        if self.val_every < 0 or self.val_max_new_tokens < 1:
            bad(f"val_every must be >= 0 and val_max_new_tokens >= 1, got {self.val_every}, {self.val_max_new_tokens}")
        if not 0 <= self.val_tolerance < 1:
            bad(f"val_tolerance must be in [0, 1), got {self.val_tolerance}")
        if self.adapter_scales:
            if not self.lora or self.select == "last" or self.lora_init != "random":
                # pissa/olora adapters are not zero at the start: scaling them scales more than training's change
                bad("adapter_scales needs lora (lora_init=random) and select=best_val or best_val_balanced "
                    f"(has lora={self.lora}, lora_init={self.lora_init}, select={self.select})")
            if any(not 0 < s <= 4 or s == 1 for s in self.adapter_scales):
                bad(f"adapter_scales must be in (0, 4] and not 1 (the trained scale is always a candidate), "
                    f"got {self.adapter_scales}")
        if self.merge_scale != 1:
            if not self.lora or self.lora_init != "random":
                bad(f"merge_scale needs lora (lora_init=random), has lora={self.lora}, lora_init={self.lora_init}")
            if self.method == "dpo":
                bad("merge_scale needs method neat, rrhf or sft (the dpo baseline merges TRL's adapter as trained)")
            if not 0 < self.merge_scale <= 4:
                bad(f"merge_scale must be in (0, 4], got {self.merge_scale}")
            if self.adapter_scales:
                bad("use merge_scale (one fixed scale) or adapter_scales (scales validation chooses from), not both")
        return self


def split_scope(ref: str) -> tuple[str, str | None]:
    """'over_refusal@1:benign' -> ('over_refusal@1', 'benign'); 'toxic@2' -> ('toxic@2', None). A scoped system
    prompt is sampled only on the training prompts that carry the tag (snapshot rows' `tags`)."""
    ref, sep, tag = str(ref).partition(":")
    return ref.strip(), (tag.strip() if sep else None)


def _is_list(name: str) -> bool:
    return name in ("negatives", "positives")


_TYPES = {f.name: f.type for f in dataclasses.fields(NeatConfig)}


def _coerce(name: str, v):
    if name == "prompt_cache" and isinstance(v, bool):  # true/false (YAML also reads on/off as booleans)
        return "on" if v else "off"
    t = _TYPES[name]
    t = {"str": str, "int": int, "float": float, "bool": bool, "list": list}.get(t, t) if isinstance(t, str) else t
    try:
        if t is list:
            if v is None:
                return []
            if name in FLOAT_LISTS and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = [v]  # adapter_scales: 1.5 in YAML
            items = [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else list(v)
            if name in FLOAT_LISTS:
                if any(isinstance(x, bool) for x in items):
                    raise ValueError(v)
                return [float(x) for x in items]
            return [str(x) for x in items]
        if t is bool:
            if isinstance(v, str):
                if v.lower() in ("1", "true", "yes", "on"):
                    return True
                if v.lower() in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(v)
            return bool(v)
        if t is int:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(v)
            if isinstance(v, bool):
                raise ValueError(v)
            return int(v)
        if t is float:
            if isinstance(v, bool):
                raise ValueError(v)
            return float(v)
        if t is str:
            return "" if v is None else str(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {v!r} as {t.__name__}") from None
    return v

