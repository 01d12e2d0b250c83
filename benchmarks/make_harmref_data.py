"""A variant of the safety-pp-lora starter set for the study's step 71: the shipped curated.jsonl with every harmful
prompt whose reference refusal speaks as an AI ("As an AI language model, I cannot ...", "I'm sorry, but as an AI
...") replaced by another harmful prompt of the same source whose refusal gives the harm as its reason ("I'm sorry,
but I cannot help with that, it is illegal ..."), same size and order.

    .venv/bin/python benchmarks/make_harmref_data.py --out /tmp/curated-harmref.jsonl

Why: the recipe's language-model term trains toward the reference on every harmful prompt, and 20 of the 52 shipped
references are an AI-identity disclaimer. The trained models' new needless refusals are the same disclaimer on
persona and capability requests ("Embrace the role of Sheldon ...", "Imagine yourself as a doctor ..."); a refusal
tied to the harm, not to being an AI, may not carry over to them. Replacements come from
safety-tuned-llamas (CC-BY-NC-4.0), filtered as scripts/build_data.py filters it, and no evaluation set, validation
set or training set holds them (normalised text). Reads ../shared/data: a study tool, not product code.
"""
from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from neat_studio import evalsets  # noqa: E402
from variant_data import parse_args, shipped_rows, used_prompts  # noqa: E402
from build_data import HARM_SRC, REFUSAL_START  # noqa: E402

AI_IDENTITY = re.compile(r"\bas an ai\b|\blanguage model\b|\bai assistant\b|\bas a chatbot\b", re.I)


def main() -> int:
    args = parse_args(__doc__)
    used = used_prompts()
    src = json.loads((Path(args.data_root) / HARM_SRC).read_text(encoding="utf-8"))
    # build_data.py's filter (clear, short refusals), then no AI identity in the refusal
    pool = sorted({(h["instruction"], h["output"].strip()) for h in src
                   if h.get("instruction") and not h.get("input") and REFUSAL_START.search(h["output"])
                   and len(h["output"]) <= 500 and not AI_IDENTITY.search(h["output"])
                   and evalsets.normalize_text(h["instruction"]) not in used})
    random.Random(0).shuffle(pool)
    rows = shipped_rows()
    swap = [i for i, r in enumerate(rows) if "harmful" in r["tags"] and AI_IDENTITY.search(r["responses"][0])]
    for i, (p, a) in zip(swap, pool):
        rows[i] = {**rows[i], "prompt": p, "responses": [a]}
    evalsets.write_jsonl(Path(args.out), rows)
    print(json.dumps({"replaced": len(swap), "of_harmful": sum("harmful" in r["tags"] for r in rows),
                      "pool": len(pool), "examples": [(p[:60], a[:60]) for p, a in pool[:5]]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
