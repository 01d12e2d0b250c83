"""A variant of the safety-pp-lora starter set for the study's step 87: only the first N (default 15) of its 45 mined
harmless requests (those the base model refuses, tag base-refused) stay; the others become ordinary AlpacaEval
requests the base model answers, with their reference answers; same size and order otherwise.

    .venv/bin/python benchmarks/make_fewmined_data.py --out /tmp/curated-mined15.jsonl [--keep 15]

Why: every run of the shipped recipe gives back 17-20 of the base model's 26 refusals on the dev split, most of them
its capability disclaimer ("as a chatbot, I don't have the ability to ...") on requests for private information,
and on seed 1 on the Intel Xeon they are gone by the first validated step (RESULTS step 86). The strongest push on
that disclaimer is the 45 mined lists: the model's own disclaimers of harmless requests ranked with the negatives
(refusal_rank_scope=benign). Fewer of them is a smaller dose of "drop the disclaimer"; on this machine the shipped
runs answer 4 points more ordinary requests than the base, room the floor (base - 5) leaves to spend.

Replacements: AlpacaEval instructions of scripts/mine_refusals.pool (reference answer at most 1200 characters and
not a refusal, no evaluation prompt) that the mining did not flag (so the base model answered them, greedy and
sampled), minus every prompt the repository ships (variant_data.used_prompts), in the source's order shuffled with
seed 0. Reads ../shared/data: a study tool, not product code. It stays to rebuild step 87's file; the product's own
builder does the same with scripts/build_data.py's RECIPE_MINED / RECIPE_ANSWERED (step 88; another 30 requests, as it
cannot see the prompts this tool excludes).
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio import evalsets  # noqa: E402
from scripts.build_data import BEN_SRC, mined_prompts  # noqa: E402
from scripts.mine_refusals import pool  # noqa: E402
from variant_data import shipped_rows, used_prompts  # noqa: E402


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", type=int, default=15, help="mined requests kept (the first N of the shipped 45)")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    root = Path(args.data_root)
    taken = used_prompts() | {evalsets.normalize_text(p) for p in mined_prompts()}
    refs = {b["instruction"]: b["output"].strip() for b in json.loads((root / BEN_SRC).read_text(encoding="utf-8"))}
    fresh = [r["prompt"] for r in pool(root) if evalsets.normalize_text(r["prompt"]) not in taken]
    random.Random(0).shuffle(fresh)
    rows = shipped_rows()
    mined = [i for i, r in enumerate(rows) if "base-refused" in r["tags"]]
    swap = mined[args.keep:]
    for i, p in zip(swap, fresh):
        rows[i] = {"prompt": p, "responses": [refs[p]], "ranks": [0], "origins": ["dataset"],
                   "tags": ["benign", "safety-recipe"]}
    evalsets.write_jsonl(Path(args.out), rows)
    print(json.dumps({"mined": len(mined), "kept": args.keep, "replaced": len(swap), "pool": len(fresh),
                      "examples": [p[:70] for p in fresh[:5]]}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
