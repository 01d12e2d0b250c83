"""NEAT trainer: rounds of (sample from the current policy -> rank -> ranking loss + NLL -> checkpoint).

Method (arXiv 2410.12194 in the RRHF form of arXiv 2304.05302; see docs/ARCHITECTURE.md and loss.py):
1. Sample. Each round the CURRENT policy writes `k` plain answers per training prompt, `k_neg` answers under
   each negative system prompt and `k_pos` under each positive one (NEAT-PP), with neat_studio.generation.
   Each process samples for its share of the prompts (rows[rank::world]); the samples are gathered so every
   process holds the whole round. The round's ranked lists are written to `rounds/round-<r>.json`.
2. Rank (rounds.py): curated ranks are kept; online samples are placed by the `rule` (negatives at the bottom,
   plain samples tied with the worst curated non-negative group) or by a reward scorer (`ranking=reward`).
3. Train `epochs` epochs on the lists: L = sum over pairs of max(0, p_worse - p_better + margin)
   + sft_weight * mean over the best responses of -p_best; p is the mean response-token log-prob with the
   PLAIN prompt as context (the negative system prompt is never shown to the scorer). Summed (or averaged,
   rank_reduction=mean) over the pairs of a list, averaged over the lists of a batch. Options of the family
   (loss.py): anchor=round ranks gains over the round's starting policy; kl_weight holds the policy's token
   distribution to a frozen copy of the starting model on the plain samples of the kl_scope prompts.
4. Checkpoint at the end of each round (and every `save_every` steps); the new policy samples the next round.

Methods: `neat` (above), `rrhf` (curated + plain samples, no negative prompts), `sft` (best curated responses,
rank loss 0, NLL only); `dpo` is TRL's DPOTrainer (dpo_trainer.py).

The rooms: config.py (NeatConfig, every default) and recipes.py (named presets); rundir.py (snapshot, prompt
references, run-dir layout, signals); preflight.py (checks before a run); rounds.py (sampling plan and ranking);
batching.py (encoding, collation); scorer.py (batch -> log-probs); head.py (fused lm_head); loss.py (the loss);
optim.py (optimizer, schedule, clipping); checkpoint.py (checkpoints, the final model); sampling.py (the live
model's weight layout around sampling); estimate.py (time estimates, the ETA); validation.py (held-out
validation, select=best_val); this file (the loop: sample, rank, train, resume).

The engineering choices behind this loop (layouts, dtype, clipping, checkpoints, signals, the weight layout of
sampling) are written up in docs/TRAINER.md.
"""
from __future__ import annotations

import json
import logging
import random
import signal
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from .batching import EncodedList, cache_pays, collate, collate_shared, encode_list, to_device
from .config import ConfigError, NeatConfig
from .dpo_trainer import train_dpo
from .head import sparse_tied_embedding
from .loss import neat_loss, token_kl
from .preflight import Prepared, preflight, use_bf16
from .rounds import (MARKED, NEG, POS, RankedList, borrow_refusals, build_list, epoch_schedule, judge, kind_of,
                     steps_per_epoch)
from .rundir import (RunExistsError, Stop, _seed, holds_run, install_stop_signals, new_run_dir, prepare_run_dir,
                     prepared_for)
from .checkpoint import CheckpointMixin
from .validation import ValidationMixin
from .estimate import eta_seconds
from .optim import clip_gradients, make_optimizer
from .averaging import weight_average
from .sampling import adapters_merged, restore_training_layout, with_model
from .scorer import ListScorer

log = logging.getLogger("neat_studio.neat")

