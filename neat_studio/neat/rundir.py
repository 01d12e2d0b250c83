"""The run's inputs and its directory: reading a frozen snapshot, resolving prompt references, the run-dir layout
(config.yaml, snapshot.sha256, metrics.jsonl, checkpoints/step-N/state.json), stop signals and seeds."""
from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

from .config import ConfigError, NeatConfig, split_scope

STATE = "state.json"


# -- inputs ---------------------------------------------------------------------------------------------------
def read_snapshot(path: str | Path) -> tuple[list[dict], dict, str]:
    """(rows, manifest, sha256 of data.jsonl) of a snapshot directory; ConfigError when unusable."""
    d = Path(path)
    data, man = d / "data.jsonl", d / "manifest.json"
    if not data.is_file() or not man.is_file():
        raise ConfigError(f"snapshot {d} not found (needs data.jsonl and manifest.json)")
    raw = data.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    try:
        manifest = json.loads(man.read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"snapshot {d} is not valid JSON: {e}") from None
    if manifest.get("sha256") and manifest["sha256"] != sha:
        raise ConfigError(f"snapshot {d}: data.jsonl does not match the sha256 in manifest.json (modified?)")
    return rows, manifest, sha


def resolve_prompt(manifest: dict, ref: str, kind: str) -> dict:
    """`name@version` or `name` (latest), optionally `:TAG` -> the manifest's prompt_library entry
    (+ "ref": "name@version", "scope": TAG or None)."""
    ref, scope = split_scope(ref)
    name, _, ver = str(ref).partition("@")
    lib = [e for e in manifest.get("prompt_library") or [] if e.get("name") == name]
    if ver:
        lib = [e for e in lib if str(e.get("version")) == ver]
    if not lib:
        have = sorted({f"{e.get('name')}@{e.get('version')}" for e in manifest.get("prompt_library") or []
                       if e.get("kind") == kind})
        raise ConfigError(f"{kind} prompt {ref!r} is not in the snapshot's prompt library "
                          f"(available: {', '.join(have) or 'none'})")
    e = max(lib, key=lambda e: int(e.get("version") or 0))
    if e.get("kind", kind) != kind:
        raise ConfigError(f"prompt {ref!r} is a {e.get('kind')} prompt, not a {kind} prompt")
    return {**e, "ref": f"{e['name']}@{e['version']}", "scope": scope}


class Stop(Exception):
    pass


class RunExistsError(ConfigError):
    """The output directory already holds a run (not this process's to write to)."""


def install_stop_signals(on_stop) -> dict:
    """Route SIGTERM/SIGINT to `on_stop(signal name)` (the loop then checkpoints and stops cleanly). Returns the
    previous handlers to restore; outside the main thread nothing is installed."""
    def handler(signum, frame):
        on_stop(signal.Signals(signum).name)

    old = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass
    return old


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


def _np_state(state=None):
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return None
    if state is None:
        return np.random.get_state()
    np.random.set_state(state)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    cks = [p for p in (Path(run_dir) / "checkpoints").glob("step-*") if (p / STATE).exists()]
    return max(cks, key=lambda p: int(p.name.split("-")[1]), default=None)


def new_run_dir(cfg: NeatConfig, workspace=None) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir)
    from ..config import Workspace

    ws = workspace or Workspace.from_env()
    return ws.runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.method}"


def holds_run(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds a (started) run: a config.yaml, or a metrics.jsonl that is not just the
    `phase: preflight` error events of attempts that never started (write_preflight_error)."""
    d = Path(run_dir)
    if (d / "config.yaml").exists():
        return True
    m = d / "metrics.jsonl"
    if not m.exists():
        return False
    lines = [line for line in m.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    try:
        objs = [json.loads(line) for line in lines]
    except ValueError:
        return True
    return not objs or not all(isinstance(o, dict) and o.get("event") == "error" and o.get("phase") == "preflight"
                               for o in objs)


def prepared_for(run_dir: str | Path, cfg: NeatConfig) -> bool:
    """Whether `run_dir` was prepared for exactly this run and never started: its config.yaml holds `cfg` (as the
    studio's JobRunner writes it before launching `train --config RUN_DIR/config.yaml`), and it has no checkpoint,
    no final model and no event but preflight errors."""
    d = Path(run_dir)
    try:
        same = NeatConfig.from_yaml(d / "config.yaml").to_dict() == cfg.to_dict()
    except (OSError, ValueError):
        return False
    if not same or (d / "final").exists() or any((d / "checkpoints").glob("step-*")):
        return False
    m = d / "metrics.jsonl"
    if not m.exists():
        return True
    try:
        objs = [json.loads(line) for line in m.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError:
        return False
    return all(isinstance(o, dict) and o.get("event") == "error" and o.get("phase") == "preflight" for o in objs)


def write_preflight_error(run_dir: str | Path, message: str) -> Path:
    """Append `{"event": "error", "message", "phase": "preflight"}` to RUN_DIR/metrics.jsonl (creating RUN_DIR):
    the record of an attempt that failed before training. Writes nothing else, so the directory still does not
    look like a started run (holds_run stays False unless it already held one)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    m = d / "metrics.jsonl"
    with open(m, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "error", "message": str(message), "phase": "preflight",
                            "time": round(time.time(), 3)}) + "\n")
    return m


def prepare_run_dir(cfg: NeatConfig, run_dir: Path, sha256: str, main: bool = True) -> None:
    if not main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(run_dir / "config.yaml")
    (run_dir / "snapshot.sha256").write_text(sha256 + "\n")
