"""Evaluation: generate with each model on named prompt sets, measure refusal AND over-refusal, score, rank pairs.

``evaluate(models, sets, out_dir, ...)`` writes to ``out_dir``::

    report.json                       everything below, machine-readable
    report.md                         tables + "examples where they differ most" (texts Markdown-escaped)
    charts/refusal*.png, charts/compliance*.png, charts/ranking_accuracy.png
    generations/<model>/<set>.<mode>.jsonl   one line per prompt: prompt, response, refusal flag, reward, params, seed
    generations/<model>/pairs.jsonl          one line per preference pair: p_chosen, p_rejected, correct

This module runs the evaluation (generation, log-probabilities, comparisons, verdicts); the metric functions are
in neat_studio.eval_metrics and report.md / the charts are written by neat_studio.eval_report (both re-exported here).

Metrics per model, decoding mode (greedy / sampled) and prompt set:

- ``refusal_rate``: share of responses the refusal detector flags (``scoring.refusal.RefusalDetector``).
- ``compliance_rate`` = 1 − refusal_rate. On sets where compliance is expected (benign look-alikes, ordinary
  benign prompts) this is the number to watch: ``over_refusal_rate`` = refusal_rate there.
- ``expected_behaviour_rate``: share of prompts where the model did what the set expects (refuse harmful, answer
  the rest); with a 95 % Wilson interval, because these sets are small.
- ``mean_reward`` (with a reward scorer), ``mean_tokens`` / ``mean_words`` of the responses.
- ``degenerate_rate``: share of answers that collapsed into repetition (:func:`degeneration`: no words, a word
  3-gram 4+ times, or >= 20 words with under 40 % distinct).

Per model on preference pairs: ``ranking_accuracy`` = share of pairs with p(chosen) > p(rejected) (ties count ½),
where p(y) = (1/|y|) Σ_t log π(y_t | x, y_<t): the length-normalised log-probability of the response tokens given
the prompt rendered with the chat template (``models.encode_prompt_and_response``), exactly the p of NEAT's
ranking loss. Long prompts are cut from the left to ``max_length`` tokens, responses to ``max_response_tokens``.

Comparisons (first model = A against each other model B, same prompts, same decoding): reward win rate of A
(ties ½; needs a scorer), and refusal disagreements (A refuses where B answers and the reverse).

Verdicts (``report["verdicts"]``): every model against the first one (the base) on every axis, paired on the same
prompts -- refusal of harmful prompts, compliance on look-alike and benign prompts, degenerate answers per set and
over all sets, preference-pair accuracy -- as "better" / "worse" / "no significant change" with the exact McNemar
test's p-value (:func:`paired_verdict`). A trained model that got worse on any axis says so here, and in one line
per model at the top of the report (``report["overall"]``, :func:`overall_verdicts`).
"""
from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from . import __version__
from .eval_metrics import (
    behaviour_metrics,
    changes_by_source,
    degeneration,
    degeneration_metrics,
    length_stats,
    mcnemar_exact,
    mean_or_none,
    overall_text,
    overall_verdicts,
    paired_verdict,
    ranking_accuracy,
    win_rate,
    wilson_interval,
)
from .eval_report import md_escape, render_markdown, write_charts
from .evalsets import load_pairs, load_prompt_set, splits_apply, training_prompts

__all__ = ["evaluate", "generate_for", "response_logprobs", "MODES",
           # the metric functions and the report writers, where callers have always found them
           "behaviour_metrics", "changes_by_source", "degeneration", "degeneration_metrics", "length_stats",
           "mcnemar_exact",
           "overall_verdicts", "overall_text", "paired_verdict", "ranking_accuracy", "win_rate", "wilson_interval",
           "md_escape", "render_markdown", "write_charts"]

Progress = Callable[[str, int, int], None]  # (stage, done, total)

MODES = ("greedy", "sampled")


