"""Training-process faults not covered by tests/test_jobs.py (which already proves: a vanished trainer is marked
failed on re-attach, a hung trainer is SIGKILLed after the stop timeout, pid reuse is not mistaken for ours):

- the trainer killed with SIGKILL mid-run (no stop request, nobody warned it) is recorded as failed and
  `resume` continues from its last periodic checkpoint to the end;
- a runs folder that cannot be written gives a clear error before anything is frozen or recorded (tests run as
  root, where chmod does not block writes: the runs folder is replaced by a regular FILE)."""
from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from neat_studio.jobs import JobError, JobRunner
from tests.test_jobs import FAST, seed_data, wait_for

# 24 tiny steps, a checkpoint every 4: long enough to kill mid-run, short enough to resume to the end
KILLABLE = {**FAST, "batch_size": 1, "epochs": 6, "save_every": 4, "keep_checkpoints": 2}


@pytest.fixture
def studio(tmp_path):
    from neat_studio.config import Workspace
    from neat_studio.studio import Studio

    st = Studio(Workspace(tmp_path / "ws").ensure(), model_spec="tiny")
    seed_data(st)
    yield st
    for r in st.store.list_runs():
        if r["status"] in ("running", "queued") and r.get("pid"):
            JobRunner._signal(r["pid"], signal.SIGKILL)
    st.close()


def test_sigkilled_trainer_is_failed_then_resumes_from_its_last_checkpoint(studio):
    rid = studio.start_training(KILLABLE, actor="alice")
    run_dir = studio.workspace.runs / rid
    ck = wait_for(lambda: JobRunner.latest_checkpoint(run_dir), timeout=150, every=0.1)
    pid = studio.store.get_run(rid)["pid"]
    os.killpg(pid, signal.SIGKILL)  # the whole trainer, mid-run, without warning
    p = studio.jobs.wait(rid, timeout=60)
    assert p["status"] == "failed" and p["error"], p
    assert p["step"] < p["total_steps"] and p["checkpoint"]
    killed_ck = int(ck.name.split("-")[1])
    assert killed_ck >= 4 and killed_ck % 4 == 0
    studio.resume_training(rid, actor="alice")
    assert studio.store.get_run(rid)["status"] == "running" and studio.store.get_run(rid)["error"] is None
    p = studio.jobs.wait(rid, timeout=150)
    assert p["status"] == "finished", p["error"] or p["log_tail"]
    assert p["step"] == p["total_steps"] and p["progress"] == 1.0 and p["final"]
    assert [r["step"] for r in p["metrics"]] == list(range(1, p["total_steps"] + 1))
    resumed = [e for e in p["events"] if e["event"] == "resumed"]
    assert resumed, p["events"]
    assert studio.store.active_run() is None


def test_unwritable_runs_folder_is_a_clear_error_and_records_nothing(studio):
    runs = studio.workspace.runs
    shutil.rmtree(runs)
    runs.write_text("not a folder")  # as root chmod 0o500 would not stop writes; a file in its place does
    before = studio.store.counts()
    t0 = time.time()
    with pytest.raises(JobError, match="runs folder .* is not writable") as e:
        studio.start_training(FAST, actor="alice")
    assert str(runs) in str(e.value) and "nothing was started" in str(e.value)
    assert studio.store.counts() == before  # no snapshot, no run recorded
    assert studio.store.active_run() is None and time.time() - t0 < 30
