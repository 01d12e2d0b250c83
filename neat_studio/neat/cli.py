"""`python -m neat_studio train ...` (registered by neat_studio.cli) and `python -m neat_studio.neat.cli ...`
(the same command standalone, e.g. for `accelerate launch --num_processes 2 --cpu -m neat_studio.neat.cli`).

Precedence of settings: NeatConfig defaults < --recipe < --config file < explicit flags < --set key=value.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    s = subparsers.add_parser("train", help="train a policy with NEAT (or rrhf / sft / dpo) on a snapshot",
                              description="Train on a frozen snapshot; writes a run directory (config.yaml, "
                                          "metrics.jsonl, checkpoints/, final/).")
    add_arguments(s)
    s.set_defaults(func=cmd_train)
    return s


def add_arguments(s: argparse.ArgumentParser) -> None:
    from .config import METHODS

    s.add_argument("--snapshot", help="snapshot directory (data.jsonl + manifest.json)")
    s.add_argument("--config", help="YAML file with NeatConfig keys")
    s.add_argument("--recipe", help="named preset of settings (neat_studio/neat/recipes.py), e.g. safety")
    s.add_argument("--method", choices=METHODS)
    s.add_argument("--model", help="model spec: default, tiny, a local HF dir or a run dir")
    s.add_argument("--negative", action="append", help="negative prompt name@version (repeatable)")
    s.add_argument("--positive", action="append", help="positive prompt name@version (repeatable, NEAT-PP)")
    s.add_argument("--out", help="run directory to create (default: <workspace>/runs/<time>-<method>)")
    s.add_argument("--resume", help="continue the run in RUN_DIR from its newest checkpoint (uses its config)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set lr=1e-5 --set lora=true")
    s.add_argument("--show-config", action="store_true", help="print the resolved config and exit")


def build_config(args):
    from .config import NeatConfig

    cfg = NeatConfig()
    if getattr(args, "recipe", None):
        from .recipes import apply_recipe

        apply_recipe(cfg, args.recipe)
    if args.config:
        import yaml

        over = NeatConfig.from_yaml(args.config)  # the file's own keys win over the recipe
        for key in yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}:
            setattr(cfg, key, getattr(over, key))
    for key, val in (("snapshot", args.snapshot), ("method", args.method), ("model", args.model),
                     ("output_dir", args.out)):
        if val is not None:
            setattr(cfg, key, val)
    if args.negative:
        cfg.negatives = list(args.negative)
    if args.positive:
        cfg.positives = list(args.positive)
    cfg.apply_overrides(args.set)
    # relative paths are relative to where the command runs: store them absolute, so that the run directory's
    # config.yaml (and --resume) works from anywhere
    for key in ("snapshot", "output_dir", "model"):
        v = getattr(cfg, key, None)
        if (isinstance(v, str) and v and v not in ("default", "tiny") and not os.path.isabs(v)
                and (key == "output_dir" or os.path.exists(v))):
            setattr(cfg, key, os.path.abspath(v))
    return cfg


def cmd_train(args) -> int:
    from ..config import Workspace
    from .config import NeatConfig
    from .trainer import train

    try:
        ws = Workspace.from_env(getattr(args, "workspace", None))
        if args.resume:
            given = [f"--{k.replace('_', '-')}" for k in ("snapshot", "config", "recipe", "method", "model", "negative",
                                                          "positive", "out", "set") if getattr(args, k, None)]
            if given:  # silently ignoring them would train something else than the user asked for
                from .config import ConfigError

                err = ConfigError(f"--resume continues the run with its own config.yaml; {', '.join(given)} cannot "
                                  "change it (start a new run instead)")
                err.neat_error_logged = True  # a misuse of the command, not an event of that run
                raise err
            result = train(None, resume=args.resume, workspace=ws)
        else:
            cfg = build_config(args)
            if args.show_config:
                print(cfg.to_yaml(), end="")
                return 0
            result = train(cfg, workspace=ws)
    except Exception as e:
        record_error(args, e)
        raise  # the caller prints "error: ..." and exits 2 (ConfigError etc.) or shows the traceback
    if int(os.environ.get("RANK", "0")) == 0:
        run_cfg = NeatConfig.from_yaml(Path(result["run_dir"]) / "config.yaml")
        if run_cfg.check and result.get("status") == "finished":
            result["check"] = check_finished_run(Path(result["run_dir"]), run_cfg.model, ws)
        print(json.dumps(result, indent=2))
    return 0


def check_finished_run(run_dir: Path, base: str, ws) -> dict:
    """The config key `check`: evaluate the finished run against the model it started from (run_check.py) and log
    `check_start` / `check` (the verdict per model, in words) to metrics.jsonl, so the Train tab can say what is
    happening and the run history what came out. A check that fails leaves the trained run as it is: it is logged
    (`check_failed`) and printed, and the command still succeeds."""
    from ..eval_metrics import overall_text
    from ..run_check import check_run

    def log(event: dict) -> None:
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**event, "time": round(time.time(), 3)}) + "\n")

    log({"event": "check_start", "base": base})
    try:
        report = check_run(run_dir, base, workspace=ws)
    except Exception as e:  # noqa: BLE001 - the run itself succeeded; say why the check did not
        msg = f"{type(e).__name__}: {e}"
        log({"event": "check_failed", "message": msg})
        print(f"warning: the run finished, but its check against {base} failed: {msg}", file=sys.stderr)
        return {"error": msg}
    verdict = [f"{o['model']}: {overall_text(o)}" for o in report["overall"]]
    worse = any(o["verdict"] == "worse" for o in report["overall"])
    log({"event": "check", "worse": worse, "verdict": verdict, "report": str(run_dir / "report" / "report.md")})
    return {"worse": worse, "verdict": verdict, "report": str(run_dir / "report" / "report.md")}


def record_error(args, exc: BaseException) -> None:
    """Write the `error` event of a run that failed outside the trainer's own logging (which covers
    NeatTrainer.run and the DPO loop): `{"event": "error", "message", "phase": "preflight"}` to
    RUN_DIR/metrics.jsonl, where RUN_DIR is --out (created if needed; nothing else is written, so it does not
    look like a started run) or the --resume run directory. Nothing is written without --out/--resume, for
    --show-config, into a directory that already holds another run, or by a process other than rank 0."""
    from .rundir import RunExistsError, write_preflight_error

    if getattr(exc, "neat_error_logged", False) or isinstance(exc, RunExistsError):
        return
    if int(os.environ.get("RANK", "0")) != 0 or getattr(args, "show_config", False):
        return
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():  # not a run directory: nothing of ours to write to
            return
    elif args.out:
        run_dir = Path(args.out)
    else:
        return
    from .config import ConfigError

    msg = str(exc) if isinstance(exc, (ConfigError, FileNotFoundError)) else f"{type(exc).__name__}: {exc}"
    try:
        write_preflight_error(run_dir, msg)
    except OSError as e:  # the error being reported matters more than its record
        print(f"warning: cannot write the error event to {run_dir}: {e}", file=sys.stderr)


def main(argv=None) -> int:
    from .config import ConfigError

    p = argparse.ArgumentParser(prog="python -m neat_studio.neat.cli", description=__doc__.splitlines()[0])
    p.add_argument("--workspace", help="workspace folder (default: $NEAT_STUDIO_HOME or ./data)")
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_train(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
