"""How long a run takes on this kind of machine (2 CPU cores): a documented model of where the time goes, read from
one NeatConfig (the one source of defaults). Shown by the Train tab before Start and used to ask before a long run."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import ConfigError, NeatConfig, split_scope
from .rounds import LOOP_WORDS, OPENING_WORDS

# A model of where a run's time goes on a 2-core CPU, float32. Its constants are throughputs measured with
# benchmarks/bench_train.py and whole runs (README, "Training time estimate"); bf16 (autocast on a CPU with bf16
# instructions) was measured separately, on whole runs.
TRAIN_FLOPS = 1.2e11        # sustained 6·N·token FLOP/s of a real run's training steps (bench phases: 140-185)
OPT_S_PER_PARAM = 1.0e-9    # AdamW + clipping + bookkeeping per parameter and optimizer step (~0.14 s at 135M)
DECODE_BYTES_S = 1.3e10     # a decoding step streams every fp32 weight once at this rate (~40 ms at 135M)
DECODE_ROW_FLOPS = 3.5e10   # ... plus 2·N FLOPs per sequence still decoding, at this rate (~8 ms per row at 135M)
SAMPLE_FILL = 0.75          # mean sample length / max_new_tokens (HH prompts, 96 new tokens: 0.73-0.75)
PREFILL_FLOPS = 1.2e11      # prompt prefill, 2·N FLOPs per prompt token (once per prompt and sampling pass)
DPO_SLOWDOWN = 2.3          # TRL DPOTrainer's tokens/s below ours at the same 6·N accounting (bench: 87-97 vs 192-221)
BF16_TRAIN_SPEEDUP = 1.9    # bf16-autocast / fp32 training step on an AVX512-BF16 CPU (bench 1.83x, a whole run 2.17x)
BF16_SAMPLE_SPEEDUP = 1.5   # same for a round's sampling (fp32 master weights under autocast: 242 s -> 158 s)
STARTUP_S = 20.0            # process start, imports (torch, transformers, accelerate), model load
PROMPT_TOKENS = 48          # typical prompt length (tokens) of the studio's data
RESPONSE_TOKENS = 64        # typical curated response length (tokens; capped by max_response_len)
CURATED_PER_LIST = 2        # typical curated responses per prompt
# the check after a run (config `check`, run_check.py): both models answer every dev prompt of the shipped sets
# (harmful 150, look-alikes 141, benign 125) greedily, 16 at a time, and score the 134 dev preference pairs; a
# study evaluation of one 135M model this way took ~185 s in bf16 on 2 cores, the model below says ~220 s
CHECK_PROMPTS, CHECK_PAIRS, CHECK_NEW_TOKENS, CHECK_BATCH = 416, 134, 48, 16
CHECK_PROMPT_TOKENS = 60    # typical evaluation prompt (tokens)
CHECK_PAIR_TOKENS = 300     # a preference pair's prompt and both responses (tokens)
JUDGE_S_PER_ANSWER = 0.03   # the refusal detector's embedding of one answer (MiniLM, 2 cores)


def model_params(spec: str, workspace=None) -> tuple[float, str]:
    """(approximate parameter count, how it was found) for a model spec, without loading weights."""
    if spec == "tiny":
        return 2.0e5, "tiny test model"
    if spec == "default":
        return 1.35e8, "SmolLM2-135M"
    p = Path(str(spec)).expanduser()
    for cand in (p / "config.json", p / "final" / "config.json"):
        if cand.is_file():
            try:
                c = json.loads(cand.read_text())
                h, L = int(c.get("hidden_size") or c.get("n_embd")), int(c.get("num_hidden_layers") or c.get("n_layer"))
                v, inter = int(c.get("vocab_size") or 0), int(c.get("intermediate_size") or 4 * h)
                return float(L * (4 * h * h + 3 * h * inter) + v * h), f"from {cand.name}"
            except (ValueError, TypeError, OSError):
                break
    return 1.35e8, "unknown size, assumed 135M parameters"


def estimate_time(config: NeatConfig | dict, n_prompts: int, workspace=None, tag_counts: dict | None = None) -> dict:
    """Wall time of a run on this kind of machine (2 CPU cores), from the constants above. The model:

    - steps = rounds x epochs x ceil(n_prompts / (batch_size x grad_accum)), capped by max_steps;
    - each round SAMPLES online answers (neat: k plain + k_neg per negative + k_pos per positive; rrhf: k plain;
      sft / dpo: none), one pass per system prompt, in batches of gen_batch_size sequences (a prompt's k samples
      share a batch): max_new_tokens decoding steps per batch, each streaming the weights once
      (N x 4 bytes / DECODE_BYTES_S) plus 2·N FLOPs per sequence still running (SAMPLE_FILL of them on average,
      DECODE_ROW_FLOPS), and a prefill of PROMPT_TOKENS per prompt and pass (PREFILL_FLOPS);
    - each optimizer step TRAINS on batch_size x grad_accum lists: the shared-prompt layout runs a list's prompt
      once and each of its responses (curated: RESPONSE_TOKENS; online: SAMPLE_FILL x max_new_tokens; both capped
      by max_response_len) at 6·N FLOPs per token (TRAIN_FLOPS); dpo (TRL) runs prompt + response per row for two
      rows per pair, DPO_SLOWDOWN times slower per token (its reference forward, full-vocabulary logits); plus
      OPT_S_PER_PARAM x N per step;
    - bf16 (dtype bf16, or auto on a CPU with AVX512-BF16 / AMX): training BF16_TRAIN_SPEEDUP and sampling
      BF16_SAMPLE_SPEEDUP times faster;
    - with a val_file, each validation decodes its prompts greedily (val_max_new_tokens, gen_batch_size at a
      time, as a sampling round) and runs the refusal detector on the answers (JUDGE_S_PER_ANSWER); it runs at
      the start and every val_every steps and at the last one (val_every 0: at the end of each round), and once
      more per adapter_scales entry;
    - plus STARTUP_S; N = parameter count (config.json of a local model; 135M for `default`).

    A system prompt scoped to a tag (`over_refusal@1:benign`) samples only that tag's prompts: `tag_counts`
    ({tag: training prompts carrying it}) says how many; without it every prompt is counted. Settings the config
    leaves out take NeatConfig's defaults (the one source of defaults); a job config's own keys (data filters, run
    name) are ignored.

    Returns {"seconds", "steps", "sampling_s", "training_s", "validation_s", "validations", "check_s",
    "startup_s", "params", "bf16", "text"}."""
    from ..models import bf16_compute

    defaults = NeatConfig().to_dict()
    if isinstance(config, NeatConfig):
        config = config.to_dict()

    def g(k, d=None):
        v = config.get(k)
        return defaults.get(k, d) if v in (None, "") else v

    method = g("method", "neat")
    n = max(int(n_prompts or 0), 0)
    bs, acc = max(int(g("batch_size")), 1), max(int(g("grad_accum")), 1)
    rounds, epochs = max(int(g("rounds")), 1), max(int(g("epochs")), 1)
    spe = math.ceil(n / (bs * acc)) if n else 0
    steps = rounds * epochs * spe
    if int(g("max_steps") or 0) > 0:
        steps = min(steps, int(g("max_steps")))
    negs, poss = list(g("negatives") or []), list(g("positives") or [])
    k, k_neg, k_pos = int(g("k")), int(g("k_neg")), int(g("k_pos"))

    def rows_of(ref):  # prompts a (possibly scoped) system prompt samples on
        tag = split_scope(ref)[1]
        return n if tag is None or tag_counts is None else min(n, int(tag_counts.get(tag, 0)))

    # sampling passes (plain, each negative / positive prompt): (k, prompts sampled)
    passes = {"neat": [(k, n)] + [(k_neg, rows_of(r)) for r in negs] + [(k_pos, rows_of(r)) for r in poss],
              "rrhf": [(k, n)] + [(k_pos, rows_of(r)) for r in poss]}.get(method, [])
    if passes and str(g("greedy_plain")).lower() in ("true", "1"):
        passes.append((1, n))
    passes = [(kk, m) for kk, m in passes if kk > 0 and m > 0]
    online = sum(kk * m for kk, m in passes) / n if n else 0  # online samples per list, on average
    new_tok = int(g("max_new_tokens"))
    max_resp = int(g("max_response_len"))
    bf16 = bf16_compute(str(g("dtype")), "cpu")  # the estimate models a CPU
    params, how = model_params(str(g("model")), workspace)
    # rounds actually reached when max_steps cuts the run short
    rounds_run = rounds if not spe else min(rounds, math.ceil(max(steps, 1) / (epochs * spe)))
    gen_batch = max(int(g("gen_batch_size")), 1)
    sampling = sum(pass_seconds(params, m, kk, new_tok, gen_batch) for kk, m in passes)
    sampling *= rounds_run / decode_speedup(bf16)
    resp_curated, resp_online = min(RESPONSE_TOKENS, max_resp), min(SAMPLE_FILL * new_tok, max_resp)
    if method == "dpo":
        step_tokens, flops_tok = bs * acc * 2 * (PROMPT_TOKENS + resp_curated), 6 * DPO_SLOWDOWN
    else:
        per_list = (resp_curated if method == "sft" else CURATED_PER_LIST * resp_curated + online * resp_online)
        if method in ("neat", "rrhf"):  # synthetic loops: ~LOOP_WORDS words, ~1.4 tokens a word
            per_list += int(g("loop_negatives") or 0) * min(int(1.4 * LOOP_WORDS), max_resp)
            per_list += int(g("refusal_negatives") or 0) * min(int(1.4 * OPENING_WORDS), max_resp)
        step_tokens, flops_tok = bs * acc * (PROMPT_TOKENS + per_list), 6
    train_flops = TRAIN_FLOPS * (BF16_TRAIN_SPEEDUP if bf16 else 1.0)
    training = steps * (step_tokens * flops_tok * params / train_flops + OPT_S_PER_PARAM * params)
    # validation (val_file): the held-out prompts at the start and every val_every steps and at the last one, or
    # at the end of each round (val_every 0)
    n_val = val_prompt_count(str(g("val_file") or "")) if method != "dpo" and steps else 0
    every = int(g("val_every") or 0)
    validations = (1 + (math.ceil(steps / every) if every else rounds_run)) if n_val else 0
    scales = g("adapter_scales") or []
    if validations and str(g("lora")).lower() in ("true", "1") and str(g("select")) != "last":
        # adapter_scales: the kept adapter validated once more per scale
        validations += len(str(scales).split(",") if isinstance(scales, str) else scales)
    validation = validations * validation_seconds(params, bf16, n_val, int(g("val_max_new_tokens")), gen_batch)
    check = check_seconds(params, bf16) if str(g("check")).lower() in ("true", "1") else 0.0
    total = STARTUP_S + sampling + training + validation + check
    val_text = f", {validations} validations ~{fmt_duration(validation)}" if validations else ""
    then = f", then the check against the base ~{fmt_duration(check)}" if check else ""
    text = (f"about {fmt_duration(total)} ({steps} steps; sampling ~{fmt_duration(sampling)}, training "
            f"~{fmt_duration(training)}{val_text}{then}; {how}{', bf16' if bf16 else ''}; rough, ±2x)") if n else \
        "no training data matches the filters"
    return {"seconds": round(total, 1), "steps": steps, "sampling_s": round(sampling, 1),
            "training_s": round(training, 1), "validation_s": round(validation, 1), "validations": validations,
            "check_s": round(check, 1), "startup_s": STARTUP_S, "params": params, "bf16": bf16, "text": text}


def pass_seconds(params: float, prompts: int, k: int, new_tokens: int, gen_batch: int) -> float:
    """One generate pass in float32: `k` samples of each of `prompts` prompts, gen_batch_size sequences at a time
    (a prompt's k samples share a batch), new_tokens decoding steps per batch, plus the prompts' prefill."""
    seqs, per_batch = prompts * k, max(1, gen_batch // k) * k
    batches = [per_batch] * (seqs // per_batch) + ([seqs % per_batch] if seqs % per_batch else [])
    return new_tokens * sum(params * 4 / DECODE_BYTES_S + SAMPLE_FILL * rows * 2 * params / DECODE_ROW_FLOPS
                            for rows in batches) + prompts * PROMPT_TOKENS * 2 * params / PREFILL_FLOPS


def val_prompt_count(val_file: str) -> int:
    """Prompts a run's val_file holds (as the run reads them); 0 when there is none or it cannot be used (the
    run's own checks say why)."""
    if not val_file:
        return 0
    from .validation import load_val_prompts

    try:
        return len(load_val_prompts(val_file)[0])
    except (ConfigError, OSError):
        return 0


def decode_speedup(bf16: bool) -> float:
    """How many times float32's rate sampling, validation and the check decode at (bf16 or not)."""
    return BF16_SAMPLE_SPEEDUP if bf16 else 1.0


def validation_seconds(params: float, bf16: bool, n_prompts: int, new_tokens: int, batch: int) -> float:
    """One validation: greedy answers to `n_prompts` held-out prompts (a generate pass with k = 1) and the refusal
    detector on them."""
    if n_prompts <= 0:
        return 0.0
    decode = pass_seconds(params, n_prompts, 1, new_tokens, max(int(batch), 1))
    return decode / decode_speedup(bf16) + n_prompts * JUDGE_S_PER_ANSWER


def check_seconds(params: float, bf16: bool) -> float:
    """The check after a run (config `check`): for each of the two models, a load, greedy answers to every dev
    prompt in batches of CHECK_BATCH (decoding and prefill as a sampling round), the refusal detector on them,
    and the preference pairs' forward passes."""
    batches = math.ceil(CHECK_PROMPTS / CHECK_BATCH)
    decode = CHECK_NEW_TOKENS * batches * (params * 4 / DECODE_BYTES_S
                                           + SAMPLE_FILL * CHECK_BATCH * 2 * params / DECODE_ROW_FLOPS)
    prefill = (CHECK_PROMPTS * CHECK_PROMPT_TOKENS + CHECK_PAIRS * CHECK_PAIR_TOKENS) * 2 * params / PREFILL_FLOPS
    per_model = STARTUP_S / 2 + (decode + prefill) / decode_speedup(bf16) \
        + CHECK_PROMPTS * JUDGE_S_PER_ANSWER
    return 2 * per_model




def fmt_duration(s: float | None) -> str:
    if s is None:
        return "–"
    s = max(0, int(round(float(s))))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def eta_seconds(mean_step_s: float, steps_left: int, sample_s: list[float], rounds_to_sample: int) -> float:
    """Time left from what this run measured: its mean optimizer-step time x the steps left, plus its mean
    sampling time per round x the rounds still to sample (not the elapsed time per step, which counts the first
    round's sampling as if every step paid it)."""
    per_round = sum(sample_s) / len(sample_s) if sample_s else 0.0
    return mean_step_s * max(steps_left, 0) + per_round * max(rounds_to_sample, 0)
