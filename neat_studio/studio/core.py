"""The studio's core: the workspace, its store, background embedding, data in/out and generation (see the
package docstring).

`Studio` bundles one workspace: its store (the only read-write DuckDB connection of the process), the seed
data, imports/exports, and the generation policy model. The CLI and every UI tab call these methods, so the
two front ends cannot drift apart.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable, Iterable

from ..config import Workspace
from ..store import Store

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

    from ..neat.estimate import fmt_duration

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


# The Data tab's export message: what a TRL pairs file's format means
TRL_FORMAT_WORDS = {"conversational": "TRL conversational format: prompt = messages, chosen / rejected = one "
                                      "assistant message",
                    "string": "TRL string format: plain text prompts"}


def snapshot_counts_text(c: dict | None) -> str:
    """A snapshot manifest's counts in words: "3 prompts (train 3), 6 responses, 3 ranked pairs, 3 ranked by
    people" (not a Python dict)."""
    c = dict(c or {})
    parts = []
    if "rows" in c:
        by = c.get("by_split") or {}
        split = ", ".join(f"{k} {v}" for k, v in by.items()) if isinstance(by, dict) else ""
        parts.append(f"{c['rows']} prompt(s)" + (f" ({split})" if split else ""))
    for key, label in (("responses", "response(s)"), ("pairs", "ranked pair(s)"),
                       ("human_rows", "ranked by people")):
        if key in c:
            parts.append(f"{c[key]} {label}")
    parts += [f"{k} {v}" for k, v in c.items() if k not in ("rows", "by_split", "responses", "pairs", "human_rows")
              and not isinstance(v, (dict, list))]
    return ", ".join(parts)


ACCOUNT_ACTIONS = ("add", "reset", "role", "disable", "enable")


def account_action(auth, kind: str, username: str | None, role: str, actor: str) -> dict:
    """One Admin tab action on the accounts `auth` (accounts.StoreAuth) by the admin `actor`: add (with `role`),
    reset (the password), role (set it to `role`), disable, enable. Returns {"username", "password"} (add and reset:
    a one-time password, shown once) or {"username", "message"}. ValueError (nothing changed) for a refused action,
    e.g. disabling one's own account."""
    username = (username or "").strip()
    if kind not in ACCOUNT_ACTIONS:
        raise ValueError(f"unknown account action {kind!r}")
    if kind == "add":
        return {"username": username, "password": auth.add_user(username, role, actor=actor)}
    if kind == "reset":
        return {"username": username, "password": auth.reset_password(username, actor=actor)}
    if kind == "role":
        auth.set_role(username, role, actor=actor)
        return {"username": username, "message": f"{username} is now {role}."}
    if kind == "disable" and username == actor:
        raise ValueError("you cannot disable your own account")
    auth.set_disabled(username, kind == "disable", actor=actor)
    state = "disabled (signed out everywhere)" if kind == "disable" else "enabled"
    return {"username": username, "message": f"{username} is {state}."}


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
    from ..store import normalise_messages, prompt_content_hash

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
    from ..neat.config import NeatConfig

    keep = NeatConfig().max_prompt_len
    shown = ", ".join(ids[:show]) + (f" and {len(ids) - show} more" if len(ids) > show else "")
    return (f"{len(ids)} prompt(s) are longer than {limit:,} characters: training keeps only the last "
            f"max_prompt_len tokens of a prompt ({keep} by default, roughly {round(4 * keep, -2):,} characters), so "
            f"their beginning is cut, and previews of them are slow. Shorten them or leave them out of training "
            f"(e.g. tag them and filter): {shown}.")


