"""Preview services: sample a negative prompt on chosen prompts, stream, stop, keep as candidates; and what the
Negative Prompt Studio tab asks of them and of its library editor (form values in, decisions and messages out).
A mixin of Studio (see the package docstring)."""
from __future__ import annotations

import threading
from typing import Iterable

from .core import _PreviewCancelled, _prompt_set_id, _sample_dict

NO_SYSTEM_PROMPT = "(no system prompt)"  # a preview's normal side without a positive prompt

# The library editor's fields (Negative Prompt Studio tab), by name; tags as a list
EDITOR_FIELDS = ("name", "kind", "ref", "text", "tags", "temperature", "top_p", "max_new_tokens", "k")
EDITOR_NEW = "\x00new"  # the guard's target for the editor's New button
_EDITOR_PARAMS = {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 128, "k": 1}  # defaults of a version


def _editor_tags(tags) -> list[str]:
    """Tags as the editor's one comma-separated text gives them back (a stored tag may hold a comma or `;`)."""
    return sorted({p.strip() for t in tags or [] for p in str(t).replace(";", ",").split(",") if p.strip()})


def editor_changed(loaded: dict | None, values: dict) -> bool:
    """Whether the library editor's `values` differ from the `loaded` version's (both keyed by EDITOR_FIELDS;
    None: nothing loaded, then any text counts as a change). The ref is what was loaded, not an edit."""
    if loaded is None:
        return bool(str(values.get("text") or "").strip())
    for f in EDITOR_FIELDS:
        a, b = loaded.get(f), values.get(f)
        if f in _EDITOR_PARAMS:
            try:
                if abs(float(a) - float(b)) > 1e-9:
                    return True
            except (TypeError, ValueError):
                if a != b:
                    return True
        elif f == "tags":
            if _editor_tags(a) != _editor_tags(b):
                return True
        elif f != "ref" and str(a or "").strip() != str(b or "").strip():
            return True
    return False


