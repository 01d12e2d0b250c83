"""python -m neat_studio <command>: everything the web UI does, from a shell."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .io.importers import FORMATS


# commands that may create a workspace and its store; every other store command needs an existing one, so that a
# mistyped --workspace / --db is an error instead of a new, empty studio
_CREATES_STORE = {"init", "import"}


def _studio(args):
    from .config import Workspace
    from .studio import Studio

    ws = Workspace.from_env(getattr(args, "workspace", None)).check()
    db = getattr(args, "db", None)
    if getattr(args, "command", None) not in _CREATES_STORE:
        path = Path(db).resolve() if db else ws.db_path
        if not path.is_file():
            flag = f" --workspace {ws.root}" if getattr(args, "workspace", None) else ""
            raise ValueError(f"no studio store at {path} (workspace {ws.root}): check --workspace / --db / "
                             f"NEAT_STUDIO_HOME, or create one with `python -m neat_studio init{flag}`")
    return Studio(ws, db_path=db, model_spec=getattr(args, "model", None) or "default",
                  gen_dtype=getattr(args, "dtype", None) or "auto")


def _bar(desc):
    bar = tqdm(desc=desc, unit="it", file=sys.stderr, disable=not sys.stderr.isatty() and os.environ.get("CI"))

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, progress


def _print(obj):
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


# -- commands -------------------------------------------------------------------------------------------------
def cmd_init(args):
    with _studio(args) as st:
        _print(st.init(actor=args.actor, force=args.force))


def cmd_import(args):
    with _studio(args) as st:
        kw = {"prompt_column": args.prompt_column}
        if args.split:
            kw["split"] = args.split
        if args.tag:
            kw["tags"] = args.tag
        rep = st.import_file(args.path, args.format, actor=args.actor, **kw)
        _print(rep)
        from .store import pairs_unranked_note

        if rep.get("pairs_unranked"):
            print("note: " + pairs_unranked_note(rep["pairs_unranked"]), file=sys.stderr)
        from .studio import long_prompts_note

        if rep.get("long_prompt_ids"):
            print("warning: " + long_prompts_note(rep["long_prompt_ids"]), file=sys.stderr)
        if rep.get("split_kept"):
            print(f"note: {rep['split_kept']} prompt(s) were already stored with another split and kept it (an "
                  "import never moves a prompt); move them with `prompts split SPLIT ID...`", file=sys.stderr)


def cmd_prompts(args):
    """The Prompts tab from the command line: list (search / filters), add, tag, move to a split."""
    with _studio(args) as st:
        if args.action == "list":
            if args.limit < 1:
                raise ValueError(f"--limit must be >= 1, got {args.limit}")
            res = st.search_prompts(" ".join(args.values), semantic=args.semantic, tag=args.tag, split=args.split,
                                    source=args.source, limit=args.limit)
            _print({"total": res["total"], "mode": res["mode"],
                    "prompts": [{"id": r["id"], "text": r["messages"][-1]["content"], "tags": r.get("tags") or [],
                                 "split": r["split"], "source": r["source"],
                                 "responses": r.get("n_responses"), "annotators": r.get("n_annotators")}
                                for r in res["rows"]]})
        elif args.action == "add":
            _print(st.add_prompt(args.values[0] if args.values else "", tags=args.tag_list, split=args.split or "train",
                                 actor=args.actor))
        elif args.action == "tag":
            n = st.tag_prompts(args.values, args.tag_list, mode=args.mode, actor=args.actor)
            _print({"changed": n})
        else:  # split
            if not args.values:
                raise ValueError("give the split and at least one prompt id: prompts split test ID [ID ...]")
            n = st.set_prompt_split(args.values[1:], args.values[0], actor=args.actor)
            _print({"moved": n, "split": args.values[0]})


def cmd_export(args):
    with _studio(args) as st:
        filters = {}
        if args.split:
            filters["split"] = args.split
        if args.annotated_only:
            filters["annotated_only"] = True
        if args.trl_format != "auto" and args.kind != "trl":
            raise ValueError("--trl-format applies to the trl export only")
        r = st.export_details(args.kind, args.out, trl_format=args.trl_format, **filters)
        _print({"written": r["written"], "path": str(args.out), "kind": args.kind, "format": r["format"]})


def cmd_snapshot(args):
    with _studio(args) as st:
        filters = {"annotated_only": args.annotated_only, "include_imported": not args.no_imported}
        if args.min_responses is not None:
            if args.min_responses < 1:
                raise ValueError(f"--min-responses must be >= 1, got {args.min_responses}")
            filters["min_responses"] = args.min_responses
        if args.split:
            filters["split"] = args.split
        if args.tag:
            filters["tags"] = args.tag
        m = st.snapshot(actor=args.actor, **filters)
        _print({"snapshot_id": m["snapshot_id"], "sha256": m["sha256"], "counts": m["counts"],
                "path": str(st.workspace.snapshots / m["snapshot_id"])})


def cmd_generate(args):
    with _studio(args) as st:
        if args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.prompt_id:
            ids = args.prompt_id
        else:
            ids = [p["id"] for p in st.store.list_prompts(tag=args.tag, split=args.split, limit=args.limit)]
        if not ids:
            raise SystemExit("error: no prompts matched (import or init first)")
        system = None if (args.system or "").strip().lower() in ("", "none") else args.system
        params = {k: v for k, v in (("k", args.k), ("temperature", args.temperature), ("top_p", args.top_p),
                                    ("max_new_tokens", args.max_new_tokens), ("seed", args.seed)) if v is not None}
        bar, progress = _bar("generating")
        rows = st.generate(ids, system_ref=system, params=params, actor=args.actor, progress=progress)
        bar.close()
        _print({"prompts": len(ids), "responses": len(rows), "origin": rows[0]["origin"] if rows else None,
                "model_id": rows[0]["model_id"] if rows else None})


def cmd_preview(args):
    """Normal vs negative responses side by side on sampled prompts, with the preview metrics (what the Negative
    Prompt Studio tab shows); the preview is saved per version, `--pool` adds its responses as candidates."""
    with _studio(args) as st:
        mode = "manual" if args.prompt_id else ("tag" if args.tag else "random")
        ids = st.sample_for_preview(mode, args.n, seed=args.seed, tag=args.tag, ids=args.prompt_id)
        params = {k: v for k, v in (("k", args.k), ("temperature", args.temperature), ("top_p", args.top_p),
                                    ("max_new_tokens", args.max_new_tokens)) if v is not None}
        bar, progress = _bar("previewing")
        pv = None
        for kind, i, n, payload in st.run_preview(args.negative, ids, normal_ref=args.normal, params=params,
                                                  seed=args.seed, actor=args.actor):
            if kind == "row":
                progress(i, n)
            elif kind == "done":
                pv = payload
        bar.close()
        out = {"ref": pv["ref"], "normal_ref": pv["normal_ref"], "seed": pv["seed"], "model_id": pv["model_id"],
               "metrics": pv["metrics"],
               "rows": [{"prompt_id": r["prompt_id"], "normal": [x["text"] for x in r["normal"]],
                         "negative": [x["text"] for x in r["negative"]]} for r in pv["rows"]]}
        if args.pool:
            out["pool"] = st.add_preview_to_pool(pv["ref"], actor=args.actor)
        _print(out)


def cmd_library(args):
    with _studio(args) as st:
        s = st.store
        if args.action != "list" and not args.ref:
            raise ValueError(f"library {args.action} needs a prompt name (or name@version)")
        if args.action == "list":
            _print(s.list_system_prompts(kind=args.kind))
        elif args.action == "show":
            _print(s.resolve_ref(args.ref))
        elif args.action == "versions":
            versions = s.list_versions(args.ref)
            if not versions:
                raise ValueError(f"no system prompt named {args.ref!r} (see: library list)")
            _print(versions)
        elif args.action == "save":
            # a new version of an existing prompt keeps what is not given: its kind, text and parameters
            latest = s.get_system_prompt(args.ref) if "@" not in args.ref else None
            text = Path(args.file).read_text(encoding="utf-8") if args.file else args.text
            if text is None:
                if latest is None:
                    raise ValueError("give the prompt text (--text or --file)")
                text = latest["text"]
            try:
                params = json.loads(args.params) if args.params else (latest or {}).get("params")
            except json.JSONDecodeError as e:
                raise ValueError(f"--params must be a JSON object: {e.msg} at character {e.pos}") from None
            kind = args.kind or (latest["kind"] if latest else "negative")
            tags = args.tag if args.tag else (latest or {}).get("tags")
            v = s.save_system_prompt(args.ref, kind, text, params, author=args.actor, tags=tags)
            _print({"name": args.ref, "version": v})
        elif args.action == "diff":
            from .library import diff_versions

            print(diff_versions(s, args.ref, args.a, args.b))


def cmd_annotate(args):
    """Save a ranking: --ranking 'id1,id2;id3' means id1 and id2 tie for best, id3 is worse."""
    with _studio(args) as st:
        if args.ranking is None:
            prompt = st.store.get_prompt(args.prompt_id)
            if prompt is None:
                raise ValueError(f"unknown prompt id {args.prompt_id!r}")
            _print({"prompt": prompt, "responses": st.store.list_responses(args.prompt_id)})
            return
        ranking = [[x.strip() for x in g.split(",") if x.strip()] for g in args.ranking.split(";") if g.strip()]
        marks = {}
        for m in args.mark or []:
            rid, sep, value = m.partition("=")
            if not sep or not rid.strip() or not value.strip():
                raise ValueError(f"--mark must look like RESPONSE_ID=pos|neg|neutral, not {m!r}")
            marks[rid.strip()] = value.strip()
        aid = st.store.save_annotation(args.prompt_id, args.annotator, ranking, marks=marks, comment=args.comment or "")
        _print({"annotation_id": aid})


def cmd_backup(args):
    """Consistent copy of the store (+ parquet export). While the app runs it owns the file, so the copy is
    made by the app process itself through its API (`--server`)."""
    from .config import Workspace
    from .store import Store, StoreLockedError

    ws = Workspace.from_env(args.workspace)
    db = Path(args.db) if args.db else ws.db_path
    out = Path(args.out).resolve()
    parquet = out.with_suffix("") if args.parquet else None
    if parquet is not None:
        parquet = parquet.with_name(parquet.name + "-parquet")
    if not db.is_file():
        raise ValueError(f"no studio store at {db.resolve()} to back up: check --workspace / --db / NEAT_STUDIO_HOME")
    try:
        store = Store(db)
    except StoreLockedError:
        _backup_through_app(args, ws, out)
        return
    with store:
        _print(store.backup(out, parquet_dir=parquet, actor=args.actor))


def _backup_through_app(args, ws, out: Path) -> None:
    """The app holds the store: it makes the copy (inside its workspace); on this machine the file is then moved
    to `out` when that is elsewhere."""
    import shutil

    from gradio_client import Client

    inside = out.is_relative_to(ws.root.resolve())
    if out.exists():
        raise ValueError(f"backup target {out} already exists; choose a new file name")
    try:
        client = Client(args.server, verbose=False, auth=tuple(args.auth.split(":", 1)) if args.auth else None)
    except Exception as e:  # noqa: BLE001 - connection refused, wrong URL, login refused ...
        raise ValueError(f"the store {ws.db_path} is in use by a running app, and no app answered at {args.server} "
                         f"({type(e).__name__}): pass --server URL of the app that holds it (and --auth "
                         "user:password when it asks for a login)") from None
    name = str(out) if inside else f"{out.stem}-{int(time.time())}{out.suffix}"
    r = json.loads(client.predict(name, bool(args.parquet), api_name="/backup"))
    made = Path(r["path"])
    if not inside and made.is_file():  # same machine: put it where it was asked for
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(made), out)
        r["path"] = str(out)
        if r.get("parquet_dir") and Path(r["parquet_dir"]).is_dir():
            pq = out.with_name(out.stem + "-parquet")
            shutil.move(r["parquet_dir"], pq)
            r["parquet_dir"] = str(pq)
    _print(r)


def cmd_restore(args):
    from .config import Workspace
    from .store import Store

    ws = Workspace.from_env(args.workspace)
    _print(Store.restore(args.backup, Path(args.db) if args.db else ws.db_path))


def cmd_serve(args):
    from .ui.app import launch

    launch(workspace=args.workspace, db=args.db, model=args.model, host=args.host, port=args.port,
           auth_file=args.auth_file, share=False, dtype=args.dtype, accounts=args.auth)


def _add_gen_dtype(s) -> None:
    from .models import GEN_DTYPES

    s.add_argument("--dtype", choices=GEN_DTYPES, default="auto",
                   help="generation dtype: auto = bfloat16 on a CPU with bf16 instructions (AVX512-BF16/AMX) or a "
                        "bf16 GPU, else float32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neat_studio",
                                description="NEAT Studio: negative-prompt-driven alignment of language models.")
    p.add_argument("--workspace", help="workspace folder (default: $NEAT_STUDIO_HOME or ./data)")
    p.add_argument("--db", help="DuckDB file (default: <workspace>/studio.duckdb)")
    p.add_argument("--actor", default=os.environ.get("USER", "local"), help="who is acting (audit log)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="create the workspace and load seed prompts, presets and guidelines")
    s.add_argument("--force", action="store_true", help="load the seed data again (adds only what is missing)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("import", help="import prompts / preference data (hh-rlhf, trl, jsonl, csv, parquet, hf)")
    s.add_argument("path", help="file, HF dataset folder (load_from_disk) or hub name with --format hub")
    s.add_argument("--format", default="auto", choices=list(FORMATS))
    s.add_argument("--prompt-column", default="prompt", help="column holding the prompt (jsonl/csv/parquet)")
    s.add_argument("--split", choices=["train", "dev", "test"], help="split to assign to imported prompts")
    s.add_argument("--tag", action="append", help="tag to add to every imported prompt (repeatable)")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("export", help="export curated rankings")
    s.add_argument("kind", choices=["trl", "listwise", "parquet"])
    s.add_argument("out", type=Path)
    s.add_argument("--split", choices=["train", "dev", "test"])
    s.add_argument("--annotated-only", action="store_true", help="only prompts a human annotated")
    s.add_argument("--trl-format", choices=["auto", "conversational", "string"], default="auto",
                   help="trl only: conversational = TRL's message-list format (prompt = messages, chosen / rejected "
                        "= one assistant message); string = plain text prompts (multi-turn ones as "
                        "'\\n\\nHuman: ... Assistant:' transcripts); auto (default) = conversational when some "
                        "prompt has several turns or a system turn, else string")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("snapshot", help="freeze curated data into a snapshot that training reads")
    s.add_argument("--split", choices=["train", "dev", "test"], default="train")
    s.add_argument("--tag", action="append")
    s.add_argument("--annotated-only", action="store_true")
    s.add_argument("--no-imported", action="store_true", help="leave out imported dataset rankings")
    s.add_argument("--min-responses", type=int, default=None,
                   help="keep prompts with at least this many ranked responses (default 2; 1 keeps prompts with only a "
                        "reference answer, which NEAT and RRHF complete with their own samples)")
    s.set_defaults(func=cmd_snapshot)

    s = sub.add_parser("generate", help="sample responses for stored prompts under a system prompt")
    s.add_argument("--system", help="system prompt reference name@version (latest if no @); leave out or say "
                                    "none: the plain policy")
    s.add_argument("--model", help="model spec: default, tiny, a local path or a run directory")
    _add_gen_dtype(s)
    s.add_argument("--prompt-id", action="append", help="prompt id (repeatable); default: --limit prompts")
    s.add_argument("--tag")
    s.add_argument("--split", choices=["train", "dev", "test"])
    s.add_argument("--limit", type=int, default=8)
    s.add_argument("--k", type=int)
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-p", type=float)
    s.add_argument("--max-new-tokens", type=int)
    s.add_argument("--seed", type=int)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("preview", help="normal vs negative responses side by side on sampled prompts, with metrics")
    s.add_argument("negative", help="negative prompt reference name@version (latest if no @)")
    s.add_argument("--normal", help="positive prompt reference for the normal side (default: no system prompt)")
    s.add_argument("--model", help="model spec: default, tiny, a local path or a run directory")
    _add_gen_dtype(s)
    s.add_argument("--n", type=int, default=3, help="how many prompts to sample")
    s.add_argument("--tag", help="sample among prompts with this tag")
    s.add_argument("--prompt-id", action="append", help="preview these prompts (repeatable) instead of sampling")
    s.add_argument("--seed", type=int, default=0, help="fixes the prompt sample and every response")
    s.add_argument("--k", type=int)
    s.add_argument("--temperature", type=float)
    s.add_argument("--top-p", type=float)
    s.add_argument("--max-new-tokens", type=int)
    s.add_argument("--pool", action="store_true", help="add the responses to the annotation pool")
    s.set_defaults(func=cmd_preview)

    s = sub.add_parser("library", help="negative/positive system prompt library (immutable versions)")
    s.add_argument("action", choices=["list", "show", "versions", "save", "diff"])
    s.add_argument("ref", nargs="?", help="name or name@version")
    s.add_argument("--kind", choices=["negative", "positive"],
                   help="list: filter; save: kind of a NEW name (default negative; an existing name keeps its kind)")
    s.add_argument("--text", help="save: the prompt text (default: the latest version's, e.g. for a params-only "
                                  "version)")
    s.add_argument("--file", help="save: read the prompt text from this file")
    s.add_argument("--params", help='save: JSON, e.g. {"temperature": 0.9, "k": 2} (default: the latest '
                                    "version's)")
    s.add_argument("--tag", action="append", help="save: tag (repeatable; default: the latest version's tags)")
    s.add_argument("--a", type=int, help="diff: first version")
    s.add_argument("--b", type=int, help="diff: second version")
    s.set_defaults(func=cmd_library)

    s = sub.add_parser("prompts", help="list / add / tag prompts, or move them to a split (the Prompts tab)",
                       description="prompts list [QUERY] [--tag T] [--split S] [--semantic]; prompts add TEXT [--tags "
                                   "a,b] [--split S]; prompts tag ID... --tags a,b [--mode add|remove|replace]; "
                                   "prompts split train|dev|test ID...")
    s.add_argument("action", choices=["list", "add", "tag", "split"])
    s.add_argument("values", nargs="*", help="list: a search text; add: the prompt text; tag: prompt ids; "
                                             "split: the split, then prompt ids")
    s.add_argument("--tag", help="list: only prompts with this tag")
    s.add_argument("--tags", dest="tag_list", type=lambda v: [t.strip() for t in v.split(",") if t.strip()],
                   default=[], help="add / tag: comma separated tags")
    s.add_argument("--mode", choices=["add", "remove", "replace"], default="add", help="tag: how --tags apply")
    s.add_argument("--split", choices=["train", "dev", "test"], help="list: filter; add: the new prompt's split")
    s.add_argument("--source", help="list: only prompts from this source")
    s.add_argument("--semantic", action="store_true", help="list: semantic search (embedded prompts only)")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func=cmd_prompts)

    s = sub.add_parser("annotate", help="show a prompt's candidates, or save a ranking with ties")
    s.add_argument("prompt_id")
    s.add_argument("--annotator", default=os.environ.get("USER", "local"))
    s.add_argument("--ranking", help="groups best first, ';' between groups, ',' inside a tie group")
    s.add_argument("--mark", action="append", help="RESPONSE_ID=pos|neg|neutral")
    s.add_argument("--comment")
    s.set_defaults(func=cmd_annotate)

    s = sub.add_parser("serve", help="start the web studio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--model", default="default", help="policy model: default, tiny, HF name or local path")
    _add_gen_dtype(s)
    s.add_argument("--auth", action="store_true",
                   help="require login with accounts kept in the store (admins manage them in the Admin tab); on a "
                        "store without accounts the first admin is created and its one-time password printed")
    s.add_argument("--auth-file", help="users file (JSON/YAML with hashed passwords and roles): seeds the store's "
                                       "accounts; implies --auth")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("backup", help="write a consistent copy of the store (works while the app runs)")
    s.add_argument("out", help="new .duckdb file to write")
    s.add_argument("--parquet", action="store_true", help="also export every table as parquet beside it")
    s.add_argument("--server", default="http://127.0.0.1:7860", help="running app to ask when the file is in use")
    s.add_argument("--auth", help="user:password for a server with login enabled")
    s.set_defaults(func=cmd_backup)

    s = sub.add_parser("restore", help="replace the store by a backup (stop the app first; the old file is kept)")
    s.add_argument("backup")
    s.set_defaults(func=cmd_restore)

    for register in _plugins():
        register(sub)
    return p


def _plugins():
    """Sub-command groups that live next to the code they drive."""
    from .eval_cli import register as evaluate
    from .neat.cli import register as train
    from .scoring.cli import register as scoring

    return [train, evaluate, scoring]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .models import ModelLoadError
    from .store import SchemaError, StoreLockedError

    import duckdb

    try:
        rv = args.func(args)
    except (ValueError, OSError, ModelLoadError, SchemaError, StoreLockedError, duckdb.Error) as e:
        # OSError: a path that is a directory, a disk error ...; duckdb.Error: e.g. a file that is not a database
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - e.g. backup --server when no app answers there
        if type(e).__module__.split(".")[0] != "httpx":
            raise
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return int(rv or 0)
