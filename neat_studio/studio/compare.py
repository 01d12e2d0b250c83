"""Compare services: model choices (newest finished run as B), the compare chat, votes. A mixin of Studio (see the
package docstring)."""
from __future__ import annotations

import threading
from pathlib import Path


def follow(current: tuple, auto: tuple | None, defaults: tuple) -> list:
    """New values of (Model A, Model B): a side still showing the default it was given (`auto`; or nothing)
    takes the new default, a side the user changed keeps the user's choice. None = leave the side as it is."""
    out = []
    for cur, was, new in zip(current, auto or (None, None), defaults):
        out.append(new if (not cur or cur == was) and cur != new else None)
    return out


class CompareMixin:
    # -- models and compare --------------------------------------------------------------------------------
    def checked_model(self, spec: str | None) -> str:
        """A model spec a user typed or chose, allowed by the studio's policy (safety.check_model_spec: known names,
        model folders of this workspace ...); the operator's own generator is always fine. ValueError otherwise."""
        from ..safety import check_model_spec

        spec = (spec or "").strip() or "default"
        return spec if spec == self.model_spec else check_model_spec(spec, self.workspace)

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
        from ..jobs import JobRunner

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

    def compare_models_update(self, current: tuple, auto: tuple | None, force: bool = True) -> dict:
        """Model A / B of the Compare tab after new runs: {"defaults": default_compare_models() (what the sides
        were given now), "choices": model_choices() or None (nothing to change), "values": (new A, new B), None
        for a side that stays (follow: a side still on its default `auto` follows the new default, a side the user
        chose stays), "sets": eval_set_choices() when `force`, else None}. Without `force` (a timer) nothing
        changes unless the defaults did. Models load on first use, not here."""
        defaults = self.default_compare_models()
        was = tuple(auto) if auto else (None, None)
        if not force and defaults == was:
            return {"defaults": was, "choices": None, "values": (None, None), "sets": None}
        return {"defaults": defaults, "choices": self.model_choices(), "values": tuple(follow(current, was, defaults)),
                "sets": self.eval_set_choices() if force else None}

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

        from ..models import load_model

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
            from ..safety import check_model_spec

            check_model_spec(spec, self.workspace)  # user-typed: only allowed model folders (ValueError)
            lm = load_model(spec, workspace=self.workspace, dtype=self.gen_dtype)
            cache[spec] = lm
            while len(cache) > self.COMPARE_CACHE:
                cache.popitem(last=False)
            return lm

    def compare_info(self, spec: str) -> dict:
        """{"spec", "model_id", "fingerprint", "dtype", "check"}; check: a run's verdict against its base in a few
        words (run_check.run_check; "" for a model that is not a checked run), shown beside the model."""
        from ..run_check import run_check

        lm = self.compare_model(spec)
        p = Path(str(spec))
        return {"spec": spec, "model_id": lm.model_id, "fingerprint": lm.fingerprint,
                "dtype": str(lm.model.dtype).removeprefix("torch."),
                "check": run_check(p.parent if p.name == "final" else p)}

    def compare_side(self, spec: str | None) -> tuple[dict | None, str | None]:
        """(compare_info, None) of a Compare side's model, (None, why it does not load) when it fails, (None, None)
        when no model is chosen."""
        if not spec:
            return None, None
        try:
            return self.compare_info(spec), None
        except Exception as e:  # noqa: BLE001 - ModelLoadError, ValueError, OSError: shown in plain words
            return None, str(e)

    @staticmethod
    def compare_params(temperature, top_p, max_new_tokens, seed) -> dict:
        """The Compare tab's sampling settings (the same for both sides) as compare_stream's `params`."""
        return {"temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_new_tokens or 96),
                "seed": int(seed or 0)}

    @staticmethod
    def compare_message(text: str | None) -> str:
        """The message a Compare turn sends (stripped); ValueError when there is none."""
        text = (text or "").strip()
        if not text:
            raise ValueError("Write a message first.")
        return text

    def compare_turn(self, spec_a: str, spec_b: str, history_a: list[dict], history_b: list[dict], user_text: str,
                     params: dict | None = None):
        """compare_stream as the two conversations: yields (history_a, history_b, False), each side's history with
        the user turn and its reply so far, while the replies grow, then (history_a, history_b, True) with both
        replies finished: the turn to keep."""
        turn = {"role": "user", "content": self.compare_message(user_text)}
        ha, hb = list(history_a or []), list(history_b or [])

        def conversations(ta, tb):
            return ha + [turn, {"role": "assistant", "content": ta}], hb + [turn, {"role": "assistant", "content": tb}]

        ta = tb = ""
        for ta, tb in self.compare_stream(spec_a, spec_b, ha, hb, turn["content"], params):
            yield *conversations(ta, tb), False
        yield *conversations(ta, tb), True

    @staticmethod
    def compare_retry(history_a: list[dict], history_b: list[dict], seed) -> dict | None:
        """What Regenerate sends again: {"text": the last user message, "history_a" / "history_b": both
        conversations before it, "seed": the next seed}; None when there is no turn yet."""
        if len(history_a or []) < 2 or len(history_b or []) < 2:
            return None
        return {"text": history_a[-2]["content"], "history_a": history_a[:-2], "history_b": history_b[:-2],
                "seed": int(seed or 0) + 1}

    def compare_stream(self, spec_a: str, spec_b: str, history_a: list[dict], history_b: list[dict], user_text: str,
                       params: dict | None = None):
        """Send the same user turn to both models (same sampling settings and seed); yields (text_a, text_b) as
        both replies grow (the two generations advance in turns)."""
        from ..generation import GenParams, stream_chat

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
