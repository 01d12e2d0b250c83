"""Load, backup during load, SIGKILL in the middle of the load and restart, on the REAL app process
(`python -m neat_studio --workspace WS serve --model tiny --port P`), through its `/save_ranking` API route.

One scenario run (benchmarks.fault_load.run_scenario, CI size: 5 annotators x 8 s, then a crash phase of 6 s with
SIGKILL at 3 s) feeds the three tests below; the full-size run is `python benchmarks/fault_load.py`."""
from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from benchmarks.fault_load import run_scenario

    rep = run_scenario(tmp_path_factory.mktemp("fault-load") / "ws", annotators=5, duration=8.0,
                       crash_duration=6.0, kill_at=3.0, n_prompts=12)
    print(json.dumps(rep, indent=1, default=str))
    return rep


def test_every_acknowledged_save_is_stored_exactly_once_under_load(report):
    """5 annotators save continuously while a preview generation and the embedding job run: every save the API
    acknowledged is in the store (read from a backup taken after the load) exactly once; latencies reported."""
    ld = report["load"]
    assert ld["acknowledged"] >= 5, ld
    assert ld["lost"] == 0 and ld["duplicated"] == 0 and ld["found"] == ld["acknowledged"], ld
    assert ld["unknown_tokens"] == 0
    assert ld["latency"]["p50_ms"] is not None and ld["latency"]["p99_ms"] >= ld["latency"]["p50_ms"]
    bg = report["background"]
    assert "embed_error" not in bg and "embedded" in bg.get("embed_info", ""), bg
    assert "preview_error" not in bg and bg.get("previews", 0) >= 1, bg


def test_backup_taken_during_load_is_consistent(report):
    """A `/backup` taken halfway through the load opens, has the current schema, and holds exactly the counts it
    reported; no save appears twice in it."""
    mb = report["mid_backup"]
    assert mb["opens"] and mb["schema_ok"] and mb["counts_match"], mb
    assert mb["duplicated"] == 0 and mb["unknown_tokens"] == 0


def test_sigkill_mid_load_keeps_every_acknowledged_save_and_restarts_without_repair(report):
    """The app is SIGKILLed while annotators save; it restarts on the same workspace with no repair step, serves a
    save, and the store (opened directly afterwards) has the right schema version and every save acknowledged
    before the kill (and every earlier one) exactly once."""
    cr, fi = report["crash"], report["final"]
    assert cr["acked_before_kill"] >= 1, cr
    assert report["restart_s"] > 0 and report["after_restart_save"] is True
    assert fi["schema_ok"], fi
    assert fi["lost"] == 0 and fi["duplicated"] == 0 and fi["unknown_tokens"] == 0, fi
    assert fi["acknowledged"] == report["load"]["acknowledged"] + cr["acked_before_kill"] + 1
    assert report["ok"]
