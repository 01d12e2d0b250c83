"""The `dpo` method: TRL's DPOTrainer on the same snapshot (`sft` and `rrhf` are modes of trainer.py).

DPO, kept comparable with the listwise methods:
- data: every (better, worse) pair of curated responses of a training row (ranks differ; ties give no pair),
  conversational format (prompt messages, assistant chosen/rejected) so TRL applies the same chat template;
- same model spec, dtype, lr, warmup ratio, weight decay, grad accumulation, clipping, seed and lengths
  (max_length = max_prompt_len + max_response_len, prompts keep their end);
- same NUMBER OF OPTIMIZER STEPS as a listwise run of this config (rounds x epochs x steps per epoch over the
  prompts), each step on `batch_size` pairs per process; `max_steps` caps it as for the other methods;
- TRL's reference model is a frozen copy of the start model (with LoRA: the adapter switched off);
- the run directory has the same layout: config.yaml, snapshot.sha256, metrics.jsonl (a TRL log line per step,
  mapped to our keys by `MetricsCallback`: loss and rank_loss = the DPO loss, sft_loss null, rank_acc = TRL's
  rewards/accuracies, p_gap = mean length-normalised log-prob of chosen minus rejected is NOT what TRL logs, so
  p_gap is null and TRL's summed `logps/chosen - logps/rejected` is reported as `logp_gap_sum`), checkpoints/
  step-N/ (TRL checkpoint renamed), final/ (LoRA merged). SIGTERM/SIGINT stop after the current step with a
  checkpoint and a `stopped` event; `resume` continues from the newest step-N with TRL's own resume.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
import traceback
from pathlib import Path

import torch

from .config import ConfigError, NeatConfig
from .preflight import preflight, use_bf16
from .rounds import dense, steps_per_epoch
from .rundir import install_stop_signals, latest_checkpoint, prepare_run_dir


def dpo_pairs(rows: list[dict]) -> list[dict]:
    """Snapshot rows -> TRL conversational preference rows, one per (better, worse) pair of curated responses."""
    out = []
    for row in rows:
        ranks = dense(list(row["ranks"]))
        resp = row["responses"]
        for i in range(len(resp)):
            for j in range(len(resp)):
                if ranks[i] < ranks[j] and resp[i].strip() and resp[j].strip():
                    out.append({"prompt": row["prompt"],
                                "chosen": [{"role": "assistant", "content": resp[i]}],
                                "rejected": [{"role": "assistant", "content": resp[j]}]})
    return out


def _append(run_dir: Path, obj: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def _callback_class():
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """TRL/HF log lines -> our metrics.jsonl lines; checkpoint renaming; SIGTERM -> save + stop."""

        def __init__(self, run_dir: Path, total_steps: int):
            self.run_dir, self.total_steps = run_dir, total_steps
            self.t0 = self.t_last = time.time()
            self.tokens_last, self.step0 = 0.0, None
            self.stop_reason = None

        def on_train_begin(self, args, state, control, **kw):
            self.step0 = state.global_step
            if state.is_world_process_zero and state.global_step == 0:
                _append(self.run_dir, {"event": "round_start", "round": 0, "step": 0, "method": "dpo"})

        def on_step_end(self, args, state, control, **kw):
            if self.stop_reason:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "loss" not in logs or not state.is_world_process_zero:
                return
            now = time.time()
            tok = float(logs.get("num_tokens", 0.0))
            done = max(state.global_step - (self.step0 or 0), 1)
            elapsed = now - self.t0
            lc, lr_ = logs.get("logps/chosen"), logs.get("logps/rejected")
            _append(self.run_dir, {
                "step": state.global_step, "round": 0, "epoch": int(logs.get("epoch", 0) or 0),
                "loss": logs["loss"], "rank_loss": logs["loss"], "sft_loss": None,
                "rank_acc": logs.get("rewards/accuracies"), "p_gap": None,
                "logp_gap_sum": (lc - lr_) if lc is not None and lr_ is not None else None,
                "reward_margin": logs.get("rewards/margins"),
                "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                "tokens_per_s": round((tok - self.tokens_last) / max(now - self.t_last, 1e-9), 2) if tok else None,
                "elapsed_s": round(elapsed, 3),
                "eta_s": round(elapsed / done * max(self.total_steps - state.global_step, 0), 3),
                "total_steps": self.total_steps})
            self.t_last, self.tokens_last = now, tok

        def on_save(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            dst = Path(args.output_dir) / f"step-{state.global_step}"
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                src.rename(dst)
                (dst / "state.json").write_text(json.dumps({"global_step": state.global_step, "method": "dpo",
                                                            "time": time.time()}))
                _append(self.run_dir, {"event": "checkpoint", "step": state.global_step, "path": str(dst)})

    return MetricsCallback


def train_dpo(cfg: NeatConfig, run_dir: str | Path, *, workspace=None, resume: bool = False, lm=None,
              stop_after: int | None = None) -> dict:
    """Run the DPO baseline; same return value and run-dir layout as neat_studio.neat.trainer.train."""
    from datasets import Dataset
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig, DPOTrainer

    run_dir = Path(run_dir)
    cfg.output_dir = str(run_dir)
    prep = preflight(cfg, workspace=workspace, lm=lm)
    pairs = dpo_pairs(prep.rows)
    if not pairs:
        raise ConfigError(f"snapshot {cfg.snapshot} has no ranked pairs (every row needs >= 2 distinct ranks) "
                          "for the dpo baseline")
    if not resume:
        prepare_run_dir(cfg, run_dir, prep.sha256)
    hf_logging.disable_progress_bar()
    world = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun/accelerate launch; the process group comes later
    steps = cfg.rounds * cfg.epochs * steps_per_epoch(len(prep.rows), cfg.batch_size, world, cfg.grad_accum)
    total = min(steps, cfg.max_steps) if cfg.max_steps else steps
    model = prep.lm.model.float()
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_targets or "all-linear", task_type="CAUSAL_LM")
    args = DPOConfig(
        output_dir=str(run_dir / "checkpoints"), max_steps=total,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm or 1e9, seed=cfg.seed, data_seed=cfg.seed,
        beta=cfg.dpo_beta, max_length=cfg.max_prompt_len + cfg.max_response_len, 
        bf16=use_bf16(cfg), use_cpu=not torch.cuda.is_available(), activation_checkpointing=False,
        logging_steps=1, save_strategy="steps" if cfg.save_every else "no", save_steps=cfg.save_every or 500,
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
    )
    cb = _callback_class()(run_dir, total)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=prep.lm.tokenizer, callbacks=[cb], peft_config=peft_config)
    from transformers import PrinterCallback, TrainerCallback

    trainer.remove_callback(PrinterCallback)
    if stop_after is not None:

        class _StopAt(TrainerCallback):
            def on_step_end(self, a, state, control, **kw):
                if state.global_step >= stop_after:
                    cb.stop_reason = cb.stop_reason or "stop_after"
                    control.should_save = True
                    control.should_training_stop = True

        trainer.add_callback(_StopAt())

    def on_stop(name):
        cb.stop_reason = name

    old = install_stop_signals(on_stop)
    ck = latest_checkpoint(run_dir) if resume else None
    try:
        trainer.train(resume_from_checkpoint=str(ck) if ck else None)
        step = trainer.state.global_step
        if cb.stop_reason:
            ck = Path(args.output_dir) / f"step-{step}"
            if not ck.is_dir():  # should_save on stop happens in the HF loop; make sure one exists
                trainer.save_model(str(ck))
            if trainer.is_world_process_zero():
                _append(run_dir, {"event": "stopped", "step": step, "reason": cb.stop_reason, "checkpoint": str(ck)})
            return {"status": "stopped", "step": step, "checkpoint": str(ck), "run_dir": str(run_dir)}
        final = run_dir / "final"
        if trainer.is_world_process_zero():
            m = trainer.model
            if cfg.lora:
                m = m.merge_and_unload()
            shutil.rmtree(final, ignore_errors=True)
            m.save_pretrained(final)
            prep.lm.tokenizer.save_pretrained(final)
            (final / "neat_training.json").write_text(json.dumps({
                "method": "dpo", "base_model": cfg.model, "base_model_id": getattr(prep.lm, "model_id", None),
                "snapshot_sha256": prep.sha256, "steps": step, "pairs": len(pairs), "lora_merged": cfg.lora},
                indent=2))
            _append(run_dir, {"event": "finished", "step": step, "final": str(final)})
        return {"status": "finished", "step": step, "final": str(final), "run_dir": str(run_dir)}
    except Exception as e:
        _append(run_dir, {"event": "error", "message": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-4000:]})
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
