"""One NEAT round's data: snapshot rows + online samples -> ranked lists.

Pure python (no torch): how a round's lists are built and ranked, and how they are scheduled into steps.

Ranking rule (`ranking="rule"`), per prompt; ranks are dense afterwards (0 = best, equal = tie):
- curated responses keep their human (snapshot) ranks;
- plain policy samples (and positive-prompt samples) are NOT trusted to beat any curated answer: when the prompt
  has >= 2 curated non-negative groups they TIE with the worst of them (so they lose to the better curated
  answers and make no claim against the worst one); with one curated non-negative group they go right below it;
  with none they are the top group. Plain and positive samples tie with each other (ordering them is the
  reward scorer's job), unless `positive_above_plain` (config `positive_rank=above_plain`): then positive-prompt
  samples sit just above the plain ones, still below the curated groups the plain samples lose to;
- negative-prompt samples (online) are the bottom group, tied among themselves: every one ranks below every
  non-negative response of the prompt (curated responses whose origin is `negative:*` keep their human rank);
- with `degenerate_bottom` (config `degenerate_rank=bottom`), a plain or positive sample that loops
  (`eval_metrics.degeneration`) joins that bottom group, its origin marked `degenerate:<origin>`: the model's own
  repetition collapse is pushed down instead of being ranked with (or, tied best, trained toward) its answers;
- a plain or positive sample whose text is in `refused` (config `refusal_rank_scope`: the trainer passes the samples
  the refusal detector flags on prompts carrying that tag) joins the bottom group too, marked `refusal:<origin>`;
- a plain or positive sample whose text is in `complied` (config `compliance_rank_scope`, e.g. harmful: the samples
  of those prompts the detector does NOT flag, i.e. answers to a harmful request) joins it too, marked
  `compliance:<origin>`. Why: the `safe_refusal` positive refuses only some of the time, and ranked above the plain
  samples its compliant samples would otherwise be trained toward on exactly the prompts that should be refused;
  with `comply_bottom=False` (config `compliance_rank=plain`) only the compliant POSITIVE samples are marked, as
  `unheeded:<origin>`, and they lose their place above the plain samples (ranked as plain ones) instead of going
  to the bottom: the positive prompt's evidence counts only where it was heeded, and the model's own answers
  are not pushed down;
- a negative-prompt sample whose text is in `unheeded_neg` (config `negative_rank=heeded`: the trainer passes the
  negative samples the refusal detector does NOT flag on prompts tagged `refusal_rank_scope`) is marked
  `unheeded:<origin>` and ranked as a plain sample, not at the bottom. Why: the 135M model mostly ignores the
  `over_refusal` prompt (the detector flags ~15 of its ~92 samples per round), so without this ~77 ordinary
  answers per round on harmless prompts are pushed down (with anchor_weight, below their round-start log-prob).
  Tested (benchmarks/RESULTS.md step 71): held-out harmless answers fell sooner with it, so those pushed-down
  answers act as a brake; off by default;
- with `loops` = n (config `loop_negatives`), n synthetic repetition loops join the bottom group, marked
  `loop:best` / `loop:policy`: the first sentence of the best curated answer (then of the plain samples) repeated
  to the evaluation's answer length (`loop_of`). Why: the model's greedy answers collapse into loops on prompts it
  never saw ("No, no, no, ...", "Santa Claus, Santa Claus, ..."), which a 144-prompt curated set rarely shows it
  doing during sampling; a loop of its own best answer ranked below that answer teaches it that repeating what it
  just said is worse than going on (the pseudo-repetition data of Xu et al. 2022, "Learning to Break the Loop",
  in the ranking loss's terms);
- `borrowed` texts (config `refusal_negatives` = n: the trainer passes, on prompts tagged `refusal_rank_scope`, n
  refusal openings of the OTHER prompts' best answers and samples this round, `borrow_refusals`) join the bottom group,
  marked `borrowed:refusal`. Why: the refusals the model learns on harmful prompts spread to harmless ones (the
  refusal-benign line of benchmarks/RESULTS.md), while the `over_refusal` prompt rarely makes the 135M model refuse
  (~15 of ~92 samples per round), so a harmless prompt's list seldom holds a refusal to push down; the same words
  ranked up on harmful prompts and down on harmless ones ask the model to tell the two apart.
Reward rule (`ranking="reward"`): a scorer object with `.score(prompts, responses) -> scores` (higher = better)
scores curated and online responses. Curated groups keep their human order; each gets the threshold
t_g = min(mean score of groups 0..g) (monotone). An online sample with score s ties with group g when s == t_g,
else sits between the groups whose thresholds are above and below s; online samples between the same two
groups are ordered by score (equal scores tie). Without curated responses online samples are ranked by score.

Within a list, exact duplicate texts (after stripping) are kept once, at their first occurrence in the order
curated, plain, positive, negative (a negative prompt that changed nothing did not produce a negative); empty
responses are dropped (they have no tokens to score).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field

from ..eval_metrics import DEGEN_REPEATS, degeneration

NEG, POS, DEGEN, REFUSAL, COMPLY, LOOP = "negative:", "positive:", "degenerate:", "refusal:", "compliance:", "loop:"
BORROWED = "borrowed:"  # another prompt's refusal opening, ranked with the negatives (config refusal_negatives)
UNHEEDED = "unheeded:"  # a positive or negative sample that did not do what its prompt asked: ranked as a plain one
BOTTOM = (NEG, DEGEN, REFUSAL, COMPLY, LOOP, BORROWED)  # origins of the bottom group
# the kinds the ranking rules mark (all but unheeded in the bottom group), by the name the round logs count them under
MARKED = {"degenerate": DEGEN, "refusal": REFUSAL, "compliance": COMPLY, "loop": LOOP, "borrowed": BORROWED,
          "unheeded": UNHEEDED}


def kind_of(origin: str) -> str:
    """negative | degenerate | refusal | compliance | loop | positive | plain: what made a non-curated response."""
    if origin.startswith(NEG):
        return "negative"
    marked = [k for k, prefix in MARKED.items() if origin.startswith(prefix)]
    return marked[0] if marked else "positive" if origin.startswith(POS) else "plain"


OPENING_WORDS = 30  # a borrowed refusal is its first sentence, at most 30 words: the part that says "I can't"
LOOP_UNIT_WORDS, LOOP_WORDS = 12, 40  # a loop repeats at most 12 words to >= 40 words (~48 tokens, the eval's length)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


@dataclass
class RankedList:
    prompt_id: str
    prompt: list            # messages (the PLAIN prompt: scoring never sees a negative system prompt)
    responses: list         # texts
    ranks: list             # ints, dense, lower = better
    origins: list           # policy | negative:<ref> | positive:<ref> | dataset:* | human | ...
    curated: list = field(default_factory=list)  # bool per response: from the snapshot
    ref_p: list | None = None  # p of each response under the policy that started the round (anchor=round)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RankedList":
        return cls(**d)

    @property
    def is_negative(self) -> list:
        return [o.startswith(NEG) for o in self.origins]


def dense(keys: list) -> list[int]:
    """Sort keys -> dense ranks (0 = smallest key; equal keys share a rank)."""
    order = {k: i for i, k in enumerate(sorted(set(keys)))}
    return [order[k] for k in keys]


def _dedupe(items):
    seen, out = set(), []
    for it in items:
        t = it[0].strip()
        if not t or t in seen:
            continue
        seen.add(t)
        out.append(it)
    return out


def curated_items(row: dict, best_only: bool = False):
    """[(text, origin, rank)] of a snapshot row, ranks densified; `best_only` keeps the best group."""
    ranks = dense(list(row["ranks"]))
    items = [(t, o, r) for t, o, r in zip(row["responses"], row["origins"], ranks)]
    if best_only:
        items = [it for it in items if it[2] == 0]
    return items


def rank_rule(curated, online, positive_above_plain: bool = False, plain_ties_best: bool = False) -> list:
    """curated: [(text, origin, rank)]; online: [(text, origin)] -> keys (sortable) for curated + online.
    `positive_above_plain`: positive-prompt samples sit just above the plain samples (still below every curated
    group the plain samples lose to) instead of tying with them (NEAT-PP: the positive prompt is evidence).
    `plain_ties_best`: plain (and positive) samples tie with the best curated group instead: the model's own
    answers are not claimed to be worse than an off-policy reference (only negative-prompt samples are ranked
    below anything), so the ranking never pushes the model's own helpful answers down."""
    nonneg = sorted({r for _, o, r in curated if not o.startswith(NEG)})
    if plain_ties_best and nonneg:
        mid = float(nonneg[0])
    elif len(nonneg) >= 2:
        mid = float(nonneg[-1])
    elif len(nonneg) == 1:
        mid = nonneg[0] + 0.5
    else:
        mid = -1.0
    keys = [float(r) for _, _, r in curated]
    for _, o in online:
        if o.startswith(BOTTOM):
            keys.append(math.inf)
        elif o.startswith(POS) and positive_above_plain:
            keys.append(mid - 0.25)
        else:
            keys.append(mid)
    return keys


