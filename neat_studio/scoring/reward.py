"""Reward scorer: a small MLP over frozen sentence embeddings, trained with a Bradley-Terry pairwise loss.

features(p, r) = [p; r; p * r]      p = embedding of the prompt's last user turn, r = embedding of the response
score(p, r)    = W2 . relu(W1 . features + b1) + b2           (1152 -> hidden -> 1)
loss           = -log sigmoid(score(p, r_i) - score(p, r_j))   for each pair with rank_i < rank_j

Pairs come from listwise rows (`{"prompt": messages, "responses": [...], "ranks": [...]}`; lower rank is better,
equal ranks are ties and give no pair; None ranks are unranked and give no pair) or from TRL pairs
(`prompt`/`chosen`/`rejected`). The dev split is BY PROMPT (normalised last user turn), never by pair, so no
prompt's responses appear on both sides.

A trained scorer is a directory `<scorers_root>/<scorer_version>/` holding `weights.npz` (float32) and
`scorer.json` (config, metrics); `scorer_version` = first 12 hex digits of sha256(weights bytes + config JSON).
Inference is plain numpy; torch is only needed to train.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .datasets import load_rows, norm_text, prompt_text, rows_from_records
from .embeddings import DIM, MODEL_ID, Embedder

SCORER_FORMAT = 1


@dataclass
class ScorerConfig:
    hidden: int = 128
    dropout: float = 0.2
    lr: float = 3e-4
    weight_decay: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    dev_fraction: float = 0.2
    model_id: str = MODEL_ID
    prompt_text: str = "last_user_turn"
    threads: int = 1  # torch threads while training: the head is tiny, more threads only add sync overhead
    extra: dict = field(default_factory=dict)


# -- pairs ------------------------------------------------------------------------------------------------------------

def ranks_to_pairs(ranks: Sequence) -> list[tuple[int, int]]:
    """(i, j) for every i, j with ranks[i] < ranks[j] (i preferred). Ties and None ranks give no pair."""
    out = []
    for i, ri in enumerate(ranks):
        if ri is None:
            continue
        for j, rj in enumerate(ranks):
            if rj is not None and ri < rj:
                out.append((i, j))
    return out


def _as_rows(pairs_or_rows) -> list[dict]:
    if isinstance(pairs_or_rows, (str, Path)):
        return load_rows(pairs_or_rows)
    rows = list(pairs_or_rows)
    if rows and not ("responses" in rows[0] and "ranks" in rows[0] and isinstance(rows[0]["prompt"], list)):
        rows = rows_from_records(rows)
    return rows


@dataclass
class PairSet:
    """Unique prompt texts, per-item (prompt index, response text), and pairs of item indices (winner, loser)."""
    prompts: list[str]
    item_prompt: np.ndarray  # (n_items,) prompt index
    item_text: list[str]
    pairs: np.ndarray  # (n_pairs, 2) item indices, first preferred

    @property
    def pair_prompt(self) -> np.ndarray:
        return self.item_prompt[self.pairs[:, 0]] if len(self.pairs) else np.zeros(0, dtype=np.int64)


def build_pairset(rows: Sequence[dict]) -> PairSet:
    prompts: list[str] = []
    pidx: dict[str, int] = {}
    item_prompt, item_text, pairs = [], [], []
    for row in rows:
        pt = prompt_text(row["prompt"])
        key = norm_text(pt)
        if key not in pidx:
            pidx[key] = len(prompts)
            prompts.append(pt)
        p = pidx[key]
        base = len(item_text)
        for r in row["responses"]:
            item_prompt.append(p)
            item_text.append(r if isinstance(r, str) else str(r))
        for i, j in ranks_to_pairs(row["ranks"]):
            pairs.append((base + i, base + j))
    return PairSet(prompts, np.asarray(item_prompt, dtype=np.int64), item_text,
                   np.asarray(pairs, dtype=np.int64).reshape(-1, 2))


def split_prompts(n_prompts: int, dev_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over prompt indices: True = dev. Deterministic in (n_prompts, seed)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_prompts)
    n_dev = int(round(dev_fraction * n_prompts))
    mask = np.zeros(n_prompts, dtype=bool)
    mask[perm[:n_dev]] = True
    return mask


def pair_features(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float32)
    r = np.asarray(r, dtype=np.float32)
    return np.concatenate([p, r, p * r], axis=-1)


def embed_pairset(ps: PairSet, encode: Callable[[list[str]], np.ndarray] | None = None,
                  batch_size: int = 32) -> np.ndarray:
    """(n_items, 3*384) features for every item of the pair set."""
    enc = encode or (lambda t: Embedder.get().encode(t, batch_size=batch_size))
    pe = enc(ps.prompts) if ps.prompts else np.zeros((0, DIM), np.float32)
    re_ = enc(ps.item_text) if ps.item_text else np.zeros((0, DIM), np.float32)
    return pair_features(pe[ps.item_prompt], re_)


# -- the model -----------------------------------------------------------------------------------------------------------

class RewardScorer:
    """Numpy inference for a trained head. `score(prompts, responses)`; `suggest_ranking(prompt, responses)`."""

    def __init__(self, params: dict[str, np.ndarray], config: dict, version: str, path: Path | None = None,
                 metrics: dict | None = None, encode: Callable | None = None):
        self.params = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
        self.config = config
        self.version = version
        self.path = path
        self.metrics = metrics or {}
        self._encode = encode

    @property
    def scorer_version(self) -> str:
        return self.version

    @classmethod
    def load(cls, path: str | Path, encode: Callable | None = None) -> "RewardScorer":
        path = Path(path)
        meta = json.loads((path / "scorer.json").read_text())
        if meta.get("model_id") != MODEL_ID:
            raise ValueError(f"scorer {path} was trained on {meta.get('model_id')} embeddings, not {MODEL_ID}")
        z = np.load(path / "weights.npz", allow_pickle=False)
        return cls({k: z[k] for k in z.files}, meta["config"], meta["scorer_version"], path, meta.get("metrics"),
                   encode)

    def forward(self, feats: np.ndarray) -> np.ndarray:
        h = np.maximum(feats @ self.params["w1"].T + self.params["b1"], 0.0)
        return (h @ self.params["w2"].T + self.params["b2"]).reshape(-1).astype(np.float32)

    def _enc(self, texts: list[str]) -> np.ndarray:
        return (self._encode or Embedder.get().encode)(texts)

    def score(self, prompts: Sequence, responses: Sequence[str]) -> np.ndarray:
        """One score per (prompt, response); prompts are strings or messages. Higher = better."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts vs {len(responses)} responses")
        if not len(responses):
            return np.zeros(0, dtype=np.float32)
        pt = [prompt_text(p) for p in prompts]
        return self.forward(pair_features(self._enc(pt), self._enc(list(responses))))

    def suggest_ranking(self, prompt, responses: Sequence[str], eps: float = 0.1) -> list[list[int]]:
        """Groups of response indices, best first. A response joins the current group when its score is within
        `eps` of the group's best score (eps in logit units: 0.1 ~ a 52.5% Bradley-Terry preference)."""
        if not len(responses):
            return []
        s = self.score([prompt] * len(responses), responses)
        return ranking_from_scores(s, eps)