# -- the trainer ----------------------------------------------------------------------------------------------
def make_accelerator(mixed_precision: str):
    """An Accelerator with this precision. accelerate keeps its state process-wide and refuses a second precision
    in one process ("AcceleratorState has already been initialized"), e.g. a float32 run and then an auto (bf16)
    run on a CPU with bf16 instructions, from Python or the test suite. The precision part of that state is reset
    for the new trainer; the process group (PartialState, under `accelerate launch`) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)


class NeatTrainer(CheckpointMixin, ValidationMixin):
    def __init__(self, cfg: NeatConfig, run_dir: str | Path, *, resume: bool = False, workspace=None,
                 stop_after: int | None = None, prepared: Prepared | None = None):
        """`stop_after`: behave as if SIGTERM arrived during step N (checkpoint + stopped event)."""
        self.cfg, self.run_dir, self.resume, self.stop_after = cfg, Path(run_dir), resume, stop_after
        self.bf16 = use_bf16(cfg)
        self.acc = make_accelerator("bf16" if self.bf16 else "no")
        self.world, self.rank, self.main = self.acc.num_processes, self.acc.process_index, self.acc.is_main_process
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self._stop_signal = None
        self.prep = prepared or preflight(cfg, workspace=workspace)
        self.lm = self.prep.lm
        self.tok = self.lm.tokenizer
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)

    # .. setup ..
    def _log(self, obj: dict):
        if self.main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(obj) + "\n")

    def _setup(self):
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        model = self.lm.model.float()
        self.ref_scorer = None
        self.tags = {str(row["prompt_id"]): tuple(row.get("tags") or ()) for row in self.prep.rows}  # *_scope options
        if cfg.kl_weight > 0:
            # the KL term's reference: a frozen copy of the starting model (taken before any LoRA wrapping and
            # before a resumed run loads its checkpoint, so it is always the model the run started from)
            import copy

            ref = copy.deepcopy(model).eval().requires_grad_(False).to(self.acc.device)
            self.ref_scorer = ListScorer(ref)
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            # pissa/olora take the adapters from the weights themselves (and leave the residual in the base
            # layer), so the run seed no longer picks the subspace the adapters start in
            init = True if cfg.lora_init == "random" else cfg.lora_init
            model = get_peft_model(model, LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
                target_modules=cfg.lora_targets or "all-linear", init_lora_weights=init))
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        self.model = model
        n_lists = len(self.prep.rows)
        self.spe = steps_per_epoch(n_lists, cfg.batch_size, self.world, cfg.grad_accum)
        total = cfg.rounds * cfg.epochs * self.spe
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.opt, self.sched = make_optimizer(model, cfg, self.total_steps)
        self.avg = weight_average(model, cfg.weight_ema)  # None when off; a resumed run loads it below
        scorer = ListScorer(model)
        # one process (no DDP gradient hooks): the head's weight gradient goes straight into .grad and a tied
        # embedding's lookup gradient is sparse (head.linear_logprobs / head.sparse_tied_embedding)
        # (not with the KL term: its full-vocabulary logits give the head weight an ordinary autograd gradient too)
        scorer.direct_head_grad = bool(scorer.packed()) and self.world == 1 and not cfg.kl_weight
        self.sparse_embedding = scorer.direct_head_grad and sparse_tied_embedding(model)
        self.shared_ok = cfg.prompt_cache != "off" and scorer.shared_ok()
        if cfg.prompt_cache == "on" and not self.shared_ok:
            log.warning("prompt_cache=on: this model cannot take the shared-prompt block mask; using the plain layout")
        self.scorer = self.acc.prepare_model(scorer)
        self.pos = {"round": 0, "epoch": 0, "step_in_epoch": 0, "global_step": 0, "round_start_step": 0}
        if self.resume:
            self._load_checkpoint()
        self._setup_validation()

    # .. a round's data ..
    def _round_file(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"round-{r}.json"

    def _round_lists(self, r: int) -> list[RankedList]:
        f = self._round_file(r)
        self._round_timing = {}  # a resumed round's lists come from its file: nothing timed
        if f.exists():
            d = json.loads(f.read_text(encoding="utf-8"))
            if d.get("start_step") == self.pos["round_start_step"]:
                return [RankedList.from_dict(x) for x in d["lists"]]
        t0 = time.time()
        online = self._sample(r) if self.cfg.method in ("neat", "rrhf") else {}
        t1 = time.time()
        refused, complied, unheeded_neg = self._judged(online)
        borrowed = self._borrowed(online, r)
        lists = []
        for row in self.prep.rows:
            lst = build_list(row, online.get(str(row["prompt_id"]), []), self.cfg.method, self.cfg.ranking,
                             self.prep.scorer, positive_above_plain=self.cfg.positive_rank == "above_plain",
                             plain_ties_best=self.cfg.plain_rank == "tie_best" and self._in_scope(
                                 self.cfg.plain_rank_scope, str(row["prompt_id"])),
                             degenerate_bottom=self.cfg.degenerate_rank == "bottom",
                             refused=refused.get(str(row["prompt_id"]), frozenset()),
                             loops=self.cfg.loop_negatives,
                             complied=complied.get(str(row["prompt_id"]), frozenset()),
                             comply_bottom=self.cfg.compliance_rank == "bottom",
                             unheeded_neg=unheeded_neg.get(str(row["prompt_id"]), frozenset()),
                             borrowed=borrowed.get(str(row["prompt_id"]), ()))
            if lst is not None:
                lists.append(lst)
        t2 = time.time()
        if self.cfg.anchor == "round" or self.cfg.diag_every:
            self._score_round(lists)
        # where a round's preparation goes (logged with round_start): generating the samples, judging and ranking
        # them, scoring every response under the round's starting policy
        self._round_timing = {"generate_s": round(t1 - t0, 3), "rank_s": round(t2 - t1, 3),
                              "score_s": round(time.time() - t2, 3)}
        if self.main:
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(".tmp")
            tmp.write_text(json.dumps({"round": r, "start_step": self.pos["round_start_step"],
                                       "gen_s": round(time.time() - t0, 3), **self._round_timing,
                                       "lists": [x.to_dict() for x in lists]}, ensure_ascii=False))
            tmp.replace(f)
        self.acc.wait_for_everyone()
        return lists

    def _in_scope(self, tag: str, prompt_id: str) -> bool:
        """An option scoped to a tag applies to the prompts carrying it; an empty tag means every prompt."""
        return not tag or tag in self.tags.get(prompt_id, ())

    def _judged(self, online: dict) -> tuple[dict, dict, dict]:
        """rounds.judge with the refusal detector and this config's scopes (every process judges the same gathered
        samples the same way)."""
        ref_tag, comp_tag = self.cfg.refusal_rank_scope, self.cfg.compliance_rank_scope
        if not (ref_tag or comp_tag) or not online:
            return {}, {}, {}
        from ..scoring.refusal import is_refusal

        return judge(online, lambda pid: bool(ref_tag) and self._in_scope(ref_tag, pid),
                     lambda pid: bool(comp_tag) and self._in_scope(comp_tag, pid),
                     self.cfg.negative_rank == "heeded", is_refusal)

    def _borrowed(self, online: dict, r: int) -> dict:
        """refusal_negatives: the refusals of the prompts outside refusal_rank_scope lent to those inside it."""
        tag, n = self.cfg.refusal_rank_scope, self.cfg.refusal_negatives
        if not (n and tag):
            return {}
        from ..scoring.refusal import is_refusal, speaks_as_ai

        skip = speaks_as_ai if self.cfg.refusal_negatives_from == "not_as_ai" else None
        return borrow_refusals(self.prep.rows, online, lambda pid: self._in_scope(tag, pid), n, is_refusal,
                               f"{self.cfg.seed}:{r}", skip)

    @torch.no_grad()
    def _score_round(self, lists: list[RankedList]) -> None:
        """p of every response under the policy that starts the round (these weights, before the round trains),
        into each list's ref_p: the anchor of anchor=round, and the round's diagnostics (mean p of curated best
        answers, plain samples and negative-prompt samples, logged with round_start)."""
        cfg = self.cfg
        enc = [(lst, encode_list(self.tok, lst, cfg.max_prompt_len, cfg.max_response_len)) for lst in lists]
        enc = [(lst, e) for lst, e in enc if e is not None]
        scorer = self.acc.unwrap_model(self.scorer)
        was = scorer.model.training
        scorer.model.eval()
        try:
            # LoRA: adapters merged while scoring, as while sampling (the same p within rounding, ~10 % faster)
            with adapters_merged(scorer.model):
                order = sorted(range(len(enc)), key=lambda i: enc[i][1].cost)
                for s0 in range(0, len(order), 8):
                    part = [enc[i] for i in order[s0:s0 + 8]]
                    els = [e for _, e in part]
                    batch = (collate_shared if self.shared_ok else collate)(els, self.pad_id)
                    with self.acc.autocast():
                        sums, n = scorer(to_device(batch, self.acc.device))
                    p = (sums / n.clamp_min(1)).float().cpu().tolist()
                    k = 0
                    for lst, e in part:
                        ref = [float("nan")] * len(lst.responses)
                        for i in e.src:
                            ref[i] = p[k]
                            k += 1
                        lst.ref_p = ref
        finally:
            scorer.model.train(was)

    @staticmethod
    def _round_p_means(lists: list[RankedList]) -> dict:
        """Mean round-start p per kind of response: the curated best, other curated, plain, positive, negative."""
        acc: dict = {}
        for lst in lists:
            if lst.ref_p is None:
                continue
            best = min(lst.ranks)
            for p, o, c, r in zip(lst.ref_p, lst.origins, lst.curated, lst.ranks):
                if p != p:  # NaN: no tokens
                    continue
                kind = ("curated_best" if r == best else "curated_other") if c else kind_of(o)
                s, n = acc.get(kind, (0.0, 0))
                acc[kind] = (s + p, n + 1)
        return {f"p_{k}": round(s / n, 4) for k, (s, n) in sorted(acc.items())}

    def _sample(self, r: int) -> dict:
        """{prompt_id: [(text, origin)]} in the order plain, positive, negative; sampled by this process for
        rows[rank::world] and gathered."""
        from accelerate.utils import gather_object

        cfg = self.cfg
        rows = self.prep.rows[self.rank::self.world]
        specs = [("policy", None, cfg.k, {}, None)]
        specs += [(POS + e["ref"], e.get("text"), cfg.k_pos, e.get("params") or {}, e.get("scope"))
                  for e in self.prep.positives]
        specs += [(NEG + e["ref"], e.get("text"), cfg.k_neg, e.get("params") or {}, e.get("scope"))
                  for e in self.prep.negatives]
        if cfg.greedy_plain:  # last, so the seeds of the sampled specs stay those of a run without it
            specs.append(("policy", None, 1, {"temperature": 0.0}, None))
        out = {str(row["prompt_id"]): [] for row in rows}
        model = self.acc.unwrap_model(self.scorer).model
        model.eval()
        lm = with_model(self.lm, model)

        def progress(done, total):
            # one process alone may abort its sampling (a signal between batches); with several processes
            # the flag is honoured at the next step instead (the others would wait in gather_object)
            if self._stop_signal is not None and self.world == 1:
                raise Stop()

        try:
            with adapters_merged(model):
                self._sample_specs(lm, rows, specs, r, progress, out)
        finally:
            # the generator's transposed weight layout must not leak into training and save_pretrained (see the
            # module docstring); this also runs when a stop signal aborts the sampling
            restore_training_layout(model)
            model.train()
        merged = {}
        for part in gather_object([out]):
            merged.update(part)
        kind = {"policy": 0}  # the order plain, positive, negative (build_list's dedupe keeps the first)
        return {pid: sorted(v, key=lambda it: kind.get(it[1], 1 if it[1].startswith(POS) else 2))
                for pid, v in merged.items()}

    def _sample_specs(self, lm, rows: list, specs: list, r: int, progress, out: dict) -> None:
        """Each (origin, system prompt, k, params, scope) of `specs` sampled on its rows into `out`."""
        from ..generation import GenParams, generate

        cfg = self.cfg
        for j, (origin, system, k, params, scope) in enumerate(specs):
            # a scoped system prompt samples only on the prompts carrying its tag (over_refusal on benign
            # prompts: a refusal of a harmful request must never be pushed down as "undesirable")
            srows = [row for row in rows if scope is None or scope in (row.get("tags") or [])]
            if k <= 0 or not srows:
                continue
            gp = GenParams(temperature=float(params.get("temperature", cfg.temperature)),
                           top_p=float(params.get("top_p", cfg.top_p)), max_new_tokens=cfg.max_new_tokens,
                           k=k, seed=_seed(cfg.seed, r, j, self.rank))
            with self.acc.autocast():
                res = generate(lm, [row["prompt"] for row in srows], system=system, params=gp,
                               batch_size=cfg.gen_batch_size, progress=progress,
                               max_prompt_tokens=cfg.max_prompt_len, ids=[row["prompt_id"] for row in srows])
            for row, samples in zip(srows, res):
                out[str(row["prompt_id"])] += [(s.text, origin) for s in samples]

    # .. training ..
    def _encode(self, lst: RankedList) -> EncodedList | None:
        """A round's list as token ids, with the responses the KL term covers marked (kl_weight: the plain
        samples of the prompts tagged kl_scope)."""
        cfg = self.cfg
        e = encode_list(self.tok, lst, cfg.max_prompt_len, cfg.max_response_len)
        if e is not None and cfg.kl_weight > 0:
            in_scope = self._in_scope(cfg.kl_scope, lst.prompt_id)
            e.kl = [in_scope and lst.origins[i] == "policy" for i in e.src]
        return e

    def _kl(self, batch: dict, logp) -> torch.Tensor:
        """kl_weight's term on a batch: the policy's log-softmax at the marked tokens against the frozen starting
        model's at the same tokens (its own forward, no gradient)."""
        with torch.no_grad(), self.acc.autocast():
            ref_logp = self.ref_scorer(batch)[2]
        return token_kl(logp, ref_logp)

    def _loss(self, batch: dict, sum_logp, n_tok) -> dict:
        cfg = self.cfg
        ref = batch.get("ref_p") if cfg.anchor == "round" else None
        return neat_loss(sum_logp, n_tok, batch["list_index"], batch["ranks"], cfg.margin, cfg.sft_weight,
                         batch["is_negative"], ref_p=ref, rank_reduction=cfg.rank_reduction,
                         anchor_weight=cfg.anchor_weight)

    def _batch(self, lists: list[EncodedList]) -> tuple[dict, bool]:
        cfg = self.cfg
        shared = self.shared_ok and (cfg.prompt_cache == "on" or (cfg.prompt_cache == "auto" and cache_pays(lists)))
        return to_device((collate_shared if shared else collate)(lists, self.pad_id), self.acc.device), shared

    def _term_gradients(self, micro: list[list[EncodedList]]) -> dict:
        """Diagnostics (diag_every): the gradient norm of the ranking term and of the weighted NLL term on this
        step's micro-batches, and the cosine between them: which term pushes the weights, and whether they pull
        together. Two extra forward+backward passes; .grad is left empty for the real step."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        flat = {}
        for term, w in (("rank_loss", 1.0), ("sft_loss", self.cfg.sft_weight)):
            self.opt.zero_grad(set_to_none=True)
            for lists in micro:
                batch, _ = self._batch(lists)
                sum_logp, n_tok, *_ = self.scorer(batch)
                out = self._loss(batch, sum_logp, n_tok)
                if out[term].requires_grad:
                    self.acc.backward(out[term] * w / len(micro))
            flat[term] = torch.cat([(p.grad.to_dense() if p.grad.is_sparse else p.grad).reshape(-1).double()
                                    if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64)
                                    for p in params])
        self.opt.zero_grad(set_to_none=True)
        a, b = flat["rank_loss"], flat["sft_loss"]
        na, nb = float(a.norm()), float(b.norm())
        return {"grad_norm_rank": na, "grad_norm_sft": nb,
                "grad_cos_rank_sft": float(a @ b) / (na * nb) if na > 0 and nb > 0 else None}

    def _step(self, micro: list[list[EncodedList]]) -> dict:
        cfg = self.cfg
        diag = {}
        if cfg.diag_every and self.world == 1 and (self.pos["global_step"] + 1) % cfg.diag_every == 0:
            diag = self._term_gradients(micro)
        agg = {"loss": 0.0, "rank_loss": 0.0, "sft_loss": 0.0, "anchor_loss": 0.0, "kl_loss": 0.0, "n_lists": 0,
               "n_pairs": 0, "n_correct": 0, "p_best_sum": 0.0, "n_best": 0, "p_neg_sum": 0.0, "n_neg": 0,
               "tokens": 0, "shared_batches": 0}
        for m, lists in enumerate(micro):
            batch, shared = self._batch(lists)
            agg["shared_batches"] += int(shared)
            sync = m == len(micro) - 1
            with (nullcontext() if sync else self.acc.no_sync(self.scorer)):
                sum_logp, n_tok, *kl_logp = self.scorer(batch)
                out = self._loss(batch, sum_logp, n_tok)
                loss = out["loss"]
                if kl_logp:
                    out["kl_loss"] = self._kl(batch, kl_logp[0])
                    loss = loss + cfg.kl_weight * out["kl_loss"]
                    out["loss"] = loss
                self.acc.backward(loss / len(micro))
            n = out["n_lists"]
            for k in ("loss", "rank_loss", "sft_loss", "anchor_loss", "kl_loss"):
                if k in out:
                    agg[k] += float(out[k].detach()) * n
            for k in ("n_lists", "n_pairs", "n_correct", "p_best_sum", "n_best", "p_neg_sum", "n_neg"):
                agg[k] += out[k] if k != "n_lists" else n
            agg["tokens"] += batch["n_tokens"]
        agg["grad_norm"] = self._clip_gradients(cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        agg["lr"] = self.sched.get_last_lr()[0]  # the rate this step used
        try:
            self.opt.step()
        finally:
            self.opt.__dict__.pop("grad_scale", None)  # this step's clipping only
        self.sched.step()
        if self.avg is not None:
            self.avg.update()
        self.opt.zero_grad(set_to_none=True)
        agg["diag"] = diag
        return agg

    def _clip_gradients(self, max_norm: float) -> float | None:
        """optim.clip_gradients on this run's model and optimizer: the norm before clipping."""
        return clip_gradients(self.acc, self.model, self.opt, max_norm)

    def _reduce(self, agg: dict, stop: bool) -> dict:
        keys = [k for k in agg if k not in ("lr", "grad_norm", "diag")]
        t = torch.tensor([float(agg[k]) for k in keys] + [1.0 if stop else 0.0], dtype=torch.float64)
        if self.world > 1:
            t = self.acc.reduce(t.to(self.acc.device), "sum").cpu()
        vals = dict(zip(keys, t[:-1].tolist()))
        vals["stop"] = t[-1].item() > 0
        return vals

    def _install_signals(self):
        def on_stop(name):
            self._stop_signal = name

        return install_stop_signals(on_stop)

    def run(self) -> dict:
        """Train; returns {"status": "finished"|"stopped", "step", "final"|"checkpoint"}."""
        old = self._install_signals()
        try:
            return self._run()
        except Exception as e:
            self._log({"event": "error", "step": getattr(self, "pos", {}).get("global_step"),
                       "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]})
            try:
                e.neat_error_logged = True  # the CLI must not log it a second time
            except AttributeError:  # pragma: no cover - an exception type without __dict__
                pass
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _run(self) -> dict:
        cfg = self.cfg
        self._setup()
        t_start, steps_here, saved_at = time.time(), 0, None
        step_s, sample_s = 0.0, []  # measured: optimizer-step time (sum) and each round's sampling time
        if self.val is not None and not self.val["history"]:
            self._validate(0)  # the starting model: the baseline every later validation is judged against
        while self.pos["round"] < cfg.rounds and self.pos["global_step"] < self.total_steps:
            r = self.pos["round"]
            if self.pos["epoch"] == 0 and self.pos["step_in_epoch"] == 0:
                self.pos["round_start_step"] = self.pos["global_step"]
            t0 = time.time()
            try:
                lists = self._round_lists(r)
            except Stop:
                return self._stopped(self._stop_signal)
            kept = [(x, e) for x, e in ((x, self._encode(x)) for x in lists) if e is not None]
            enc = [e for _, e in kept]
            # list_order=stratified: the prompts' tags (harmful, look-alike, benign...) are the strata
            strata = ([tuple(sorted(self.tags.get(x.prompt_id, ()))) for x, _ in kept]
                      if cfg.list_order == "stratified" else None)
            sample_s.append(time.time() - t0)
            if self.pos["epoch"] == 0 and self.pos["step_in_epoch"] == 0:
                self._log({"event": "round_start", "round": r, "step": self.pos["global_step"],
                           "n_lists": len(enc), "n_responses": sum(len(e.response_ids) for e in enc),
                           "n_online": sum(sum(1 for c in x.curated if not c) for x in lists),
                           **{f"n_{k}": sum(o.startswith(prefix) for x in lists for o in x.origins)
                              for k, prefix in MARKED.items()},
                           "sample_s": round(time.time() - t0, 3), **self._round_timing,
                           # a run's bits depend on the CPU threads (bf16 sums in another order sample other
                           # tokens): the same seed with another thread count is another model (RESULTS step 56)
                           "threads": torch.get_num_threads(),
                           **self._round_p_means(lists)})
            scheds = {}
            while self.pos["round"] == r and self.pos["global_step"] < self.total_steps:
                e = self.pos["epoch"]
                if e not in scheds:
                    scheds[e] = epoch_schedule([x.cost for x in enc], cfg.batch_size, self.world, cfg.grad_accum,
                                               seed=_seed(cfg.seed if cfg.order_seed < 0 else cfg.order_seed,
                                                          r, e, "epoch"),
                                               strata=strata)
                sched = scheds[e]
                ts = time.time()
                agg = self._step([[enc[i] for i in mb] for mb in sched[self.pos["step_in_epoch"]][self.rank]])
                # advance the position first: a checkpoint written now resumes at the NEXT step
                self.pos["global_step"] += 1
                self.pos["step_in_epoch"] += 1
                if self.pos["step_in_epoch"] >= len(sched):
                    self.pos.update(epoch=e + 1, step_in_epoch=0)
                    if e + 1 >= cfg.epochs:
                        self.pos.update(round=r + 1, epoch=0)
                steps_here += 1
                step = self.pos["global_step"]
                if self.avg is not None and (self.pos["round"] != r or step >= self.total_steps):
                    self.avg.apply()  # weight_ema: the round ends on its average (before validation, checkpoint)
                wants_stop = self._stop_signal is not None or (self.stop_after is not None and step >= self.stop_after)
                v = self._reduce(agg, wants_stop)
                dt, elapsed = time.time() - ts, time.time() - t_start
                step_s += dt
                nl = max(v["n_lists"], 1)
                self._log({
                    "step": step, "round": r, "epoch": e,
                    "loss": v["loss"] / nl, "rank_loss": v["rank_loss"] / nl, "sft_loss": v["sft_loss"] / nl,
                    "anchor_loss": v["anchor_loss"] / nl, "kl_loss": v["kl_loss"] / nl,
                    "rank_acc": v["n_correct"] / v["n_pairs"] if v["n_pairs"] else None,
                    "p_gap": (v["p_best_sum"] / v["n_best"] - v["p_neg_sum"] / v["n_neg"]) if v["n_neg"] else None,
                    "p_best": v["p_best_sum"] / v["n_best"] if v["n_best"] else None,
                    "p_neg": v["p_neg_sum"] / v["n_neg"] if v["n_neg"] else None, **agg["diag"],
                    "lr": agg["lr"], "grad_norm": agg["grad_norm"],
                    "tokens_per_s": round(v["tokens"] / max(dt, 1e-9), 2),
                    "elapsed_s": round(elapsed, 3),
                    "eta_s": round(eta_seconds(step_s / steps_here, self.total_steps - step, sample_s,
                                               cfg.rounds - 1 - r if cfg.method in ("neat", "rrhf") else 0), 3),
                    "total_steps": self.total_steps})
                if v["stop"]:
                    return self._stopped(self._stop_signal or "stop_after")
                if self._val_due(step, self.pos["round"] != r):
                    self._validate(step)
                if cfg.save_every and step % cfg.save_every == 0:
                    self._save_checkpoint()
                    saved_at = step
            if saved_at != self.pos["global_step"]:
                self._save_checkpoint()
                saved_at = self.pos["global_step"]
        from accelerate.utils import gather_object

        from ..models import fingerprint

        # every process's weights: equal under data parallelism (the test of the 2-process run checks it)
        kept = self._keep_best()
        prints = gather_object([fingerprint(self.acc.unwrap_model(self.scorer).model)])
        final = self._save_final(kept)
        if self.main and self.val is not None:  # final/ holds the kept weights now
            for f in self._val_dir().glob("step-*.pt"):
                f.unlink()
        self._log({"event": "finished", "step": self.pos["global_step"], "final": str(final),
                   "elapsed_s": round(time.time() - t_start, 3), "fingerprints": prints})
        return {"status": "finished", "step": self.pos["global_step"], "final": str(final)}

    def _stopped(self, reason) -> dict:
        ck = self._save_checkpoint()
        self._log({"event": "stopped", "step": self.pos["global_step"], "reason": reason, "checkpoint": str(ck)})
        return {"status": "stopped", "step": self.pos["global_step"], "checkpoint": str(ck)}

def train(cfg: NeatConfig, *, resume: str | Path | None = None, workspace=None, stop_after: int | None = None,
          lm=None) -> dict:
    """Run (or resume) a training run. Returns {"status", "step", "run_dir", "final"|"checkpoint"}.

    `resume`: a run directory; its config.yaml is used (the given cfg is ignored) and training continues from
    its newest checkpoint. Raises ConfigError before any training when the run cannot work.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"cannot resume {run_dir}: no config.yaml (not a run directory)")
        cfg = NeatConfig.from_yaml(run_dir / "config.yaml")
    else:
        run_dir = new_run_dir(cfg, workspace)
        if holds_run(run_dir) and not prepared_for(run_dir, cfg):
            raise RunExistsError(f"run directory {run_dir} already holds a run: resume it (--resume {run_dir}) or "
                                 "choose another --out")
        cfg.output_dir = str(run_dir)
    if cfg.method == "dpo":
        return train_dpo(cfg, run_dir, workspace=workspace, resume=resume is not None, lm=lm, stop_after=stop_after)
    prep = preflight(cfg, workspace=workspace, lm=lm)
    if resume is not None:
        have = (run_dir / "snapshot.sha256").read_text().strip() if (run_dir / "snapshot.sha256").exists() else None
        if have and have != prep.sha256:
            raise ConfigError(f"snapshot {cfg.snapshot} changed since the run started (sha256 {prep.sha256[:12]} "
                              f"!= {have[:12]})")
    t = NeatTrainer(cfg, run_dir, resume=resume is not None, workspace=workspace, stop_after=stop_after,
                    prepared=prep)
    if resume is None:
        prepare_run_dir(cfg, run_dir, prep.sha256, t.main)
    t.acc.wait_for_everyone()
    out = t.run()
    return {**out, "run_dir": str(run_dir)}