def rank_reward(curated, online, scores) -> list:
    """Keys from scores (one per curated + online item, in that order; higher = better); see module doc."""
    n_c = len(curated)
    s_c, s_o = [float(x) for x in scores[:n_c]], [float(x) for x in scores[n_c:]]
    groups = sorted({r for _, _, r in curated})
    if not groups:
        return [(0.0, -s) for s in s_o]
    means = [sum(s for s, (_, _, r) in zip(s_c, curated) if r == g) / sum(1 for *_, r in curated if r == g)
             for g in groups]
    thr, run = [], math.inf
    for m in means:
        run = min(run, m)
        thr.append(run)
    keys = [(float(groups.index(r)), 0.0) for _, _, r in curated]
    for s in s_o:
        tie = [i for i, t in enumerate(thr) if t == s]
        if tie:
            keys.append((float(tie[0]), 0.0))
        else:
            above = sum(1 for t in thr if t > s)       # groups better than this sample
            keys.append((above - 0.5, -s))
    return keys


def _first_words(text: str, n: int) -> list[str]:
    """The words of the first sentence (or line) of `text`, at most n."""
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].split()[:n]


def loop_of(text: str) -> str | None:
    """A synthetic repetition loop of `text`: its first sentence (or line), cut to LOOP_UNIT_WORDS words, repeated
    (space-joined) until the loop has LOOP_WORDS words and at least DEGEN_REPEATS copies, so that
    `eval_metrics.degeneration` flags it. None when that sentence has under 3 words (no 3-gram to repeat)."""
    words = _first_words(text, LOOP_UNIT_WORDS)
    if len(words) < 3:
        return None
    reps = max(DEGEN_REPEATS, math.ceil(LOOP_WORDS / len(words)))
    return " ".join([" ".join(words)] * reps)