# -- log-probabilities of responses ------------------------------------------------------------------------------
def response_logprobs(lm, items: Sequence[tuple[list[dict], str]], *, batch_size: int = 8,
                      max_length: int | None = None, max_response_tokens: int = 256,
                      progress: Callable[[int, int], None] | None = None
                      ) -> list[float]:
    """p = mean log π(response token | prompt via chat template, earlier response tokens) per (messages, response).

    The response tokens are those of ``models.encode_prompt_and_response`` (the reply plus its end-of-turn token, so
    an empty reply still has one token). Sequences longer than ``max_length`` (default: min(1024, the model's
    context)) lose prompt tokens from the left; responses are cut to ``max_response_tokens``.
    Batched with left padding (explicit position ids), items sorted by length; only the logits of response
    positions are computed (``logits_to_keep``) where the model supports it. NaN when no response token is left."""
    import torch

    from .models import encode_prompt_and_response, model_max_length

    tok, model = lm.tokenizer, lm.model
    if max_length is None:
        max_length = min(1024, model_max_length(lm))
    max_response_tokens = max(1, min(max_response_tokens, max_length - 1))
    enc = []
    for msgs, resp in items:
        p_ids, r_ids = encode_prompt_and_response(tok, msgs, resp)
        p_ids, r_ids = list(p_ids), list(r_ids)[:max_response_tokens]
        keep = max(1, max_length - len(r_ids))
        enc.append((p_ids[-keep:], r_ids))
    out = [float("nan")] * len(enc)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    order = sorted((i for i in range(len(enc)) if enc[i][1]), key=lambda i: len(enc[i][0]) + len(enc[i][1]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    done = len(enc) - len(order)
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            seqs = [enc[i][0] + enc[i][1] for i in idx]
            L = max(len(x) for x in seqs)
            R = max(len(enc[i][1]) for i in idx)
            ids = torch.full((len(idx), L), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), L), dtype=torch.long)
            for row, x in enumerate(seqs):
                ids[row, L - len(x):] = torch.tensor(x, dtype=torch.long)
                attn[row, L - len(x):] = 1
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            ids, attn, pos = ids.to(device), attn.to(device), pos.to(device)
            keep = min(L, R + 1)
            with torch.inference_mode():
                try:
                    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=keep).logits
                except TypeError:
                    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
                logits = logits[:, -keep:]
                # logits[:, j] sits at position L-keep+j and predicts the token at L-keep+j+1
                lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
                targets = ids[:, L - keep + 1:]
                tok_lp = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, keep-1)
            for row, i in enumerate(idx):
                r = len(enc[i][1])
                out[i] = float(tok_lp[row, tok_lp.shape[1] - r:].double().mean())
            done += len(idx)
            if progress:
                progress(done, len(enc))
    finally:
        model.train(was_training)
    return out


# -- the evaluation --------------------------------------------------------------------------------------------
def _label(spec: str, taken: set) -> str:
    p = Path(spec)
    base = p.name if (p.exists() and p.name) else spec
    if base in ("final",) and p.exists():
        base = p.parent.name
    base = re.sub(r"[^A-Za-z0-9_.@-]+", "_", base).strip("_") or "model"
    label, k = base, 2
    while label in taken:
        label, k = f"{base}-{k}", k + 1
    taken.add(label)
    return label


def _gen_params(mode: str, *, temperature: float, top_p: float, max_new_tokens: int, seed: int):
    from .generation import GenParams

    if mode == "greedy":
        return GenParams(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, k=1, seed=seed)
    return GenParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, k=1, seed=seed)


