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
            return exporters.export_trl_pairs(rows, path, negative_prompts=negatives)
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
                        "note": "No prompt embeddings yet: compute them first (button 'Compute embeddings')."}
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
        text = (text or "").strip()
        if not text:
            raise ValueError("the prompt text is empty")
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
            raise ValueError("select at least one prompt (tick rows or give prompt ids)")
        return self.store.set_tags(ids, list(tags), actor=actor, mode=mode)

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

    def library_diff(self, name: str, a: int | None, b: int | None) -> str:
        from .library import diff_versions

        return diff_versions(self.store, name, a, b)

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
            found = self.store.get_prompts(ids)
            missing = [i for i in ids if i not in found]
            if missing:
                raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
            return ids
        if mode == "tag" and not tag:
            raise ValueError("choose a tag")
        out = self.store.sample_prompts(int(n), seed=int(seed), tag=tag if mode == "tag" else None)
        if not out:
            raise ValueError("no prompts matched (import prompts or run init first)")
        return out

    def run_preview(self, negative_ref: str, prompt_ids: list[str], *, normal_ref: str | None = None,
                    params: dict | None = None, seed: int = 0, actor: str = "local"):
        """Generate a preview prompt by prompt. A generator: yields `("row", i, n, row)` after each prompt and
        finally `("done", n, n, preview)` with the metrics computed and the preview saved (per version).

        row = {"prompt_id", "prompt", "normal": [sample], "negative": [sample]}; sample = {"text", "seed",
        "params", "n_tokens"}. `params` override the version's stored generation parameters; `seed` fixes every
        sample so the same preview can be reproduced."""
        from .generation import GenParams, generate

        neg = self.store.resolve_ref(negative_ref)
        if neg["kind"] != "negative":
            raise ValueError(f"{neg['ref']} is a {neg['kind']} prompt; choose a negative prompt to preview")
        pos = self.store.resolve_ref(normal_ref) if normal_ref else None
        if pos is not None and pos["kind"] != "positive":
            raise ValueError(f"{pos['ref']} is a negative prompt; the normal side takes a positive prompt or none")
        prompt_ids = list(dict.fromkeys(prompt_ids))
        if not prompt_ids:
            raise ValueError("no prompts selected for the preview")
        prompts = self.store.get_prompts(prompt_ids)
        missing = [p for p in prompt_ids if p not in prompts]
        if missing:
            raise ValueError(f"unknown prompt id(s): {', '.join(missing[:5])}")
        gp = {**(neg.get("params") or {}), **{k: v for k, v in (params or {}).items() if v is not None}}
        gp["seed"] = int(seed)
        fields = {k: gp[k] for k in ("temperature", "top_p", "max_new_tokens", "k", "seed") if k in gp}
        from .store import _validate_params  # same rules as a stored version

        _validate_params({k: v for k, v in fields.items()})
        lm = self.policy()
        gparams = GenParams(**fields)
        rows = []
        n = len(prompt_ids)
        for i, pid in enumerate(prompt_ids):
            msgs = prompts[pid]["messages"]
            normal = generate(lm, [msgs], system=pos["text"] if pos else None, params=gparams)[0]
            negative = generate(lm, [msgs], system=neg["text"], params=gparams)[0]
            row = {"prompt_id": pid, "prompt": msgs,
                   "normal": [_sample_dict(s) for s in normal], "negative": [_sample_dict(s) for s in negative]}
            rows.append(row)
            yield ("row", i + 1, n, row)
        from datetime import datetime, timezone

        preview = {"ref": neg["ref"], "name": neg["name"], "version": neg["version"],
                   "normal_ref": pos["ref"] if pos else None, "seed": int(seed), "params": fields,
                   "model_id": lm.model_id, "created_by": actor,
                   "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "prompt_ids": prompt_ids, "rows": rows, "pooled": False}
        preview["metrics"] = self.compute_preview_metrics(rows)
        self._save_preview(preview, actor)
        yield ("done", n, n, preview)

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
                        "created_at": p.get("created_at")})
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
                    skip_ids: Iterable[str] = (), include_annotated: bool = False) -> str | None:
        return self.store.next_in_queue(annotator, search=search or None, tag=tag or None, source=source or None,
                                        split=split or None, skip_ids=list(skip_ids),
                                        include_annotated=include_annotated)

    def annotation_item(self, prompt_id: str, annotator: str, suggest: bool = True) -> dict:
        """What the Annotate view shows for one prompt: the conversation, its responses in an order shuffled
        per (annotator, prompt) (stable across reloads), this annotator's latest annotation, an AI suggestion."""
        import hashlib
        import random

        prompt = self.store.get_prompt(prompt_id)
        if prompt is None:
            raise ValueError(f"unknown prompt id {prompt_id!r}")
        responses = self.store.list_responses(prompt_id)
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
                    groups = scorer.suggest_ranking(prompt["messages"], [r["text"] for r in responses])
                    suggestion = {"ranking": [[responses[i]["id"] for i in g] for g in groups],
                                  "scorer": scorer.scorer_version}
                except Exception:  # noqa: BLE001
                    suggestion = None
        return {"prompt": prompt, "responses": responses, "annotation": latest, "suggestion": suggestion}

    def save_annotation(self, prompt_id: str, annotator: str, ranking: list[list[str]],
                        marks: dict | None = None, comment: str = "", flagged: bool = False) -> str:
        """Durable immediately (one committed transaction); the latest annotation per annotator counts."""
        return self.store.save_annotation(prompt_id, annotator, ranking, marks=marks or {}, comment=comment or "",
                                          flagged=bool(flagged))

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

    def export_file(self, kind: str, actor: str = "local", **filters) -> dict:
        """Export to workspace/exports/<time>-<kind>.<ext>; returns {"path", "written", "kind"}."""
        from datetime import datetime

        ext = {"trl": "trl.jsonl", "listwise": "listwise.jsonl", "parquet": "parquet"}.get(kind)
        if ext is None:
            raise ValueError(f"unknown export kind {kind!r}: use trl, listwise or parquet")
        path = self.workspace.exports / f"{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.{ext}"
        n = self.export(kind, path, **filters)
        self.store.log_event(actor, "export", "export", path.name, {"kind": kind, "written": n, "filters": filters})
        return {"path": str(path), "written": n, "kind": kind}


def _sample_dict(s) -> dict:
    return {"text": s.text, "seed": s.seed, "params": dict(s.params or {}), "n_tokens": s.n_tokens}
