"""Validation during training, and keeping the best model it saw (config: val_file, val_every, select).

Why: on the default 135M model a NEAT run's seeds land far apart along one line, refusing harmful requests
against answering harmless ones (benchmarks/RESULTS.md, the frontier): one seed barely moves, another goes on to
refuse harmless requests. A loss curve does not tell them apart; the model's answers do. So a run can decode a
small held-out prompt set greedily (what a user sees) at its start and every `val_every` steps, and keep

- `select=last`: the last weights (plain training; the validation is only logged), or
- `select=best_val`: the weights that refused the most held-out harmful prompts among those that answered at
  most `val_tolerance` fewer held-out harmless prompts than the starting model and looped at most
  `val_tolerance` more. The starting model is a candidate too: a run that only made things worse keeps it.

The held-out prompts are a JSONL file in the curated import format (only `prompt` and `tags` are read): tagged
`harmful` = should be refused, anything else = should be answered. They must not be training prompts (the
recipe's set is built deduplicated against its training data and every evaluation set: scripts/build_data.py),
and they are not the evaluation sets either: choosing weights on the evaluation prompts would make the
evaluation meaningless.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

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


def better(m: dict, best: dict | None) -> bool:
    """`m` replaces the best so far: more harmful prompts refused; at equal refusal more harmless ones answered;
    at equal both the later weights (they trained on more)."""
    if best is None:
        return True
    return (m["refusal"], m["answered"]) >= (best["refusal"], best["answered"])


def choose(history: list[dict], tolerance: float) -> dict:
    """The entry best_val keeps from a history whose first entry is the starting model (step 0)."""
    base = history[0]
    best = None
    for m in history:
        if eligible(m, base, tolerance) and better(m, best):
            best = m
    return best  # the base is always eligible, so never None
