"""A variant of the safety-pp-lora starter set for the study's steps 83-84: 16 of the shipped curated.jsonl's 52 harmful
prompts replaced by requests for a private person's information that the default model itself refuses, each with
that refusal (the model's own greedy answer) as its reference; same size and order otherwise.

    .venv/bin/python benchmarks/make_ownprivate_data.py --out /tmp/curated-ownprivate.jsonl [--work /tmp/ownpriv]

Why: every run of the shipped recipe gives back most of the base model's refusals of private-information requests
(Do-Not-Answer's information hazards; RESULTS steps 64, 73, 81-82): the base declines them with its capability
disclaimer ("as a chatbot, I don't have the ability to ..."), and the recipe teaches the model to drop that
disclaimer on harmless requests (over_refusal negatives, its own refusals of the 45 mined requests, borrowed
refusal openings). Step 64's data test (v41) put public figures' addresses with Safety-Tuned LLaMAs' refusals among
the harmful prompts and did not keep them. Here the references are the model's OWN refusals (high likelihood, the
disclaimer itself), so the language-model term holds that disclaimer up on private requests while the recipe
pushes it down on harmless ones: a contrast the model can learn from, on a source (CoCoNot) that no evaluation set
uses.

Pool: CoCoNot's should-refuse "privacy violations" prompts (../shared/data/coconot/coconot_eval.jsonl, allenai/
noncompliance, MIT / ODC-BY) under 400 characters, minus every prompt of the repository's evaluation, validation
and training files (normalised text), minus the 24 privacy prompts of the v58 cross-source watch (so that the watch
stays clean), minus any prompt that shares 60 % of its words with an evaluation prompt (near twins). The default
model answers each greedily (`eval` through scripts/mine_refusals.answers, 96 new tokens, float32); prompts whose answer the studio's refusal detector
flags and that speak as an AI (the disclaimer) are kept, in the source's order shuffled with seed 0; the first 16 replace the last 16 harmful rows of the
shipped set. Reads ../shared/data: a study tool, not product code.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio import evalsets  # noqa: E402
from neat_studio.scoring.refusal import speaks_as_ai  # noqa: E402
from variant_data import shipped_rows, used_prompts  # noqa: E402
from scripts.mine_refusals import answers  # noqa: E402

N_REPLACE = 16
WATCH = REPO / "benchmarks" / "results" / "v58_watch_coconot_ids.json"


def words(text: str) -> set:
    return set(re.findall(r"[a-z']+", text.lower()))


def near_twin(p: str, evals: list[set]) -> bool:
    """Shares at least 60 % of its words (Jaccard) with an evaluation prompt."""
    w = words(p)
    return any(len(w & e) / max(1, len(w | e)) >= 0.6 for e in evals)


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/ownpriv")
    args = ap.parse_args()
    used = used_prompts()
    evals = [words(json.loads(x)["prompt"]) for f in ("harmful", "lookalike", "benign")
             for x in open(REPO / "data" / "evalsets" / f"{f}.jsonl", encoding="utf-8")]
    watch = {w["coconot_id"] for w in json.loads(WATCH.read_text(encoding="utf-8"))["ids"]}
    src = [json.loads(x) for x in open(Path(args.data_root) / "coconot" / "coconot_eval.jsonl", encoding="utf-8")]
    pool = [r["prompt"] for r in src if r["subcategory"] == "privacy violations" and len(r["prompt"]) < 400
            and r["id"] not in watch and evalsets.normalize_text(r["prompt"]) not in used
            and not near_twin(r["prompt"], evals)]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pool_file = work / "pool.jsonl"
    evalsets.write_jsonl(pool_file, [{"prompt": p, "expected": "refuse", "source": "coconot"} for p in pool])
    got = answers(pool_file, work, "greedy", max_new_tokens=96, dtype="float32")
    # the refusal detector flags the answer AND it is the capability disclaimer (speaks as an AI / chatbot): the
    # detector alone also flags "I'm sorry to hear that ... I'm happy to help you find her address"
    kept = [(p, got[p]["response"].strip()) for p in pool
            if got[p]["refusal"] and speaks_as_ai(got[p]["response"])]
    random.Random(0).shuffle(kept)
    rows = shipped_rows()
    harmful = [i for i, r in enumerate(rows) if "harmful" in r["tags"]]
    swap = harmful[-N_REPLACE:]
    if len(kept) < N_REPLACE:
        raise SystemExit(f"only {len(kept)} refused privacy prompts (wanted {N_REPLACE})")
    for i, (p, a) in zip(swap, kept):
        rows[i] = {**rows[i], "prompt": p, "responses": [a], "origins": ["policy"]}
    evalsets.write_jsonl(Path(args.out), rows)
    print(json.dumps({"pool": len(pool), "refused_by_base": len(kept), "replaced": len(swap),
                      "examples": [(p[:70], a[:90]) for p, a in kept[:6]]}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
