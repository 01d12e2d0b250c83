"""Application services shared by the CLI and the web UI.

`Studio` bundles one workspace: its store (the only read-write DuckDB connection of the process), the seed
data, imports/exports, and the generation policy model. The CLI and every UI tab call these methods, so the
two front ends cannot drift apart.

One room per concept: studio/core.py (the workspace and store, background embedding, data in/out, generation)
and one mixin per service area for the web UI (prompts, library, preview, annotation, training, compare,
evaluation). Tabs call only these services; no SQL and no business rules in the UI; every writer takes `actor`
and validates before anything is written.
"""
from __future__ import annotations

from ..store import pairs_unranked_note
from .annotation import AnnotationMixin
from .compare import CompareMixin
from .core import LONG_PROMPT_CHARS, StudioCore, long_prompts_note, start_confirmation, weak_scorer_note
from .evaluation import EvaluationMixin
from .library import LibraryMixin
from .preview import PreviewMixin
from .prompts import PromptsMixin
from .training import TrainingMixin

__all__ = ["LONG_PROMPT_CHARS", "Studio", "long_prompts_note", "pairs_unranked_note", "start_confirmation",
           "weak_scorer_note"]


class Studio(StudioCore, PromptsMixin, LibraryMixin, PreviewMixin, AnnotationMixin, TrainingMixin, CompareMixin,
             EvaluationMixin):
    """One workspace's services for the CLI and every UI tab (see the package docstring)."""
