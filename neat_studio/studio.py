"""Application services shared by the CLI and the web UI.

`Studio` bundles one workspace: its store (the only read-write DuckDB connection of the process), the seed
data, imports/exports, and the generation policy model. The CLI and every UI tab call these methods, so the
two front ends cannot drift apart.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Iterable

from .config import Workspace
from .store import Store

Progress = Callable[[int, int], None] | None
log = logging.getLogger(__name__)

# A prompt longer than this (characters of all its turns) is certainly cut by training, which keeps a prompt's
# LAST max_prompt_len tokens (256 by default, ~1,000 characters of English), and it slows a preview down: an
# import says which prompts are that long.
LONG_PROMPT_CHARS = 4000


# Train: a run estimated longer than this asks for a second Start click (same configuration, same data, within
# CONFIRM_WINDOW_S) before it starts
LONG_RUN_CONFIRM_S = 15 * 60
CONFIRM_WINDOW_S = 5 * 60


def start_confirmation(config: dict, estimate: dict | None, armed: dict | None, now: float, *,
                       limit_s: float = LONG_RUN_CONFIRM_S, window_s: float = CONFIRM_WINDOW_S) -> dict:
    """Whether a click on Start starts the run (pure). A run whose `estimate` (Studio.estimate_training) is over
    `limit_s` starts only on a second click with the same `config` and number of training prompts within
    `window_s` seconds of the first; `armed` is what the previous click returned (None at first). Returns
    {"start": bool, "armed": what to keep for the next click (None once started), "message": "" or the question}.
    Without an estimate (it failed) the run starts: starting reports the problem itself."""
    import json

    from .jobs import fmt_duration

    est = estimate or {}
    secs = est.get("seconds")
    if secs is None or float(secs) <= limit_s:
        return {"start": True, "armed": None, "message": ""}
    key = json.dumps({"config": config, "n_prompts": est.get("n_prompts")}, sort_keys=True, default=str)
    if armed and armed.get("key") == key and 0 <= now - float(armed.get("at", float("-inf"))) <= window_s:
        return {"start": True, "armed": None, "message": ""}
    n = est.get("n_prompts")
    data = f" on {n} training prompt(s)" if n is not None else ""
    return {"start": False, "armed": {"key": key, "at": now},
            "message": (f"This run is estimated at {fmt_duration(secs)}{data} (over {fmt_duration(limit_s)}; "
                        f"{est.get('text') or 'rough estimate'}). Press Start training again to confirm, or make "
                        f"it shorter first (fewer prompts or rounds, max steps, a smaller k).")}


# An AI suggestion's scorer is weak evidence below these held-out figures: the Annotate view says so, shows the
# scorer's confidence per response and asks for a second press of A before it accepts the suggestion.
WEAK_SCORER_MIN_DEV_PAIRS = 30
WEAK_SCORER_MIN_DEV_ACC = 0.65


def weak_scorer_note(dev_acc: float | None, n_dev_pairs: int | None) -> str:
    """Why a reward scorer's suggestions are weak evidence (unmeasured, measured on few held-out pairs, or a low
    held-out pairwise accuracy), or "" when its figures are useful."""
    n = int(n_dev_pairs or 0)
    if dev_acc is None or n < WEAK_SCORER_MIN_DEV_PAIRS:
        return (f"Weak evidence: this scorer was checked on {n} held-out pair(s) (fewer than "
                f"{WEAK_SCORER_MIN_DEV_PAIRS}); treat the suggestion as a hint and retrain it as rankings accumulate.")
    if float(dev_acc) < WEAK_SCORER_MIN_DEV_ACC:
        return (f"Weak scorer: it orders only {float(dev_acc):.0%} of held-out pairs like the annotators (below "
                f"{WEAK_SCORER_MIN_DEV_ACC:.0%}); treat the suggestion as a hint.")
    return ""


def long_prompt_ids(records: Iterable[dict], limit: int = LONG_PROMPT_CHARS) -> list[str]:
    """Ids (as stored) of the ImportRecords' prompts longer than `limit` characters, in file order, once each."""
    from .store import normalise_messages, prompt_content_hash

    out: dict[str, None] = {}
    for rec in records:
        msgs = normalise_messages(rec)
        if sum(len(m["content"]) for m in msgs) > limit:
            out[prompt_content_hash(msgs)[:16]] = None
    return list(out)


def long_prompts_note(ids: list[str], limit: int = LONG_PROMPT_CHARS, show: int = 20) -> str:
    """The warning for an import's long prompts, for the CLI and the UI ("" when there are none)."""
    if not ids:
        return ""
    from .neat.config import NeatConfig

    keep = NeatConfig().max_prompt_len
    shown = ", ".join(ids[:show]) + (f" and {len(ids) - show} more" if len(ids) > show else "")
    return (f"{len(ids)} prompt(s) are longer than {limit:,} characters: training keeps only the last "
            f"max_prompt_len tokens of a prompt ({keep} by default, roughly {round(4 * keep, -2):,} characters), so "
            f"their beginning is cut, and previews of them are slow. Shorten them or leave them out of training "
            f"(e.g. tag them and filter): {shown}.")


