"""Annotation services: the reward scorer and AI suggestions, the queue, rankings, drafts, the data overview. A mixin
of Studio (see the package docstring)."""
from __future__ import annotations

from typing import Iterable

from .core import weak_scorer_note


class AnnotationMixin:
    # -- reward scorer -----------------------------------------------------------------------------------
    def train_scorer(self, actor: str = "local", seed: int = 0, **filters) -> dict:
        """Train a new reward scorer version on the curated rankings (pairs expanded from them; ties give no
        pair; dev split by prompt). The newest version then serves AI suggestions and preview metrics."""
        from ..scoring.reward import scorers_dir, train_scorer

        rows = self.store.listwise_rows(**filters)
        if not rows:
            raise ValueError("no ranked prompts yet: annotate or import preference data first")
        m = train_scorer(rows, scorers_dir(self.workspace), seed=seed)
        m.pop("scorer", None)
        self.store.log_event(actor, "train_scorer", "scorer", m.get("scorer_version"),
                             {k: m.get(k) for k in ("dev_acc", "n_train_pairs", "n_dev_pairs")})
        return m

    # -- annotation --------------------------------------------------------------------------------------
    def recent_annotations(self, annotator: str, limit: int = 200) -> list[tuple[str, str]]:
        """[(label "id · start of the prompt", prompt id)] of the prompts `annotator` ranked, newest first (one
        query for the prompts, not one per row)."""
        rows = [a for a in reversed(self.store.latest_annotations(human_only=True)) if a["annotator"] == annotator]
        rows = rows[:limit]
        prompts = self.store.get_prompts([a["prompt_id"] for a in rows])
        out = []
        for a in rows:
            p = prompts.get(a["prompt_id"])
            out.append((f"{a['prompt_id']} · {(p['text'] if p else '')[:70].replace(chr(10), ' ')}", a["prompt_id"]))
        return out

    def previous_annotated(self, annotator: str, current: str | None) -> str | None:
        """The prompt `annotator` ranked before `current` (their history, newest first: the next older one when
        `current` is in it, else their newest), or None when there is none."""
        ids = [pid for _, pid in self.recent_annotations(annotator)]
        older = ids[ids.index(current) + 1:] if current in ids else ids
        return older[0] if older else None

    def response(self, response_id: str) -> dict | None:
        return self.store.get_response(response_id) if response_id else None

    def editable_response(self, response_id: str | None, prompt_id: str) -> dict | None:
        """The response to edit when it belongs to `prompt_id` (the prompt shown), else None."""
        r = self.response(response_id)
        return r if r is not None and r["prompt_id"] == prompt_id else None

    def reward_scorer(self):
        """The newest trained reward scorer of this workspace, or None."""
        try:
            from ..scoring.reward import RewardScorer, list_scorers, scorers_dir

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
        in the store, so a reload keeps them) come after every other prompt, in any order. Prompts that already
        have the workspace's rankings per prompt from others, counting their open leases, are not handed out; the
        prompt returned is leased to `annotator` (store.lease) until they save or skip it or the lease expires."""
        if order not in ("queue", "uncertainty", "disagreement"):
            raise ValueError(f"unknown queue order {order!r}: use queue, uncertainty or disagreement")
        with self.store.transaction():  # choose and lease as one step: two people never get the same prompt
            for held in set(self.store.held_prompts(annotator)) & set(skip_ids):
                self.store.release(held, annotator)  # moved past it on this page: someone else may take it
            pid = self._next_prompt(annotator, tag=tag, source=source, split=split, search=search, skip_ids=skip_ids,
                                    include_annotated=include_annotated, order=order, pool=pool)
            if pid is not None:
                self.store.lease(pid, annotator)
        return pid

    def queue_next(self, annotator: str, skip_ids: Iterable[str] = (), *, wrap: bool = False, tag=None, split=None,
                   source=None, search=None, include_annotated=False, order=None) -> dict:
        """The Annotate page's next prompt: `next_prompt` past the page's `skip_ids`, with the queue filters as the
        page's fields give them ("" or None: any; no order: queue). With `wrap`, when nothing but the page's
        skipped prompts is left, the page forgets its skips and they come back (the longest skipped first).
        Returns {"item": prompt id or None, "skip": the page's skipped ids afterwards}."""
        skip = list(skip_ids)
        query = {"tag": tag or None, "split": split or None, "source": source or None, "search": search or None,
                 "include_annotated": bool(include_annotated), "order": order or "queue"}
        pid = self.next_prompt(annotator, skip_ids=skip, **query)
        if pid is None and wrap and skip:
            skip = []
            pid = self.next_prompt(annotator, skip_ids=skip, **query)
        return {"item": pid, "skip": skip}

    def _next_prompt(self, annotator, *, tag, source, split, search, skip_ids, include_annotated, order, pool):
        # prompts others have ranked or hold up to the overlap are not handed out (store/tasks.py)
        skip = set(skip_ids) | set(self.store.taken_prompts(annotator))
        skipped_before = self.store.skipped_prompts(annotator)
        held = self.store.held_prompts(annotator)  # a reload gives back the prompt this annotator has open
        later = set(skipped_before)
        for _ in range(1000):  # a prompt whose candidates are near-duplicates of each other shows < 2: skip it
            first = self.store.next_in_queue(annotator, search=search or None, tag=tag or None,
                                             source=source or None, split=split or None, skip_ids=list(skip),
                                             include_annotated=include_annotated or order == "disagreement",
                                             last_ids=skipped_before, first_ids=held)
            if first is None or self._rankable(first):
                break
            skip.add(first)
        scorer = self.reward_scorer() if order != "queue" else None
        if first is None or scorer is None:
            return first
        from ..scoring.active import disagreement, margin

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

    def annotation_page(self, annotator: str, prompt_id: str | None) -> dict:
        """What the Annotate page shows for `prompt_id` (None: none): {"item": annotation_item or None, "error":
        why a prompt asked for is not shown ("" otherwise), "progress": annotation_progress(annotator), "recent":
        recent_annotations(annotator)}."""
        item, error = None, ""
        if prompt_id:
            try:
                item = self.annotation_item(prompt_id, annotator)
            except ValueError as e:
                error = str(e)
        return {"item": item, "error": error, "progress": self.annotation_progress(annotator),
                "recent": self.recent_annotations(annotator)}

    @staticmethod
    def _suggestion(scorer, messages: list[dict], responses: list[dict]) -> dict:
        """The AI suggestion for the shown responses: "ranking" (groups of ids, best first; scores within 0.1 tie),
        the scorer's version and held-out figures, its confidence per response ("scores": {id: score}; "p_better":
        {id: the Bradley-Terry probability that it is preferred to another shown response, averaged over them}),
        "weak" (`weak_scorer_note`, "" for a useful scorer) and "one_key" (whether one key may accept it)."""
        import math

        from ..scoring.reward import ranking_from_scores

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
        from ..scoring.embeddings import MODEL_ID
        from ..scoring.neardup import DEFAULT_THRESHOLD, near_duplicates

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
                        marks: dict | None = None, comment: str = "", flagged: bool = False,
                        expect_latest: str | None | object = ...) -> str:
        """Durable immediately (one committed transaction); the latest annotation per annotator counts. A skip of
        the prompt by this annotator and their lease on it end in the same transaction. `expect_latest`: the
        annotator's latest annotation id when their page loaded the prompt (None: none); a save over a newer one
        is refused (StaleAnnotationError, a ValueError), and the refused ranking is kept in the audit log beside
        the annotation that stays."""
        from ..store import StaleAnnotationError

        try:
            with self.store.transaction():
                aid = self.store.save_annotation(prompt_id, annotator, ranking, marks=marks or {},
                                                 comment=comment or "", flagged=bool(flagged),
                                                 expect_latest=expect_latest)
                self.store.set_skipped(annotator, prompt_id, False)
                self.store.release(prompt_id, annotator)
        except StaleAnnotationError as e:
            self.store.log_event(annotator, "refuse_stale_annotation", "annotation", e.current,
                                 {"prompt_id": prompt_id, "annotator": annotator, "ranking": ranking,
                                  "marks": marks or {}, "comment": comment or "", "flagged": bool(flagged),
                                  "page_loaded": expect_latest or None})
            raise
        return aid

    def submit_ranking(self, prompt_id: str, annotator: str, ranks: dict, marks: dict | None = None,
                       comment: str = "", flagged: bool = False, expect_latest: str | None | object = ...) -> dict:
        """What Annotate's submit saves. `ranks`: {response id: rank group (1 = best, same number = tie)} over
        the responses the view shows (`annotation_item`). Rules (the view's hint says the same):
        every shown response ranked -> that ranking; some ranked but not all -> refused unless the prompt is
        flagged; a flagged prompt is saved with the ranking of what was ranked when that is two or more responses,
        else with no ranking (one ranked response has nothing to be ranked against). Returns {"annotation_id",
        "ranking", "shown" (the shown response ids, in view order), "summary" (the ranking by view position,
        "#2 = #1  >  #3", "(flagged)" added; "(flag only)" or "(comment / marks only)" without one)}. ValueError
        (nothing written) otherwise; `expect_latest` as in save_annotation."""
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
        aid = self.save_annotation(prompt_id, annotator, ranking, marks=marks, comment=comment, flagged=flagged,
                                   expect_latest=expect_latest)
        summary = "  >  ".join(" = ".join(f"#{shown.index(x) + 1}" for x in g) for g in ranking)
        if not summary:
            summary = "(flag only)" if flagged else "(comment / marks only)"
        elif flagged:
            summary += " (flagged)"
        return {"annotation_id": aid, "ranking": ranking, "shown": shown, "summary": summary}

    def save_ranking_json(self, prompt_id, annotator: str, ranking_json, marks_json, comment) -> dict:
        """The `/save_ranking` API route's save, from untrusted text: `ranking_json` a JSON list of groups of
        response ids, best first ("" = none), `marks_json` a JSON object {response_id: pos|neg|neutral} ("" =
        none), `comment` free text; each checked (safety.check_text) before anything is written. Returns
        {"annotation_id", "prompt_id" (stripped)}; ValueError (bad JSON too) and nothing written otherwise."""
        import json

        from ..safety import MAX_COMMENT_CHARS, check_text

        pid = check_text(prompt_id, "prompt id", max_chars=200, allow_empty=False).strip()
        ranking = json.loads(check_text(ranking_json, "ranking", max_chars=200_000) or "[]")
        marks = json.loads(check_text(marks_json, "marks", max_chars=200_000) or "{}")
        if not isinstance(marks, dict):
            raise ValueError("marks must be a JSON object {response_id: pos|neg|neutral}")
        cm = check_text(comment, "comment", max_chars=MAX_COMMENT_CHARS)
        return {"annotation_id": self.save_annotation(pid, annotator, ranking, marks=marks, comment=cm),
                "prompt_id": pid}

    def skip_prompt(self, prompt_id: str, annotator: str) -> list[str]:
        """Remember that `annotator` skipped the prompt (the store's settings: it survives a reload and a restart);
        their queue then shows it after every other prompt. Saving an annotation for it clears the skip. The
        annotator's lease on it ends (someone else may take it)."""
        with self.store.transaction():
            out = self.store.set_skipped(annotator, prompt_id, True)
            self.store.release(prompt_id, annotator)
        return out

    def annotations_per_prompt(self) -> int:
        return self.store.overlap()

    def set_annotations_per_prompt(self, n, actor: str) -> int:
        """Rankings wanted per prompt before it leaves everyone's queue (1-20); admins only in the UI."""
        return self.store.set_overlap(n, actor=actor)

    ASSIGN_DAYS = 7

    def assign_prompts(self, prompt_ids, annotator: str, actor: str, days: int = ASSIGN_DAYS) -> int:
        """Give prompts to one annotator (an admin's bulk action): each is leased to them for `days` days, so it comes
        first in their queue and out of everyone else's (within the overlap) until they save or skip it. Returns how
        many. ValueError (nothing written) for an unknown prompt or an invalid name."""
        from ..store.users import USERNAME_RE

        ids = list(dict.fromkeys(str(i).strip() for i in prompt_ids if str(i).strip()))
        if not ids:
            raise ValueError("no prompt ids to assign")
        if not USERNAME_RE.match((annotator or "").strip()):
            raise ValueError(f"invalid annotator name {annotator!r}")
        self._require_prompts(ids)
        with self.store.transaction():
            for pid in ids:
                self.store.lease(pid, annotator.strip(), seconds=int(days) * 86400)
        self.store.log_event(actor, "assign_prompts", "annotator", annotator.strip(), {"prompts": len(ids),
                                                                                         "days": int(days)})
        return len(ids)

    def leases(self) -> list[dict]:
        """Who holds which prompt now (Data tab)."""
        return self.store.active_leases()

    def task_overview(self) -> dict:
        """The Data tab's task distribution: {"overlap", "total" (rankable prompts), "wanted" (total x overlap
        rankings), "leases", "per_annotator": [{annotator, done, share (an equal part of what is wanted, rounded
        up), holds (prompts leased now)}]}."""
        import math

        prog = self.annotation_progress(None)
        overlap, leases = self.store.overlap(), self.store.active_leases()
        people = sorted({p["annotator"] for p in prog["per_annotator"]} | {x["annotator"] for x in leases})
        wanted = prog["total"] * overlap
        share = math.ceil(wanted / len(people)) if people else 0
        done = {p["annotator"]: p["done"] for p in prog["per_annotator"]}
        return {"overlap": overlap, "total": prog["total"], "wanted": wanted, "leases": leases,
                "per_annotator": [{"annotator": a, "done": done.get(a, 0), "share": share,
                                   "holds": sum(x["annotator"] == a for x in leases)} for a in people]}

    def edit_response(self, response_id: str, new_text: str, actor: str = "local") -> str:
        """A human edit becomes a new response (origin human); the original stays."""
        return self.store.edit_response(response_id, new_text, actor=actor)

    def guidelines(self) -> str:
        g = self.store.get_setting("guidelines")
        if g is None:
            try:
                from ..seed import guidelines_text

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
        from .. import metrics as M

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