def _loops(cur, onl, n: int, taken: set) -> list:
    """Up to n (loop text, origin): loops of the best curated answers, then of the plain samples, new texts only."""
    best = min((r for *_, r in cur), default=None)
    sources = [(t, "best") for t, _, r in cur if r == best] + [(t, "policy") for t, o in onl if o == "policy"]
    out = []
    for text, kind in sources:
        loop = loop_of(text)
        if loop is not None and loop not in taken and len(out) < n:
            taken.add(loop)
            out.append((loop, LOOP + kind))
    return out


def build_list(row: dict, online, method: str, ranking: str = "rule", scorer=None,
               positive_above_plain: bool = False, plain_ties_best: bool = False,
               degenerate_bottom: bool = False, refused=frozenset(), loops: int = 0,
               complied=frozenset(), comply_bottom: bool = True, unheeded_neg=frozenset(),
               borrowed=()) -> RankedList | None:
    """One prompt's list. online: [(text, origin)] in the order plain, positive, negative; `loops` synthetic
    repetition loops and the `borrowed` refusal texts are added at the bottom (rule ranking; neat and rrhf)."""
    cur = _dedupe(curated_items(row, best_only=(method == "sft")))
    texts = {t.strip() for t, *_ in cur}
    onl = [it for it in _dedupe(list(online)) if it[0].strip() not in texts]
    if method == "sft":
        onl = []
    if ranking == "rule":
        def mark(text, origin):  # the policy's own loops, flagged refusals and compliances join the bottom group
            if origin.startswith(NEG):
                return UNHEEDED + origin if text.strip() in unheeded_neg else origin
            if degenerate_bottom and degeneration(text):
                return DEGEN + origin
            if text.strip() in refused:
                return REFUSAL + origin
            if text.strip() not in complied:
                return origin
            if comply_bottom:
                return COMPLY + origin
            return UNHEEDED + origin if origin.startswith(POS) else origin
        onl = [(t, mark(t, o)) for t, o in onl]
        if method in ("neat", "rrhf"):  # the synthetic negatives: loops, and other prompts' refusals
            onl += _loops(cur, onl, loops, texts | {t.strip() for t, _ in onl}) if loops > 0 else []
            onl = _dedupe(onl + [(t, BORROWED + "refusal") for t in borrowed if t.strip() not in texts])
    if not cur and not onl:
        return None
    if ranking == "reward" and onl:
        prompts = [row["prompt"]] * (len(cur) + len(onl))
        scores = list(scorer.score(prompts, [t for t, *_ in cur] + [t for t, _ in onl]))
        keys = rank_reward(cur, onl, scores)
    else:
        keys = rank_rule(cur, onl, positive_above_plain, plain_ties_best)
        keys = [(k, 0.0) for k in keys]
    return RankedList(prompt_id=str(row["prompt_id"]), prompt=row["prompt"],
                      responses=[t for t, *_ in cur] + [t for t, _ in onl],
                      ranks=dense(keys), origins=[o for _, o, _ in cur] + [o for _, o in onl],
                      curated=[True] * len(cur) + [False] * len(onl))


