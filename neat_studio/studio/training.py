"""Training services: options, recipes, estimates, start/stop/resume through jobs.JobRunner, run history. A mixin of
Studio (see the package docstring)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from ..run_check import run_check
from .core import start_confirmation

# The Train form (ui/train.py): the hyper-parameters it shows (NeatConfig key, type of its value) and every setting by
# name. The form starts from DEFAULT_RECIPE's values over NeatConfig's defaults, the same values `train --recipe cpu`
# gives on the command line (one source: neat/recipes.py).
HYPER = (("rounds", int), ("epochs", int), ("k", int), ("k_neg", int), ("k_pos", int), ("lr", float),
         ("batch_size", int), ("grad_accum", int), ("max_steps", int), ("max_new_tokens", int),
         ("max_prompt_len", int), ("max_response_len", int), ("margin", float), ("sft_weight", float),
         ("save_every", int), ("seed", int), ("val_every", int))
DEFAULT_RECIPE = "cpu"
NO_RECIPE = "(none)"
FORM_KEYS = ("model", "method", "negatives", "positives", "annotated_only", "include_imported", "tags",
             "min_responses", "lora", "dtype", "name", "anchor", "rank_reduction", "recipe", "val_file", "select",
             "check", *(k for k, _ in HYPER))


def form_defaults() -> dict:
    """The Train form's starting values: NeatConfig's defaults with DEFAULT_RECIPE applied."""
    from ..neat.config import NeatConfig
    from ..neat.recipes import apply_recipe

    return apply_recipe(NeatConfig(), DEFAULT_RECIPE).to_dict()


def config_from_form(form: dict, recipe_cfg: dict | None = None, extra: dict | None = None) -> dict:
    """The job config (NeatConfig keys + data + name) of the form's values by name (FORM_KEYS; a missing one is
    empty). Settings the form does not show come from the chosen recipe (`recipe_cfg`) or, for a reused run, from
    `extra`. ValueError for a hyper-parameter that is not a number."""
    v = {k: form.get(k) for k in FORM_KEYS}
    cfg = dict(recipe_cfg or {}) | dict(extra or {})
    cfg.pop("data", None)
    cfg |= {"model": (v["model"] or "").strip() or "default", "method": v["method"],
            "negatives": list(v["negatives"] or []), "positives": list(v["positives"] or []),
            "lora": bool(v["lora"]), "dtype": v["dtype"] or "auto", "name": (v["name"] or "").strip() or None,
            "anchor": v["anchor"] or "none", "rank_reduction": v["rank_reduction"] or "sum",
            "val_file": (v["val_file"] or "").strip(), "select": v["select"] or "last", "check": bool(v["check"]),
            "data": {"annotated_only": bool(v["annotated_only"]), "include_imported": bool(v["include_imported"]),
                     "tags": list(v["tags"] or []), "split": "train", "min_responses": int(v["min_responses"] or 2)}}
    for key, kind in HYPER:
        if v[key] is not None and v[key] != "":
            cfg[key] = kind(v[key])
    if v["method"] != "neat":
        cfg["negatives"] = []
    if not cfg.get("k_pos"):
        cfg["positives"] = []
    return cfg


def form_from_config(cfg: dict) -> tuple[dict, dict]:
    """({form key: value} for every FORM_KEYS, the settings the form does not show) of a job config: what "reuse
    this run's config" and the remembered last settings put back. config_from_form(*form_from_config(c)) == c."""
    start, data = form_defaults(), dict(cfg.get("data") or {})
    data_defaults = {"annotated_only": False, "include_imported": True, "tags": [], "min_responses": 2}
    known = set(FORM_KEYS) | {"data", "snapshot_path", "snapshot", "output_dir"}
    form = {}
    for key in FORM_KEYS:
        if key == "recipe":
            form[key] = NO_RECIPE
        elif key in data_defaults:
            form[key] = data.get(key, data_defaults[key])
        else:
            form[key] = cfg.get(key, start.get(key))
    return form, {k: v for k, v in cfg.items() if k not in known}