def ranking_from_scores(scores: Sequence[float], eps: float = 0.1) -> list[list[int]]:
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    groups: list[list[int]] = []
    top = None
    for i in order:
        if groups and top - s[i] <= eps:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
            top = s[i]
    return groups


def _version(params: dict[str, np.ndarray], config: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k], dtype=np.float32).tobytes())
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:12]


def save_scorer(params: dict[str, np.ndarray], config: dict, metrics: dict, scorers_root: str | Path) -> Path:
    version = _version(params, config)
    out = Path(scorers_root) / version
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in params.items()})
    (out / "weights.npz").write_bytes(buf.getvalue())
    meta = {"format": SCORER_FORMAT, "scorer_version": version, "model_id": config["model_id"], "config": config,
            "metrics": metrics, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "scorer.json").write_text(json.dumps(meta, indent=2))
    return out


def scorers_dir(workspace) -> Path:
    """Where a workspace keeps trained scorers: `workspace.root/scorers`."""
    return Path(workspace.root) / "scorers"


def list_scorers(scorers_root: str | Path) -> list[dict]:
    root = Path(scorers_root)
    out = []
    for p in sorted(root.glob("*/scorer.json")) if root.exists() else []:
        meta = json.loads(p.read_text())
        meta["path"] = str(p.parent)
        out.append(meta)
    return sorted(out, key=lambda m: m.get("created_at", ""))


def pairwise_accuracy(scores: np.ndarray, pairs: np.ndarray) -> float:
    if not len(pairs):
        return float("nan")
    d = scores[pairs[:, 0]] - scores[pairs[:, 1]]
    return float(np.mean((d > 0) + 0.5 * (d == 0)))