class Studio:
    # sequences decoded together by generation and previews (batch 16 vs one at a time: ~5x the tokens/s on a
    # 2-core CPU, benchmarks/bench_train.py)
    GEN_BATCH = 16

    GENERATOR_KEY = "generator_model"  # setting: the spec chosen with "Use as generator" (Compare tab)

    def __init__(self, workspace: Workspace | None = None, db_path: str | Path | None = None,
                 model_spec: str | None = "default", gen_dtype: str = "auto"):
        """`model_spec`: the generation policy; None = the one chosen last with "Use as generator" in this
        workspace (`saved_generator`), else "default" (what the web app does)."""
        from .models import generation_dtype

        self.gen_dtype = generation_dtype(gen_dtype)  # ValueError before anything is created
        self.workspace = (workspace or Workspace.from_env()).ensure()
        self.db_path = Path(db_path) if db_path else self.workspace.db_path
        self.store = Store(self.db_path)
        saved = self.saved_generator() if model_spec is None else None
        self.generator_restored = saved is not None  # True: model_spec came from the workspace settings
        self.model_spec = model_spec or saved or "default"
        self._lm = None
        self._lm_lock = threading.Lock()
        self._embed_thread: threading.Thread | None = None
        self._embed_wake = threading.Event()
        self._embed_stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self.close_jobs()  # supervisor threads write to the store: stop them first
        self.stop_background_embedding()
        self.store.close()

    # -- background embedding ----------------------------------------------------------------------------
    def start_background_embedding(self, interval_s: float = 10.0) -> None:
        """Embed new prompts and responses as they arrive, in one daemon thread, so semantic search and
        near-duplicate checks stay current without any request waiting for the embedder. The thread wakes every
        `interval_s` or at once after an import / generation (`embed_soon`); nothing is embedded twice (the
        store lists only rows without a vector for the model)."""
        if self._embed_thread is not None:
            return
        from .scoring.embeddings import embed_missing

        def loop():
            while not self._embed_stop.is_set():
                self._embed_wake.wait(interval_s)
                self._embed_wake.clear()
                if self._embed_stop.is_set():
                    break
                try:
                    for kind in ("prompt", "response"):
                        embed_missing(self.store, kind, actor="embedder")
                except Exception as e:  # noqa: BLE001 - a failed round is retried at the next wake-up
                    if not self._embed_stop.is_set():
                        log.warning("background embedding failed (will retry): %s", e)

        self._embed_thread = threading.Thread(target=loop, name="neat-embedder", daemon=True)
        self._embed_thread.start()
        self.embed_soon()

    def embed_soon(self) -> None:
        """Ask the background embedder (when running) to look for new rows now."""
        self._embed_wake.set()

    def stop_background_embedding(self, timeout: float = 10.0) -> None:
        t = self._embed_thread
        if t is None:
            return
        self._embed_stop.set()
        self._embed_wake.set()
        t.join(timeout)
        self._embed_thread = None

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
    def import_file(self, path: str | Path, fmt: str = "auto", actor: str = "local", *, terms: str = "cli",
                    progress: Callable[[float, str], None] | None = None, **kw) -> dict:
        """Read a file (io.importers.read_records) and store its records in one transaction; returns the store's
        import report plus "long_prompts" / "long_prompt_ids": the file's prompts longer than LONG_PROMPT_CHARS
        (training cuts them; `long_prompts_note` says so in words). `terms`: "cli" or "ui", whether error
        messages name the CLI's options or the web form's fields. `progress(fraction, what)` is told when reading
        is done and writing starts. DataFormatError (nothing written) on bad input."""
        from .io.importers import read_records

        if progress:
            progress(0.1, "reading and validating the file")
        records = read_records(path, fmt, terms=terms, **kw)  # raises DataFormatError before anything is written
        if progress:
            progress(0.6, f"writing {len(records)} record(s)")
        report = self.store.import_records(records, actor=actor)
        self.embed_soon()
        long_ids = long_prompt_ids(records)
        report["long_prompts"] = len(long_ids)
        report["long_prompt_ids"] = long_ids
        return report

    EXPORT_KINDS = ("trl", "listwise", "parquet")
    # TRL pairs: "auto" = TRL's conversational format (message lists) for chat data (some prompt with several
    # turns or a system turn), else plain strings; "conversational" / "string" force one (io/exporters.py)
    TRL_FORMATS = ("auto", "conversational", "string")

    def export(self, kind: str, path: str | Path, *, trl_format: str = "auto", **filters) -> int:
        """Write an export file; returns the number of pairs (trl) or rows written (see `export_details`)."""
        return self.export_details(kind, path, trl_format=trl_format, **filters)["written"]

    def export_details(self, kind: str, path: str | Path, *, trl_format: str = "auto", **filters) -> dict:
        """Write an export file; returns {"written", "format"}: format = "conversational" or "string" for trl (what
        `trl_format` resolved to), else the kind. ValueError (nothing written) for an unknown kind or format."""
        from .io import exporters

        if kind not in self.EXPORT_KINDS:
            raise ValueError(f"unknown export kind {kind!r}: use trl, listwise or parquet")
        if trl_format not in self.TRL_FORMATS:
            raise ValueError(f"unknown TRL format {trl_format!r}: use {', '.join(self.TRL_FORMATS)}")
        rows = self.store.listwise_rows(**filters)
        if kind == "listwise":
            return {"written": exporters.export_listwise(rows, path), "format": kind}
        if kind == "parquet":
            return {"written": exporters.export_parquet(rows, path), "format": kind}
        negatives = {p["text"] for p in self.store.list_system_prompts(kind="negative")}
        conv = (exporters.is_chat_data(rows, negative_prompts=negatives) if trl_format == "auto"
                else trl_format == "conversational")
        n = exporters.export_trl_pairs(rows, path, conversational=conv, negative_prompts=negatives)
        return {"written": n, "format": "conversational" if conv else "string"}

    def snapshot(self, actor: str = "local", **filters) -> dict:
        from .snapshot import create_snapshot

        return create_snapshot(self.store, self.workspace, filters, actor=actor)

    # -- generation --------------------------------------------------------------------------------------
    def policy(self):
        """The generation policy model, loaded once (thread-safe)."""
        with self._lm_lock:
            if self._lm is None:
                from .models import load_model

                self._lm = load_model(self.model_spec, workspace=self.workspace, dtype=self.gen_dtype)
            return self._lm

    def use_model(self, spec: str, actor: str = "local") -> str:
        """Switch the generation policy (e.g. to an aligned run's model) and remember the choice in the workspace
        settings, so the next app start uses it too (`Studio(model_spec=None)`). Returns the new model id.
        Nothing changes (and nothing is saved) when the model does not load."""
        from .models import load_model
        from .safety import check_model_spec

        spec = check_model_spec(spec, self.workspace)  # a user's choice: only allowed model folders
        lm = load_model(spec, workspace=self.workspace, dtype=self.gen_dtype)
        self.store.set_setting(self.GENERATOR_KEY, spec, actor=actor)
        with self._lm_lock:
            self._lm, self.model_spec = lm, spec
        return lm.model_id

    def saved_generator(self) -> str | None:
        """The generator chosen last with "Use as generator" in this workspace, when it is still usable (an
        allowed spec; a model folder that still exists), else None (a warning is logged for a stale choice)."""
        from .safety import check_model_spec

        spec = self.store.get_setting(self.GENERATOR_KEY)
        if not spec:
            return None
        try:
            spec = check_model_spec(spec, self.workspace)
        except ValueError as e:
            log.warning("the saved generator %r is not allowed any more (%s); using the default model", spec, e)
            return None
        if Path(spec).is_absolute() and not Path(spec).exists():  # a path (check_model_spec resolved it)
            log.warning("the saved generator %s does not exist any more; using the default model", spec)
            return None
        return spec

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
        found = self._require_prompts(prompt_ids)
        prompts = [found[pid] for pid in prompt_ids]
        lm = self.policy()
        fields = {k: gp[k] for k in ("temperature", "top_p", "max_new_tokens", "k", "seed") if k in gp}
        samples = generate(lm, [p["messages"] for p in prompts], system=system_text, params=GenParams(**fields),
                           progress=progress, batch_size=self.GEN_BATCH)
        rows = []
        for pid, ss in zip(prompt_ids, samples):
            for s in ss:
                rows.append({"prompt_id": pid, "text": s.text, "origin": origin, "model_id": lm.model_id,
                             "params": s.params, "seed": s.seed})
        if write and rows:
            ids = self.store.add_responses(rows, actor=actor)
            for r, i in zip(rows, ids):
                r["id"] = i
            self.embed_soon()
        return rows

    # =====================================================================================================
    # Services for the web UI (neat_studio/ui/*). Tabs call only these (and the generic ones above); no SQL,
    # no business rules in the UI. Every writer takes `actor` and validates before anything is written.
    # =====================================================================================================

    # -- prompts -----------------------------------------------------------------------------------------
    def search_prompts(self, query: str = "", *, semantic: bool = False, tag=None, source=None, split=None,
                       status=None, annotator=None, limit: int = 100, offset: int = 0) -> dict:
        """Prompts for the Prompts tab. Text search = case-insensitive substring; semantic search ranks by
        cosine similarity of sentence embeddings (only prompts already embedded; see `embed_prompts`).

        Returns {"rows": [...], "total": int, "mode": "text" | "semantic", "note": str}."""
        filters = {"tag": tag or None, "source": source or None, "split": split or None,
                   "status": status or None, "annotator": annotator if status else None}
        query = (query or "").strip()
        if semantic and query:
            from .scoring.embeddings import MODEL_ID, cosine_search, Embedder

            ids, mat = self.store.get_embeddings("prompt", MODEL_ID)
            if not ids:
                return {"rows": [], "total": 0, "mode": "semantic",
                        "note": "No prompt embeddings yet: compute them first (Prompts tab, 'Embeddings (semantic "
                                "search)', 'Compute missing prompt embeddings'; the app also embeds new prompts in "
                                "the background)."}
            allowed = None
            if any(v for k, v in filters.items() if k != "annotator"):
                n = self.store.count_prompts(**filters)
                allowed = {p["id"] for p in self.store.list_prompts(**filters, limit=max(n, 1))}
            if allowed is not None:
                keep = [i for i, pid in enumerate(ids) if pid in allowed]
                ids, mat = [ids[i] for i in keep], mat[keep]
            qv = Embedder.get().encode([query])[0]
            hits = cosine_search(qv, ids, mat, top_k=offset + limit)[offset:]
            got = self.store.get_prompts([h[0] for h in hits])
            rows = []
            for pid, sim in hits:
                if pid in got:
                    rows.append({**got[pid], "similarity": float(sim)})
            n_missing = len(self.store.missing_embeddings("prompt", MODEL_ID))
            note = f"{n_missing} prompt(s) not embedded yet." if n_missing else ""
            return {"rows": rows, "total": len(ids), "mode": "semantic", "note": note}
        rows = self.store.list_prompts(search=query or None, **filters, limit=limit, offset=offset,
                                       order="created")
        return {"rows": rows, "total": self.store.count_prompts(search=query or None, **filters),
                "mode": "text", "note": ""}

    def semantic_search_ready(self) -> dict:
        from .scoring.embeddings import MODEL_ID

        ids, _ = self.store.get_embeddings("prompt", MODEL_ID)
        return {"embedded": len(ids), "missing": len(self.store.missing_embeddings("prompt", MODEL_ID))}

    def embed_prompts(self, actor: str = "local", progress: Progress = None) -> int:
        """Embed every prompt that has no vector yet (admin action; enables semantic search)."""
        from .scoring.embeddings import embed_missing

        return embed_missing(self.store, "prompt", progress=progress, actor=actor)

    def prompt_facets(self) -> dict:
        return {"tags": self.store.prompt_tags(), "sources": self.store.prompt_sources(),
                "splits": ["train", "dev", "test"]}

    def add_prompt(self, text: str, tags: Iterable[str] | None = None, split: str = "train",
                   system: str | None = None, actor: str = "local") -> dict:
        """Add one prompt by hand (source "manual"). Returns {"id", "existing": bool}."""
        from .safety import check_prompt_text

        text = check_prompt_text(text).strip()
        if not text:
            raise ValueError("the prompt text is empty")
        system = check_prompt_text(system, "the system prompt") if system else system
        if split not in ("train", "dev", "test"):
            raise ValueError(f"split must be train, dev or test, got {split!r}")
        messages = ([{"role": "system", "content": system.strip()}] if system and system.strip() else []) + \
            [{"role": "user", "content": text}]
        from .store import prompt_content_hash, normalise_messages

        pid = prompt_content_hash(normalise_messages({"messages": messages}))[:16]
        existing = self.store.get_prompt(pid) is not None
        ids = self.store.add_prompts([{"messages": messages, "source": "manual", "tags": list(tags or []),
                                       "split": split}], actor=actor)
        return {"id": ids[0], "existing": existing}

    def tag_prompts(self, prompt_ids: Iterable[str], tags: Iterable[str], mode: str = "add",
                    actor: str = "local") -> int:
        ids = [i for i in prompt_ids if i]
        if not ids:
            raise ValueError("select at least one prompt (click a row or give prompt ids)")
        tags = list(tags)
        if not tags and mode != "replace":
            raise ValueError(f"no tags given to {mode} (replace with no tags clears them)")
        return self.store.set_tags(ids, tags, actor=actor, mode=mode)

    def set_prompt_split(self, prompt_ids: Iterable[str], split: str, actor: str = "local") -> int:
        ids = [i for i in prompt_ids if i]
        if not ids:
            raise ValueError("select at least one prompt")
        return self.store.set_split(ids, split, actor=actor)

    # -- system prompt library ---------------------------------------------------------------------------
    def save_library_prompt(self, name: str, kind: str, text: str, params: dict | None = None,
                            tags: Iterable[str] | None = None, actor: str = "local") -> dict:
        """Save a new immutable version. Returns {"ref", "version", "created": bool} (created=False when the
        text and params equal the latest version: nothing is written)."""
        name = (name or "").strip()
        before = self.store.get_system_prompt(name) if name else None
        v = self.store.save_system_prompt(name, kind, text, params, author=actor, tags=list(tags or []))
        created = before is None or before["version"] != v
        return {"ref": f"{name}@{v}", "version": v, "created": created}

    def newest_prompt_ref(self, kind: str) -> str | None:
        """`name@version` of the system prompt version of `kind` saved last (what the preview and Train choose
        by default), or None when the library has none."""
        sp = self.store.newest_system_prompt(kind)
        return sp["ref"] if sp else None

    def library_diff(self, name: str, a: int | None, b: int | None) -> str:
        from .library import diff_versions

        return diff_versions(self.store, name, a, b)

    def _require_prompts(self, ids: list[str]) -> dict:
        """{id: prompt} for every id, or one ValueError naming the unknown ones (nothing is done then)."""
        found = self.store.get_prompts(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
        return found

    # -- negative prompt preview -------------------------------------------------------------------------
    PREVIEW_KEY = "preview:{ref}"
    PREVIEW_INDEX = "preview_index"

    def sample_for_preview(self, mode: str, n: int = 3, seed: int = 0, tag: str | None = None,
                           ids: Iterable[str] | None = None) -> list[str]:
        """User prompts for a preview: `random` (reproducible for the seed), `tag`, or `manual` (given ids)."""
        if mode == "manual":
            ids = [i.strip() for i in (ids or []) if i and i.strip()]
            if not ids:
                raise ValueError("give at least one prompt id")
            self._require_prompts(ids)
            return ids
        if mode == "tag" and not tag:
            raise ValueError("choose a tag")
        if int(n) < 1:
            raise ValueError(f"the number of prompts to preview must be at least 1, not {n}")
        out = self.store.sample_prompts(int(n), seed=int(seed), tag=tag if mode == "tag" else None)
        if not out:
            raise ValueError("no prompts matched (import prompts or run init first)")
        return out

    def run_preview(self, negative_ref: str, prompt_ids: list[str], *, normal_ref: str | None = None,
                    params: dict | None = None, seed: int = 0, actor: str = "local", run_key: str | None = None):
        """Generate a preview: every prompt x side (normal, negative) x k samples decoded together in batches of
        GEN_BATCH sequences, streamed. A generator: yields `("rows", 0, n, rows)` about 4 times a second while the
        texts grow (samples marked "streaming"), then `("row", i, n, row)` for each finished prompt i = 1..n, and
        finally `("done", n, n, preview)` with the metrics computed and the preview saved (per version). Closing
        the generator (Stop in the UI) stops the generation at its next decoding step.

        row = {"prompt_id", "prompt", "normal": [sample], "negative": [sample]}; sample = {"text", "seed",
        "params", "n_tokens"}. `params` override the version's stored generation parameters; `seed` fixes every
        sample so the same preview can be reproduced.

        `run_key` (e.g. the browser session) registers the run so that `stop_preview(run_key)` can stop it and say
        how far it got."""
        import queue
        import time

        from .generation import GenParams, generate, sample_seed

        neg = self.store.resolve_ref(negative_ref)
        if neg["kind"] != "negative":
            raise ValueError(f"{neg['ref']} is a {neg['kind']} prompt; choose a negative prompt to preview")
        pos = self.store.resolve_ref(normal_ref) if normal_ref else None
        if pos is not None and pos["kind"] != "positive":
            raise ValueError(f"{pos['ref']} is a negative prompt; the normal side takes a positive prompt or none")
        prompt_ids = list(dict.fromkeys(prompt_ids))
        if not prompt_ids:
            raise ValueError("no prompts selected for the preview")
        prompts = self._require_prompts(prompt_ids)
        gp = {**(neg.get("params") or {}), **{k: v for k, v in (params or {}).items() if v is not None}}
        gp["seed"] = int(seed)
        fields = {k: gp[k] for k in ("temperature", "top_p", "max_new_tokens", "k", "seed") if k in gp}
        from .store import _validate_params  # same rules as a stored version

        _validate_params({k: v for k, v in fields.items()})
        lm = self.policy()
        gparams = GenParams(**fields)
        n = len(prompt_ids)
        rows = [{"prompt_id": pid, "prompt": prompts[pid]["messages"], "normal": [], "negative": []}
                for pid in prompt_ids]
        # Every prompt x side in ONE batched generate call (a background thread), streamed: each side of each
        # prompt keeps the seeds it would get alone (seed_index 0), so a preview is reproducible whatever n is.
        jobs = [(i, side, system) for i in range(n)
                for side, system in (("normal", pos["text"] if pos else None), ("negative", neg["text"]))]
        q: queue.Queue = queue.Queue()
        stop = threading.Event()
        last = [0.0]
        # a prompt is done when both its sides are: generate decodes batches one after the other, so a batch
        # is finished when the next one starts (or the call returns)
        status = {"stop": stop, "state": "running", "done": 0, "total": n, "_batch": None, "_jobs_done": set()}
        if run_key is not None:
            runs = self.__dict__.setdefault("_preview_runs", {})
            runs.pop(run_key, None)
            runs[run_key] = status
            while len(runs) > 64:  # old sessions' entries
                runs.pop(next(iter(runs)))

        def count_done(idx=None):
            if status["_batch"] is not None and status["_batch"] != idx:
                status["_jobs_done"].update(status["_batch"])
                status["done"] = sum(1 for i in range(n) if 2 * i in status["_jobs_done"]
                                     and 2 * i + 1 in status["_jobs_done"])
            status["_batch"] = idx

        def on_step(idx, texts):
            count_done(list(idx))
            if stop.is_set():
                raise _PreviewCancelled()
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                q.put(("partial", dict(zip(idx, texts()))))

        def work():
            try:
                res = generate(lm, [rows[i]["prompt"] for i, _, _ in jobs], systems=[sy for _, _, sy in jobs],
                               params=gparams, seed_index=[0] * len(jobs), batch_size=self.GEN_BATCH,
                               on_step=on_step)
                q.put(("done", res))
            except _PreviewCancelled:
                q.put(("cancelled", None))
            except Exception as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(("error", e))

        th = threading.Thread(target=work, daemon=True, name="neat-preview")
        th.start()
        generated = False
        try:
            while True:
                kind, payload = q.get()
                if stop.is_set():  # stop_preview: nothing more is shown or saved
                    status["state"] = "stopped"
                    return
                if kind == "partial":
                    for j, texts in payload.items():
                        i, side, _ = jobs[j]
                        rows[i][side] = [{"text": t, "seed": sample_seed(gparams.seed, 0, m),
                                          "params": gparams.to_dict(), "n_tokens": None, "streaming": True}
                                         for m, t in enumerate(texts)]
                    yield ("rows", 0, n, [dict(r) for r in rows])
                elif kind == "done":
                    status["done"] = n
                    for (i, side, _), samples in zip(jobs, payload):
                        rows[i][side] = [_sample_dict(x) for x in samples]
                    for i in range(n):
                        yield ("row", i + 1, n, rows[i])
                    generated = status["generated"] = True  # all generated: it is saved even if Stop comes now
                    break
                elif kind == "error":
                    status["state"] = "failed"
                    raise payload
                else:
                    status["state"] = "stopped"
                    return
        finally:  # the consumer went away (Stop in the UI): the generation thread stops at its next step
            if status["state"] == "running" and not generated:
                status["state"] = "stopped"
            stop.set()
        from datetime import datetime, timezone

        preview = {"ref": neg["ref"], "name": neg["name"], "version": neg["version"],
                   "normal_ref": pos["ref"] if pos else None, "seed": int(seed), "params": fields,
                   "model_id": lm.model_id, "created_by": actor,
                   "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "prompt_ids": prompt_ids, "rows": rows, "pooled": False}
        preview["metrics"] = self.compute_preview_metrics(rows)
        self._save_preview(preview, actor)
        status["state"] = "finished"
        yield ("done", n, n, preview)

    def stop_preview(self, run_key: str) -> dict | None:
        """Stop the preview registered under `run_key` (see run_preview) at its next decoding step; nothing of it is
        saved. Returns {"state": "stopped" | "finished" | "failed", "done": prompts finished (both sides), "total"}
        (a run that had already ended keeps its state), or None when no preview ran under that key."""
        st = self.__dict__.get("_preview_runs", {}).get(run_key)
        if st is None:
            return None
        if st["state"] == "running" and not st.get("generated"):
            st["stop"].set()
            st["state"] = "stopped"
        state = "finished" if st.get("generated") and st["state"] == "running" else st["state"]
        return {"state": state, "done": st["done"], "total": st["total"]}

    def compute_preview_metrics(self, rows: list[dict]) -> dict:
        """Metrics of a preview (see neat_studio.metrics.preview_metrics); scorer/embeddings when available."""
        from . import metrics as M

        negs = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "text": s["text"]}
                for r in rows for s in r["negative"]]
        norms = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "text": s["text"]}
                 for r in rows for s in r["normal"]]
        notes = []
        embed = is_refusal = reward = None
        try:
            from .scoring.embeddings import Embedder

            emb = Embedder.get()
            embed = emb.encode
        except Exception as e:  # noqa: BLE001 - metrics degrade, the preview still works
            notes.append(f"embeddings unavailable ({type(e).__name__}: {e})")
        try:
            from .scoring.refusal import is_refusal as _is_refusal

            is_refusal = _is_refusal
        except Exception as e:  # noqa: BLE001
            notes.append(f"refusal detector unavailable ({type(e).__name__})")
        scorer = self.reward_scorer()
        if scorer is not None:
            reward = lambda rs: scorer.score([r["prompt"] for r in rs], [r["text"] for r in rs])  # noqa: E731
        try:
            m = M.preview_metrics(negs, norms, embed=embed, is_refusal=is_refusal, reward=reward)
        except Exception as e:  # noqa: BLE001 - e.g. a broken embedder: fall back to text-only metrics
            notes.append(f"metrics fell back to text only ({type(e).__name__}: {e})")
            m = M.preview_metrics(negs, norms, is_refusal=None)
        m["notes"] = notes
        return m

    def _save_preview(self, preview: dict, actor: str) -> None:
        key = self.PREVIEW_KEY.format(ref=preview["ref"])
        self.store.set_setting(key, preview, actor=actor)
        index = [k for k in (self.store.get_setting(self.PREVIEW_INDEX) or []) if k != key] + [key]
        self.store.set_setting(self.PREVIEW_INDEX, index, actor=actor)

    def get_preview(self, ref: str) -> dict | None:
        sp = self.store.resolve_ref(ref)
        return self.store.get_setting(self.PREVIEW_KEY.format(ref=sp["ref"]))

    def preview_comparison(self, name: str | None = None) -> list[dict]:
        """One row per previewed negative-prompt version (latest preview of each): the metrics table."""
        out = []
        for key in self.store.get_setting(self.PREVIEW_INDEX) or []:
            p = self.store.get_setting(key)
            if not p or (name and p["name"] != name):
                continue
            m = p.get("metrics") or {}
            out.append({"ref": p["ref"], "normal": p.get("normal_ref") or "(no system prompt)",
                        "prompts": len(p.get("prompt_ids") or []), "seed": p.get("seed"),
                        **{k: m.get(k) for k in ("n", "undesirability", "distance", "diversity", "refusal_share",
                                                 "leak_share", "mean_len_ratio")},
                        "undesirability_source": m.get("undesirability_source"), "pooled": p.get("pooled", False),
                        "prompt_set": _prompt_set_id(p.get("prompt_ids") or []), "created_at": p.get("created_at")})
        return sorted(out, key=lambda r: (r["ref"].split("@")[0], int(r["ref"].split("@")[1])))

    def add_preview_to_pool(self, ref: str, actor: str = "local") -> dict:
        """Store the latest preview of `ref` as annotation candidates (origins recorded: negative:<ref> for the
        negatives, positive:<ref> or policy for the normal side). Identical responses are not duplicated."""
        p = self.get_preview(ref)
        if p is None:
            raise ValueError(f"no preview for {ref}: run a preview first")
        neg_origin = f"negative:{p['ref']}"
        norm_origin = f"positive:{p['normal_ref']}" if p.get("normal_ref") else "policy"
        rows = []
        for r in p["rows"]:
            for side, origin in (("normal", norm_origin), ("negative", neg_origin)):
                for s in r[side]:
                    rows.append({"prompt_id": r["prompt_id"], "text": s["text"], "origin": origin,
                                 "model_id": p.get("model_id"), "seed": s.get("seed"),
                                 "params": {**(s.get("params") or {}), "preview_of": p["ref"],
                                            "preview_at": p.get("created_at")}})
        before = sum(len(self.store.list_responses(pid)) for pid in p["prompt_ids"])
        ids = self.store.add_responses(rows, actor=actor)
        after = sum(len(self.store.list_responses(pid)) for pid in p["prompt_ids"])
        p["pooled"] = True
        self._save_preview(p, actor)
        return {"responses": len(ids), "added": after - before, "prompts": len(p["prompt_ids"]),
                "prompt_ids": p["prompt_ids"]}

    # -- reward scorer -----------------------------------------------------------------------------------
    def train_scorer(self, actor: str = "local", seed: int = 0, **filters) -> dict:
        """Train a new reward scorer version on the curated rankings (pairs expanded from them; ties give no
        pair; dev split by prompt). The newest version then serves AI suggestions and preview metrics."""
        from .scoring.reward import scorers_dir, train_scorer

        rows = self.store.listwise_rows(**filters)
        if not rows:
            raise ValueError("no ranked prompts yet: annotate or import preference data first")
        m = train_scorer(rows, scorers_dir(self.workspace), seed=seed)
        m.pop("scorer", None)
        self.store.log_event(actor, "train_scorer", "scorer", m.get("scorer_version"),
                             {k: m.get(k) for k in ("dev_acc", "n_train_pairs", "n_dev_pairs")})
        return m

    # -- annotation --------------------------------------------------------------------------------------
    def reward_scorer(self):
        """The newest trained reward scorer of this workspace, or None."""
        try:
            from .scoring.reward import RewardScorer, list_scorers, scorers_dir

            metas = list_scorers(scorers_dir(self.workspace))
            if not metas:
                return None
            path = metas[-1]["path"]
            cached = getattr(self, "_scorer", None)
            if cached is None or str(cached.path) != str(path):
                self._scorer = RewardScorer.load(path)
            return self._scorer
        except Exception:  # noqa: BLE001 - no scorer means no AI suggestion, never a broken page
            return None

    def next_prompt(self, annotator: str, *, tag=None, source=None, split=None, search=None,
                    skip_ids: Iterable[str] = (), include_annotated: bool = False, order: str = "queue",
                    pool: int = 200) -> str | None:
        """The annotator's next prompt. `order`: `queue` (unannotated first, oldest first), `uncertainty` (the
        prompt whose two best candidates the reward scorer separates least) or `disagreement` (among prompts a
        human ranked, the one where the scorer's ranking disagrees most: Kendall tau distance). The scorer orders
        look at the first `pool` candidates of the queue and fall back to queue order without a trained scorer.
        `skip_ids` are left out (this page's skips); the prompts the annotator skipped before (`skip_prompt`, kept
        in the store, so a reload keeps them) come after every other prompt, in any order."""
        if order not in ("queue", "uncertainty", "disagreement"):
            raise ValueError(f"unknown queue order {order!r}: use queue, uncertainty or disagreement")
        skip = set(skip_ids)
        skipped_before = self.store.skipped_prompts(annotator)
        later = set(skipped_before)
        for _ in range(1000):  # a prompt whose candidates are near-duplicates of each other shows < 2: skip it
            first = self.store.next_in_queue(annotator, search=search or None, tag=tag or None,
                                             source=source or None, split=split or None, skip_ids=list(skip),
                                             include_annotated=include_annotated or order == "disagreement",
                                             last_ids=skipped_before)
            if first is None or self._rankable(first):
                break
            skip.add(first)
        scorer = self.reward_scorer() if order != "queue" else None
        if first is None or scorer is None:
            return first
        from .scoring.active import disagreement, margin

        if order == "uncertainty":
            cands = self.store.list_prompts(search=search or None, tag=tag or None, source=source or None,
                                            split=split or None, min_responses=2, limit=pool,
                                            **({} if include_annotated else
                                               {"status": "unannotated", "annotator": annotator}))
        else:
            latest = {a["prompt_id"]: a for a in self.store.latest_annotations(human_only=True)
                      if a.get("ranking")}
            cands = [p for p in self.store.get_prompts(list(latest)[-pool:]).values()
                     if (not tag or tag in p.get("tags", [])) and (not split or p.get("split") == split)
                     and (not source or p.get("source") == source)
                     and (not search or search.lower() in p["text"].lower())]
        best, best_key = first, None
        for p in cands:
            if p["id"] in skip or p["id"] in later:  # skipped before: only when nothing else is left (= first)
                continue
            rs = self.store.list_responses(p["id"])
            if len(rs) < 2:
                continue
            scores = scorer.score([p["messages"]] * len(rs), [r["text"] for r in rs])
            if order == "uncertainty":
                key = margin(scores)  # smaller = less sure
            else:
                ranked = sorted(range(len(rs)), key=lambda i: -scores[i])
                key = -disagreement([[rs[i]["id"]] for i in ranked], latest[p["id"]]["ranking"])
            if key == key and (best_key is None or key < best_key):  # key == key: not NaN
                best, best_key = p["id"], key
        return best

    def _rankable(self, prompt_id: str) -> bool:
        """At least two candidates are shown for the prompt (near-duplicates are hidden)."""
        responses = self.store.list_responses(prompt_id)
        return len(responses) >= 2 and len(responses) - len(self.near_duplicate_candidates(responses)) >= 2

    def annotation_item(self, prompt_id: str, annotator: str, suggest: bool = True) -> dict:
        """What the Annotate view shows for one prompt: the conversation, its responses in an order shuffled
        per (annotator, prompt) (stable across reloads), this annotator's latest annotation, an AI suggestion."""
        import hashlib
        import random

        prompt = self.store.get_prompt(prompt_id)
        if prompt is None:
            raise ValueError(f"unknown prompt id {prompt_id!r}")
        responses = self.store.list_responses(prompt_id)
        hidden = self.near_duplicate_candidates(responses)
        responses = [r for r in responses if r["id"] not in hidden]
        seed = int(hashlib.sha256(f"{annotator}\0{prompt_id}".encode()).hexdigest()[:12], 16)
        order = list(range(len(responses)))
        random.Random(seed).shuffle(order)
        responses = [responses[i] for i in order]
        latest = self.store.latest_annotation(prompt_id, annotator)
        suggestion = None
        if suggest and len(responses) >= 2:
            scorer = self.reward_scorer()
            if scorer is not None:
                try:
                    suggestion = self._suggestion(scorer, prompt["messages"], responses)
                except Exception:  # noqa: BLE001
                    suggestion = None
        return {"prompt": prompt, "responses": responses, "annotation": latest, "suggestion": suggestion,
                "hidden_duplicates": hidden}

    @staticmethod
    def _suggestion(scorer, messages: list[dict], responses: list[dict]) -> dict:
        """The AI suggestion for the shown responses: "ranking" (groups of ids, best first; scores within 0.1 tie),
        the scorer's version and held-out figures, its confidence per response ("scores": {id: score}; "p_better":
        {id: the Bradley-Terry probability that it is preferred to another shown response, averaged over them}),
        "weak" (`weak_scorer_note`, "" for a useful scorer) and "one_key" (whether one key may accept it)."""
        import math

        from .scoring.reward import ranking_from_scores

        ids = [r["id"] for r in responses]
        scores = [float(x) for x in scorer.score([messages] * len(responses), [r["text"] for r in responses])]
        m = getattr(scorer, "metrics", None) or {}
        weak = weak_scorer_note(m.get("dev_acc"), m.get("n_dev_pairs"))

        def beats(a, b):
            return 1.0 / (1.0 + math.exp(max(-50.0, min(50.0, b - a))))

        p_better = {ids[i]: sum(beats(scores[i], scores[j]) for j in range(len(ids)) if j != i) / (len(ids) - 1)
                    for i in range(len(ids))}
        return {"ranking": [[ids[i] for i in g] for g in ranking_from_scores(scores)],
                "scorer": scorer.scorer_version, "dev_acc": m.get("dev_acc"), "n_dev_pairs": m.get("n_dev_pairs"),
                "n_train_pairs": m.get("n_train_pairs"), "scores": dict(zip(ids, scores)), "p_better": p_better,
                "weak": weak, "one_key": not weak}

    def near_duplicate_candidates(self, responses: list[dict]) -> dict[str, dict]:
        """{response id: {"of": kept id, "similarity": cos}} for generated candidates that are near-duplicates
        (cosine of stored MiniLM embeddings >= the `near_duplicate_threshold` setting, default 0.92) of an
        earlier candidate of the same prompt. They are left out of the Annotate view, so they get no rank and
        so never reach a snapshot; they stay in the store. Human and dataset responses are never hidden (an
        edit is meant to be close to its original); responses not embedded yet are not judged."""
        from .scoring.embeddings import MODEL_ID
        from .scoring.neardup import DEFAULT_THRESHOLD, near_duplicates

        if len(responses) < 2:
            return {}
        ids, mat = self.store.get_embeddings("response", MODEL_ID, [r["id"] for r in responses])
        if len(ids) < 2:
            return {}
        threshold = float(self.store.get_setting("near_duplicate_threshold", DEFAULT_THRESHOLD))
        pos = {i: k for k, i in enumerate(ids)}
        order = [r for r in responses if r["id"] in pos]  # store order: oldest first, the kept one
        vecs = mat[[pos[r["id"]] for r in order]]
        protected = {r["id"] for r in order if r["origin"] == "human" or r["origin"].startswith("dataset")}
        hidden: dict[str, dict] = {}
        for i, j, sim in near_duplicates(vecs, threshold):
            a, b = order[i]["id"], order[j]["id"]
            if b not in protected and b not in hidden and a not in hidden:
                hidden[b] = {"of": a, "similarity": round(float(sim), 4)}
        return hidden

    def save_annotation(self, prompt_id: str, annotator: str, ranking: list[list[str]],
                        marks: dict | None = None, comment: str = "", flagged: bool = False) -> str:
        """Durable immediately (one committed transaction); the latest annotation per annotator counts. A skip of
        the prompt by this annotator is cleared in the same transaction."""
        with self.store.transaction():
            aid = self.store.save_annotation(prompt_id, annotator, ranking, marks=marks or {},
                                             comment=comment or "", flagged=bool(flagged))
            self.store.set_skipped(annotator, prompt_id, False)
        return aid

    def submit_ranking(self, prompt_id: str, annotator: str, ranks: dict, marks: dict | None = None,
                       comment: str = "", flagged: bool = False) -> dict:
        """What Annotate's submit saves. `ranks`: {response id: rank group (1 = best, same number = tie)} over
        the responses the view shows (`annotation_item`). Rules (the view's hint says the same):
        every shown response ranked -> that ranking; some ranked but not all -> refused unless the prompt is
        flagged; a flagged prompt is saved with the ranking of what was ranked when that is two or more responses,
        else with no ranking (one ranked response has nothing to be ranked against). Returns {"annotation_id",
        "ranking", "shown" (the shown response ids, in view order)}. ValueError (nothing written) otherwise."""
        item = self.annotation_item(prompt_id, annotator, suggest=False)
        shown = [r["id"] for r in item["responses"]]
        try:
            ranks = {str(k): int(v) for k, v in (ranks or {}).items()}
        except (TypeError, ValueError):
            raise ValueError("ranks must map response ids to rank group numbers") from None
        unknown = [k for k in ranks if k not in shown]
        if unknown:
            raise ValueError(f"response(s) {', '.join(unknown[:5])} are not shown for prompt {prompt_id}")
        unranked = [f"#{i + 1}" for i, rid in enumerate(shown) if rid not in ranks]
        if unranked and ranks and not flagged:
            raise ValueError(f"rank every response ({', '.join(unranked)} unranked), or flag the prompt: a flagged "
                             "prompt is saved with what you ranked (no ranking when only one response is ranked)")
        groups: dict[int, list[str]] = {}
        for rid in shown:
            if rid in ranks:
                groups.setdefault(ranks[rid], []).append(rid)
        ranking = [groups[g] for g in sorted(groups)]
        if flagged and sum(len(g) for g in ranking) < 2:
            ranking = []
        aid = self.save_annotation(prompt_id, annotator, ranking, marks=marks, comment=comment, flagged=flagged)
        return {"annotation_id": aid, "ranking": ranking, "shown": shown}

    def skip_prompt(self, prompt_id: str, annotator: str) -> list[str]:
        """Remember that `annotator` skipped the prompt (the store's settings: it survives a reload and a restart);
        their queue then shows it after every other prompt. Saving an annotation for it clears the skip."""
        return self.store.set_skipped(annotator, prompt_id, True)

    def edit_response(self, response_id: str, new_text: str, actor: str = "local") -> str:
        """A human edit becomes a new response (origin human); the original stays."""
        return self.store.edit_response(response_id, new_text, actor=actor)

    def guidelines(self) -> str:
        g = self.store.get_setting("guidelines")
        if g is None:
            try:
                from .seed import guidelines_text

                g = guidelines_text()
            except Exception:  # noqa: BLE001
                g = "# Annotation guidelines\n\n(none yet)"
        return g

    def set_guidelines(self, text: str, actor: str) -> None:
        if not (text or "").strip():
            raise ValueError("guidelines must not be empty")
        self.store.set_setting("guidelines", text, actor=actor)

    def queue_total(self, min_responses: int = 2) -> int:
        """Prompts that can be annotated (>= min_responses candidates)."""
        n = self.store.count_prompts()
        rows = self.store.list_prompts(limit=max(n, 1), order="responses")
        return sum(1 for r in rows if r.get("n_responses", 0) >= min_responses)

    def annotation_progress(self, annotator: str | None = None) -> dict:
        total = self.queue_total()
        per = self.store.annotator_progress()
        mine = next((p for p in per if p["annotator"] == annotator), None) if annotator else None
        return {"total": total, "done": mine["done"] if mine else 0, "per_annotator": per}

    # -- data overview -----------------------------------------------------------------------------------
    def agreement(self) -> dict:
        """Inter-annotator agreement on prompts ranked by several humans (latest annotation of each)."""
        from . import metrics as M

        by_prompt: dict[str, dict[str, dict[str, int]]] = {}
        for a in self.store.latest_annotations(human_only=True):
            if a["ranking"]:
                by_prompt.setdefault(a["prompt_id"], {})[a["annotator"]] = M.ranking_to_ranks(a["ranking"])
        return M.agreement_summary(by_prompt)

    def export_file(self, kind: str, actor: str = "local", trl_format: str = "auto", **filters) -> dict:
        """Export to workspace/exports/<time>-<kind>.<ext>; returns {"path", "written", "kind", "format"} (format:
        see `export_details`)."""
        from datetime import datetime

        ext = {"trl": "trl.jsonl", "listwise": "listwise.jsonl", "parquet": "parquet"}.get(kind)
        if ext is None:
            raise ValueError(f"unknown export kind {kind!r}: use trl, listwise or parquet")
        path = self.workspace.exports / f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.{ext}"
        r = self.export_details(kind, path, trl_format=trl_format, **filters)
        self.store.log_event(actor, "export", "export", path.name, {"kind": kind, "written": r["written"],
                                                                   "format": r["format"], "filters": filters})
        return {"path": str(path), "written": r["written"], "kind": kind, "format": r["format"]}

    # -- training & compare (jobs) --
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
                from .jobs import JobRunner

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
        from .neat.config import DTYPES, METHODS, NeatConfig
        from .neat.recipes import recipe_names
        from .neat.preflight import bf16_supported

        allv = self.store.all_system_prompt_versions()
        return {"methods": list(METHODS), "dtypes": list(DTYPES), "auto_dtype": "bf16" if bf16_supported() else "fp32",
                "negatives": [v["ref"] for v in allv if v["kind"] == "negative"],
                "positives": [v["ref"] for v in allv if v["kind"] == "positive"],
                "newest_negative": self.newest_prompt_ref("negative"),
                "newest_positive": self.newest_prompt_ref("positive"),
                "tags": self.store.prompt_tags(), "models": self.model_choices(),
                "recipes": recipe_names(),
                "defaults": NeatConfig().to_dict(), "help": NeatConfig.fields_help()}

    def recipe_config(self, name: str) -> dict:
        """A named recipe (neat/recipes.py) as a Train-tab config: its NeatConfig values, its system prompts pinned
        to the newest saved version of each name (scopes kept: `over_refusal@2:benign`) and its data filters."""
        from .neat.config import split_scope
        from .neat.recipes import recipe

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

    def _run_dirs(self) -> tuple[list[tuple[dict, Path]], list[Path]]:
        """([(store run, its run dir)] of the newest 100 runs with a run dir, [run dirs under <workspace>/runs with a
        final model that no store run names]: runs started from a shell)."""
        store_runs = [(r, Path(r["run_dir"])) for r in self.store.list_runs(limit=100) if r.get("run_dir")]
        known = {d.resolve() for _, d in store_runs}
        try:
            cli = [d for d in Path(self.workspace.runs).iterdir()
                   if d.is_dir() and d.resolve() not in known and (d / "final" / "config.json").is_file()]
        except OSError:
            cli = []
        return store_runs, cli

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, spec) of the models one can train from or compare: the base model(s), every finished run's
        final model and the newest checkpoint of every other run."""
        from .jobs import JobRunner

        out = [("default (SmolLM2-135M-Instruct)", "default")]
        if self.model_spec not in ("default", "tiny"):
            out.append((f"current generator ({self.model_spec})", self.model_spec))
        store_runs, cli_runs = self._run_dirs()
        for r, d in store_runs:
            if (d / "final" / "config.json").exists():
                out.append((f"run {r['id']} · {r['name']} (final)", str(d)))
            else:
                ck = JobRunner.latest_checkpoint(d)
                if ck is not None:
                    out.append((f"run {r['id']} · {r['name']} ({ck.name}, {r['status']})", str(ck)))
        # runs started from a shell (`python -m neat_studio train --out <workspace>/runs/...`) are not in the store:
        # their final models are offered too, newest first
        for d in sorted(cli_runs, key=lambda d: (d / "final" / "config.json").stat().st_mtime, reverse=True)[:100]:
            out.append((f"run dir {d.name} (started from the CLI, final)", str(d)))
        out.append(("tiny (random test model)", "tiny"))
        return out

    def newest_finished_run(self) -> dict | None:
        """The finished run whose final model was written last: a store run {"id", "name", "spec" (its run dir),
        "base" (the model it was trained from)} or a run directory started from the CLI ({"id": None, ...}).
        None when no run has a final model yet."""
        best, best_t = None, None
        store_runs, cli = self._run_dirs()
        for r, d in store_runs:
            f = d / "final" / "config.json"
            if r["status"] != "finished" or not f.is_file():
                continue
            t = f.stat().st_mtime
            if best_t is None or t > best_t:
                best, best_t = {"id": r["id"], "name": r.get("name") or "", "spec": str(d),
                                "base": (r.get("config") or {}).get("model") or None}, t
        for d in cli:
            t = (d / "final" / "config.json").stat().st_mtime
            if best_t is None or t > best_t:
                base = None
                try:
                    import yaml

                    base = (yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}).get("model")
                except Exception:  # noqa: BLE001 - no or unreadable config: compare against the generator
                    base = None
                best, best_t = {"id": None, "name": d.name, "spec": str(d),
                                "base": base if isinstance(base, str) and base else None}, t
        return best

    def default_compare_models(self) -> tuple[str, str]:
        """(Model A, Model B) that the Compare tab shows unless the user chose others: B = the newest finished
        run's final model, A = the model that run was trained from (else the current generator); without any
        finished run both are the current generator. Called on every page load / tab open and when a run
        finishes, so a new run shows up without a restart."""
        run = self.newest_finished_run()
        if run is None:
            return self.model_spec, self.model_spec
        base = run["base"] or self.model_spec
        if Path(base).resolve() == Path(run["spec"]).resolve():
            base = self.model_spec
        return base, run["spec"]

    def model_label(self, spec: str) -> str:
        """A model spec as people know it: "run <id> · <name>" for a run directory of this workspace (its final
        model or a checkpoint of it), else the spec itself."""
        spec = str(spec or "")
        try:
            p = Path(spec).resolve() if spec.startswith(("/", ".", "~")) or Path(spec).exists() else None
        except (OSError, RuntimeError, ValueError):
            p = None
        if p is None:
            return spec
        for r in self.store.list_runs(limit=200):
            d = Path(r["run_dir"]).resolve() if r.get("run_dir") else None
            if d is not None and (p == d or d in p.parents):
                rest = "" if p in (d, d / "final") else f" ({p.name})"
                return f"run {r['id']} · {r.get('name') or ''}{rest}".rstrip(" ·")
        runs = Path(self.workspace.runs).resolve()
        if runs in p.parents:
            d = p if p.parent == runs else next(x for x in p.parents if x.parent == runs)
            rest = "" if p in (d, d / "final") else f" ({p.name})"
            return f"run dir {d.name} (CLI){rest}"
        return spec

    def report_model_names(self, report: dict | None) -> list[tuple[str, str]]:
        """(label in the report, what the model is called in the studio) for each model of an evaluation report:
        a report labels a run by its folder name (the run id); this gives the run's name beside it."""
        out = []
        for m in (report or {}).get("models") or []:
            label, spec = str(m.get("label") or ""), str(m.get("spec") or "")
            out.append((label, self.model_label(spec) or label))
        return out

    def compare_model(self, spec: str):
        """A loaded model for the Compare tab (cached; the generation policy is reused when it is the same spec)."""
        from collections import OrderedDict

        from .models import load_model

        spec = (spec or "").strip()
        if not spec:
            raise ValueError("choose a model (base, a run, or an HF name / local path)")
        lock = self.__dict__.setdefault("_cmp_lock", threading.Lock())
        cache = self.__dict__.setdefault("_cmp_cache", OrderedDict())
        with lock:
            if spec == self.model_spec and self._lm is not None:
                return self._lm
            if spec in cache:
                cache.move_to_end(spec)
                return cache[spec]
            from .safety import check_model_spec

            check_model_spec(spec, self.workspace)  # user-typed: only allowed model folders (ValueError)
            lm = load_model(spec, workspace=self.workspace, dtype=self.gen_dtype)
            cache[spec] = lm
            while len(cache) > self.COMPARE_CACHE:
                cache.popitem(last=False)
            return lm

    def compare_info(self, spec: str) -> dict:
        lm = self.compare_model(spec)
        return {"spec": spec, "model_id": lm.model_id, "fingerprint": lm.fingerprint,
                "dtype": str(lm.model.dtype).removeprefix("torch.")}

    def compare_stream(self, spec_a: str, spec_b: str, history_a: list[dict], history_b: list[dict], user_text: str,
                       params: dict | None = None):
        """Send the same user turn to both models (same sampling settings and seed); yields (text_a, text_b) as
        both replies grow (the two generations advance in turns)."""
        from .generation import GenParams, stream_chat

        text = (user_text or "").strip()
        if not text:
            raise ValueError("write a message first")
        fields = {k: v for k, v in (params or {}).items() if k in ("temperature", "top_p", "max_new_tokens", "seed")}
        gp = GenParams(**fields)
        import queue

        lma, lmb = self.compare_model(spec_a), self.compare_model(spec_b)
        turn = {"role": "user", "content": text}
        convs = [list(history_a or []) + [turn], list(history_b or []) + [turn]]
        # Each side streams in its own thread: stream_chat runs under torch.inference_mode, which is thread-local,
        # and a UI generator may be resumed on a different worker thread at every step.
        q: queue.Queue = queue.Queue()
        stop = threading.Event()

        def side(i, lm):
            try:
                for t in stream_chat(lm, convs[i], gp):
                    if stop.is_set():
                        break
                    q.put((i, "text", t))
                q.put((i, "done", None))
            except Exception as e:  # noqa: BLE001 - re-raised in the consumer
                q.put((i, "error", e))

        for i, lm in enumerate((lma, lmb)):
            threading.Thread(target=side, args=(i, lm), daemon=True, name=f"neat-compare-{i}").start()
        texts, done = ["", ""], [False, False]
        try:
            while not all(done):
                i, kind, val = q.get()
                if kind == "error":
                    raise val
                if kind == "done":
                    done[i] = True
                else:
                    texts[i] = val
                yield texts[0], texts[1]
        finally:
            stop.set()

    def save_compare_vote(self, history_a: list[dict], history_b: list[dict], spec_a: str, spec_b: str, vote: str,
                          annotator: str, params: dict | None = None) -> dict:
        """Store a Compare vote as a ranking annotation so it flows into the next snapshot / export.

        `history_x`: side x's conversation ending with its assistant reply to the last user turn. The prompt stored
        is the conversation before that reply, as the PREFERRED side saw it (A for tie / both bad; in a one-turn
        chat both sides saw the same). Both replies are stored as responses with origin `compare:<model_id>`;
        ranking: A -> [[a], [b]], B -> [[b], [a]], tie -> [[a, b]], both_bad -> [[a, b]] with both marked neg;
        two identical answers (one response) -> no ranking, the vote in the comment (both_bad: the response marked).
        The latest vote of a user on a prompt replaces their earlier one (as in Annotate).
        Everything is checked before anything is written, then the prompt, both responses and the annotation are
        written in ONE transaction: a refused vote (ValueError) writes nothing."""
        if vote not in self.COMPARE_VOTES:
            raise ValueError(f"vote must be one of {', '.join(self.COMPARE_VOTES)}, got {vote!r}")
        ha, hb = list(history_a or []), list(history_b or [])
        if len(ha) < 2 or len(hb) < 2 or ha[-1].get("role") != "assistant" or hb[-1].get("role") != "assistant":
            raise ValueError("nothing to vote on yet: send a message so both models answer")
        if ha[-2].get("content") != hb[-2].get("content"):
            raise ValueError("the two sides answered different messages; send the same message again")
        context = (hb if vote == "B" else ha)[:-1]
        ia, ib = self.compare_info(spec_a), self.compare_info(spec_b)
        gp = {k: v for k, v in (params or {}).items() if k in ("temperature", "top_p", "max_new_tokens", "seed")}
        rows = []
        for info, h in ((ia, ha), (ib, hb)):
            mid = "".join(c if not c.isspace() else "_" for c in info["model_id"])[:200] or "model"
            rows.append({"text": h[-1].get("content") or "", "origin": f"compare:{mid}",
                         "model_id": info["model_id"], "seed": gp.get("seed"),
                         "params": {**gp, "spec": info["spec"], "fingerprint": info["fingerprint"],
                                    "dtype": info["dtype"]}})
        # a response's id is (prompt, origin, text): the two answers are ONE stored response exactly when the same
        # model gave the same text, and then there is nothing to prefer
        same = (rows[0]["origin"], rows[0]["text"]) == (rows[1]["origin"], rows[1]["text"])
        if same and vote in ("A", "B"):
            raise ValueError("both answers are identical; vote tie or both bad")
        comment = (f"compare vote {vote}: A={ia['model_id']} ({ia['fingerprint']}) vs "
                   f"B={ib['model_id']} ({ib['fingerprint']})")
        with self.store.transaction():  # all or nothing (store errors roll back the prompt and the responses)
            pid = self.store.add_prompts([{"messages": context, "source": "compare", "tags": ["compare"],
                                           "split": "train"}], actor=annotator)[0]
            a, b = self.store.add_responses([{**r, "prompt_id": pid} for r in rows], actor=annotator)
            # one response has nothing to be ranked against: the vote is kept as a comment (+ marks)
            ranking = [] if a == b else {"A": [[a], [b]], "B": [[b], [a]]}.get(vote, [[a, b]])
            marks = {a: "neg", b: "neg"} if vote == "both_bad" else {}
            aid = self.store.save_annotation(pid, annotator, ranking, marks=marks, comment=comment)
        return {"prompt_id": pid, "response_ids": [a, b], "annotation_id": aid, "ranking": ranking, "marks": marks,
                "vote": vote}

    def eval_set_choices(self) -> list[str]:
        """Standard evaluation sets the studio ships (data/evalsets/<name>.jsonl; present in every clone)."""
        from .evalsets import SET_NAMES, SHIPPED_DIR

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

        from .evalsets import SET_NAMES, load_prompt_set, make_rows, read_prompts, write_jsonl

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
            from .evaluate import evaluate

            try:
                job["report"] = evaluate(specs, sets, out, workspace=self.workspace, progress=progress, **kw)
                job["status"] = "done"
            except Exception as e:  # noqa: BLE001 - shown to the user in plain words
                job.update(status="failed", error=f"{type(e).__name__}: {e}")
            job["finished"] = _time.time()

        threading.Thread(target=work, daemon=True, name=f"neat-eval-{eid}").start()
        return eid

    def evaluation_status(self, eval_id: str) -> dict:
        """{"status": running|done|failed, "stage", "done", "total", "error", "out_dir", "markdown", "charts",
        "model_names"}; model_names: (label in the report, "run <id> · <name>" or the spec) per model."""
        job = self.__dict__.get("_eval_jobs", {}).get(eval_id)
        if job is None:
            raise ValueError(f"unknown evaluation {eval_id!r}")
        out = {k: v for k, v in job.items() if k != "report"}
        out["model_names"] = (self.report_model_names(job["report"]) if job.get("report") else
                              [(sp, self.model_label(sp)) for sp in job["specs"]])
        d = Path(job["out_dir"])
        out["markdown"] = (d / "report.md").read_text(encoding="utf-8") if job["status"] == "done" and \
            (d / "report.md").exists() else None
        out["charts"] = sorted(str(p) for p in d.rglob("*.png")) if job["status"] == "done" else []
        return out


def _prompt_set_id(prompt_ids) -> str:
    """A short id of a preview's set of prompts: two previews are comparable only on the same set."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, prompt_ids))).encode()).hexdigest()[:6] if prompt_ids else "–"


class _PreviewCancelled(Exception):
    """Raised inside the generation thread of a preview whose consumer stopped."""


def _sample_dict(s) -> dict:
    return {"text": s.text, "seed": s.seed, "params": dict(s.params or {}), "n_tokens": s.n_tokens}
