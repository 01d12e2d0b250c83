"""Build the data the product ships under data/ from the public datasets in ../shared/data (run once by a developer;
the product itself never reads ../shared).

    .venv/bin/python scripts/build_data.py [--data-root ../shared/data]

Writes
- ``data/evalsets/{harmful,lookalike,benign}.jsonl``: the standard evaluation prompt sets (at most PER_SET prompts each,
  drawn stratified over their sources with a fixed seed), ``data/evalsets/pairs.jsonl`` (HH-RLHF harmless preference
  pairs) and ``data/evalsets/manifest.json`` (per set: sources with upstream repository, commit and licence, counts
  per split, sha256). Each row carries its fixed ``split`` (dev | test, evalsets.split_of: a hash of the normalised
  text, so it never changes).
- ``data/recipes/safety/curated.jsonl``: the starter curated set of the ``safety`` recipe (listwise JSONL the importer
  reads: harmful requests with a safe refusal as the reference answer, benign look-alikes whose helpful answer ranks
  above a needless refusal, ordinary benign requests with a helpful reference answer), tagged ``harmful`` /
  ``lookalike`` / ``benign``, and ``data/recipes/safety/manifest.json``.

Every training prompt is deduplicated (normalised text, evalsets.normalize_text) against every evaluation prompt of
every split, so no evaluation prompt is ever trained on. Output is deterministic: rebuilding gives identical files.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neat_studio import evalsets  # noqa: E402

PER_SET = 300          # prompts per evaluation set (the "a few hundred at most"); ~150 land in dev
N_PAIRS = 300
SEED = 20261203
# starter curated set of the safety recipe
N_HARMFUL, N_LOOKALIKE, N_BENIGN = 48, 32, 32
# the starter set of each recipe: (harmful, look-alike, benign) prompts (safety-pp-lora's: the alignment study's v28
# data, benchmarks/RESULTS.md), how many of its benign prompts are mined refusals of the base model (MINED), and how
# many after those are requests the mining saw the base model answer (RECIPE_ANSWERED)
RECIPE_DATA = {"safety": (N_HARMFUL, N_LOOKALIKE, N_BENIGN), "safety-pp-lora": (52, 32, 60)}
RECIPE_MINED = {"safety-pp-lora": 45}
# 0: the shipped set. 15 mined + 30 answered is the candidate of benchmarks/RESULTS.md steps 87-88 (fewer pushes to
# drop the base model's capability disclaimer): more refusal on some seeds, but two of five answered significantly
# fewer look-alikes than the base, so it is not shipped; 30 + 15 (steps 89-90) was worse than the base on look-alikes
# or pairs on three of six seeds on the test split, not shipped either
RECIPE_ANSWERED = {"safety-pp-lora": 0}
# harmless requests the default model refuses (scripts/mine_refusals.py), first in a recipe's benign lists
MINED = REPO / "data" / "recipes" / "mined" / "benign_refused_by_base.jsonl"
MAX_REFERENCE_CHARS = 1200  # benign prompts are kept only with a reference answer at most this long
N_GENERAL = 0  # everyday instructions from self-instruct's seed tasks, tagged benign + general (0: none)

HARM_SRC = "safety-tuned-llamas/training/safety_only_data_Instructions.json"
LOOK_SRC = "coconot/coconot_pref.jsonl"
BEN_SRC = "alpaca-eval/text_davinci_003_model_outputs.json"

# requests for a private person's information (addresses, numbers, passwords, whereabouts): the base model's "I don't
# have access to personal information" disclaimer is the right answer there, and a run that learns to drop that
# disclaimer on harmless requests drops it here too (benchmarks/RESULTS.md step 64)
PRIVATE = re.compile(r"address|phone|passport|social security|password|passcode|pin code|personal information|"
                     r"private|whereabouts|where does .* live", re.I)
TEMPLATE_SLOT = re.compile(r"\{[a-z_]+\}")
REFUSAL_START = re.compile(r"^\s*(I'?m sorry|I am sorry|I cannot|I can'?t|I apologi[sz]e|As an AI|Sorry|I'?m unable|"
                           r"I am unable|I won'?t|Unfortunately|I'?m not able|I do not|I don'?t)", re.I)


def source_info(data_root: Path, rel: str) -> dict:
    """Upstream repository, commit, path and licence of one shared file (its folder's SOURCE.json)."""
    folder, name = rel.split("/", 1)
    meta = json.loads((data_root / folder / "SOURCE.json").read_text(encoding="utf-8"))
    for f in meta.get("files", []):
        if f.get("file") == name:
            return {"file": rel, **{k: f[k] for k in ("from_repo", "from_commit", "from_path", "license", "from", "rule")
                                    if k in f}}
    return {"file": rel, "note": meta.get("note", "")}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_evalsets(data_root: Path, out: Path) -> tuple[dict, set]:
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"built_by": "scripts/build_data.py", "seed": SEED, "per_set": PER_SET,
                "split_rule": f"sha256('{evalsets.SPLIT_SALT}' + normalised text)[:8] / 2**64 < "
                              f"{evalsets.DEV_FRACTION} -> dev, else test", "sets": {}}
    keys: set = set()
    for name in evalsets.SET_NAMES:
        rows = evalsets.build_set(name, data_root=data_root)
        rows = evalsets.sample_rows(rows, PER_SET, seed=SEED)
        rows.sort(key=lambda r: (r["source"], r["id"]))
        path = out / f"{name}.jsonl"
        evalsets.write_jsonl(path, rows)
        keys.update(evalsets.prompt_key(r["prompt"]) for r in rows)
        manifest["sets"][name] = _set_entry(path, rows, name, data_root)
    pairs = evalsets.build_set(evalsets.PAIRS_NAME, data_root=data_root)
    pairs = [q for q in pairs if q["chosen"].strip() and q["rejected"].strip() and q["chosen"] != q["rejected"]]
    rng = random.Random(SEED)
    pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), N_PAIRS))]
    path = out / "pairs.jsonl"
    evalsets.write_jsonl(path, pairs)
    keys.update(evalsets.prompt_key(q["prompt"]) for q in pairs)
    manifest["sets"]["pairs"] = _set_entry(path, pairs, "pairs", data_root)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest, keys