def judge(online: dict, in_refusal_scope, in_compliance_scope, heeded: bool, is_refusal) -> tuple[dict, dict, dict]:
    """online {prompt_id: [(text, origin)]} -> three {prompt_id: {stripped texts}} for build_list: `refused`, the
    plain and positive samples that `is_refusal` (texts -> flags) flags on prompts in_refusal_scope(prompt_id);
    `complied`, those it does not flag on prompts in_compliance_scope(prompt_id); `unheeded_neg` (only when
    `heeded`), the negative-prompt samples it does not flag on prompts in_refusal_scope. One detector call."""
    items = [(pid, t.strip(), o.startswith(NEG)) for pid, samples in online.items()
             if in_refusal_scope(pid) or in_compliance_scope(pid) for t, o in samples
             if t.strip() and (not o.startswith(NEG) or heeded and in_refusal_scope(pid))]
    refused, complied, unheeded_neg = {}, {}, {}
    for (pid, t, neg), flag in zip(items, is_refusal([t for _, t, _ in items]) if items else []):
        if neg:
            if not flag:
                unheeded_neg.setdefault(pid, set()).add(t)
        elif flag and in_refusal_scope(pid):
            refused.setdefault(pid, set()).add(t)
        elif not flag and in_compliance_scope(pid):
            complied.setdefault(pid, set()).add(t)
    return refused, complied, unheeded_neg


def opening_of(text: str) -> str | None:
    """The first sentence (or line) of `text`, cut to OPENING_WORDS words; None under 3 words."""
    words = _first_words(text, OPENING_WORDS)
    return " ".join(words) if len(words) >= 3 else None