def _params_dict(params) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(params) if is_dataclass(params) else dict(vars(params))


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def evaluate(models: Sequence[str], sets: Mapping[str, str | Path], out_dir: str | Path, *, n_per_set: int | None = 50,
             greedy: bool = True, sampled: bool = False, temperature: float = 0.7, top_p: float = 0.95,
             seed: int = 0, max_new_tokens: int = 128, scorer_path: str | Path | None = None,
             pairs_path: str | Path | None = None, n_pairs: int | None = None, split: str | None = "dev",
             exclude: Sequence[str | Path] = (), batch_size: int = 8, workspace=None, data_root=None,
             refusal_detector=None, n_examples: int = 5, dtype=None, pair_max_length: int | None = None,
             progress: Progress | None = None, split_user_files: bool = False) -> dict:
    """Evaluate ``models`` (specs for ``models.load_model``: "default", "tiny", a path, a run dir) on ``sets``
    (name -> set file or standard set name) and optionally on preference pairs; write the report to ``out_dir``.

    ``split`` ("dev" | "test" | None/"all") filters the standard sets, set files written by ``build_sets`` and the
    standard pairs by the hash split (evalsets.split_of); a user's own prompt or pair file (no split marks) is used
    whole unless ``split_user_files`` (the CLI's explicit ``--split``);
    ``exclude`` (snapshot dirs / files of training prompts) removes overlapping prompts. Decoding: greedy and/or
    sampled (temperature, top_p, seed recorded per generation). ``dtype`` goes to ``load_model`` (None = float32;
    "bfloat16" is faster on CPUs with bf16 instructions; the fingerprint includes the dtype). ``pair_max_length``
    caps prompt+response tokens for pair log-probs (default min(1024, context)). Returns the report dict (also
    written as report.json)."""
    from .models import fingerprint, load_model

    if not models:
        raise ValueError("give at least one model")
    if not greedy and not sampled and sets:
        raise ValueError("choose greedy and/or sampled decoding")
    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    train = [p for e in exclude for p in training_prompts(e)]

    def split_for(path):
        return split if split_user_files or splits_apply(path) else None

    prompt_sets: dict[str, list[dict]] = {}
    set_splits: dict[str, str] = {}
    for name, path in sets.items():
        s = split_for(path)
        rows = load_prompt_set(path, limit=n_per_set, seed=seed, split=s, exclude=train, data_root=data_root)
        if not rows:
            warnings.append(f"set {name!r} ({path}) has no prompts after split={s!r} and exclusions; skipped")
            continue
        prompt_sets[name] = rows
        set_splits[name] = s or "all"
    pairs = []
    if pairs_path:
        s = split_for(pairs_path)
        pairs = load_pairs(pairs_path, limit=n_pairs if n_pairs is not None else n_per_set, seed=seed, split=s,
                           exclude=train, data_root=data_root)
        set_splits["pairs"] = s or "all"
        if not pairs:
            warnings.append(f"pairs {pairs_path} has no pairs after split={s!r} and exclusions")
    if prompt_sets and not any(r["expected"] == "comply" for rows in prompt_sets.values() for r in rows):
        warnings.append("no set where compliance is expected: over-refusal is NOT measured (add lookalike/benign)")
    if prompt_sets and not any(r["expected"] == "refuse" for rows in prompt_sets.values() for r in rows):
        warnings.append("no set where refusal is expected: refusal of harmful requests is NOT measured")

    modes = [m for m, on in (("greedy", greedy), ("sampled", sampled)) if on] if prompt_sets else []
    gen_params = {m: _gen_params(m, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
                  for m in modes}

    if refusal_detector is None:
        from .scoring.refusal import RefusalDetector

        refusal_detector = RefusalDetector.load()
    scorer = None
    if scorer_path:
        from .scoring.reward import RewardScorer

        scorer = RewardScorer.load(scorer_path)

    def prog(stage):
        return (lambda done, total: progress(stage, done, total)) if progress else None

    taken: set = set()
    model_infos, results, gens = [], {}, {}
    for spec in models:
        t0 = time.time()
        label = _label(str(spec), taken)
        if progress:
            progress(f"{label}: loading", 0, 1)
        lm = load_model(str(spec), workspace=workspace, dtype=dtype)
        info = {"label": label, "spec": str(spec), "model_id": lm.model_id, "fingerprint": fingerprint(lm.model),
                "dtype": str(next(lm.model.parameters()).dtype).replace("torch.", ""),
                "path": str(getattr(lm, "path", "") or "")}
        res: dict = {"sets": {}, "pairs": None}
        gens[label] = {}
        for mode in modes:
            params = gen_params[mode]
            pdict = _params_dict(params)
            for name, rows in prompt_sets.items():
                samples = generate_for(lm, rows, params, batch_size, prog(f"{label}: {name} ({mode})"),
                                       warnings=warnings, where=f"set {name!r}, model {label}")
                texts = [s.text for s in samples]
                flags = list(refusal_detector.is_refusal(texts))
                rewards = ([float(x) for x in scorer.score([r["messages"] for r in rows], texts)]
                           if scorer else [None] * len(rows))
                recs = [{"id": r["id"], "prompt": r["prompt"], "expected": r["expected"], "source": r["source"],
                         "split": r["split"], "response": s.text, "refusal": f, "degenerate": degeneration(s.text),
                         "reward": rw,
                         "n_tokens": s.n_tokens, "seed": s.seed, "params": s.params or pdict, "mode": mode,
                         "model": label, "model_id": lm.model_id}
                        for r, s, f, rw in zip(rows, samples, flags, rewards)]
                path = out_dir / "generations" / label / f"{name}.{mode}.jsonl"
                _write_jsonl(path, recs)
                m = behaviour_metrics(flags, [r["expected"] for r in rows])
                m.update(length_stats(texts, [s.n_tokens for s in samples]))
                m.update(degeneration_metrics(texts))
                m["mean_reward"] = mean_or_none(rewards) if scorer else None
                m["generations"] = str(path.relative_to(out_dir))
                res["sets"].setdefault(mode, {})[name] = m
                gens[label][(mode, name)] = recs
        if pairs:
            pc = response_logprobs(lm, [(q["prompt"], q["chosen"]) for q in pairs], batch_size=batch_size,
                                   max_length=pair_max_length, progress=prog(f"{label}: pairs (chosen)"))
            pr = response_logprobs(lm, [(q["prompt"], q["rejected"]) for q in pairs], batch_size=batch_size,
                                   max_length=pair_max_length, progress=prog(f"{label}: pairs (rejected)"))
            path = out_dir / "generations" / label / "pairs.jsonl"
            _write_jsonl(path, ({"id": q["id"], "source": q["source"], "split": q["split"], "p_chosen": c,
                                 "p_rejected": r, "correct": (1.0 if c > r else 0.5 if c == r else 0.0),
                                 "prompt": q["prompt"], "chosen": q["chosen"], "rejected": q["rejected"]}
                                for q, c, r in zip(pairs, pc, pr)))
            res["pairs"] = {**ranking_accuracy(pc, pr), "file": str(path.relative_to(out_dir))}
            gens[label][("pairs", None)] = [c > r for c, r in zip(pc, pr)]
        info["seconds"] = round(time.time() - t0, 1)
        model_infos.append(info)
        results[label] = res
        del lm
        gc.collect()

    comparisons, examples = _compare(model_infos, gens, prompt_sets, modes, scorer is not None, n_examples)
    verdicts = _verdicts(model_infos, gens, prompt_sets, modes)
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "neat_studio_version": __version__,
        "seconds": round(time.time() - t_start, 1),
        "config": {"n_per_set": n_per_set, "n_pairs": len(pairs), "split": split, "split_by_set": set_splits,
                   "seed": seed,
                   "modes": {m: _params_dict(p) for m, p in gen_params.items()}, "max_new_tokens": max_new_tokens,
                   "batch_size": batch_size, "dtype": str(dtype).removeprefix("torch.") if dtype else "float32",
                   "pair_max_length": pair_max_length, "exclude": [str(e) for e in exclude],
                   "n_training_prompts_excluded_against": len(train),
                   "scorer": ({"path": str(scorer_path), "version": scorer.version} if scorer else None),
                   "refusal_detector": {k: v for k, v in (getattr(refusal_detector, "meta", {}) or {}).items()
                                        if k in ("mode", "model_id", "built_at", "threshold", "reason")},
                   "pairs_path": str(pairs_path) if pairs_path else None},
        "sets": {name: {"path": str(sets[name]), "n": len(rows),
                        "expected": _counts(r["expected"] for r in rows),
                        "sources": _counts(r["source"] for r in rows), "splits": _counts(r["split"] for r in rows)}
                 for name, rows in prompt_sets.items()},
        "models": model_infos, "results": results,
        "summary": _summary(model_infos, results, prompt_sets, modes),
        "comparisons": comparisons, "verdicts": verdicts, "overall": overall_verdicts(verdicts), "examples": examples,
        "warnings": warnings,
    }
    report["charts"] = write_charts(report, out_dir / "charts")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str),
                                         encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def generate_for(lm, rows: Sequence[dict], params, batch_size: int, progress=None, warnings: list | None = None,
                 where: str = "") -> list:
    """One sample per prompt row (messages), via generation.generate. A prompt too long for the model's context
    with room for the answer keeps its end (as training does) and `warnings` says how many were cut, instead of
    the whole evaluation failing on a small-context model."""
    from .chat_tokens import encode_chat
    from .generation import generate
    from .models import model_max_length

    room = model_max_length(lm) - params.max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens {params.max_new_tokens} leaves no room for a prompt in the model's context "
                         f"({model_max_length(lm)} tokens)")
    long = sum(len(encode_chat(lm.tokenizer, r["messages"])) > room for r in rows)
    if long and warnings is not None:
        warnings.append(f"{where}: {long} prompt(s) longer than the model's context allows with {params.max_new_tokens}"
                        f" new tokens kept their last {room} tokens")
    out = generate(lm, [r["messages"] for r in rows], params=params, batch_size=batch_size, progress=progress,
                   max_prompt_tokens=room if long else None)
    return [s[0] for s in out]


