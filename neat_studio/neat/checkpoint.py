"""Checkpoints and the final model of a training run (the trainer's CheckpointMixin): `checkpoints/step-N/` holds
the model (save_pretrained; LoRA: the adapter), optimizer, scheduler, every process's RNG state and the position;
it is written to a temp dir and renamed, so a half-written checkpoint is never resumed. `final/`: save_pretrained
+ tokenizer, LoRA merged."""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch

from .config import ConfigError
from .rundir import STATE, _np_state, latest_checkpoint


class CheckpointMixin:
    def _ckpt_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.run_dir)

    def _save_checkpoint(self) -> Path:
        step = self.pos["global_step"]
        final = self._ckpt_root() / f"step-{step}"
        tmp = self._ckpt_root() / f".step-{step}.tmp"
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state(),
                    "numpy": _np_state()}, tmp / f"rng-{self.rank}.pt")
        if self.main:
            self.model.save_pretrained(tmp)
            self.tok.save_pretrained(tmp)
            torch.save(self.opt.state_dict(), tmp / "optimizer.pt")
            torch.save(self.sched.state_dict(), tmp / "scheduler.pt")
            if self.avg is not None:  # weight_ema: the running average goes on where it stopped
                torch.save(self.avg.state_dict(), tmp / "weight_average.pt")
            (tmp / STATE).write_text(json.dumps({**self.pos, "world": self.world, "lora": self.cfg.lora,
                                                 "time": time.time()}))
        self.acc.wait_for_everyone()
        if self.main:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            if self.cfg.keep_checkpoints:
                cks = sorted((p for p in self._ckpt_root().glob("step-*") if (p / STATE).exists()),
                             key=lambda p: int(p.name.split("-")[1]))
                for old in cks[: -self.cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
            self._log({"event": "checkpoint", "step": step, "path": str(final), "position": dict(self.pos)})
        self.acc.wait_for_everyone()
        return final

    def _load_checkpoint(self):
        ck = self.latest_checkpoint()
        if ck is None:
            return
        from safetensors.torch import load_file

        state = json.loads((ck / STATE).read_text())
        if state.get("world", 1) != self.world:
            raise ConfigError(f"checkpoint {ck} was written by {state.get('world')} process(es); resume it with the "
                              f"same number (got {self.world}): the step schedule depends on it")
        if self.cfg.lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(ck / "adapter_model.safetensors"))
        else:
            sd = {}
            for f in sorted(ck.glob("*.safetensors")):
                sd.update(load_file(f))
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
            tied = set(getattr(self.model, "_tied_weights_keys", None) or [])
            if unexpected or any(k not in tied and "lm_head" not in k for k in missing):
                raise RuntimeError(f"checkpoint {ck} does not fit the model: missing {missing}, "
                                   f"unexpected {unexpected}")
        self.opt.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=False))
        self.sched.load_state_dict(torch.load(ck / "scheduler.pt", weights_only=False))
        if self.avg is not None:
            if not (ck / "weight_average.pt").exists():
                raise ConfigError(f"checkpoint {ck} has no weight average (weight_ema): it was written without it")
            self.avg.load_state_dict(torch.load(ck / "weight_average.pt", weights_only=False))
        rng = ck / f"rng-{self.rank}.pt"
        if rng.exists():
            r = torch.load(rng, weights_only=False)
            random.setstate(r["python"])
            torch.set_rng_state(r["torch"])
            _np_state(r["numpy"])
        self.pos = {k: state[k] for k in ("round", "epoch", "step_in_epoch", "global_step", "round_start_step")}
        self._log({"event": "resumed", "step": self.pos["global_step"], "round": self.pos["round"],
                   "checkpoint": str(ck)})

    def _save_final(self, kept: dict | None = None) -> Path:
        """final/: the model as it is (LoRA merged); `kept` (select=best_val, validation._keep_best) names the step
        whose weights these are and the adapter scale chosen (merge_scale, adapter_scales)."""
        final = self.run_dir / "final"
        selected_step = kept["step"] if kept else None
        adapter_scale = kept.get("scale", 1.0) if kept else self.cfg.merge_scale
        if self.main:
            model = self.model
            if self.cfg.lora:
                from .sampling import adapters_scaled

                # merge_scale, or adapter_scales (validation.py): the kept adapter merged at its scale
                with adapters_scaled(model, adapter_scale):
                    model = model.merge_and_unload()
            shutil.rmtree(final, ignore_errors=True)
            model.save_pretrained(final)
            self.tok.save_pretrained(final)
            (final / "neat_training.json").write_text(json.dumps({
                "method": self.cfg.method, "base_model": self.cfg.model,
                "base_model_id": getattr(self.lm, "model_id", None), "snapshot_sha256": self.prep.sha256,
                "steps": self.pos["global_step"], "lora_merged": self.cfg.lora,
                # select=best_val: the validated step whose weights these are (0 = the starting model's)
                **({"selected_step": selected_step} if selected_step is not None else {}),
                **({"adapter_scale": adapter_scale} if adapter_scale != 1 else {})}, indent=2))
        self.acc.wait_for_everyone()
        return final
