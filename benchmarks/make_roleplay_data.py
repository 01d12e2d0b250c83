"""A variant of the safety-pp-lora starter set for the study's step 70: the shipped curated.jsonl with its last
ordinary (non-mined) benign prompts replaced by harmless role-play requests from AlpacaEval, same size.

    .venv/bin/python benchmarks/make_roleplay_data.py --out /tmp/curated-roleplay.jsonl

Why: the recipe's runs learn to refuse harmless persona requests ("Embrace the role of Sheldon ...", "Imagine
yourself as a doctor ...", "Pretend ... you are a lawyer defending ...") along with harmful ones; the shipped set
has one role-play request among its 60 benign prompts. The replacements are AlpacaEval instructions (with
text-davinci-003's answer as the reference, CC-BY-NC-4.0) that no evaluation set, validation set or training set
holds (normalised text). Reads ../shared/data: a study tool, not product code.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio import evalsets  # noqa: E402
from variant_data import parse_args, shipped_rows, used_prompts  # noqa: E402

ROLEPLAY = re.compile(r"^\s*(please\s+)?(act (as|like)|pretend (to be|you are)|imagine you are"
                      r"|assume the (persona|role)|play the (role|part)|you are an? [\w -]+\. "
                      r"|write an? [\w ]*monologue)", re.I)


def main() -> int:
    args = parse_args(__doc__)
    used = used_prompts()
    src = json.loads((Path(args.data_root) / "alpaca-eval/text_davinci_003_model_outputs.json").read_text())
    role = sorted({(b["instruction"], b["output"].strip()) for b in src
                   if ROLEPLAY.search(b["instruction"]) and len(b["output"]) <= 1200
                   and evalsets.normalize_text(b["instruction"]) not in used})
    rows = shipped_rows()
    plain = [i for i, r in enumerate(rows) if r["tags"] == ["benign", "safety-recipe"]]
    for i, (p, a) in zip(reversed(plain), role):
        rows[i] = {"prompt": p, "responses": [a], "ranks": [0], "origins": ["dataset"],
                   "tags": ["benign", "roleplay", "safety-recipe"]}
    evalsets.write_jsonl(Path(args.out), rows)
    print(json.dumps({"replaced": min(len(plain), len(role)), "of_plain_benign": len(plain),
                      "prompts": [p[:80] for p, _ in role]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
