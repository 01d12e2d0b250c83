"""Scoring benchmarks: embedding throughput by batch size, cache-hit throughput, reward-scorer training time.

    .venv/bin/python benchmarks/bench_scoring.py [--n 512] [--batch-sizes 8,32,64,128] [--pairs 10000]

Texts: real texts from ../shared/data when present (HH-RLHF harmless responses = short chat turns; alpaca-eval
text_davinci_003 outputs = longer answers); otherwise generated filler sentences (figures then not comparable).
The 10k-pair training set is SYNTHETIC from real texts: the first `--base-pairs` (default 500) HH-RLHF
(prompt, chosen, rejected) pairs are repeated round-robin to 10k pairs, so only ~3 x base-pairs distinct texts are
embedded; that embedding time is reported separately from the time to train the head on the 10k pairs. (Repeats
of one prompt stay on one side of the prompt split, so the dev accuracy printed is not meaningful here.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neat_studio.scoring.datasets import load_hh_pairs, shared_data_dir  # noqa: E402
from neat_studio.scoring.embeddings import Embedder  # noqa: E402


def text_sets(n: int) -> dict[str, list[str]]:
    d = shared_data_dir()
    out = {}
    if (d / "derived" / "hh_rlhf_harmless_test_pairs.jsonl").exists():
        rows = load_hh_pairs()
        out["hh-rlhf responses (short)"] = [r["responses"][0] for r in rows][:n]
    if (d / "alpaca-eval" / "text_davinci_003_model_outputs.json").exists():
        out["alpaca-eval answers (long)"] = [r["output"] for r in
                                             json.loads((d / "alpaca-eval" / "text_davinci_003_model_outputs.json").read_text())][:n]
    if not out:
        words = "the model should answer the question clearly and helpfully without any harmful content".split()
        out["synthetic filler"] = [" ".join(words[(i + k) % len(words)] for k in range(8 + i % 40)) for i in range(n)]
    return out


def bench_embeddings(n: int, batch_sizes: list[int]) -> None:
    import torch

    print(f"# embedding throughput (all-MiniLM-L6-v2, max_seq_length 256, torch threads={torch.get_num_threads()}, "
          f"cpu count={os.cpu_count()})")
    emb = Embedder()  # a private instance: its cache starts empty
    emb.encode(["warm up"])
    for name, texts in text_sets(n).items():
        mean_chars = sum(map(len, texts)) / len(texts)
        print(f"{name}: n={len(texts)}, mean {mean_chars:.0f} chars")
        for bs in batch_sizes:
            emb.clear_cache()
            t = time.perf_counter()
            emb.encode(texts, batch_size=bs)
            dt = time.perf_counter() - t
            print(f"  batch {bs:>4}: {len(texts) / dt:8.1f} sentences/s  ({dt:.1f}s)")
        t = time.perf_counter()
        emb.encode(texts)
        dt = time.perf_counter() - t
        print(f"  cache hits: {len(texts) / dt:10.0f} sentences/s")


def bench_scorer(n_pairs: int, epochs: int, base_pairs: int = 500) -> None:
    from neat_studio.scoring.reward import ScorerConfig, build_pairset, embed_pairset, train_scorer

    if not (shared_data_dir() / "derived" / "hh_rlhf_harmless_test_pairs.jsonl").exists():
        print("# scorer training: skipped (../shared/data absent)")
        return
    base = load_hh_pairs()[:base_pairs]
    rows = [base[i % len(base)] for i in range(n_pairs)]
    print(f"# scorer training: {n_pairs} pairs (first {len(base)} HH-RLHF harmless pairs repeated round-robin; synthetic)")
    t = time.perf_counter()
    feats = embed_pairset(build_pairset(rows))
    emb_s = time.perf_counter() - t
    n_texts = len({t for r in base for t in r["responses"]}) + len(base)
    print(f"  embed ~{n_texts} distinct texts (prompts + responses): {emb_s:.1f}s")
    cfg = ScorerConfig(epochs=epochs)
    m = train_scorer(rows, None, seed=0, dev_fraction=0.2, config=cfg, features=feats)
    print(f"  train {m['n_train_pairs']} pairs x {epochs} epochs (hidden {cfg.hidden}, batch {cfg.batch_size}): "
          f"{m['train_s']:.1f}s = {m['n_train_pairs'] * epochs / max(m['train_s'], 1e-9):.0f} pairs/s")
    t = time.perf_counter()
    m["scorer"].forward(feats)
    print(f"  score {len(feats)} (prompt, response) items from features: {time.perf_counter() - t:.3f}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512, help="texts per embedding set")
    ap.add_argument("--batch-sizes", default="8,32,64,128")
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--base-pairs", type=int, default=500)
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args()
    print(f"# load average (1, 5, 15 min) at start: {os.getloadavg()} on {os.cpu_count()} CPUs")
    if not args.skip_embed:
        bench_embeddings(args.n, [int(x) for x in args.batch_sizes.split(",")])
    from neat_studio.scoring.reward import ScorerConfig

    bench_scorer(args.pairs, args.epochs or ScorerConfig().epochs, args.base_pairs)
    print(f"# load average (1, 5, 15 min) at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
