"""Workspace layout and settings: the one place that knows where things live on disk."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED_DIR = REPO_ROOT / "data"  # our hand-written seed prompts and presets (tracked in git)


@dataclass(frozen=True)
class Workspace:
    """All state of one studio lives under `root` (default: <repo>/data).

    root/studio.duckdb   the store (owned read-write by the app process only)
    root/cache/models    cached safetensors copies (e.g. the default GGUF model converted once)
    root/snapshots/<id>  frozen curated data that training reads
    root/runs/<id>       training run directories
    root/exports         exported files
    """

    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "Workspace":
        root = root or os.environ.get("NEAT_STUDIO_HOME") or (REPO_ROOT / "data")
        return cls(Path(root).resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "studio.duckdb"

    @property
    def model_cache(self) -> Path:
        return self.root / "cache" / "models"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    def check(self) -> "Workspace":
        """ValueError when the workspace path is a file (a folder, or nothing yet, is fine)."""
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"the workspace {self.root} is a file, not a folder: pass a folder to --workspace "
                             f"(or NEAT_STUDIO_HOME)")
        return self

    def ensure(self) -> "Workspace":
        self.check()
        for p in (self.root, self.model_cache, self.snapshots, self.runs, self.exports):
            p.mkdir(parents=True, exist_ok=True)
        return self
