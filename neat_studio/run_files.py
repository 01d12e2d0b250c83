"""What a training run leaves in its directory, read back: `metrics.jsonl` (incrementally, a torn last line left for
the next read), the tail of `train.log`, the failure in plain words, the newest checkpoint, and how a launch ended
(`outcome`: from the events it wrote, the stop asked for and its exit code). Pure reading: no store, no processes."""
from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
TERMINAL_EVENTS = ("finished", "stopped", "error")


class MetricsReader:
    """Incremental, thread-safe reader of `metrics.jsonl`: only complete lines are parsed (a torn last line is
    read again on the next call); unparsable complete lines are counted and skipped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._offset = 0
        self._ino = None
        self.rows: list[dict] = []      # metric rows, in file order
        self.events: list[dict] = []    # event rows, each with "_offset" (byte offset of the line)
        self.bad_lines = 0

    def read(self) -> "MetricsReader":
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._reset(None)
                return self
            if st.st_ino != self._ino or st.st_size < self._offset:
                self._reset(st.st_ino)
            if st.st_size == self._offset:
                return self
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(st.st_size - self._offset)
            end = chunk.rfind(b"\n")
            if end < 0:
                return self  # only a torn line so far
            pos = self._offset
            for raw in chunk[: end + 1].split(b"\n")[:-1]:
                line_off = pos
                pos += len(raw) + 1
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    self.bad_lines += 1
                    continue
                if not isinstance(obj, dict):
                    self.bad_lines += 1
                elif "event" in obj:
                    self.events.append({**obj, "_offset": line_off})
                elif "step" in obj:
                    self.rows.append(obj)
            self._offset += end + 1
            return self

    def _reset(self, ino):
        self._ino, self._offset, self.rows, self.events, self.bad_lines = ino, 0, [], [], 0

    def curve(self) -> list[dict]:
        """Metric rows by step, the LAST row of a step winning (a resumed run may repeat steps)."""
        by_step: dict[int, dict] = {}
        for r in self.rows:
            try:
                by_step[int(r["step"])] = r
            except (TypeError, ValueError, KeyError):
                continue
        return [by_step[s] for s in sorted(by_step)]


def parse_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(metric rows, events) of a metrics.jsonl file, tolerating a torn last line."""
    r = MetricsReader(path).read()
    return r.curve(), r.events


def tail_lines(path: str | Path, n: int = 30, max_bytes: int = 64_000) -> list[str]:
    """The last `n` lines of a text file (decoded leniently); [] when it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    lines = [ln.rstrip() for ln in text.split("\n")]
    # tqdm progress bars rewrite a line with \r: keep the last state of each
    lines = [ln.split("\r")[-1] for ln in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines[-n:]


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): ?(.*)$")


def explain_error(log_lines: list[str], events: list[dict] | None = None, exit_code: int | None = None) -> str:
    """The reason a training process failed, in plain words, from its `error` event or its log."""
    msg = ""
    for e in reversed(events or []):
        if e.get("event") == "error" and e.get("message"):
            msg = str(e["message"])
            break
    if not msg:
        for ln in reversed(log_lines):
            s = ln.strip()
            if s.startswith("error:"):          # neat_studio.cli prints "error: <message>" and exits 2
                msg = s[len("error:"):].strip()
                break
            m = _EXC_LINE.match(s)
            if m:
                msg = f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}".rstrip(": ")
                break
    low = (msg + "\n" + "\n".join(log_lines[-10:])).lower()
    if "out of memory" in low or "memoryerror" in low or exit_code in (-signal.SIGKILL, 137) and not msg:
        hint = ("The training process ran out of memory or was killed by the system. Try a smaller batch size, "
                "shorter max lengths, fewer samples per prompt, or LoRA.")
        return hint + (f" ({msg})" if msg else "")
    m = re.match(r"(?:ModelLoadError|ConfigError): (.*)", msg)
    if m:
        msg = m.group(1)
    m = re.match(r"ModuleNotFoundError: No module named '([^']+)'", msg)
    if m:
        return f"A required Python module is missing: {m.group(1)} (is the trainer installed in this environment?)"
    if msg:
        return msg
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"The training process was killed by {name}."
    tail = next((ln.strip() for ln in reversed(log_lines) if ln.strip() and not ln.startswith("[studio]")), "")
    code = f" with exit code {exit_code}" if exit_code is not None else ""
    return f"The training process ended{code}" + (f"; its log ends with: {tail}" if tail else " without a message.")


def log_has_error(log_lines: list[str]) -> bool:
    """A log line that `explain_error` reads as the reason (an exception line, or the CLI's "error: ...")."""
    return any(_EXC_LINE.match(ln.strip()) or ln.strip().startswith("error:") for ln in log_lines)


def latest_checkpoint(run_dir: str | Path | None) -> Path | None:
    """The run's newest checkpoint whose save finished (it holds state.json), or None."""
    if not run_dir:
        return None
    cks = [p for p in (Path(run_dir) / "checkpoints").glob("step-*") if (p / "state.json").exists()]
    return max(cks, key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1,
               default=None)


def outcome(run_dir: Path | None, metrics_offset: int, stop: dict | None, rc: int | None
            ) -> tuple[str, str | None, dict | None]:
    """(status, error, final metrics) of a launch whose process has ended: its events since `metrics_offset` (the
    byte offset of metrics.jsonl at launch) decide first, then the stop asked for (``{"killed", "timeout"}``), then
    the exit code `rc` (None: the process vanished without one)."""
    rows, events = (parse_metrics(run_dir / METRICS_FILE) if run_dir else ([], []))
    mine = [e for e in events if e.get("_offset", 0) >= metrics_offset]
    term = next((e for e in reversed(mine) if e.get("event") in TERMINAL_EVENTS), None)
    log = tail_lines(run_dir / LOG_FILE, 60) if run_dir else []
    error = None
    if term is not None and term["event"] == "finished":
        status = "finished"
    elif term is not None and term["event"] == "stopped":
        status = "stopped"
    elif term is not None and term["event"] == "error":
        status, error = "failed", explain_error(log, [term], rc)
    elif stop is not None:
        status = "stopped"
        ck = latest_checkpoint(run_dir)
        where = f"; it can resume from {ck.name}" if ck else "; there is no checkpoint to resume from"
        if stop.get("killed"):
            error = f"did not stop within {stop['timeout']:.0f} s after SIGTERM and was killed (SIGKILL){where}"
        elif rc not in (0, None):
            error = f"stopped before it could write a checkpoint (exit code {rc}){where}"
    elif rc == 0 and run_dir and (run_dir / "final" / "config.json").exists():
        status = "finished"
    elif rc is None:
        status = "failed"
        why = explain_error(log, events=None) if log_has_error(log) else ""
        error = "process vanished" + (f" ({why})" if why else " (the app found no live trainer for this run)")
    else:
        status = "failed"
        error = explain_error(log, mine, rc)
        if rc and f"exit code {rc}" not in error:
            error += f" (exit code {rc})"
    fm = None
    if rows:
        last = rows[-1]
        fm = {k: last.get(k) for k in ("step", "total_steps", "loss", "rank_loss", "sft_loss", "rank_acc", "p_gap",
                                       "elapsed_s")}
        tps = [r["tokens_per_s"] for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
        fm["tokens_per_s"] = round(sum(tps) / len(tps), 2) if tps else None
    if run_dir:
        ck = latest_checkpoint(run_dir)
        fm = {**(fm or {}), "checkpoint": str(ck) if ck else None,
              "final": str(run_dir / "final") if (run_dir / "final" / "config.json").exists() else None}
    return status, error, fm
