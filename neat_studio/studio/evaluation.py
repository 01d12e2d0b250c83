"""Evaluation services: the shipped and uploaded prompt sets, evaluation jobs and their reports. A mixin of Studio (see
the package docstring)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable


class EvaluationMixin:
    # -- evaluation ----------------------------------------------------------------------------------------
    def eval_set_choices(self) -> list[str]:
        """Standard evaluation sets the studio ships (data/evalsets/<name>.jsonl; present in every clone)."""
        from ..evalsets import SET_NAMES, SHIPPED_DIR

        return [n for n in SET_NAMES if (SHIPPED_DIR / f"{n}.jsonl").is_file()]

    def evaluation_sets(self, chosen: Iterable[str] = (), own_file: str | Path | None = None,
                        expected: str | None = None, actor: str = "local") -> dict[str, str]:
        """{set name: standard set name or file} for `start_evaluation`: the chosen standard sets plus a user's own
        prompt file. The file is either a set file (JSONL rows with "prompt" and "expected": refuse | comply), used
        as it is, or any prompt file the evaluation reads (CSV / JSONL / JSON with a prompt column) together with
        `expected` (what every prompt of it should get: "refuse" or "comply"); such a file is turned into a set file
        under <workspace>/uploads/evalsets/. ValueError (nothing started, nothing written) when a set is unknown
        or the file cannot be used."""
        import re

        from ..evalsets import SET_NAMES, load_prompt_set, make_rows, read_prompts, write_jsonl

        chosen = [c for c in (chosen or []) if c]
        unknown = [c for c in chosen if c not in SET_NAMES]
        if unknown:
            raise ValueError(f"unknown evaluation set(s) {', '.join(map(repr, unknown))}: choose from "
                             f"{', '.join(SET_NAMES)} or give a set file")
        sets = {c: c for c in chosen}
        if not own_file:
            if expected:
                raise ValueError("choose your prompt file too (or clear 'expected behaviour')")
            return sets
        src = Path(own_file)
        if not src.is_file():
            raise ValueError(f"the set file {src.name} is missing (upload it again)")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.name.removesuffix(".gz").rsplit(".", 1)[0]).strip("_.")[:60]
        name = name or "own"
        if name in sets or name in SET_NAMES:
            name = f"{name}-own"
        if expected not in (None, "", "refuse", "comply"):
            raise ValueError(f"expected behaviour must be refuse or comply, not {expected!r}")
        try:
            if expected:
                # without split marks: a user's own set is evaluated whole (evalsets.splits_apply)
                rows = [{k: v for k, v in r.items() if k != "split"}
                        for r in make_rows(read_prompts(src), expected, src.name)]
                out = self.workspace.root / "uploads" / "evalsets" / f"{name}-{expected}.jsonl"
                out.parent.mkdir(parents=True, exist_ok=True)
                write_jsonl(out, rows)
                self.store.log_event(actor, "eval_set_file", "evaluation", name,
                                     {"source": src.name, "expected": expected, "prompts": len(rows),
                                      "path": str(out)})
                sets[name] = str(out)
            else:
                if not load_prompt_set(src, limit=1):
                    raise ValueError("no prompts in it")
                sets[name] = str(src)
        except (ValueError, OSError, UnicodeDecodeError) as e:
            hint = "" if expected else (" A file without an 'expected' field per row needs the expected behaviour "
                                        "of its prompts (refuse or comply).")
            raise ValueError(f"cannot use {src.name} as an evaluation set: {e}.{hint}") from None
        return sets

    def start_evaluation(self, specs: list[str], sets: list[str] | dict, *, out_dir: str | Path | None = None,
                         actor: str = "local", **kw) -> str:
        """Run `evaluate.evaluate(specs, sets, out_dir, **kw)` in a background thread; returns an eval id for
        `evaluation_status`. `sets`: standard names or {name: file}. Default out_dir:
        <workspace>/reports/<time>-<eval id>."""
        import time as _time
        import uuid

        specs = [s for s in specs if s]
        if not specs:
            raise ValueError("choose at least one model")
        sets = dict(sets) if isinstance(sets, dict) else {s: s for s in sets}
        if not sets and not kw.get("pairs_path"):
            raise ValueError("choose at least one evaluation set")
        eid = uuid.uuid4().hex[:8]
        out = Path(out_dir) if out_dir else self.workspace.root / "reports" / f"{_time.strftime('%Y%m%d-%H%M%S')}-{eid}"
        jobs = self.__dict__.setdefault("_eval_jobs", {})
        job = {"id": eid, "status": "running", "stage": "starting", "done": 0, "total": 0, "out_dir": str(out),
               "specs": specs, "sets": sets, "error": None, "report": None, "started": _time.time()}
        jobs[eid] = job
        self.store.log_event(actor, "start_evaluation", "evaluation", eid, {"specs": specs, "sets": list(sets),
                                                                          "out_dir": str(out)})

        def progress(stage, done, total):
            job.update(stage=stage, done=done, total=total)

        def work():
            from ..evaluate import evaluate

            try:
                job["report"] = evaluate(specs, sets, out, workspace=self.workspace, progress=progress, **kw)
                job["status"] = "done"
            except Exception as e:  # noqa: BLE001 - shown to the user in plain words
                job.update(status="failed", error=f"{type(e).__name__}: {e}")
            job["finished"] = _time.time()

        threading.Thread(target=work, daemon=True, name=f"neat-eval-{eid}").start()
        return eid

    def start_run_evaluation(self, run_id: str, n_per_set: int | None = None, actor: str = "local") -> dict:
        """Check a run's final model against the model it was trained from (run_check.check_settings: the base
        first, every dev prompt of the standard sets unless `n_per_set` says fewer, the pairs, the run's training
        prompts kept out), into <run dir>/report/, in the background. {"id": the eval id, "label": the run's name,
        "base_label": the base model's}. ValueError for an unknown run, one without a final model yet, or one whose
        snapshot is gone."""
        from ..run_check import check_settings

        run = self.training_status(run_id)
        if not run.get("final"):
            raise ValueError(f"run {run_id} has no final model yet (status {run['status']})")
        base = (run.get("config") or {}).get("model") or "default"
        kw = check_settings(run["run_dir"], base, n_per_set, dtype=self.gen_dtype)
        eid = self.start_evaluation(kw.pop("models"), kw.pop("sets"), actor=actor, **kw)
        return {"id": eid, "label": self.model_label(run["run_dir"]), "base_label": self.model_label(base)}

    def start_compare_evaluation(self, spec_a: str | None, spec_b: str | None, sets: Iterable[str] = (),
                                 own_file: str | Path | None = None, expected: str | None = None,
                                 n_per_set: int | None = None, actor: str = "local") -> str:
        """Evaluate the Compare tab's models A and B (once when they are the same) on the chosen standard sets and a
        user's own set file (evaluation_sets; `expected` other than refuse / comply means the file's rows say it);
        returns the eval id. ValueError (nothing started) for a model outside the allowed folders (checked_model)
        or sets that cannot be used."""
        for spec in (spec_a, spec_b):
            if spec:
                self.checked_model(spec)
        chosen = self.evaluation_sets(list(sets or []), own_file or None,
                                      expected if expected in ("refuse", "comply") else None, actor=actor)
        return self.start_evaluation([spec_a, spec_b] if spec_a != spec_b else [spec_a], chosen,
                                     n_per_set=int(n_per_set or 10), max_new_tokens=64, actor=actor)

    def watch_evaluation(self, eval_id: str, every: float = 2.0):
        """The evaluation's status every `every` seconds while it runs, then its final status (finished or failed):
        what the Train and Compare tabs show while they wait."""
        import time

        while True:
            s = self.evaluation_status(eval_id)
            yield s
            if s["status"] != "running":
                return
            time.sleep(every)

    def evaluation_status(self, eval_id: str) -> dict:
        """{"status": running|done|failed, "stage", "done", "total", "error", "out_dir", "markdown", "charts",
        "overall", "model_names"}; overall: the report's verdict in one line per model (eval_metrics.overall_verdicts,
        [] before it is done); model_names: (label in the report, "run <id> · <name>" or the spec) per model."""
        job = self.__dict__.get("_eval_jobs", {}).get(eval_id)
        if job is None:
            raise ValueError(f"unknown evaluation {eval_id!r}")
        out = {k: v for k, v in job.items() if k != "report"}
        out["overall"] = (job.get("report") or {}).get("overall") or []
        out["model_names"] = (self.report_model_names(job["report"]) if job.get("report") else
                              [(sp, self.model_label(sp)) for sp in job["specs"]])
        d = Path(job["out_dir"])
        out["markdown"] = (d / "report.md").read_text(encoding="utf-8") if job["status"] == "done" and \
            (d / "report.md").exists() else None
        out["charts"] = sorted(str(p) for p in d.rglob("*.png")) if job["status"] == "done" else []
        return out
