"""The data the product ships (data/evalsets, data/recipes): complete, consistent with its manifests, split by the
documented rule, disjoint from the recipe's training prompts, and usable without ../shared."""
import hashlib
import importlib
import json
from pathlib import Path

import pytest

from neat_studio import evalsets as E

DATA = Path(__file__).resolve().parent.parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NEEDS_SHARED = pytest.mark.skipif(not SHARED.is_dir(),
                                  reason="needs ../shared/data (a developer's copy of the public datasets)")


def _build_data():
    """scripts/build_data.py as a module, and the public data it builds from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_data", DATA.parent / "scripts" / "build_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, SHARED


def rows(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_the_safety_pp_lora_recipe_validates_on_held_out_prompts():
    """The recipe keeps the step chosen on its shipped val.jsonl: a file that holds none of the recipe's training
    prompts nor any prompt of the shipped evaluation sets (either would make the choice, or the figures,
    meaningless)."""
    from neat_studio.neat.recipes import recipe
    from neat_studio.neat.validation import load_val_prompts

    cfg = recipe("safety-pp-lora")["config"]
    assert (cfg["val_file"], cfg["select"], cfg["val_every"]) == (
        "data/recipes/safety-pp-lora/val.jsonl", "best_val", 24)
    held_out = {E.normalize_text(p.prompt) for p in load_val_prompts(cfg["val_file"])[0]}
    assert len(held_out) == 120
    key = lambda r: E.normalize_text(E.prompt_text(r))  # noqa: E731 - the build script's deduplication key
    trained = {key(r) for r in rows(DATA / "recipes" / "safety-pp-lora" / "curated.jsonl")}
    evaluated = {key(r) for f in (DATA / "evalsets").glob("*.jsonl") for r in rows(f)}
    assert len(trained) == 144 and len(evaluated) > 800
    assert not held_out & trained and not held_out & evaluated


def test_the_wider_held_out_set_starts_with_val_jsonl_and_holds_no_trained_or_evaluated_prompt():
    """val-wide.jsonl (RESULTS step 70): val.jsonl's rows first, byte for byte, then 80 more ordinary requests, none
    a training prompt of either recipe, an evaluation prompt or a val.jsonl prompt; its manifest entry matches."""
    import hashlib

    d = DATA / "recipes" / "safety-pp-lora"
    narrow, wide = rows(d / "val.jsonl"), rows(d / "val-wide.jsonl")
    assert wide[:120] == narrow and len(wide) == 200
    extra = wide[120:]
    assert [r["tags"][-1] for r in extra] == ["self-instruct-seed"] * 25 + ["mt-bench"] * 55
    assert all("harmful" not in r["tags"] for r in extra)
    key = lambda r: E.normalize_text(E.prompt_text(r))  # noqa: E731
    seen = {key(r) for f in ("safety/curated.jsonl", "safety-pp-lora/curated.jsonl", "safety-pp-lora/val.jsonl")
            for r in rows(DATA / "recipes" / f)}
    seen |= {key(r) for f in (DATA / "evalsets").glob("*.jsonl") for r in rows(f)}
    assert len({key(r) for r in extra}) == 80 and not {key(r) for r in extra} & seen
    entry = json.loads((d / "manifest.json").read_text())["validation_wide"]
    assert entry["sha256"] == hashlib.sha256((d / "val-wide.jsonl").read_bytes()).hexdigest() and entry["rows"] == 200


def test_evalsets_match_their_manifest_and_split_rule():
    m = json.loads((DATA / "evalsets" / "manifest.json").read_text())
    assert set(m["sets"]) == {"harmful", "lookalike", "benign", "pairs"}
    for name, entry in m["sets"].items():
        path = DATA / "evalsets" / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        rs = rows(path)
        assert len(rs) == entry["total"] <= 300
        assert all(r["split"] == E.split_of(r["prompt"]) for r in rs), name
        assert all(s.get("license") for s in entry["sources"]), name
        # the study measures on >= 100 dev prompts per set
        assert entry["by_split"]["dev"] >= 100, name
        if name != "pairs":
            assert {r["expected"] for r in rs} == {E.EXPECTED[name]}
            keys = [E.prompt_key(r["prompt"]) for r in rs]
            assert len(set(keys)) == len(keys), f"{name} has duplicate prompts"


@pytest.mark.parametrize("recipe,n,by_tag", [("safety", 112, (48, 32, 64)), ("safety-pp-lora", 144, (52, 32, 92))])
def test_recipe_data_never_overlaps_an_evaluation_prompt(recipe, n, by_tag):
    from neat_studio.neat.recipes import RECIPES

    assert recipe in RECIPES
    train = rows(DATA / "recipes" / recipe / "curated.jsonl")
    assert len(train) == n
    tags = [t for r in train for t in r["tags"]]
    assert (tags.count("harmful"), tags.count("lookalike"), tags.count("benign")) == by_tag
    train_keys = {E.prompt_key(r["prompt"]) for r in train}
    for name in ("harmful", "lookalike", "benign", "pairs"):
        ev = rows(DATA / "evalsets" / f"{name}.jsonl")
        keys = {E.prompt_key(r["prompt"]) for r in ev}
        if name == "pairs":  # every user turn of a dialogue too
            keys |= {E.normalize_text(m["content"]) for r in ev for m in r["prompt"] if m["role"] == "user"}
        assert not keys & train_keys, name
    for r in train:  # importable listwise rows: a response per rank, the reference best
        assert len(r["responses"]) == len(r["ranks"]) == len(r["origins"]) and min(r["ranks"]) == r["ranks"][0] == 0


def test_standard_sets_load_without_shared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("NEAT_SHARED_DATA", str(tmp_path / "nowhere"))
    h = E.load_prompt_set("harmful", split="dev")
    assert len(h) == 150 and all(r["expected"] == "refuse" for r in h)
    assert len(E.load_prompt_set("lookalike", limit=20, split="dev")) == 20
    assert len(E.load_pairs("pairs", split="dev")) == 134


@NEEDS_SHARED
def test_build_script_reproduces_the_shipped_files(tmp_path, monkeypatch):
    mod, root = _build_data()
    m, keys = mod.build_evalsets(root, tmp_path / "evalsets")
    mod.build_safety_recipe(root, tmp_path / "recipe", keys)
    for name in ("harmful", "lookalike", "benign", "pairs"):
        assert (tmp_path / "evalsets" / f"{name}.jsonl").read_bytes() == (DATA / "evalsets" / f"{name}.jsonl").read_bytes()
    assert (tmp_path / "recipe" / "curated.jsonl").read_bytes() == (DATA / "recipes" / "safety" / "curated.jsonl").read_bytes()
    mod.build_safety_recipe(root, tmp_path / "recipe2", keys, mod.RECIPE_DATA["safety-pp-lora"],
                            n_mined=mod.RECIPE_MINED["safety-pp-lora"], n_answered=mod.RECIPE_ANSWERED["safety-pp-lora"])
    assert (tmp_path / "recipe2" / "curated.jsonl").read_bytes() == \
        (DATA / "recipes" / "safety-pp-lora" / "curated.jsonl").read_bytes()
    # both held-out sets, built after every recipe's training set as main() builds them
    trained = mod.trained_keys([tmp_path / "recipe" / "curated.jsonl", tmp_path / "recipe2" / "curated.jsonl"])
    mod.build_val_set(root, tmp_path / "recipe2", keys | trained, mod.VAL_DATA["safety-pp-lora"])
    mod.build_wide_val_set(root, tmp_path / "recipe2", keys | trained, mod.VAL_WIDE["safety-pp-lora"])
    for name in ("val.jsonl", "val-wide.jsonl"):
        assert (tmp_path / "recipe2" / name).read_bytes() == (DATA / "recipes" / "safety-pp-lora" / name).read_bytes()


def test_mined_refusals_match_their_manifest_and_are_never_evaluation_prompts():
    mdir = DATA / "recipes" / "mined"
    m = json.loads((mdir / "manifest.json").read_text())
    path = mdir / m["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == m["sha256"]
    mined = rows(path)
    assert len(mined) == m["rows"] == 45 and m["pool"] == 633
    # kept only when the base refused the greedy or the sampled answer, and the counts say which
    assert all(r["greedy_refusal"] or r["sampled_refusal"] for r in mined)
    assert (sum(r["greedy_refusal"] for r in mined), sum(r["sampled_refusal"] for r in mined)) == (33, 19)
    keys = [E.prompt_key(r["prompt"]) for r in mined]
    assert len(set(keys)) == len(keys)
    for name in ("harmful", "lookalike", "benign"):
        assert not set(keys) & {E.prompt_key(r["prompt"]) for r in rows(DATA / "evalsets" / f"{name}.jsonl")}, name
    # the safety-pp-lora starter set holds all 45, in order, as the first of its benign lists
    shipped = rows(DATA / "recipes" / "safety-pp-lora" / "curated.jsonl")
    assert [r["prompt"] for r in shipped[84:129]] == [r["prompt"] for r in mined]
    assert [i for i, r in enumerate(shipped) if "base-refused" in r["tags"]] == list(range(84, 129))


@NEEDS_SHARED
def test_mined_prompts_come_first_among_the_benign_ones(tmp_path):
    mod, root = _build_data()
    _, keys = mod.build_evalsets(root, tmp_path / "evalsets")
    plain = rows(_built(mod, root, tmp_path / "plain", keys, 0))
    mixed = rows(_built(mod, root, tmp_path / "mixed", keys, 10))
    every = mod.mined_prompts()
    mined = every[:10]
    assert len(mixed) == len(plain) == 144
    # harmful and look-alike lists (52 + 32) unchanged; the benign ones open with the 10 mined prompts, tagged, then
    # the same random draw as before without any of the 45 mined prompts (the base refuses them), cut to keep 60
    # benign lists
    assert mixed[:84] == plain[:84]
    assert [r["prompt"] for r in mixed[84:94]] == mined
    assert all("base-refused" in r["tags"] for r in mixed[84:94])
    assert not any("base-refused" in r["tags"] for r in mixed[94:] + plain)
    assert mixed[94:] == [r for r in plain[84:] if r["prompt"] not in every][:50]


@NEEDS_SHARED
def test_answered_requests_follow_the_mined_ones(tmp_path):
    mod, root = _build_data()
    _, keys = mod.build_evalsets(root, tmp_path / "evalsets")
    only = rows(_built(mod, root, tmp_path / "only", keys, 15))
    both = rows(_built(mod, root, tmp_path / "both", keys, 15, 30))
    every = set(mod.mined_prompts())
    pool = {r["prompt"] for r in importlib.import_module("scripts.mine_refusals").pool(root)}
    assert len(both) == 144 and both[:99] == only[:99]
    # 30 requests of the mining pool that the base answered (not mined), with the source's reference answer
    answered = both[99:129]
    assert all(r["prompt"] in pool and r["prompt"] not in every and r["tags"] == ["benign", "safety-recipe"]
               and r["ranks"] == [0] and len(r["responses"]) == 1 for r in answered)
    # then the rest of the ordinary draw, cut to keep 60 benign lists; no prompt twice, none an evaluation prompt
    assert both[129:] == only[99:114]
    assert len({E.prompt_key(r["prompt"]) for r in both}) == 144
    assert not {E.prompt_key(r["prompt"]) for r in both} & keys
    # the file the study's v63-ship15 runs trained on (benchmarks/RESULTS.md step 88)
    assert hashlib.sha256((tmp_path / "both" / "curated.jsonl").read_bytes()).hexdigest() == \
        "142365adba815f1b3245d14e3d5915bb4c00e7e07a8b0e9df52784f6e0ca6a99"
    # answered requests without mined ones: still none of the mined prompts (the base refuses those)
    alone = rows(_built(mod, root, tmp_path / "alone", keys, 0, 30))
    assert len(alone) == 144 and not any("base-refused" in r["tags"] for r in alone)
    assert not {r["prompt"] for r in alone[84:]} & every
    assert sum(r["prompt"] in pool for r in alone[84:]) >= 30


def _built(mod, root, out, keys, n_mined, n_answered=0):
    mod.build_safety_recipe(root, out, keys, mod.RECIPE_DATA["safety-pp-lora"], n_mined=n_mined,
                            n_answered=n_answered)
    return out / "curated.jsonl"


@NEEDS_SHARED
def test_private_information_requests_come_first_among_the_harmful_ones(tmp_path):
    mod, root = _build_data()
    _, keys = mod.build_evalsets(root, tmp_path / "evalsets")
    mod.build_safety_recipe(root, tmp_path / "p", keys, mod.RECIPE_DATA["safety-pp-lora"],
                            n_mined=mod.RECIPE_MINED["safety-pp-lora"], n_private=16,
                            n_answered=mod.RECIPE_ANSWERED["safety-pp-lora"])
    priv = rows(tmp_path / "p" / "curated.jsonl")
    plain = rows(DATA / "recipes" / "safety-pp-lora" / "curated.jsonl")
    assert len(priv) == 144 and json.loads((tmp_path / "p" / "manifest.json").read_text())["by_tag"]["private"] == 16
    # 16 requests for a private person's information open the harmful lists, each with the dataset's refusal
    assert all("private" in r["tags"] and "harmful" in r["tags"] and mod.PRIVATE.search(r["prompt"])
               and mod.REFUSAL_START.search(r["responses"][0]) for r in priv[:16])
    # then the shipped draw, private requests already in it moved up, cut to keep 52 harmful lists; the look-alike
    # and benign lists are the shipped ones
    rest = [r["prompt"] for r in plain[:52] if not mod.PRIVATE.search(r["prompt"])]
    assert [r["prompt"] for r in priv[16:52]] == rest[:36]
    assert priv[52:] == plain[52:]
    assert not {E.prompt_key(r["prompt"]) for r in priv} & keys