class PreviewMixin:
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

        from ..generation import GenParams, generate, sample_seed

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
        from ..store.core import _validate_params  # same rules as a stored version

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
        from .. import metrics as M

        negs = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "text": s["text"]}
                for r in rows for s in r["negative"]]
        norms = [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "text": s["text"]}
                 for r in rows for s in r["normal"]]
        notes = []
        embed = is_refusal = reward = None
        try:
            from ..scoring.embeddings import Embedder

            emb = Embedder.get()
            embed = emb.encode
        except Exception as e:  # noqa: BLE001 - metrics degrade, the preview still works
            notes.append(f"embeddings unavailable ({type(e).__name__}: {e})")
        try:
            from ..scoring.refusal import is_refusal as _is_refusal

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
            out.append({"ref": p["ref"], "normal": p.get("normal_ref") or NO_SYSTEM_PROMPT,
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

    # -- the Negative Prompt Studio tab --------------------------------------------------------------------
    def preview_choices(self, current: str | None = None, auto: str | None = None) -> dict:
        """The preview form's pickers when the tab opens: {"negative", "positive" (every version of each kind),
        "tags", "newest" (the negative version saved last), "value"}. `value` is the version to show: `current`
        (what the picker holds) while it exists and is not `auto` (the default the picker was given last, not a
        user's choice), else the newest."""
        refs = self.library_refs()
        newest = self.newest_prompt_ref("negative")
        value = current if current in refs["negative"] and current != auto else newest
        return {"negative": refs["negative"], "positive": refs["positive"], "tags": self.prompt_tags(),
                "newest": newest, "value": value}

    def preview_events(self, negative_ref: str | None, *, normal_ref: str | None = None, seed=0, mode: str = "random",
                       n=3, tag: str | None = None, ids: Iterable[str] | None = None, actor: str = "local",
                       run_key: str | None = None):
        """Run preview from the tab's form: pick the prompts (sample_for_preview), run `run_preview` and say what
        happens. A generator of events {"stage", "rows", "done", "total", "seed", "normal", "ref", "message"}:
        "start" (no rows yet), "rows" (every prompt's texts so far), "row" (prompts 1..done finished), "done"
        (adds "preview", the saved one). `normal` / `ref` name the two sides. ValueError for a form or preview
        that cannot run (before "start" for the form, after it for the preview itself)."""
        if not negative_ref:
            raise ValueError("Choose a negative prompt version first.")
        seed = int(seed or 0)
        pids = self.sample_for_preview(mode, int(n or 3), seed=seed, tag=tag or None, ids=list(ids or []))
        normal_ref = None if (not normal_ref or normal_ref == NO_SYSTEM_PROMPT) else normal_ref
        gen = self.run_preview(negative_ref, pids, normal_ref=normal_ref, seed=seed, actor=actor, run_key=run_key)
        ev = {"seed": seed, "normal": normal_ref or NO_SYSTEM_PROMPT, "ref": negative_ref}
        yield {**ev, "stage": "start", "rows": [], "done": 0, "total": len(pids),
               "message": f"Generating {len(pids)} prompt(s) with seed {seed}…"}
        rows = []
        for stage, i, total, payload in gen:
            if stage == "rows":  # every prompt's texts so far (all prompts stream at once)
                yield {**ev, "stage": "rows", "rows": payload, "done": 0, "total": total}
            elif stage == "row":
                rows.append(payload)
                yield {**ev, "stage": "row", "rows": list(rows), "done": i, "total": total}
            else:
                pv = payload
                yield {**ev, "stage": "done", "rows": list(rows), "done": total, "total": total, "ref": pv["ref"],
                       "preview": pv,
                       "message": (f"Preview of {pv['ref']} saved (seed {seed}, model {pv['model_id']}). Re-run "
                                   "with the same seed and prompts to reproduce it; 'Add to pool' makes these "
                                   "responses annotation candidates.")}

    def stop_preview_message(self, run_key: str | None) -> str | None:
        """Stop this session's preview (stop_preview) and say so; None when nothing was running."""
        r = self.stop_preview(run_key)
        if r is None or r["state"] in ("finished", "failed"):
            return None
        return (f"Preview stopped: {r['done']} of {r['total']} prompt(s) finished generating; nothing was saved (a "
                "preview is saved, and can be added to the pool, once it completes).")

    def pool_preview(self, ref: str | None, actor: str = "local") -> str:
        """Add to pool: the latest finished preview of `ref` becomes annotation candidates; the message."""
        if not ref:
            raise ValueError("Run a preview first (the pool takes the latest finished preview).")
        r = self.add_preview_to_pool(ref, actor=actor)
        return (f"Added {r['added']} new candidate response(s) for {r['prompts']} prompt(s) "
                f"({r['responses'] - r['added']} were already in the pool). Origins: negative:{ref} and the normal "
                "side.")

    def library_editor_values(self, name: str, version: int | None = None) -> dict | None:
        """A library version as the editor shows it (EDITOR_FIELDS; parameters the version lacks at their
        defaults), or None when there is no such version."""
        sp = self.library_version(name, version)
        if sp is None:
            return None
        p = sp["params"] or {}
        return {"name": sp["name"], "kind": sp["kind"], "ref": sp["ref"], "text": sp["text"],
                "tags": list(sp["tags"]), **{k: p.get(k, d) for k, d in _EDITOR_PARAMS.items()}}

    def library_editor_empty(self) -> dict:
        """What New puts in the editor."""
        return {"name": "", "kind": "negative", "ref": "", "text": "", "tags": [], **_EDITOR_PARAMS}

    def library_editor_warning(self, values: dict, target: str, warned: str | None) -> str | None:
        """Before a library row click (`target`: its name) or New (EDITOR_NEW) replaces the editor's `values`:
        None to go ahead, else the warning. The editor holds unsaved changes when it differs from the version it
        loaded (any text when none). `warned`: the target warned about last; the same target again discards."""
        if warned == target:
            return None
        sp = None
        if values.get("ref"):
            try:
                sp = self.resolve_library_ref(values["ref"])
            except ValueError:
                pass
        if not editor_changed(self.library_editor_values(sp["name"], sp["version"]) if sp else None, values):
            return None
        return ("The editor has unsaved changes. Save them as a new version, or click "
                f"{'New system prompt' if target == EDITOR_NEW else target} again to discard them.")

    def library_version_choices(self, name: str) -> dict:
        """The versions of `name` (newest first) and the diff's default pair: {"versions", "choices" (oldest
        first), "from" (the one before the latest, or the only one), "to" (the latest)}; None for no version."""
        vs = self.library_versions(name)
        choices = [str(v["version"]) for v in vs]
        return {"versions": list(reversed(vs)), "choices": choices,
                "from": choices[-2] if len(choices) >= 2 else (choices[-1] if choices else None),
                "to": choices[-1] if choices else None}

    def library_version_diff(self, name: str, a, b) -> dict | None:
        """Version `a` against `b` of `name`: {"from", "to" (the versions), "raw" (unified diff), "param_changes"
        (["key: old → new"])}; None while a name or version is missing; ValueError for an unknown version."""
        if not name or not a or not b:
            return None
        va, vb = self.library_version(name, int(a)), self.library_version(name, int(b))
        if va is None or vb is None:
            raise ValueError(f"{name} has no version {a if va is None else b}")
        raw = self.library_diff(name, int(a), int(b))
        pa, pb = va.get("params") or {}, vb.get("params") or {}
        return {"from": va, "to": vb, "raw": raw,
                "param_changes": [f"{k}: {pa.get(k)} → {pb.get(k)}" for k in sorted(set(pa) | set(pb))
                                  if pa.get(k) != pb.get(k)]}

    def save_library_editor(self, values: dict, actor: str = "local") -> dict:
        """Save the editor's `values` (EDITOR_FIELDS; the ref is ignored) as a new version: save_library_prompt's
        {"ref", "version", "created"} plus "name" and "message". ValueError (nothing saved) for invalid values."""
        params = {"temperature": float(values["temperature"]), "top_p": float(values["top_p"]),
                  "max_new_tokens": None if values.get("max_new_tokens") is None else int(values["max_new_tokens"]),
                  "k": None if values.get("k") is None else int(values["k"])}
        r = self.save_library_prompt(values["name"], values["kind"], values["text"],
                                     {k: v for k, v in params.items() if v is not None}, values.get("tags"),
                                     actor=actor)
        r["name"] = r["ref"].rsplit("@", 1)[0]
        r["message"] = (f"Saved {r['ref']}." if r["created"] else
                        f"No change from {r['ref']}: text and parameters are identical, nothing was saved.")
        return r