def borrow_refusals(rows: list, online: dict, in_scope, n: int, is_refusal, seed, skip=None) -> dict:
    """-> {prompt_id: [n texts]} for build_list's `borrowed`, for the rows with in_scope(prompt_id): the openings
    (`opening_of`) of the OTHER rows' best curated answers and their plain and positive samples in `online`
    ({prompt_id: [(text, origin)]}) that `is_refusal` flags on their own (the opening must say no, not the rest of the
    answer); each borrower draws n distinct ones (fewer when fewer exist) with a Random seeded by `seed` and its
    prompt id, so a round's lists are the same on every process and on a resumed run. One detector call.
    `skip(text) -> bool` leaves openings out of the pool (refusal_negatives_from=not_as_ai: speaks_as_ai)."""
    ids = [str(row["prompt_id"]) for row in rows]
    texts = [t for row, pid in zip(rows, ids) if not in_scope(pid) for t in
             [t for t, _, _ in curated_items(row, best_only=True)] +
             [t for t, o in online.get(pid, []) if not o.startswith(NEG)]]
    openings = sorted({op for t in texts for op in [opening_of(t)] if op and not (skip and skip(op))})
    pool = [op for op, flag in zip(openings, is_refusal(openings) if openings else []) if flag]
    return {pid: random.Random(f"{seed}:{pid}").sample(pool, min(n, len(pool)))
            for pid in sorted(ids) if in_scope(pid) and pool}


# -- scheduling ---------------------------------------------------------------------------------------------
def steps_per_epoch(n_lists: int, batch_size: int, world: int, grad_accum: int) -> int:
    g = batch_size * world * grad_accum
    return max(1, math.ceil(n_lists / g))


def stratified_order(strata: list, rng: random.Random) -> list[int]:
    """A shuffled order in which every stratum is spread evenly: item j of a stratum of n items sits at
    (j + u) / n of the way through (u random per stratum), so any stretch of the order holds the strata in
    about their overall proportions, whatever the seed."""
    groups: dict = {}
    for i, key in enumerate(strata):
        groups.setdefault(key, []).append(i)
    keyed = []
    for key in sorted(groups, key=repr):
        members = groups[key]
        rng.shuffle(members)
        u = rng.random()
        keyed += [((j + u) / len(members), rng.random(), i) for j, i in enumerate(members)]
    return [i for *_, i in sorted(keyed)]


def epoch_schedule(lengths: list[int], batch_size: int, world: int, grad_accum: int, seed: int,
                   megabatch_steps: int = 8, strata: list | None = None) -> list:
    """Length-grouped schedule of one epoch: steps[s][rank][micro] -> list indices (batch_size each).

    Lists are shuffled (seeded; with `strata`, one key per list, in a stratified order: see stratified_order),
    the order is padded by wrapping around so every process gets the same number
    of micro-batches, and within windows of `megabatch_steps` steps lists are sorted by length so a micro-batch
    holds lists of similar length (less padding); the steps of a window are then shuffled again. Micro-batch m
    of a step goes to process m % world, so the longest lists do not all land on one process.
    """
    n = len(lengths)
    g = batch_size * world * grad_accum
    n_steps = steps_per_epoch(n, batch_size, world, grad_accum)
    rng = random.Random(seed)
    if strata is None:
        order = list(range(n))
        rng.shuffle(order)
    else:
        order = stratified_order(strata, rng)
    order = (order * (n_steps * g // max(n, 1) + 1))[: n_steps * g]
    steps = []
    for w0 in range(0, n_steps, megabatch_steps):
        window = order[w0 * g: (w0 + megabatch_steps) * g]
        window.sort(key=lambda i: -lengths[i])
        chunk = [window[s * g: (s + 1) * g] for s in range(len(window) // g)]
        rng.shuffle(chunk)
        for step in chunk:
            micro = [step[m * batch_size: (m + 1) * batch_size] for m in range(world * grad_accum)]
            steps.append([[micro[m] for m in range(len(micro)) if m % world == r] for r in range(world)])
    return steps
