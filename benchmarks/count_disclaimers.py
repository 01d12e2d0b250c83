"""How many of a model's refusals speak as an AI, per evaluation set (the study's step 71).

    .venv/bin/python benchmarks/count_disclaimers.py WORKDIR/base-eval-48-bfloat16 WORKDIR/evals/RUN-...

Reads each evaluation folder's greedy generations (`generations/<model>/<set>.greedy.jsonl`, written by `eval`) and
prints, per model and set: answers, refusals (the evaluation's own detector verdict) and refusals that carry an
AI-identity disclaimer ("as an AI language model", "as a chatbot, I don't have the ability ...", "as a text-based
AI ..."). Why: the shipped recipe's needless refusals of harmless persona and capability requests are that
disclaimer, and 22 of its 52 harmful training references are too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from neat_studio.scoring.refusal import speaks_as_ai  # noqa: E402


def counts(path: Path) -> dict:
    rows = [json.loads(line) for line in path.open(encoding="utf-8")]
    refused = [r for r in rows if r.get("refusal")]
    return {"n": len(rows), "refused": len(refused),
            "refused_as_ai": sum(speaks_as_ai(r["response"]) for r in refused)}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    for folder in map(Path, argv):
        for f in sorted(folder.glob("generations/*/*.greedy.jsonl")):
            print(json.dumps({"eval": folder.name, "model": f.parent.name, "set": f.name.split(".")[0], **counts(f)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