def train_scorer(pairs_or_rows, out_dir: str | Path | None, seed: int = 0, epochs: int | None = None,
                 dev_fraction: float = 0.2, *, config: ScorerConfig | None = None,
                 encode: Callable[[list[str]], np.ndarray] | None = None, features: np.ndarray | None = None,
                 progress: Callable[[dict], None] | None = None) -> dict:
    """Train a scorer; split train/dev by prompt; return metrics (with `scorer_version` and `path` when saved).

    out_dir: the scorers root (e.g. `scorers_dir(workspace)`); the scorer goes to `out_dir/<scorer_version>/`.
             None trains and evaluates without saving (metrics only).
    encode:   texts -> embeddings (default: the process Embedder). `features` may pass precomputed item features
              (as from `embed_pairset`) for the same rows, e.g. when benchmarking.
    """
    import torch

    cfg = config or ScorerConfig()
    cfg.seed = seed
    cfg.dev_fraction = dev_fraction
    if epochs is not None:
        cfg.epochs = int(epochs)
    t0 = time.time()
    rows = _as_rows(pairs_or_rows)
    ps = build_pairset(rows)
    if not len(ps.pairs):
        raise ValueError("no preference pairs: every row needs >= 2 distinct ranks")
    dev_mask = split_prompts(len(ps.prompts), dev_fraction, seed)
    pair_dev = dev_mask[ps.pair_prompt]
    tr_pairs, dv_pairs = ps.pairs[~pair_dev], ps.pairs[pair_dev]
    if not len(tr_pairs):
        raise ValueError("no training pairs after the prompt split; lower dev_fraction or add prompts")
    feats = features if features is not None else embed_pairset(ps, encode)
    t_embed = time.time() - t0

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.threads)))
    try:
        net, history, t_train = _fit(torch, feats, tr_pairs, dv_pairs, cfg, seed, progress)
    finally:
        torch.set_num_threads(prev_threads)

    params = {"w1": net[0].weight.detach().numpy(), "b1": net[0].bias.detach().numpy(),
              "w2": net[3].weight.detach().numpy(), "b2": net[3].bias.detach().numpy()}
    conf = asdict(cfg)
    with torch.no_grad():
        scores = net(torch.as_tensor(feats, dtype=torch.float32)).squeeze(-1).numpy()
    if len(dv_pairs):
        d = scores[dv_pairs[:, 0]] - scores[dv_pairs[:, 1]]
        dev_loss = float(np.mean(np.logaddexp(0.0, -d)))
    metrics = {
        "n_rows": len(rows), "n_prompts": len(ps.prompts), "n_train_prompts": int((~dev_mask).sum()),
        "n_dev_prompts": int(dev_mask.sum()), "n_train_pairs": int(len(tr_pairs)), "n_dev_pairs": int(len(dv_pairs)),
        "train_acc": round(pairwise_accuracy(scores, tr_pairs), 4),
        "dev_acc": round(pairwise_accuracy(scores, dv_pairs), 4) if len(dv_pairs) else None,
        "dev_loss": round(dev_loss, 4) if len(dv_pairs) else None,
        "score_std": round(float(np.std(scores)), 4),
        "embed_s": round(t_embed, 2), "train_s": round(t_train, 2), "history": history,
    }
    if out_dir is not None:
        path = save_scorer(params, conf, metrics, out_dir)
        metrics["scorer_version"] = path.name
        metrics["path"] = str(path)
    else:
        metrics["scorer_version"] = _version(params, conf)
    metrics["scorer"] = RewardScorer(params, conf, metrics["scorer_version"],
                                     Path(metrics["path"]) if "path" in metrics else None,
                                     {k: v for k, v in metrics.items() if k != "history"}, encode)
    return metrics


def _fit(torch, feats, tr_pairs, dv_pairs, cfg: ScorerConfig, seed: int, progress):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(feats, dtype=torch.float32)
    d_in = X.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d_in, cfg.hidden), torch.nn.ReLU(), torch.nn.Dropout(cfg.dropout),
                              torch.nn.Linear(cfg.hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    tp = torch.as_tensor(tr_pairs)
    history = []
    t1 = time.time()
    for ep in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(tp), generator=g)
        tot, nb = 0.0, 0
        for s in range(0, len(tp), cfg.batch_size):
            b = tp[perm[s:s + cfg.batch_size]]
            sw = net(X[b[:, 0]]).squeeze(-1)
            sl = net(X[b[:, 1]]).squeeze(-1)
            loss = -torch.nn.functional.logsigmoid(sw - sl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach())
            nb += 1
        net.eval()
        with torch.no_grad():
            scores = net(X).squeeze(-1).numpy()
        rec = {"epoch": ep + 1, "train_loss": round(tot / max(nb, 1), 4),
               "train_acc": round(pairwise_accuracy(scores, tr_pairs), 4)}
        if len(dv_pairs):
            rec["dev_acc"] = round(pairwise_accuracy(scores, dv_pairs), 4)
        history.append(rec)
        if progress:
            progress(rec)
    t_train = time.time() - t1
    return net, history, t_train


def evaluate_scorer(scorer: RewardScorer, pairs_or_rows, features: np.ndarray | None = None) -> dict:
    """Pairwise accuracy of `scorer` on every pair of the given rows."""
    rows = _as_rows(pairs_or_rows)
    ps = build_pairset(rows)
    feats = features if features is not None else embed_pairset(ps, scorer._encode)
    s = scorer.forward(feats)
    return {"n_prompts": len(ps.prompts), "n_pairs": int(len(ps.pairs)),
            "pairwise_acc": round(pairwise_accuracy(s, ps.pairs), 4)}


def score_store_rows(store, scorer: RewardScorer, rows: Sequence[dict], actor: str = "scorer") -> int:
    """Score every response of listwise rows that carry `response_ids` and write them with `store.put_scores`."""
    from .embeddings import _call_store

    ids, prompts, texts = [], [], []
    for row in rows:
        for rid, text in zip(row.get("response_ids") or [], row["responses"]):
            ids.append(rid)
            prompts.append(row["prompt"])
            texts.append(text)
    if not ids:
        return 0
    s = scorer.score(prompts, texts)
    _call_store(store.put_scores, ids, [float(x) for x in s], scorer.version, actor=actor)
    return len(ids)
