"""Preview services: sample a negative prompt on chosen prompts, stream, stop, keep as candidates. A mixin of Studio
(see the package docstring)."""
from __future__ import annotations

import threading
from typing import Iterable

from .core import _PreviewCancelled, _prompt_set_id, _sample_dict


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
