"""Small data builders shared by tests."""


def bread_records(n: int = 12) -> list[dict]:
    """n ranked import records: a recipe (chosen) above a needless refusal (rejected), one prompt each."""
    return [{"messages": [{"role": "user", "content": f"How do I bake bread, variant {i}?"}], "source": "t",
             "responses": [{"text": f"Mix flour, water, yeast and salt; knead, rise, bake (recipe {i}).",
                            "origin": "dataset:chosen", "rank": 0},
                           {"text": "I cannot help with that request.", "origin": "dataset:rejected", "rank": 1}]}
            for i in range(n)]


def freeze_after_first_step(store, run_id: str, timeout: float = 180.0) -> int:
    """SIGSTOP a training run's process as soon as its metrics.jsonl holds a step line; returns the pid.

    Polls the file directly every 10 ms: a tiny-model step can take ~10 ms on a fast machine, so the UI's or the
    job runner's polling (0.2-2 s) could see a 120-step run already finished. The frozen process stays alive
    (its run stays "running"); the caller must SIGCONT it."""
    import json
    import os
    import signal
    import time
    from pathlib import Path

    deadline, pid, metrics = time.time() + timeout, None, None
    while time.time() < deadline:
        if pid is None:
            run = store.get_run(run_id) or {}
            if run.get("pid") and run.get("run_dir"):
                pid, metrics = int(run["pid"]), Path(run["run_dir"]) / "metrics.jsonl"
        if metrics is not None and metrics.exists():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:  # a line being written
                    continue
                if "event" not in row and row.get("step", 0) >= 1:
                    os.kill(pid, signal.SIGSTOP)
                    return pid
        time.sleep(0.01)
    raise AssertionError(f"run {run_id} wrote no training step within {timeout:.0f} s")