def _counts(xs: Iterable[str]) -> dict:
    d: dict = {}
    for x in xs:
        d[x] = d.get(x, 0) + 1
    return d


def _set_kind(rows: Sequence[dict]) -> str:
    exp = {r["expected"] for r in rows}
    return "refuse" if exp == {"refuse"} else "comply" if exp == {"comply"} else "mixed"


def _summary(model_infos, results, prompt_sets, modes) -> list[dict]:
    """One row per model and mode: the headline numbers, refusal beside over-refusal."""
    rows = []
    for info in model_infos:
        res = results[info["label"]]
        for mode in modes or [None]:
            row = {"model": info["label"], "mode": mode}
            for name, prs in (prompt_sets.items() if mode else []):
                m = res["sets"][mode][name]
                kind = _set_kind(prs)
                if kind == "refuse":
                    row[f"refusal:{name}"] = m["refusal_rate"]
                elif kind == "comply":
                    row[f"compliance:{name}"] = m["compliance_rate"]
                else:
                    row[f"expected_behaviour:{name}"] = m["expected_behaviour_rate"]
                if m.get("mean_reward") is not None:
                    row[f"reward:{name}"] = m["mean_reward"]
            if mode and prompt_sets:
                sets_m = [res["sets"][mode][name] for name in prompt_sets]
                n_all = sum(m["n"] for m in sets_m)
                row["degenerate:(all)"] = sum(m["n_degenerate"] for m in sets_m) / n_all if n_all else None
            if res["pairs"]:
                row["ranking_accuracy"] = res["pairs"]["ranking_accuracy"]
            rows.append(row)
    return rows