def _set_entry(path: Path, rows: list, name: str, data_root: Path) -> dict:
    by_split: dict = {}
    by_source: dict = {}
    for r in rows:
        by_split[r["split"]] = by_split.get(r["split"], 0) + 1
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    return {"file": path.name, "sha256": sha(path), "kind": "pairs" if name == "pairs" else "prompts",
            "expected": evalsets.EXPECTED.get(name), "total": len(rows), "by_split": by_split,
            "by_source": by_source,
            "sources": [source_info(data_root, rel) for rel in evalsets.DEFAULT_SOURCES[name]]}


def mined_prompts() -> list[str]:
    """The prompts of MINED, in its order."""
    return [json.loads(x)["prompt"] for x in open(MINED, encoding="utf-8")]


def trained_keys(curated_files) -> set:
    """What a held-out set must not hold besides evaluation prompts: every recipe's training prompt, and every mined
    prompt, used or not (as when every one of them was trained on)."""
    return ({evalsets.normalize_text(json.loads(line)["prompt"]) for f in curated_files
             for line in open(f, encoding="utf-8")}
            | {evalsets.normalize_text(p) for p in mined_prompts()})


def build_safety_recipe(data_root: Path, out: Path, eval_keys: set,
                        counts: tuple = (N_HARMFUL, N_LOOKALIKE, N_BENIGN), n_mined: int = 0,
                        n_private: int = 0, n_answered: int = 0) -> dict:
    """Starter curated set for a safety recipe ((harmful, look-alike, benign) prompts), deduplicated against every
    evaluation prompt. With n_mined, the first (at most) n_mined benign prompts are harmless requests the base model
    refuses (MINED, made by scripts/mine_refusals.py; tagged ``base-refused``), then n_answered requests of the same
    mining pool that the base model answered (shuffled with seed 0), the rest drawn as before. With
    n_private, the first (at most) n_private harmful prompts ask for a private person's information (PRIVATE; tagged
    ``private``), the rest drawn as before."""
    n_harmful, n_lookalike, n_benign = counts
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    seen = set(eval_keys)

    def fresh(prompt: str) -> bool:
        k = evalsets.normalize_text(prompt)
        if not k or k in seen:
            return False
        seen.add(k)
        return True

    def take(items, n: int, prompt_of, row_of) -> list:
        """The first n items (in their shuffled order) whose prompt is new, as rows."""
        out = []
        for it in items:
            if len(out) >= n:
                break
            if fresh(prompt_of(it)):
                out.append(row_of(it))
        return out

    harm_src = HARM_SRC
    harm = json.loads((data_root / harm_src).read_text(encoding="utf-8"))
    # clear, short refusals only: the reference answer is what the model should say
    harm = [h for h in harm if h.get("instruction") and not h.get("input") and REFUSAL_START.search(h["output"])
            and len(h["output"]) <= 500]
    rng.shuffle(harm)
    if n_private:  # a stable reorder after the shuffle: every later draw (look-alikes, benign) stays the same
        private = [h for h in harm if PRIVATE.search(h["instruction"])][:n_private]
        harm = private + [h for h in harm if h not in private]
    rows = take(harm, n_harmful, lambda h: h["instruction"], lambda h: {
        "prompt": h["instruction"], "responses": [h["output"].strip()], "ranks": [0], "origins": ["dataset"],
        "tags": ["harmful", "safety-recipe"] + (["private"] if n_private and PRIVATE.search(h["instruction"]) else [])})
    look_src = LOOK_SRC
    look = [json.loads(x) for x in open(data_root / look_src, encoding="utf-8")]
    # CoCoNot contrast-style pairs: the chosen answer helps, the rejected one refuses a harmless request
    look = [r for r in look if isinstance(r.get("chosen"), str) and isinstance(r.get("rejected"), str)
            and REFUSAL_START.search(r["rejected"]) and not REFUSAL_START.search(r["chosen"])
            and len(r["chosen"]) <= 1500]
    look.sort(key=lambda r: r["id"])
    rng.shuffle(look)
    # a few CoCoNot answers still hold their template's slot ("{refusal_explanation} Your question is ..."): not a
    # text to train toward (dropped after the shuffle, so every other row stays the one it was)
    look = [r for r in look if not TEMPLATE_SLOT.search(r["chosen"])]
    rows += take(look, n_lookalike, lambda r: r["prompt"], lambda r: {
        "prompt": r["prompt"], "responses": [r["chosen"].strip(), r["rejected"].strip()], "ranks": [0, 1],
        "origins": ["dataset:chosen", "dataset:rejected"], "tags": ["benign", "lookalike", "safety-recipe"]})
    ben_src = BEN_SRC
    ben = json.loads((data_root / ben_src).read_text(encoding="utf-8"))
    ben = [b for b in ben if b.get("instruction") and b.get("output") and len(b["output"]) <= MAX_REFERENCE_CHARS]
    rng.shuffle(ben)
    every_mined = mined_prompts() if n_mined or n_answered else []  # "answered" = not mined: needs the list too
    mined = every_mined[:n_mined]
    by_prompt = {b["instruction"]: b for b in ben}

    def ben_row(tags):
        return lambda b: {"prompt": b["instruction"], "responses": [b["output"].strip()], "ranks": [0],
                          "origins": ["dataset"], "tags": tags}

    refused = take([by_prompt[p] for p in mined], n_benign, lambda b: b["instruction"],
                   ben_row(["benign", "base-refused", "safety-recipe"]))
    # every mined prompt stays out of the other draws (the base model refuses them), used or not
    flagged = set(every_mined)
    rest = take([b for b in ben if b["instruction"] not in flagged], n_benign - len(refused) - n_answered,
                lambda b: b["instruction"], ben_row(["benign", "safety-recipe"]))
    answered = []
    if n_answered:
        from scripts.mine_refusals import pool  # here: mine_refusals imports this module

        cands = [by_prompt[r["prompt"]] for r in pool(data_root) if r["prompt"] in by_prompt
                 and r["prompt"] not in flagged and evalsets.normalize_text(r["prompt"]) not in seen]
        random.Random(0).shuffle(cands)
        answered = take(cands, n_answered, lambda b: b["instruction"], ben_row(["benign", "safety-recipe"]))
    rows += refused + answered + rest
    gen_src = "self-instruct-seed/seed_tasks.jsonl"
    if N_GENERAL:
        gen = [json.loads(x) for x in open(data_root / gen_src, encoding="utf-8")]
        gen = [(g["instruction"] + (f"\n\n{g['instances'][0]['input']}" if g["instances"][0].get("input") else ""),
                g["instances"][0]["output"]) for g in gen if g.get("instances") and g["instances"][0].get("output")
               and len(g["instances"][0]["output"]) <= MAX_REFERENCE_CHARS and not g.get("is_classification")]
        rng.shuffle(gen)
        rows += take(gen, N_GENERAL, lambda g: g[0], lambda g: {
            "prompt": g[0], "responses": [g[1].strip()], "ranks": [0], "origins": ["dataset"],
            "tags": ["benign", "general", "safety-recipe"]})
    path = out / "curated.jsonl"
    evalsets.write_jsonl(path, rows)
    manifest = {
        "built_by": "scripts/build_data.py", "seed": SEED, "file": path.name, "sha256": sha(path),
        "rows": len(rows), "by_tag": {t: sum(t in r["tags"] for r in rows)
                                      for t in ("harmful", "lookalike", "benign", "general") + (("base-refused",) if refused else ())
                                      + (("private",) if n_private else ())},
        "deduplicated_against": "every prompt of data/evalsets (all splits), normalised text",
        "sources": [
            {**source_info(data_root, harm_src), "used_for": "harmful prompts; reference = the dataset's refusal"},
            {**source_info(data_root, look_src), "used_for": "look-alike prompts; chosen (helps) > rejected (refuses)"},
            {**source_info(data_root, ben_src), "used_for": "benign prompts; reference = text-davinci-003's answer"}]
        + ([{"file": "data/recipes/mined/benign_refused_by_base.jsonl", "used_for": "which AlpacaEval prompts come "
             "first among the benign ones (tag base-refused): those the base model refuses (scripts/mine_refusals.py)"}]
           if refused else [])
        + ([{**source_info(data_root, gen_src), "used_for": "everyday instructions; reference = the seed task's "
             "instance output"}] if N_GENERAL else []),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


# held-out validation prompts of a recipe (val.jsonl; the trainer's val_file): (harmful, look-alike, benign), drawn from
# the training sources after every recipe's training prompts and every evaluation prompt are excluded
VAL_DATA = {"safety-pp-lora": (60, 20, 40)}
# a wider held-out set for the same recipe (val-wide.jsonl, benchmarks/RESULTS.md step 70): val.jsonl's 120 prompts
# first, unchanged, then ordinary requests of two more kinds, so that the step a run keeps is checked on more than
# one source of harmless requests: Self-Instruct seed tasks that no evaluation set holds, and MT-Bench / Vicuna-Bench
# first turns (none of them a training or evaluation prompt)
VAL_WIDE = {"safety-pp-lora": {"self-instruct-seed/seed_tasks.jsonl": 25,
                               "mt-bench/mt_bench_question.jsonl+mt-bench/vicuna_bench_question.jsonl": 55}}


def _record(out: Path, key: str, entry: dict) -> dict:
    """Put `entry` under `key` in the recipe's manifest.json (the recipe's own entries stay); returns it."""
    mf = out / "manifest.json"
    manifest = json.loads(mf.read_text(encoding="utf-8"))
    manifest[key] = entry
    mf.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return entry


def build_val_set(data_root: Path, out: Path, exclude: set, counts: tuple) -> dict:
    """A recipe's validation prompts (prompt + tags only), from the same sources as its training prompts, none of
    them a training prompt of any recipe or an evaluation prompt; recorded in the recipe's manifest.json."""
    n_harmful, n_lookalike, n_benign = counts
    rng = random.Random(SEED + 1)  # its own draw: the training sets stay exactly as they were
    seen = set(exclude)
    rows = []

    def take(prompts, n, tags):
        got = 0
        for p in prompts:
            k = evalsets.normalize_text(p)
            if got >= n:
                break
            if k and k not in seen:
                seen.add(k)
                rows.append({"prompt": p, "tags": tags})
                got += 1
        if got < n:
            raise SystemExit(f"only {got} fresh prompts for {tags[0]} (wanted {n})")

    harm = json.loads((data_root / HARM_SRC).read_text(encoding="utf-8"))
    harm = sorted({h["instruction"] for h in harm if h.get("instruction") and not h.get("input")})
    rng.shuffle(harm)
    take(harm, n_harmful, ["harmful", "validation"])
    look = [json.loads(x) for x in open(data_root / LOOK_SRC, encoding="utf-8")]
    look = sorted({r["prompt"] for r in look
                   if isinstance(r.get("rejected"), str) and REFUSAL_START.search(r["rejected"])})
    rng.shuffle(look)
    take(look, n_lookalike, ["benign", "lookalike", "validation"])
    ben = json.loads((data_root / BEN_SRC).read_text(encoding="utf-8"))
    ben = sorted({b["instruction"] for b in ben if b.get("instruction")})
    rng.shuffle(ben)
    take(ben, n_benign, ["benign", "validation"])
    path = out / "val.jsonl"
    evalsets.write_jsonl(path, rows)
    entry = {"file": path.name, "sha256": sha(path), "rows": len(rows),
             "by_tag": {t: sum(t in r["tags"] for r in rows) for t in ("harmful", "lookalike", "benign")},
             "used_for": "held-out validation prompts (the trainer's val_file, select=best_val); prompts only",
             "deduplicated_against": "every recipe's training prompts and every prompt of data/evalsets, normalised "
                                     "text",
             "sources": [source_info(data_root, rel) for rel in (HARM_SRC, LOOK_SRC, BEN_SRC)]}
    return _record(out, "validation", entry)


def build_wide_val_set(data_root: Path, out: Path, exclude: set, extra: dict) -> dict:
    """val.jsonl's rows, then `extra` ordinary requests per source group ("a+b": files drawn from as one pool, each
    row's prompt as the evaluation sets read it), none of them a training prompt, an evaluation prompt or already
    taken; written to val-wide.jsonl and recorded in the recipe's manifest.json under `validation_wide`."""
    rows = [json.loads(x) for x in open(out / "val.jsonl", encoding="utf-8")]
    seen = set(exclude) | {evalsets.normalize_text(r["prompt"]) for r in rows}
    rng = random.Random(SEED + 2)
    counts = {}
    for group, n in extra.items():
        pool = sorted({p for rel in group.split("+") for p in evalsets.read_prompts(data_root / rel)
                       if isinstance(p, str) and p.strip()})
        rng.shuffle(pool)
        got = 0
        for p in pool:
            k = evalsets.normalize_text(p)
            if got < n and k and k not in seen:
                seen.add(k)
                rows.append({"prompt": p, "tags": ["benign", "validation", group.split("/")[0]]})
                got += 1
        if got < n:
            raise SystemExit(f"only {got} fresh prompts in {group} (wanted {n})")
        counts[group] = got
    path = out / "val-wide.jsonl"
    evalsets.write_jsonl(path, rows)
    entry = {"file": path.name, "sha256": sha(path), "rows": len(rows),
             "by_tag": {t: sum(t in r["tags"] for r in rows) for t in ("harmful", "lookalike", "benign")},
             "extra_by_source": counts,
             "used_for": "a wider held-out validation set (val.jsonl's rows first, then more ordinary requests)",
             "deduplicated_against": "every recipe's training prompts, every prompt of data/evalsets and val.jsonl, "
                                     "normalised text",
             "sources": [source_info(data_root, rel) for g in extra for rel in g.split("+")]}
    return _record(out, "validation_wide", entry)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    root = Path(args.data_root).resolve()
    if not root.is_dir():
        print(f"no public data at {root} (give --data-root)", file=sys.stderr)
        return 2
    m, keys = build_evalsets(root, REPO / "data" / "evalsets")
    recipes = {name: build_safety_recipe(root, REPO / "data" / "recipes" / name, keys, counts,
                                         n_mined=RECIPE_MINED.get(name, 0), n_answered=RECIPE_ANSWERED.get(name, 0))
               for name, counts in RECIPE_DATA.items()}
    trained = trained_keys(REPO / "data" / "recipes" / name / "curated.jsonl" for name in RECIPE_DATA)
    for name, counts in VAL_DATA.items():
        recipes[name]["validation"] = build_val_set(root, REPO / "data" / "recipes" / name, keys | trained, counts)
    for name, extra in VAL_WIDE.items():
        build_wide_val_set(root, REPO / "data" / "recipes" / name, keys | trained, extra)
    print(json.dumps({"evalsets": {k: {"total": v["total"], "by_split": v["by_split"]} for k, v in m["sets"].items()},
                      "recipes": {n: {"rows": r["rows"], "by_tag": r["by_tag"],
                                      **({"validation": r["validation"]["by_tag"]} if "validation" in r else {})}
                                  for n, r in recipes.items()}},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
