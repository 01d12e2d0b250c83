"""Application services shared by the CLI and the web UI.

`Studio` bundles one workspace: its store (the only read-write DuckDB connection of the process), the seed
data, imports/exports, and the generation policy model. The CLI and every UI tab call these methods, so the
two front ends cannot drift apart.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterable

from .config import Workspace
from .store import Store

Progress = Callable[[int, int], None] | None


class Studio:
    def __init__(self, workspace: Workspace | None = None, db_path: str | Path | None = None,
                 model_spec: str = "default"):
        self.workspace = (workspace or Workspace.from_env()).ensure()
        self.db_path = Path(db_path) if db_path else self.workspace.db_path
        self.store = Store(self.db_path)
        self.model_spec = model_spec
        self._lm = None
        self._lm_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def init(self, actor: str = "system", force: bool = False) -> dict:
        """Load our seed prompts, negative/positive presets and guidelines. Runs automatically on first start;
        idempotent (re-running adds nothing)."""
        from .seed import seed_guidelines, seed_presets, seed_records

        if not force and self.store.get_setting("seeded"):
            return {"seeded": False, "reason": "already initialised"}
        report = self.store.import_records(seed_records(), actor=actor)
        n_presets = 0
        for p in seed_presets():
            before = self.store.get_system_prompt(p["name"])
            v = self.store.save_system_prompt(p["name"], p["kind"], p["text"], p.get("params"), author=actor,
                                              tags=p.get("tags"))
            n_presets += int(before is None or before["version"] != v)
        if self.store.get_setting("guidelines") is None:
            self.store.set_setting("guidelines", seed_guidelines(), actor=actor)
        self.store.set_setting("seeded", True, actor=actor)
        return {"seeded": True, "prompts_added": report.get("prompts_added", 0), "presets_added": n_presets}

    # -- data in / out -----------------------------------------------------------------------------------
    def import_file(self, path: str | Path, fmt: str = "auto", actor: str = "local", **kw) -> dict:
        from .io.importers import read_records

        records = read_records(path, fmt, **kw)  # raises DataFormatError before anything is written
        return self.store.import_records(records, actor=actor)

    def export(self, kind: str, path: str | Path, **filters) -> int:
        from .io import exporters

        rows = self.store.listwise_rows(**filters)
        negatives = {p["text"] for p in self.store.list_system_prompts(kind="negative")}
        if kind == "trl":
            return exporters.export_trl_pairs(rows, path, negative_texts=negatives)
        if kind == "listwise":
            return exporters.export_listwise(rows, path)
        if kind == "parquet":
            return exporters.export_parquet(rows, path)
        raise ValueError(f"unknown export kind {kind!r}: use trl, listwise or parquet")

    def snapshot(self, actor: str = "local", **filters) -> dict:
        from .snapshot import create_snapshot

        return create_snapshot(self.store, self.workspace, filters, actor=actor)

    # -- generation --------------------------------------------------------------------------------------
    def policy(self):
        """The generation policy model, loaded once (thread-safe)."""
        with self._lm_lock:
            if self._lm is None:
                from .models import load_model

                self._lm = load_model(self.model_spec, workspace=self.workspace)
            return self._lm

    def use_model(self, spec: str) -> str:
        """Switch the generation policy (e.g. to an aligned run's model). Returns the new model id."""
        from .models import load_model

        lm = load_model(spec, workspace=self.workspace)
        with self._lm_lock:
            self._lm, self.model_spec = lm, spec
        return lm.model_id

    def generate(self, prompt_ids: Iterable[str], system_ref: str | None = None, params: dict | None = None,
                 actor: str = "local", progress: Progress = None, write: bool = True) -> list[dict]:
        """Sample responses for stored prompts, optionally under a system prompt `name@version`.

        Returns one dict per response (prompt_id, text, origin, model_id, params, seed); with `write` they are
        stored as candidates (one transaction)."""
        from .generation import GenParams, generate

        prompt_ids = list(prompt_ids)
        system_text, origin = None, "policy"
        gp = dict(params or {})
        if system_ref:
            sp = self.store.resolve_ref(system_ref)
            system_text = sp["text"]
            origin = f"{sp['kind']}:{sp['name']}@{sp['version']}"
            gp = {**(sp.get("params") or {}), **gp}
        prompts = [self.store.get_prompt(pid) for pid in prompt_ids]
        missing = [pid for pid, p in zip(prompt_ids, prompts) if p is None]
        if missing:
            raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
        lm = self.policy()
        fields = {k: gp[k] for k in ("temperature", "top_p", "max_new_tokens", "k", "seed") if k in gp}
        samples = generate(lm, [p["messages"] for p in prompts], system=system_text, params=GenParams(**fields),
                           progress=progress)
        rows = []
        for pid, ss in zip(prompt_ids, samples):
            for s in ss:
                rows.append({"prompt_id": pid, "text": s.text, "origin": origin, "model_id": lm.model_id,
                             "params": s.params, "seed": s.seed})
        if write and rows:
            ids = self.store.add_responses(rows, actor=actor)
            for r, i in zip(rows, ids):
                r["id"] = i
        return rows