def _verdicts(model_infos, gens, prompt_sets, modes) -> list[dict]:
    """Every model against the first (the base), paired on the same prompts, one row per axis: refusal on sets
    where refusing is expected, compliance on sets where answering is, degenerate answers per set and over all
    sets (lower is better), and preference-pair accuracy; each with the exact McNemar test (`paired_verdict`)."""
    out = []
    if len(model_infos) < 2:
        return out
    a = model_infos[0]["label"]
    for info in model_infos[1:]:
        b = info["label"]
        for mode in modes:
            all_a, all_b = [], []
            for name, rows in prompt_sets.items():
                ra, rb = gens[a][(mode, name)], gens[b][(mode, name)]
                kind = _set_kind(rows)
                if kind == "refuse":
                    axis, fa, fb = "refusal", [x["refusal"] for x in ra], [y["refusal"] for y in rb]
                elif kind == "comply":
                    axis, fa, fb = "compliance", [not x["refusal"] for x in ra], [not y["refusal"] for y in rb]
                else:
                    axis = "expected behaviour"
                    fa = [x["refusal"] == (x["expected"] == "refuse") for x in ra]
                    fb = [y["refusal"] == (y["expected"] == "refuse") for y in rb]
                out.append({"base": a, "model": b, "mode": mode, "axis": axis, "set": name, **paired_verdict(fa, fb),
                            "by_source": changes_by_source([x.get("source", "") for x in ra], fa, fb)})
                da, db = [x["degenerate"] is not None for x in ra], [y["degenerate"] is not None for y in rb]
                out.append({"base": a, "model": b, "mode": mode, "axis": "degenerate", "set": name,
                            **paired_verdict(da, db, higher_is_better=False)})
                all_a += da
                all_b += db
            if len(prompt_sets) > 1:
                out.append({"base": a, "model": b, "mode": mode, "axis": "degenerate", "set": "(all)",
                            **paired_verdict(all_a, all_b, higher_is_better=False)})
        pa, pb = gens[a].get(("pairs", None)), gens[b].get(("pairs", None))
        if pa and pb:
            out.append({"base": a, "model": b, "mode": None, "axis": "pair accuracy", "set": "pairs",
                        **paired_verdict(pa, pb)})
    return out


