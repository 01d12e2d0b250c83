"""Scoring: sentence embeddings, near-duplicates, refusal detection, the reward scorer, active-learning helpers.

Modules (imported lazily by callers; importing this package loads no model):
  embeddings  Embedder (process singleton, cached), MODEL_ID, embed_missing(store, kind), cosine_search
  neardup     near_duplicates(vectors, threshold), dedupe_indices(vectors, threshold)
  refusal     RefusalDetector (patterns + shipped logistic head refusal_head.npz), is_refusal, refusal_scores
  reward      train_scorer, RewardScorer (score, suggest_ranking), evaluate_scorer, score_store_rows
  active      uncertainty (top-2 margin), disagreement (Kendall tau distance between group rankings)
  datasets    labelled sets from ../shared/data and readers for pairs / snapshot rows
  cli         register(subparsers): `scorer train|eval|list`, `refusal eval|build`
"""
