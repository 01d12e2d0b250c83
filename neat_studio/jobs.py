"""Training jobs: start, supervise, stop, resume and re-attach the trainer subprocess of a workspace.

`JobRunner(studio)` is owned by one app process (the one holding the store). A job is one training run:

- `start(config, actor) -> run_id`: freezes a snapshot (studio.snapshot) with the config's data filters, records
  the run (store.create_run, atomically refused while another run is queued/running), creates
  `workspace.runs/<run_id>/` and launches ``[sys.executable, "-m", "neat_studio", "train", --snapshot, --out,
  --method, --negative.., --set key=value..]`` with `subprocess.Popen` (no shell), stdout+stderr appended to
  `RUN_DIR/train.log`, in a NEW SESSION (its own process group: a Ctrl-C of the app does not reach it and an app
  restart leaves it running). pid and status "running" go to the store.
- A supervisor thread waits for the process and writes the outcome (finished / stopped / failed + plain-words
  error, final metrics) to the store. What happened is read from the `metrics.jsonl` events written SINCE this
  launch (the byte offset at launch is kept in `RUN_DIR/studio_launch.json`), then from the exit code.
- `stop(run_id)`: SIGTERM to the process group (the trainer finishes its step, checkpoints, logs "stopped",
  exits 0). When it is still alive after `stop_timeout` seconds: SIGKILL, recorded in the audit log and in the
  run's `error` ("killed after N s"); the run is then "stopped" at its last checkpoint (if any).
- `resume(run_id)`: a stopped or failed run with a checkpoint continues in the same run directory
  (`train --resume RUN_DIR`), same run id.
- `poll(run_id) -> dict`: status, progress fraction, ETA, metric rows (metrics.jsonl parsed incrementally;
  a torn last line is left for the next poll), events, last log lines and the error in plain words.
- `reattach()` (called once when the app starts): every run marked queued/running whose pid is alive AND whose
  command line is the one we launched (psutil) is supervised again (polled, since it is no longer our child);
  otherwise the run is closed from its events (finished/stopped/error written before the app came back) or
  marked "failed" with "process vanished".

Reading a run directory (metrics, log, the failure in plain words, how a launch ended) is neat_studio.run_files;
splitting a job config into trainer settings and snapshot filters is neat_studio.job_config. The time estimate of a
run lives beside its config: neat_studio.neat.estimate.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .config import REPO_ROOT
from .job_config import split_config
from .neat.estimate import estimate_time
from .run_files import (
    LOG_FILE,
    METRICS_FILE,
    MetricsReader,
    explain_error,
    latest_checkpoint,
    outcome,
    parse_metrics,
    tail_lines,
)

# the run-directory readers are re-exported: callers have always found them here
__all__ = ["JobRunner", "JobError", "ACTIVE", "LAUNCH_FILE", "MetricsReader", "explain_error", "parse_metrics",
           "tail_lines"]

LAUNCH_FILE = "studio_launch.json"
ACTIVE = ("queued", "running")


class JobError(RuntimeError):
    """A job request that cannot be done now (another run is active, nothing to resume, ...); says why."""


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        import psutil

        p = psutil.Process(int(pid))
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, ...
        return False


def _cmdline(pid: int) -> list[str] | None:
    try:
        import psutil

        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.cmdline()
    except Exception:  # noqa: BLE001
        return None


class JobRunner:
    """Supervises the training subprocess of one workspace (see the module docstring)."""

    def __init__(self, studio, *, stop_timeout: float = 180.0, trainer_cmd: list[str] | None = None,
                 poll_interval: float = 1.0):
        """`trainer_cmd`: the command prefix that runs `neat_studio train` (default
        ``[sys.executable, "-m", "neat_studio"]``); `stop_timeout`: seconds between SIGTERM and SIGKILL."""
        self.studio = studio
        self.store = studio.store
        self.workspace = studio.workspace
        self.stop_timeout = float(stop_timeout)
        self.trainer_cmd = list(trainer_cmd or [sys.executable, "-m", "neat_studio"])
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._stops: dict[str, dict] = {}
        self._readers: dict[str, MetricsReader] = {}
        self._closed = False

    # .. public API ..........................................................................................
    def start(self, config: dict, actor: str = "local") -> str:
        """Freeze a snapshot and launch a training run; returns the run id. JobError when another run is active;
        ValueError for a config that cannot work (nothing is recorded then)."""
        train_cfg, filters, name, snapshot_id = self.split_config(config)
        with self._lock:
            self._refuse_if_active()
            self._check_runs_writable()  # before anything is frozen or recorded
            if snapshot_id:
                snap = self.store.get_snapshot(snapshot_id)
                if snap is None:
                    raise ValueError(f"unknown snapshot {snapshot_id!r}")
                snap_dir = Path(snap["path"])
            else:
                manifest = self.studio.snapshot(actor=actor, **filters)
                snapshot_id = manifest["snapshot_id"]
                snap_dir = Path(manifest.get("path") or self.workspace.snapshots / snapshot_id)
            record = {**train_cfg, "data": filters, "snapshot_path": str(snap_dir)}
            try:
                run_id = self.store.create_run(name or f"{train_cfg['method']} on {snapshot_id}", train_cfg["method"],
                                               record, actor=actor, snapshot_id=snapshot_id, status="queued",
                                               require_idle=True)
            except RuntimeError as e:
                raise JobError(f"{e}. Stop it or wait for it to finish.") from None
            run_dir = self.workspace.runs / run_id
            # the run is launched with ONE file, its config.yaml (every setting, references pinned, paths absolute):
            # the same file `train --recipe/--set ... --out RUN_DIR` writes, and what --resume reads back
            from .neat.config import NeatConfig

            cfg = NeatConfig.from_dict({**train_cfg, "snapshot": str(snap_dir), "output_dir": str(run_dir)})
            argv = self.trainer_cmd + ["--workspace", str(self.workspace.root), "train",
                                       "--config", str(run_dir / "config.yaml")]
            try:
                run_dir.mkdir(parents=True, exist_ok=False)
                cfg.to_yaml(run_dir / "config.yaml")
                proc = self._launch(run_id, run_dir, argv, actor)
            except OSError as e:
                self.store.update_run(run_id, actor=actor, status="failed", run_dir=str(run_dir),
                                      error=f"the trainer could not be started: {e}")
                raise JobError(f"the trainer could not be started: {e}") from None
            self.store.update_run(run_id, actor=actor, status="running", pid=proc.pid, run_dir=str(run_dir))
            self._supervise(run_id, proc=proc)
        return run_id

    def stop(self, run_id: str, actor: str = "local", *, wait: bool = False, timeout: float | None = None) -> dict:
        """Ask a running job to stop (SIGTERM; SIGKILL after `timeout` or the runner's stop_timeout). Returns
        immediately with the run's poll() unless `wait`."""
        run = self._get(run_id)
        if run["status"] not in ACTIVE:
            raise JobError(f"run {run_id} is not running (status {run['status']})")
        timeout = self.stop_timeout if timeout is None else float(timeout)
        pid = run.get("pid")
        with self._lock:
            if run_id in self._stops:
                return self.poll(run_id)
            if not self._is_ours(run):
                self._finish(run_id, None)
                return self.poll(run_id)
            self._stops[run_id] = {"at": time.time(), "actor": actor, "killed": False, "timeout": timeout}
        self.store.log_event(actor, "stop_run", "run", run_id, {"pid": pid, "signal": "SIGTERM", "timeout_s": timeout})
        self._append_log(run_id, f"[studio] stop requested by {actor}: SIGTERM sent to pid {pid}")
        self._signal(pid, signal.SIGTERM)
        threading.Thread(target=self._escalate, args=(run_id, pid, timeout), daemon=True,
                         name=f"neat-stop-{run_id}").start()
        if wait:
            self.wait(run_id, timeout=timeout + 30)
        return self.poll(run_id)

    def resume(self, run_id: str, actor: str = "local") -> str:
        """Continue a stopped or failed run from its newest checkpoint in the same run directory."""
        run = self._get(run_id)
        with self._lock:
            if run["status"] in ACTIVE:
                raise JobError(f"run {run_id} is already {run['status']}")
            if run["status"] == "finished":
                raise JobError(f"run {run_id} has finished; start a new run to train further")
            self._refuse_if_active()
            run_dir = Path(run.get("run_dir") or self.workspace.runs / run_id)
            if self.latest_checkpoint(run_dir) is None:
                raise JobError(f"run {run_id} has no checkpoint to resume from (it stopped before its first "
                               "checkpoint); start a new run instead")
            argv = self.trainer_cmd + ["--workspace", str(self.workspace.root), "train", "--resume", str(run_dir)]
            try:
                proc = self._launch(run_id, run_dir, argv, actor)
            except OSError as e:
                raise JobError(f"the trainer could not be started: {e}") from None
            self.store.update_run(run_id, actor=actor, status="running", pid=proc.pid, error=None, finished_at=None)
            self.store.log_event(actor, "resume_run", "run", run_id, {"pid": proc.pid})
            self._supervise(run_id, proc=proc)
        return run_id

    def poll(self, run_id: str, n_log: int = 30) -> dict:
        """Everything the UI shows about a run (see the module docstring)."""
        run = self._get(run_id)
        run_dir = Path(run["run_dir"]) if run.get("run_dir") else None
        reader = self._reader(run_id, run_dir)
        rows = reader.curve() if reader else []
        events = [{k: v for k, v in e.items() if k != "_offset"} for e in (reader.events if reader else [])]
        log = tail_lines(run_dir / LOG_FILE, n_log) if run_dir else []
        status = run["status"]
        last = rows[-1] if rows else {}
        total = last.get("total_steps") or (run.get("final_metrics") or {}).get("total_steps")
        step = last.get("step", 0) or 0
        if status == "finished":
            progress = 1.0
        elif total:
            progress = max(0.0, min(1.0, step / total))
        else:
            progress = 0.0
        eta = None
        if status in ACTIVE and last.get("eta_s") is not None:
            age = max(0.0, time.time() - self._mtime(run_dir / METRICS_FILE)) if run_dir else 0.0
            eta = max(0.0, float(last["eta_s"]) - age)
        error = run.get("error")
        if status == "failed" and not error:
            error = explain_error(log, events)
        stop = self._stops.get(run_id)
        phase = self._phase(status, rows, events, stop)
        return {"run_id": run_id, "status": status, "phase": phase, "stopping": bool(stop) and status in ACTIVE,
                "progress": progress, "step": step, "total_steps": total, "eta_s": eta,
                "elapsed_s": last.get("elapsed_s"), "metrics": rows, "events": events, "log_tail": log,
                "error": error, "final_metrics": run.get("final_metrics"), "run_dir": str(run_dir) if run_dir else None,
                "checkpoint": str(self.latest_checkpoint(run_dir) or "") or None if run_dir else None,
                "final": str(run_dir / "final") if run_dir and (run_dir / "final" / "config.json").exists() else None,
                "method": run.get("method"), "name": run.get("name"), "config": run.get("config"),
                "snapshot_id": run.get("snapshot_id"), "pid": run.get("pid"), "started_at": run.get("started_at"),
                "finished_at": run.get("finished_at"), "bad_lines": reader.bad_lines if reader else 0}

    def reattach(self, actor: str = "system") -> list[dict]:
        """On app start: supervise our still-running trainers again; close runs whose process is gone.
        Returns [{"run_id", "action": "reattached" | "closed", "status"}]."""
        out = []
        for run in self.store.list_runs(limit=1000):
            if run["status"] not in ACTIVE:
                continue
            rid = run["id"]
            with self._lock:
                if rid in self._threads and self._threads[rid].is_alive():
                    continue
                if self._is_ours(run):
                    self._supervise(rid, pid=int(run["pid"]))
                    out.append({"run_id": rid, "action": "reattached", "status": run["status"]})
                    continue
            st = self._finish(rid, None, actor=actor)
            out.append({"run_id": rid, "action": "closed", "status": st})
        return out

    def wait(self, run_id: str, timeout: float | None = None) -> dict:
        """Block until the run is no longer active (or timeout); returns poll()."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            t = self._threads.get(run_id)
            if t is not None:
                t.join(timeout=0.2 if deadline is None else max(0.0, min(0.2, deadline - time.time())))
            run = self._get(run_id)
            if run["status"] not in ACTIVE and (t is None or not t.is_alive()):
                return self.poll(run_id)
            if deadline is not None and time.time() >= deadline:
                return self.poll(run_id)
            if t is None:
                time.sleep(0.2)

    def estimate_time(self, config: dict, n_prompts: int, tag_counts: dict | None = None) -> dict:
        return estimate_time(config, n_prompts, self.workspace, tag_counts=tag_counts)

    def active(self) -> dict | None:
        return self.store.active_run()

    def close(self, *, detach: bool = True) -> None:
        """Stop supervising (the app is shutting down). Trainers keep running (they are in their own session)
        and are re-attached by the next app; with detach=False they are stopped (SIGTERM) first."""
        with self._lock:
            self._closed = True
            procs = dict(self._procs)
        if not detach:
            for rid, p in procs.items():
                if p.poll() is None:
                    self._signal(p.pid, signal.SIGTERM)

    latest_checkpoint = staticmethod(latest_checkpoint)  # run_files.latest_checkpoint, as callers know it

    # .. config ...............................................................................................
    def split_config(self, config: dict) -> tuple[dict, dict, str | None, str | None]:
        """`job_config.split_config` against this workspace's library."""
        return split_config(self.store, config)

    # .. internals ............................................................................................
    def _get(self, run_id: str) -> dict:
        run = self.store.get_run(run_id)
        if run is None:
            raise ValueError(f"unknown run id {run_id!r}")
        return run

    def _check_runs_writable(self) -> None:
        """JobError in plain words when the runs folder cannot hold a new run directory (a file in its place, a
        read-only disk, no permission). Probes by creating and removing a folder, so it holds as root too."""
        runs = Path(self.workspace.runs)
        probe = runs / f".write-probe-{os.getpid()}-{threading.get_ident()}"
        try:
            runs.mkdir(parents=True, exist_ok=True)
            probe.mkdir()
            (probe / "probe").write_bytes(b"ok")
        except OSError as e:
            raise JobError(f"the runs folder {runs} is not writable ({e.strerror or e}); nothing was started. "
                           "Fix its permissions or free disk space, then start again.") from None
        finally:
            try:
                (probe / "probe").unlink(missing_ok=True)
                probe.rmdir()
            except OSError:
                pass

    def _refuse_if_active(self) -> None:
        act = self.store.active_run()
        if act:
            raise JobError(f"run {act['id']} ({act['name']}) is {act['status']}: one training run at a time per "
                           "workspace. Stop it or wait for it to finish.")

    def _launch(self, run_id: str, run_dir: Path, argv: list[str], actor: str) -> subprocess.Popen:
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = run_dir / METRICS_FILE
        offset = metrics.stat().st_size if metrics.exists() else 0
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env["NEAT_STUDIO_HOME"] = str(self.workspace.root)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
            env.setdefault(k, v)
        with open(run_dir / LOG_FILE, "ab") as log:
            log.write(f"[studio] {time.strftime('%Y-%m-%d %H:%M:%S')} {actor} launches: "
                      f"{' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=str(REPO_ROOT), env=env, start_new_session=True, close_fds=True)
        (run_dir / LAUNCH_FILE).write_text(json.dumps({"run_id": run_id, "pid": proc.pid, "argv": argv,
                                                       "metrics_offset": offset, "started": time.time()}))
        with self._lock:
            self._procs[run_id] = proc
            self._stops.pop(run_id, None)
        return proc

    def _supervise(self, run_id: str, proc: subprocess.Popen | None = None, pid: int | None = None) -> None:
        t = threading.Thread(target=self._watch, args=(run_id, proc, pid), daemon=True, name=f"neat-job-{run_id}")
        self._threads[run_id] = t
        t.start()

    def _watch(self, run_id: str, proc: subprocess.Popen | None, pid: int | None) -> None:
        rc = None
        if proc is not None:
            rc = proc.wait()
        else:
            while _pid_alive(pid) and not self._closed:
                time.sleep(self.poll_interval)
            if self._closed:
                return
        if self._closed and proc is not None:
            return
        try:
            self._finish(run_id, rc)
        except Exception as e:  # noqa: BLE001 - never let the supervisor die silently
            try:
                self.store.update_run(run_id, status="failed", error=f"supervisor error: {type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001
                pass

    def _launch_info(self, run_dir: Path | None) -> dict:
        try:
            return json.loads((run_dir / LAUNCH_FILE).read_text()) if run_dir else {}
        except (OSError, ValueError):
            return {}

    def _is_ours(self, run: dict) -> bool:
        """The run's pid is alive and runs the command we launched for it (not a reused pid)."""
        pid = run.get("pid")
        if not _pid_alive(pid):
            return False
        cmd = _cmdline(pid)
        if not cmd:
            return False
        run_dir = run.get("run_dir")
        info = self._launch_info(Path(run_dir)) if run_dir else {}
        if info.get("argv") and info.get("pid") == pid:
            return cmd == info["argv"]
        return bool(run_dir) and str(run_dir) in cmd and "train" in cmd and any("neat_studio" in c for c in cmd)

    def _finish(self, run_id: str, rc: int | None, actor: str = "system") -> str:
        """Write the outcome of the run's last launch to the store; returns the status."""
        run = self._get(run_id)
        run_dir = Path(run["run_dir"]) if run.get("run_dir") else None
        info = self._launch_info(run_dir)
        status, error, fm = outcome(run_dir, int(info.get("metrics_offset") or 0), self._stops.get(run_id), rc)
        fields: dict[str, Any] = {"status": status, "final_metrics": fm, "error": error}
        self.store.update_run(run_id, actor=actor, **fields)
        self._append_log(run_id, f"[studio] {time.strftime('%Y-%m-%d %H:%M:%S')} run {status}"
                         + (f" (exit code {rc})" if rc is not None else "") + (f": {error}" if error else ""))
        with self._lock:
            self._procs.pop(run_id, None)
            self._stops.pop(run_id, None)
        return status

    def _escalate(self, run_id: str, pid: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            proc = self._procs.get(run_id)
            alive = (proc.poll() is None) if proc is not None else _pid_alive(pid)
            if not alive:
                return
            time.sleep(0.2)
        proc = self._procs.get(run_id)
        if (proc.poll() is None) if proc is not None else _pid_alive(pid):
            st = self._stops.get(run_id)
            if st is not None:
                st["killed"] = True
            self._append_log(run_id, f"[studio] no exit {timeout:.0f} s after SIGTERM: SIGKILL to pid {pid}")
            self.store.log_event("system", "kill_run", "run", run_id, {"pid": pid, "signal": "SIGKILL",
                                                                       "after_s": timeout})
            self._signal(pid, signal.SIGKILL)

    @staticmethod
    def _signal(pid: int | None, sig) -> None:
        if not pid:
            return
        try:
            os.killpg(int(pid), sig)   # the trainer leads its own process group (start_new_session)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _append_log(self, run_id: str, line: str) -> None:
        run = self.store.get_run(run_id)
        if run and run.get("run_dir"):
            try:
                with open(Path(run["run_dir"]) / LOG_FILE, "a", encoding="utf-8") as f:
                    f.write(line.rstrip("\n") + "\n")
            except OSError:
                pass

    def _reader(self, run_id: str, run_dir: Path | None) -> MetricsReader | None:
        if run_dir is None:
            return None
        with self._lock:
            r = self._readers.get(run_id)
            if r is None or r.path != run_dir / METRICS_FILE:
                r = self._readers[run_id] = MetricsReader(run_dir / METRICS_FILE)
        return r.read()

    @staticmethod
    def _mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return time.time()

    @staticmethod
    def _phase(status: str, rows: list[dict], events: list[dict], stop: dict | None) -> str:
        if status not in ACTIVE:
            return status
        if stop:
            return "stopping (finishing the step and writing a checkpoint)"
        last_ev = events[-1] if events else None
        if not rows and not events:
            return "starting: loading the model and data, sampling round 0"
        if last_ev and last_ev.get("event") == "check_start":  # config `check`: after the last step
            return f"trained; checking the final model against {last_ev.get('base')} on every dev prompt"
        if last_ev and last_ev.get("event") == "resumed" and (not rows
                                                              or rows[-1].get("step", 0) <= last_ev.get("step", 0)):
            return f"resumed at step {last_ev.get('step')}; sampling / training"
        if last_ev and last_ev.get("event") == "checkpoint" and rows and rows[-1].get("step") == last_ev.get("step"):
            nxt = (rows[-1].get("round", 0) or 0) + 1
            return f"checkpoint at step {last_ev.get('step')}; sampling round {nxt} or finishing"
        return "training"