def _compare(model_infos, gens, prompt_sets, modes, have_scores: bool, n_examples: int):
    comparisons, examples = [], []
    if len(model_infos) < 2:
        return comparisons, examples
    a = model_infos[0]["label"]
    for info in model_infos[1:]:
        b = info["label"]
        for mode in modes:
            all_a, all_b, gaps = [], [], []
            for name, rows in prompt_sets.items():
                ra, rb = gens[a][(mode, name)], gens[b][(mode, name)]
                c = {"a": a, "b": b, "mode": mode, "set": name, "n": len(ra),
                     "a_refuses_b_answers": sum(x["refusal"] and not y["refusal"] for x, y in zip(ra, rb)),
                     "b_refuses_a_answers": sum(y["refusal"] and not x["refusal"] for x, y in zip(ra, rb))}
                if have_scores:
                    sa, sb = [x["reward"] for x in ra], [y["reward"] for y in rb]
                    c.update({k: v for k, v in win_rate(sa, sb).items()})
                    all_a += sa
                    all_b += sb
                comparisons.append(c)
                for x, y in zip(ra, rb):
                    if x["refusal"] != y["refusal"]:
                        # refusal disagreements first, then the biggest reward gaps
                        key = (1, abs(x["reward"] - y["reward"]) if have_scores else 0.0)
                        gaps.append((key, name, x, y))
                    elif have_scores and x["reward"] != y["reward"]:
                        gaps.append(((0, abs(x["reward"] - y["reward"])), name, x, y))
            if have_scores and all_a:
                comparisons.append({"a": a, "b": b, "mode": mode, "set": "(all)", **win_rate(all_a, all_b)})
            gaps.sort(key=lambda g: g[0], reverse=True)
            for key, name, x, y in gaps[:n_examples]:
                examples.append({"a": a, "b": b, "mode": mode, "set": name, "expected": x["expected"],
                                 "why": "refusal differs" if key[0] else "reward gap", "prompt": x["prompt"],
                                 "a_response": x["response"], "a_refusal": x["refusal"], "a_reward": x["reward"],
                                 "b_response": y["response"], "b_refusal": y["refusal"], "b_reward": y["reward"]})
    return comparisons, examples


