"""Training services: options, recipes, estimates, start/stop/resume through jobs.JobRunner, run history. A mixin of
Studio (see the package docstring)."""
from __future__ import annotations

import threading
from pathlib import Path


class TrainingMixin:
    # -- training (jobs) -----------------------------------------------------------------------------------
    # Services of the Train and Compare tabs (neat_studio/ui/train.py, compare.py). neat_studio.jobs.JobRunner
    # supervises the trainer subprocess; compare models are cached here (at most COMPARE_CACHE at a time).
    COMPARE_CACHE = 2
    COMPARE_VOTES = ("A", "B", "tie", "both_bad")

    @property
    def jobs(self):
        """The workspace's JobRunner, created on first use; it re-attaches runs left running by an earlier app."""
        lock = self.__dict__.setdefault("_jobs_lock", threading.Lock())
        with lock:
            if self.__dict__.get("_jobs") is None:
                from ..jobs import JobRunner

                runner = JobRunner(self)
                runner.reattach()
                self.__dict__["_jobs"] = runner
            return self.__dict__["_jobs"]

    def close_jobs(self) -> None:
        """Stop supervising (trainers keep running and are re-attached by the next app)."""
        runner = self.__dict__.get("_jobs")
        if runner is not None:
            runner.close(detach=True)

    def training_options(self) -> dict:
        """Choices and defaults of the Train tab: methods, prompt versions (+ the newest negative and positive
        version, the default choice), tags, base models, NeatConfig defaults and help text."""
        from ..neat.config import DTYPES, METHODS, NeatConfig
        from ..neat.recipes import recipe_names
        from ..neat.preflight import bf16_supported

        allv = self.store.all_system_prompt_versions()
        return {"methods": list(METHODS), "dtypes": list(DTYPES), "auto_dtype": "bf16" if bf16_supported() else "fp32",
                "negatives": [v["ref"] for v in allv if v["kind"] == "negative"],
                "positives": [v["ref"] for v in allv if v["kind"] == "positive"],
                "newest_negative": self.newest_prompt_ref("negative"),
                "newest_positive": self.newest_prompt_ref("positive"),
                "tags": self.store.prompt_tags(), "models": self.model_choices(),
                "recipes": recipe_names(),
                "defaults": NeatConfig().to_dict(), "help": NeatConfig.fields_help()}

    TRAIN_FORM_KEY = "train_form:{user}"

    def remember_train_form(self, user: str, config: dict) -> None:
        """Keep the job config `user` last started a run with (the Train form starts from it next time)."""
        self.store.set_setting(self.TRAIN_FORM_KEY.format(user=user), dict(config), actor=user)

    def last_train_form(self, user: str) -> dict | None:
        return self.store.get_setting(self.TRAIN_FORM_KEY.format(user=user))

    def run_config(self, run_id: str) -> dict:
        """The job config a run was started with, complete (every NeatConfig value, its data filters and name), to
        start another run like it. ValueError for an unknown run."""
        from ..neat.config import NeatConfig

        run = self.store.get_run(run_id)
        if run is None:
            raise ValueError(f"unknown run {run_id!r}")
        stored = dict(run.get("config") or {})
        data = dict(stored.pop("data", None) or {})
        stored.pop("snapshot_path", None)
        known = NeatConfig().to_dict()
        cfg = known | {k: v for k, v in stored.items() if k in known}
        for k in ("snapshot", "output_dir"):
            cfg.pop(k, None)
        return {**cfg, "data": data, "name": run.get("name")}

    def recipe_config(self, name: str) -> dict:
        """A named recipe (neat/recipes.py) as a Train-tab config: its NeatConfig values, its system prompts pinned
        to the newest saved version of each name (scopes kept: `over_refusal@2:benign`) and its data filters."""
        from ..neat.config import split_scope
        from ..neat.recipes import recipe

        r = recipe(name)
        cfg = dict(r["config"])
        for key in ("negatives", "positives"):
            pinned = []
            for scoped in cfg.get(key) or []:
                ref, tag = split_scope(scoped)
                sp = self.store.resolve_ref(ref)  # ValueError when the workspace lacks that prompt
                pinned.append(f"{sp['name']}@{sp['version']}" + (f":{tag}" if tag else ""))
            cfg[key] = pinned
        cfg["data"] = {"split": "train", **r["data"]}
        return {"name": name, "description": r["description"], "config": cfg}

    def training_data_count(self, config: dict) -> int:
        """Training prompts (rows with >= 2 ranked responses, split train) the config's data filters select."""
        _, filters, _, _ = self.jobs.split_config(config)
        return len(self.store.listwise_rows(**filters))

    def estimate_training(self, config: dict) -> dict:
        """`jobs.estimate_time` for the config on the data it would freeze now (+ "n_prompts")."""
        _, filters, _, _ = self.jobs.split_config(config)
        rows = self.store.listwise_rows(**filters)
        tags: dict = {}
        for r in rows:
            for t in r.get("tags") or []:
                tags[t] = tags.get(t, 0) + 1
        n = len(rows)
        return {**self.jobs.estimate_time(config, n, tag_counts=tags), "n_prompts": n}

    def start_training(self, config: dict, actor: str = "local") -> str:
        return self.jobs.start(config, actor=actor)

    def stop_training(self, run_id: str, actor: str = "local") -> dict:
        return self.jobs.stop(run_id, actor=actor)

    def resume_training(self, run_id: str, actor: str = "local") -> str:
        return self.jobs.resume(run_id, actor=actor)

    def training_status(self, run_id: str) -> dict:
        return self.jobs.poll(run_id)

    def training_runs(self, limit: int = 50) -> list[dict]:
        """Run history, newest first, with duration_s (started -> finished, or -> now while running)."""
        from datetime import datetime, timezone

        out = []
        now = datetime.now(timezone.utc)
        for r in self.store.list_runs(limit=limit):
            def t(v):
                return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
            s, f = t(r.get("started_at")), t(r.get("finished_at"))
            r["duration_s"] = (((f or now) - s).total_seconds() if s else None)
            out.append(r)
        return out

    def run_report(self, run_id: str) -> dict:
        """A run's evaluation report (run_dir/report/) and its config: {"markdown", "charts", "report", "path",
        "config_yaml", "name", "model_names"}; markdown is None when the run has not been evaluated yet.
        `model_names`: (label in the report, the studio's name: "run <id> · <name>") per evaluated model."""
        run = self.store.get_run(run_id)
        if run is None:
            raise ValueError(f"unknown run id {run_id!r}")
        d = Path(run["run_dir"]) if run.get("run_dir") else None
        rep = d / "report" if d else None
        out = {"path": str(rep) if rep else None, "markdown": None, "charts": [], "report": None,
               "config_yaml": None, "name": run.get("name") or "", "model_names": []}
        if d is not None and (d / "config.yaml").exists():
            out["config_yaml"] = (d / "config.yaml").read_text(encoding="utf-8")
        if rep is not None and (rep / "report.md").exists():
            out["markdown"] = (rep / "report.md").read_text(encoding="utf-8")
            out["charts"] = sorted(str(p) for p in rep.rglob("*.png"))
            try:
                import json as _json

                out["report"] = _json.loads((rep / "report.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                pass
            out["model_names"] = self.report_model_names(out["report"])
        return out
