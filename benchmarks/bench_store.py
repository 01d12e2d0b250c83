"""Store save latency at scale: p50/p95/p99 of `save_annotation` with 100k responses in the store.

    .venv/bin/python benchmarks/bench_store.py [--prompts 25000] [--per-prompt 4] [--saves 2000] [--threads 8]

Fills a fresh DuckDB store (in a temp dir) with prompts x responses through the normal bulk API, then times
`save_annotation` calls (one transaction each, validated against the prompt's responses, audit-logged) from
several threads at once, as the web app does for concurrent annotators. Prints the latency percentiles and the
ratio to the 20 ms p95 target. The web path adds gradio's queue on top: see benchmarks/fault_load.py.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neat_studio.store import Store  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=25_000)
    ap.add_argument("--per-prompt", type=int, default=4)
    ap.add_argument("--saves", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, Store(Path(d) / "bench.duckdb") as s:
        t0 = time.perf_counter()
        pids = s.add_prompts([{"text": f"benchmark prompt number {i}", "source": "bench"}
                              for i in range(a.prompts)], actor="bench")
        resp = {}
        chunk = 2000
        for i in range(0, len(pids), chunk):
            rows = [{"prompt_id": p, "text": f"response {j} to {p}", "origin": "policy"}
                    for p in pids[i:i + chunk] for j in range(a.per_prompt)]
            ids = s.add_responses(rows, actor="bench")
            for r, rid in zip(rows, ids):
                resp.setdefault(r["prompt_id"], []).append(rid)
        fill_s = time.perf_counter() - t0
        n_resp = s.counts()["responses"]
        lat: list[float] = []
        lock = threading.Lock()
        per_thread = a.saves // a.threads

        def worker(seed: int):
            rng = random.Random(seed)
            mine = []
            for _ in range(per_thread):
                pid = rng.choice(pids)
                r = resp[pid][:]
                rng.shuffle(r)
                ranking = [[r[0]], r[1:3], r[3:]] if len(r) > 3 else [[x] for x in r]
                t = time.perf_counter()
                s.save_annotation(pid, f"annotator-{seed}", [g for g in ranking if g])
                mine.append((time.perf_counter() - t) * 1000)
            with lock:
                lat.extend(mine)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(a.threads)]
        t1 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t1
        q = statistics.quantiles(lat, n=100)
        print(f"store: {a.prompts} prompts, {n_resp} responses (filled in {fill_s:.1f} s)")
        print(f"saves: {len(lat)} from {a.threads} threads in {wall:.1f} s ({len(lat) / wall:.0f}/s)")
        print(f"save_annotation latency ms: p50 {q[49]:.2f}  p95 {q[94]:.2f}  p99 {q[98]:.2f}  max {max(lat):.2f}")
        print(f"p95 vs 20 ms target: {q[94] / 20:.2f}x of the budget ({'met' if q[94] <= 20 else 'NOT met'})")
        n_ann = s.counts()["annotations"]
        assert n_ann == len(lat), (n_ann, len(lat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
