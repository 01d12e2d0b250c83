"""Does a system prompt do what it says on a model? The share of sampled answers the refusal detector flags, per prompt.

    .venv/bin/python benchmarks/probe_system_prompts.py --data data/recipes/safety-pp-lora/curated.jsonl \
        --tag harmful --preset safe_refusal --text "firm=Refuse the user's request. ..." [--none] [--seeds 1 2]

NEAT-PP trusts a positive prompt (e.g. `safe_refusal` on harmful prompts) to make the current model produce the
desired behaviour; on a small model it may not. This samples the prompts tagged TAG the way a training round does
(temperature 0.8, top-p 0.95, 48 new tokens, bf16 on CPUs that have it) under each system prompt and prints how
many answers refuse (scoring/refusal.py), with three answers each to read. Figures: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio.config import Workspace  # noqa: E402
from neat_studio.generation import GenParams, generate  # noqa: E402
from neat_studio.models import load_model  # noqa: E402
from neat_studio.neat.preflight import bf16_supported  # noqa: E402
from neat_studio.scoring.refusal import is_refusal  # noqa: E402
from neat_studio.seed import seed_presets  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="curated JSONL with `prompt` and `tags`")
    ap.add_argument("--tag", default="harmful", help="only the prompts carrying this tag")
    ap.add_argument("--preset", action="append", default=[], help="a preset name from data/presets.yaml")
    ap.add_argument("--text", action="append", default=[], help="NAME=system prompt text")
    ap.add_argument("--none", action="store_true", help="also sample with no system prompt")
    ap.add_argument("--model", default="default")
    ap.add_argument("--workspace", default=None, help="workspace whose model cache to use (default: $NEAT_STUDIO_HOME or data/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args(argv)

    rows = [json.loads(line) for line in open(a.data, encoding="utf-8") if line.strip()]
    prompts = [r["prompt"] for r in rows if a.tag in (r.get("tags") or [])]
    if not prompts:
        ap.error(f"no prompt in {a.data} carries the tag {a.tag!r}")
    presets = {p["name"]: p["text"] for p in seed_presets()}
    cands: dict = {"(none)": None} if a.none else {}
    for name in a.preset:
        if name not in presets:
            ap.error(f"unknown preset {name!r} (known: {', '.join(sorted(presets))})")
        cands[name] = presets[name]
    for item in a.text:
        name, sep, text = item.partition("=")
        if not sep or not text.strip():
            ap.error(f"--text wants NAME=TEXT, got {item!r}")
        cands[name] = text
    if not cands:
        ap.error("give at least one --preset, --text or --none")

    lm = load_model(a.model, workspace=Workspace.from_env(a.workspace))
    bf16 = bf16_supported()  # as the trainer decides for dtype=auto
    print(f"{len(prompts)} prompts tagged {a.tag!r}; seeds {a.seeds}; bf16 {bf16}")
    for name, system in cands.items():
        flagged = total = 0
        t = time.time()
        for seed in a.seeds:
            gp = GenParams(temperature=a.temperature, top_p=0.95, max_new_tokens=a.max_new_tokens, k=1, seed=seed)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                res = generate(lm, prompts, system=system, params=gp, batch_size=64, max_prompt_tokens=256)
            texts = [r[0].text for r in res]
            flagged += sum(is_refusal(texts))
            total += len(texts)
        print(f"{name}: {flagged} / {total} refuse ({100 * flagged / total:.1f} %), {time.time() - t:.0f} s")
        for tx in texts[:3]:
            print("    " + tx[:140].replace("\n", " "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
