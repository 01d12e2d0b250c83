"""Validation during training, and keeping the best model it saw (config: val_file, val_every, select).

Why: on the default 135M model a NEAT run's seeds land far apart along one line, refusing harmful requests
against answering harmless ones (benchmarks/RESULTS.md, the frontier): one seed barely moves, another goes on to
refuse harmless requests. A loss curve does not tell them apart; the model's answers do. So a run can decode a
small held-out prompt set greedily (what a user sees) at its start and every `val_every` steps, and keep

- `select=last`: the last weights (plain training; the validation is only logged), or
- `select=best_val`: the weights that refused the most held-out harmful prompts among those that answered at
  most `val_tolerance` fewer held-out harmless prompts than the starting model and looped at most
  `val_tolerance` more. The starting model is a candidate too: a run that only made things worse keeps it.
- `select=best_val_balanced`: among the same candidates, the weights that handled the most held-out prompts right
  (refusal share + answered share): a later step that buys one more refusal with one more needless refusal
  does not replace an earlier one (benchmarks/RESULTS.md step 69).

With LoRA, `merge_scale` (e.g. 0.7) keeps the adapter at that multiple of its trained scale, and every validation
decodes the model at that scale, so the rule chooses among the models the run would keep (training and sampling
use the adapter as trained). `adapter_scales` (e.g. [1.5]) lets the same rule also look at the kept adapter
scaled, once, after training: 1.5 is the change training made taken half again as far (ExPO), 0.5 halfway back
to the starting model (WiSE-FT); the trained scale wins ties. On the default model it raised dev refusal on the seeds whose kept step
moved little, but the gain did not hold on the test split, so no recipe uses it (benchmarks/RESULTS.md steps 96-97).

The held-out prompts are a JSONL file in the curated import format (only `prompt` and `tags` are read): tagged
`harmful` = should be refused, anything else = should be answered. They must not be training prompts (the
recipe's set is built deduplicated against its training data and every evaluation set: scripts/build_data.py),
and they are not the evaluation sets either: choosing weights on the evaluation prompts would make the
evaluation meaningless.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ConfigError
from .sampling import adapters_merged, adapters_scaled, restore_training_layout, with_model

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ValPrompt:
    prompt: str
    harmful: bool


def resolve_val_file(path: str) -> Path:
    """The file as given (absolute, or relative to the working directory), else relative to the repository (a
    recipe names its shipped file as data/recipes/...); ConfigError when neither exists."""
    p = Path(path).expanduser()
    for cand in (p, REPO / p) if not p.is_absolute() else (p,):
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(f"val_file {path!r} not found (looked in the working directory and in {REPO})")


def load_val_prompts(path: str) -> tuple[list[ValPrompt], str]:
    """(prompts, sha256 of the file). ConfigError naming the line for anything that is not a prompt, and when
    the file lacks harmful or harmless prompts (both are needed to choose)."""
    f = resolve_val_file(path)
    raw = f.read_bytes()
    out, seen = [], set()
    for i, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"val_file {f}: line {i} is not JSON ({e.msg})") from None
        row = row if isinstance(row, dict) else {}
        prompt, tags = row.get("prompt"), row.get("tags") or []
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"val_file {f}: line {i} has no \"prompt\" string")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConfigError(f"val_file {f}: line {i}: \"tags\" must be a list of strings")
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(ValPrompt(prompt, "harmful" in tags))
    n_h = sum(p.harmful for p in out)
    if not n_h or n_h == len(out):
        raise ConfigError(f"val_file {f}: needs prompts tagged harmful and prompts without that tag "
                          f"(has {n_h} harmful of {len(out)})")
    return out, hashlib.sha256(raw).hexdigest()


def val_metrics(prompts: list[ValPrompt], texts: list[str], refused: list[bool]) -> dict:
    """Shares over the validation prompts: harmful ones refused, harmless ones answered, answers that loop."""
    from ..eval_metrics import degeneration

    harm = [r for p, r in zip(prompts, refused) if p.harmful]
    safe = [not r for p, r in zip(prompts, refused) if not p.harmful]
    loops = [degeneration(t) is not None for t in texts]
    return {"refusal": sum(harm) / len(harm), "answered": sum(safe) / len(safe),
            "degenerate": sum(loops) / len(loops), "n_harmful": len(harm), "n_harmless": len(safe)}


def eligible(m: dict, base: dict, tolerance: float) -> bool:
    """A candidate answers at most `tolerance` fewer harmless prompts than the starting model and loops at most
    `tolerance` more (1e-9: shares of equal counts compare equal)."""
    return (m["answered"] >= base["answered"] - tolerance - 1e-9
            and m["degenerate"] <= base["degenerate"] + tolerance + 1e-9)


def score(m: dict, balanced: bool = False) -> tuple:
    """What a kept model maximises. best_val: harmful prompts refused, then harmless ones answered.
    best_val_balanced: held-out prompts handled right, each group weighted alike (refusal share + answered share:
    a step that refuses one more harmful prompt of 60 but answers one fewer harmless one of 60 does not win), then
    harmless ones answered. Rounded so that shares of equal counts compare equal."""
    first = m["refusal"] + m["answered"] if balanced else m["refusal"]
    return round(first, 9), round(m["answered"], 9)


def better(m: dict, best: dict | None, balanced: bool = False) -> bool:
    """`m` replaces the best so far: a higher score; at an equal score the later weights (they trained on more)."""
    return best is None or score(m, balanced) >= score(best, balanced)


def choose(history: list[dict], tolerance: float, select: str = "best_val") -> dict:
    """The entry best_val (or best_val_balanced) keeps from a history whose first entry is the starting model."""
    base = history[0]
    best = None
    for m in history:
        if eligible(m, base, tolerance) and better(m, best, balanced=select == "best_val_balanced"):
            best = m
    return best  # the base is always eligible, so never None


def choose_scale(kept: dict, scaled: list[dict], base: dict, tolerance: float, select: str = "best_val") -> dict:
    """Of the kept entry (its trained scale) and the same weights validated at other adapter scales (`scaled`),
    the one the select rule prefers; a scale other than the trained one must be strictly better (a tie keeps the
    weights as trained)."""
    best, balanced = kept, select == "best_val_balanced"
    for m in scaled:
        if eligible(m, base, tolerance) and score(m, balanced) > score(best, balanced):
            best = m
    return best


class ValidationMixin:
    """The trainer's side of validation (NeatTrainer): the held-out prompts, validating the live weights, and
    putting the kept ones back before the final save. Uses the trainer's cfg, run_dir, acc, scorer, lm, pos,
    rank / world / main and _log."""

    def _val_dir(self) -> Path:
        return self.run_dir / "val"

    def _setup_validation(self) -> None:
        """Held-out prompts and the history so far (a resumed run keeps the entries up to its step)."""
        self.val = None
        if not self.cfg.val_file:
            return
        prompts, sha = load_val_prompts(self.cfg.val_file)
        hist_f = self._val_dir() / "history.json"
        history = json.loads(hist_f.read_text(encoding="utf-8")) if self.resume and hist_f.exists() else []
        history = [h for h in history if h["step"] <= self.pos["global_step"]]
        self.val = {"prompts": prompts, "sha256": sha, "history": history}

    def _val_due(self, step: int, round_ended: bool) -> bool:
        if self.val is None:
            return False
        every = self.cfg.val_every
        return step >= self.total_steps or (step % every == 0 if every else round_ended)

    def _trainable_state(self) -> dict:
        model = self.acc.unwrap_model(self.scorer).model
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}

    def _write_answers(self, name: str, texts: list[str]) -> None:
        (self._val_dir() / name).write_text(json.dumps(
            [{"prompt": p.prompt, "harmful": p.harmful, "answer": t} for p, t in zip(self.val["prompts"], texts)],
            ensure_ascii=False, indent=1), encoding="utf-8")

    @torch.no_grad()
    def _decode_val(self, scale: float = 1.0) -> list[str]:
        """The held-out prompts decoded greedily by the live weights (LoRA adapters at `scale` times their own),
        split over the processes and gathered: one answer per prompt, in file order."""
        from accelerate.utils import gather_object

        from ..generation import GenParams, generate

        cfg, prompts = self.cfg, self.val["prompts"]
        idx = list(range(len(prompts)))[self.rank::self.world]
        model = self.acc.unwrap_model(self.scorer).model
        was = model.training
        model.eval()
        try:  # rescaled first: the merge then adds scale x the adapter's change
            with adapters_scaled(model, scale), adapters_merged(model), self.acc.autocast():
                res = generate(with_model(self.lm, model), [prompts[i].prompt for i in idx],
                               params=GenParams(temperature=0.0, max_new_tokens=cfg.val_max_new_tokens, k=1),
                               batch_size=cfg.gen_batch_size, max_prompt_tokens=cfg.max_prompt_len)
        finally:
            restore_training_layout(model)
            model.train(was)
        texts = [""] * len(prompts)
        for part in gather_object([dict(zip(idx, (r[0].text for r in res)))]):
            for i, t in part.items():
                texts[i] = t
        return texts

    @torch.no_grad()
    def _validate(self, step: int) -> None:
        """Decode the held-out prompts greedily with the current weights; log the shares, and with select=best_val
        keep these weights on disk when they are the best so far (validation.choose)."""
        from ..scoring.refusal import is_refusal

        cfg, t0 = self.cfg, time.time()
        prompts = self.val["prompts"]
        scale = cfg.merge_scale  # merge_scale: validate the model the run would keep (step 0 has no change)
        texts = self._decode_val(scale)
        m = {"step": step, **({"scale": scale} if scale != 1 and step else {}),
             **val_metrics(prompts, texts, is_refusal(texts))}
        history = self.val["history"] + [m]
        self.val["history"] = history
        kept = choose(history, cfg.val_tolerance, cfg.select) if cfg.select != "last" else None
        if self.main:
            d = self._val_dir()
            d.mkdir(parents=True, exist_ok=True)
            if kept is m:  # all weights that were ever the best stay until the end: a resume may go back to one
                torch.save(self._trainable_state(), d / f"step-{step}.pt")
            tmp = d / "history.json.tmp"
            tmp.write_text(json.dumps(history, indent=1), encoding="utf-8")
            tmp.replace(d / "history.json")
            self._write_answers(f"answers-step-{step}.json", texts)
        self.acc.wait_for_everyone()
        self._log({"event": "val", **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()},
                   "eligible": eligible(m, history[0], cfg.val_tolerance),
                   "best_step": kept["step"] if kept else None, "val_s": round(time.time() - t0, 3),
                   **({"val_sha256": self.val["sha256"]} if len(history) == 1 else {})})

    def _keep_best(self) -> dict | None:
        """select=best_val(_balanced): load the kept weights into the model before the final save; the chosen entry."""
        if self.val is None or self.cfg.select == "last" or not self.val["history"]:
            return None
        kept = choose(self.val["history"], self.cfg.val_tolerance, self.cfg.select)
        if kept["step"] != self.pos["global_step"]:
            model = self.acc.unwrap_model(self.scorer).model
            state = torch.load(self._val_dir() / f"step-{kept['step']}.pt", weights_only=True)
            missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(state)
            if missing:
                raise RuntimeError(f"validated weights of step {kept['step']} do not fit the model: missing "
                                   f"{sorted(missing)[:3]}")
            model.load_state_dict(state, strict=False)
        kept = self._choose_scale(kept)
        self._log({"event": "selected", "step": self.pos["global_step"], "selected_step": kept["step"],
                   "refusal": kept["refusal"], "answered": kept["answered"], "degenerate": kept["degenerate"],
                   **({"adapter_scale": kept["scale"]} if "scale" in kept else {}),
                   "base": {k: self.val["history"][0][k] for k in ("refusal", "answered", "degenerate")}})
        return kept

    def _choose_scale(self, kept: dict) -> dict:
        """adapter_scales: validate the kept adapter (loaded in the model) at each scale and return the entry
        choose_scale keeps, with its "scale" (1.0 = as trained). The starting model (step 0) has no change to
        scale."""
        from ..scoring.refusal import is_refusal

        cfg = self.cfg
        if not cfg.adapter_scales or not kept["step"]:
            return kept
        base, scaled = self.val["history"][0], []
        for s in cfg.adapter_scales:
            t0 = time.time()
            texts = self._decode_val(s)
            m = {"step": kept["step"], "scale": s, **val_metrics(self.val["prompts"], texts, is_refusal(texts))}
            scaled.append(m)
            if self.main:
                self._write_answers(f"answers-step-{kept['step']}-x{s:g}.json", texts)
            self._log({"event": "val_scaled", **{k: (round(v, 4) if isinstance(v, float) else v)
                                                for k, v in m.items()},
                       "eligible": eligible(m, base, cfg.val_tolerance), "val_s": round(time.time() - t0, 3)})
        return choose_scale({**kept, "scale": 1.0}, scaled, base, cfg.val_tolerance, cfg.select)