def follow_newest(current: list | None, auto: list | None, newest: list, choices: list) -> list:
    """The prompt versions a choice holds after new versions were saved: while it still holds the default it was
    given (`auto`, or nothing) it takes the `newest`; a user's choice stays, less versions no longer in `choices`
    (nothing left: the newest)."""
    cur = list(current or [])
    if not cur or cur == list(auto or []):
        return list(newest)
    return [v for v in cur if v in choices] or list(newest)


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
        from ..neat.config import DTYPES, METHODS, SELECTS, NeatConfig
        from ..neat.recipes import recipe_names
        from ..neat.preflight import bf16_supported

        allv = self.store.all_system_prompt_versions()
        return {"methods": list(METHODS), "dtypes": list(DTYPES), "selects": list(SELECTS),
                "auto_dtype": "bf16" if bf16_supported() else "fp32",
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

    def train_config(self, form: dict, extra: dict | None = None) -> dict:
        """The job config of the Train form's values by name (config_from_form); the chosen recipe's settings that
        the form does not show (e.g. gen_batch_size) come from the recipe itself. ValueError for an unknown recipe
        or a hyper-parameter that is not a number."""
        name = form.get("recipe")
        recipe_cfg = self.recipe_config(name)["config"] if name and name != NO_RECIPE else None
        return config_from_form(form, recipe_cfg, extra)

    def recipe_form(self, name: str | None, negatives: list | None = None) -> dict:
        """What choosing a recipe puts in the Train form: {"values": {form key: value} of the method, the system
        prompts, the data rule (min_responses) and the hyper-parameters; "description": the recipe's (None for
        NO_RECIPE)}. The values are NeatConfig's defaults with the recipe's; the negative prompt versions stay
        `negatives` when the recipe names none of its own. ValueError for an unknown recipe."""
        from ..neat.config import NeatConfig

        defaults = NeatConfig().to_dict()
        c, data, description = dict(defaults), {}, None
        if name and name != NO_RECIPE:
            r = self.recipe_config(name)
            c.update(r["config"])
            data, description = r["config"]["data"], r["description"]
        mine = "negatives" in c and c["negatives"] != defaults.get("negatives")
        values = {"method": c["method"], "negatives": c["negatives"] if mine else negatives,
                  "positives": c["positives"], "min_responses": data.get("min_responses", 2),
                  "lora": c["lora"], "anchor": c["anchor"], "rank_reduction": c["rank_reduction"],
                  "val_file": c["val_file"], "select": c["select"], "check": c["check"],
                  **{k: c[k] for k, _ in HYPER}}
        return {"values": values, "description": description}

    def training_page(self, negatives: list | None = None, auto: list | None = None) -> dict:
        """What the Train tab shows when it is opened: {"runs": training_runs(), "shown": the active run, else the
        newest, else None; "options": training_options(); "negatives": the negative prompt versions the form
        holds now (follow_newest of the form's `negatives` and the default `auto` it was given); "negatives_auto":
        the default it gives now (the newest version)}. Runs re-attached after an app restart show up here."""
        runs = self.training_runs()
        active = self.jobs.active()
        opts = self.training_options()
        newest = [opts["newest_negative"]] if opts["newest_negative"] else []
        return {"runs": runs, "shown": active["id"] if active else (runs[0]["id"] if runs else None),
                "options": opts, "negatives": follow_newest(negatives, auto, newest, opts["negatives"]),
                "negatives_auto": newest}

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

    def estimate_form(self, form: dict, extra: dict | None = None) -> dict:
        """estimate_training of the Train form's config (train_config); ValueError when either refuses it."""
        return self.estimate_training(self.train_config(form, extra))

    def start_training(self, config: dict, actor: str = "local") -> str:
        return self.jobs.start(config, actor=actor)

    def start_form(self, form: dict, extra: dict | None = None, armed: dict | None = None, actor: str = "local",
                   now: float | None = None) -> dict:
        """Start button of the Train form: {"run_id": the started run or None, "message": "" or the question a
        long run asks first, "armed": what the next click passes back as `armed`}. The model is checked
        (checked_model: user-typed), a run estimated over 15 min starts on the second click with the same settings
        and data (start_confirmation), and the settings are remembered for `actor`'s next visit. ValueError /
        RuntimeError (nothing started) when the config or the start is refused."""
        cfg = self.train_config(form, extra)
        cfg["model"] = self.checked_model(cfg.get("model"))
        try:
            est = self.estimate_training(cfg)
        except ValueError:
            est = None  # starting says what is wrong
        ask = start_confirmation(cfg, est, armed, time.time() if now is None else now)
        if not ask["start"]:
            return {"run_id": None, "message": ask["message"], "armed": ask["armed"]}
        rid = self.start_training(cfg, actor=actor)
        self.remember_train_form(actor, cfg)  # the next visit starts from these settings
        return {"run_id": rid, "message": "", "armed": None}

    def stop_training(self, run_id: str, actor: str = "local") -> dict:
        return self.jobs.stop(run_id, actor=actor)

    def resume_training(self, run_id: str, actor: str = "local") -> str:
        return self.jobs.resume(run_id, actor=actor)

    def training_status(self, run_id: str) -> dict:
        return self.jobs.poll(run_id)

    def run_view(self, run_id: str, key: tuple | None = None) -> dict:
        """What the Train tab shows of a run: {"run": training_status(run_id), "key": what identifies the curves
        (run, number of metric rows, last step, status), "redraw": whether that differs from `key` (the curves
        shown), "error": "" or the error in words, "log": the log's last lines, "can_stop", "can_resume"}.
        ValueError for an unknown run."""
        p = self.training_status(run_id)
        rows = p["metrics"]
        n_val = sum(e.get("event") in ("val", "selected") for e in p.get("events") or [])
        new_key = (run_id, len(rows), rows[-1]["step"] if rows else None, p["status"], n_val)
        error = ""
        if p["error"]:
            error = ("Run failed: " if p["status"] == "failed" else "") + p["error"]
        active = p["status"] in ("running", "queued")
        return {"run": p, "key": new_key, "redraw": new_key != key, "error": error, "log": "\n".join(p["log_tail"]),
                "can_stop": active and not p["stopping"],
                "can_resume": p["status"] in ("stopped", "failed") and bool(p.get("checkpoint"))}

    def training_runs_changed(self, since: tuple | None = None) -> tuple[list[dict] | None, tuple]:
        """(training_runs(), their signature: id, status and error of each run) when the signature differs from
        `since` (what the caller saw last), else (None, since): the Train tab redraws its history only then."""
        runs = self.training_runs()
        sig = tuple((r["id"], r["status"], r.get("error"), r.get("check")) for r in runs)
        return (None, since) if sig == since else (runs, sig)

    def training_runs(self, limit: int = 50) -> list[dict]:
        """Run history, newest first, with duration_s (started -> finished, or -> now while running) and check: the
        verdict of the run's evaluation against its base ("" before one), from its report (run_check)."""
        from datetime import datetime, timezone

        out = []
        now = datetime.now(timezone.utc)
        for r in self.store.list_runs(limit=limit):
            def t(v):
                return datetime.fromisoformat(v.replace("Z", "+00:00")) if v else None
            s, f = t(r.get("started_at")), t(r.get("finished_at"))
            r["duration_s"] = (((f or now) - s).total_seconds() if s else None)
            r["check"] = run_check(r.get("run_dir"))
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