class StudioCore:
    # sequences decoded together by generation and previews (batch 16 vs one at a time: ~5x the tokens/s on a
    # 2-core CPU, benchmarks/bench_train.py)
    GEN_BATCH = 16

    GENERATOR_KEY = "generator_model"  # setting: the spec chosen with "Use as generator" (Compare tab)

    def __init__(self, workspace: Workspace | None = None, db_path: str | Path | None = None,
                 model_spec: str | None = "default", gen_dtype: str = "auto"):
        """`model_spec`: the generation policy; None = the one chosen last with "Use as generator" in this
        workspace (`saved_generator`), else "default" (what the web app does)."""
        from ..models import generation_dtype

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
        from ..scoring.embeddings import embed_missing

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
        from ..seed import seed_guidelines, seed_presets, seed_records

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
        from ..io.importers import read_records

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
        `trl_format` resolved to), else the kind. ValueError (nothing written) for an unknown kind or format, or a
        file that exists already: the same rule as backup (never overwrite; missing folders are created)."""
        from ..io import exporters

        if Path(path).is_file():
            raise ValueError(f"export target {Path(path).resolve()} already exists; choose a new file name "
                             "(nothing was written)")
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

    def accounts(self):
        """The accounts kept in this workspace's store (neat_studio.accounts.StoreAuth: login checks, admin actions)."""
        from ..accounts import StoreAuth

        if self.__dict__.get("_accounts") is None:
            self.__dict__["_accounts"] = StoreAuth(self.store)
        return self.__dict__["_accounts"]

    def snapshots(self, limit: int = 50) -> list[dict]:
        """The newest snapshots recorded in the store."""
        return self.store.list_snapshots()[:limit]

    def counts(self) -> dict:
        return self.store.counts()

    def backup(self, dest: str | Path, *, parquet_dir: str | Path | None = None, actor: str = "local") -> dict:
        """A consistent copy of the database file (and optionally Parquet tables); see Store.backup."""
        return self.store.backup(dest, parquet_dir=parquet_dir, actor=actor)

    def backup_target(self, name: str | Path) -> Path:
        """Where a backup asked for over the app's API goes: inside the workspace (a bare name or relative path
        under <workspace>/backups/). ValueError for anything that resolves outside the workspace."""
        root = self.workspace.root.resolve()
        p = Path(str(name or "").strip())
        if not str(p) or str(p) == ".":
            raise ValueError("give the backup a file name")
        target = (p if p.is_absolute() else root / "backups" / p).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"the app writes backups inside its workspace ({root / 'backups'}): give a file name, "
                             f"not {str(name)!r}")
        return target

    def seed_if_empty(self, actor: str = "system") -> bool:
        """Seed an empty workspace that was never seeded (what the app does on start). True when it seeded."""
        if self.store.count_prompts() == 0 and not self.store.get_setting("seeded"):
            self.init(actor=actor)
            return True
        return False

    def snapshot(self, actor: str = "local", **filters) -> dict:
        from ..snapshot import create_snapshot

        return create_snapshot(self.store, self.workspace, filters, actor=actor)

    # -- the Data tab and the backup route (form values in, tables and messages out) ---------------------------
    def data_overview(self) -> dict:
        """What the Data tab shows: {"counts", "agreement" (Studio.agreement), "overlap" (rankings per prompt) and
        the tables as rows of cells as shown: "annotators" [annotator, done, of, saves, flagged, last], "pairs"
        [a, b, shared prompts, Kendall tau-b, pairwise agreement] (the two figures as numbers, None without one),
        "shares" (the task distribution: [annotator, done, share, open now]), "leases" [prompt, annotator, until
        (time of day)], "snapshots" (snapshot_rows)}."""
        prog = self.annotation_progress(None)
        agreement, task = self.agreement(), self.task_overview()
        return {"counts": self.counts(), "agreement": agreement, "overlap": task["overlap"],
                "snapshots": self.snapshot_rows(),
                "annotators": [[p["annotator"], str(p["done"]), str(prog["total"]), str(p["annotations"]),
                                str(p.get("flagged_ever", 0)), str(p.get("last_at") or "")[:19].replace("T", " ")]
                               for p in prog["per_annotator"]],
                "pairs": [[x["a"], x["b"], str(x["prompts"]), x["kendall_tau"], x["pairwise_agreement"]]
                          for x in agreement["pairs"]],
                "shares": [[x["annotator"], str(x["done"]), str(x["share"]), str(x["holds"])]
                           for x in task["per_annotator"]],
                "leases": [[x["prompt_id"], x["annotator"], str(x["expires_at"])[11:19]] for x in task["leases"]]}

    def snapshot_rows(self, limit: int = 50) -> list[list[str]]:
        """The newest snapshots as the Data tab lists them: [id, created, rows, sha256 prefix]."""
        rows = []
        for s in self.snapshots(limit):
            c = s.get("counts") or {}
            rows.append([s.get("snapshot_id", s.get("id", "")), str(s.get("created_at", ""))[:19].replace("T", " "),
                         str(c.get("rows", c.get("prompts", ""))), str(s.get("sha256", ""))[:16]])
        return rows

    def save_overlap_form(self, n, actor: str) -> str:
        """The Data tab's rankings per prompt (a whole number from the form, else the store's error); the
        message. ValueError / TypeError: nothing saved."""
        v = self.set_annotations_per_prompt(int(n) if n is not None and float(n).is_integer() else n, actor=actor)
        return f"Each prompt now wants {v} ranking(s) before it leaves everyone's queue."

    def export_form(self, kind: str, split: str | None, annotated_only: bool, trl_format: str | None,
                    actor: str) -> dict:
        """An export from the Data tab's form (`split` "" = all; the TRL format only for trl): export_file's
        {"path", "written", "kind", "format"} plus "message". ValueError / OSError: nothing written."""
        filters = {}
        if split:
            filters["split"] = split
        if annotated_only:
            filters["annotated_only"] = True
        r = self.export_file(kind, actor=actor, trl_format=(trl_format or "auto") if kind == "trl" else "auto",
                             **filters)
        what = f"pairs ({TRL_FORMAT_WORDS.get(r['format'], r['format'])})" if kind == "trl" else "rows"
        r["message"] = f"Wrote {r['written']} {what} to {r['path']}"
        return r

    def snapshot_form(self, split: str | None, tags: list[str], annotated_only: bool, include_imported: bool,
                      actor: str) -> str:
        """A snapshot from the Data tab's form (`tags`: any of them; none = all); the message, which says where
        training reads it. ValueError / OSError: nothing created."""
        filters = {"split": split or None, "annotated_only": bool(annotated_only),
                   "include_imported": bool(include_imported)}
        if tags:
            filters["tags"] = list(tags)
        m = self.snapshot(actor=actor, **filters)
        return (f"Snapshot {m['snapshot_id']} created (sha256 {m['sha256'][:16]}…; "
                f"{snapshot_counts_text(m.get('counts'))}). Training reads it from "
                f"{self.workspace.snapshots / m['snapshot_id']}.")

    def backup_in_workspace(self, name: str | Path, parquet: bool, actor: str) -> dict:
        """A backup asked for over the app's API: the database file at `backup_target(name)` (never outside the
        workspace) and, with `parquet`, its tables beside it in `<stem>-parquet/`. ValueError for a bad target."""
        out = self.backup_target(name)
        return self.backup(out, parquet_dir=out.with_name(out.stem + "-parquet") if parquet else None, actor=actor)

    # -- generation --------------------------------------------------------------------------------------
    def policy(self):
        """The generation policy model, loaded once (thread-safe)."""
        with self._lm_lock:
            if self._lm is None:
                from ..models import load_model

                self._lm = load_model(self.model_spec, workspace=self.workspace, dtype=self.gen_dtype)
            return self._lm

    def use_model(self, spec: str, actor: str = "local") -> str:
        """Switch the generation policy (e.g. to an aligned run's model) and remember the choice in the workspace
        settings, so the next app start uses it too (`Studio(model_spec=None)`). Returns the new model id.
        Nothing changes (and nothing is saved) when the model does not load."""
        from ..models import load_model
        from ..safety import check_model_spec

        spec = check_model_spec(spec, self.workspace)  # a user's choice: only allowed model folders
        lm = load_model(spec, workspace=self.workspace, dtype=self.gen_dtype)
        self.store.set_setting(self.GENERATOR_KEY, spec, actor=actor)
        with self._lm_lock:
            self._lm, self.model_spec = lm, spec
        return lm.model_id

    def saved_generator(self) -> str | None:
        """The generator chosen last with "Use as generator" in this workspace, when it is still usable (an
        allowed spec; a model folder that still exists), else None (a warning is logged for a stale choice)."""
        from ..safety import check_model_spec

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
        from ..generation import GenParams, generate

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



def _prompt_set_id(prompt_ids) -> str:
    """A short id of a preview's set of prompts: two previews are comparable only on the same set."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, prompt_ids))).encode()).hexdigest()[:6] if prompt_ids else "–"


class _PreviewCancelled(Exception):
    """Raised inside the generation thread of a preview whose consumer stopped."""


def _sample_dict(s) -> dict:
    return {"text": s.text, "seed": s.seed, "params": dict(s.params or {}), "n_tokens": s.n_tokens}
