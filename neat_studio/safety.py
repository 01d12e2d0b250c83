"""Input policies for values that come from users of the web UI (and API routes): the single place that decides
what a hostile or broken value is and says so in plain words.

Every check raises `ValueError` (a clear, user-facing message) and returns the cleaned value otherwise. Checks run
BEFORE anything is written, so a refused value leaves the store untouched.

Model specs (`check_model_spec`)
  A model spec a user types into the Compare or Train tab, or gives to `Studio.use_model`, is one of:
  - `default` or `tiny` (built in);
  - a hub-style name `org/name` (letters, digits, `_ . -`; no `..`); it loads only from the local HF cache;
  - a local path (a model folder, a run directory or one of its checkpoints) that resolves (symlinks followed)
    INSIDE one of the allowed model roots: the workspace root (its runs and model cache included), the repository,
    the HF cache (`$HF_HOME/hub` or `~/.cache/huggingface`), and every folder listed in the environment variable
    `NEAT_STUDIO_MODEL_ROOTS` (separated by `os.pathsep`). `../` escapes and absolute paths elsewhere are refused.
  The operator's own choice (`python -m neat_studio serve --model PATH`, the CLI's `--model`) is not checked: the
  operator owns the machine.

Text (`check_text`, `check_prompt_text`)
  NUL and other control characters (except tab, newline, carriage return) and lone surrogates (what invalid UTF-8
  becomes after a lossy decode with `surrogateescape`) are refused; a prompt is at most `MAX_PROMPT_BYTES` UTF-8
  bytes (the importers' limit), a comment at most `MAX_COMMENT_CHARS` characters. HTML/JS is ordinary text: it is
  stored as written and always rendered escaped (neat_studio.ui.common.esc).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .config import REPO_ROOT

MAX_SPEC_CHARS = 1024
MAX_COMMENT_CHARS = 20_000
MAX_PROMPT_BYTES = 64 * 1024  # same limit as neat_studio.io.importers.MAX_PROMPT_BYTES
BUILTIN_MODELS = ("default", "tiny")
HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_BAD_CHARS_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
ENV_MODEL_ROOTS = "NEAT_STUDIO_MODEL_ROOTS"


def _hf_cache_roots() -> list[Path]:
    out = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            out.append(Path(os.environ[var]))
    if os.environ.get("HF_HOME"):
        out.append(Path(os.environ["HF_HOME"]))
    out.append(Path.home() / ".cache" / "huggingface")
    return out


def allowed_model_roots(workspace=None) -> list[Path]:
    """The folders a user-supplied model path may resolve into (see the module docstring)."""
    roots: list[Path] = []
    if workspace is not None:
        roots += [Path(workspace.root), Path(workspace.runs), Path(workspace.model_cache)]
    roots.append(REPO_ROOT)
    roots += _hf_cache_roots()
    for part in (os.environ.get(ENV_MODEL_ROOTS) or "").split(os.pathsep):
        if part.strip():
            roots.append(Path(part.strip()).expanduser())
    out: list[Path] = []
    for r in roots:
        try:
            r = r.resolve()
        except (OSError, RuntimeError):
            continue
        if r not in out:
            out.append(r)
    return out


def _within(p: Path, root: Path) -> bool:
    return p == root or root in p.parents


def check_model_spec(spec, workspace=None) -> str:
    """A user-supplied model spec, cleaned; ValueError when it is not allowed (see the module docstring)."""
    if not isinstance(spec, str):
        raise ValueError(f"a model must be given as text, got {type(spec).__name__}")
    spec = spec.strip()
    if not spec:
        raise ValueError("choose a model (default, tiny, a run, an HF name org/name, or a local path)")
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"model name or path is too long ({len(spec)} > {MAX_SPEC_CHARS} characters)")
    if _BAD_CHARS_RE.search(spec):
        raise ValueError("model name or path contains control characters or invalid text; refused")
    if spec in BUILTIN_MODELS:
        return spec
    looks_like_path = spec.startswith(("/", ".", "~")) or "\\" in spec or os.path.exists(spec)
    if HUB_NAME_RE.match(spec) and ".." not in spec and not looks_like_path:
        return spec
    try:
        p = Path(spec).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"model path {spec!r} cannot be resolved: {e}") from None
    roots = allowed_model_roots(workspace)
    if not any(_within(p, r) for r in roots):
        raise ValueError(
            f"model path {spec!r} is outside the allowed model folders (the workspace, its runs and model cache, "
            f"the repository, the HF cache, and ${ENV_MODEL_ROOTS}); refused. Use a hub name org/name, a run, or "
            f"ask the operator to add the folder to ${ENV_MODEL_ROOTS}.")
    return str(p)


def check_text(text, what: str = "text", *, max_chars: int | None = None, allow_empty: bool = True) -> str:
    """Untrusted text: must be a str without NUL/control characters or lone surrogates, within `max_chars`."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, got {type(text).__name__}")
    if max_chars is not None and len(text) > max_chars:
        raise ValueError(f"{what} is too long ({len(text)} > {max_chars} characters); nothing was saved")
    m = _BAD_CHARS_RE.search(text)
    if m:
        raise ValueError(f"{what} contains a control character or invalid UTF-8 (U+{ord(m.group()):04X} at "
                         f"position {m.start()}); nothing was saved")
    if not allow_empty and not text.strip():
        raise ValueError(f"{what} is empty")
    return text


def check_prompt_text(text, what: str = "the prompt") -> str:
    """A prompt typed by a user: `check_text` plus the importers' size limit (MAX_PROMPT_BYTES UTF-8 bytes)."""
    text = check_text(text, what)
    n = len(text.encode("utf-8"))
    if n > MAX_PROMPT_BYTES:
        raise ValueError(f"{what} is too large ({n} bytes > {MAX_PROMPT_BYTES}); nothing was saved")
    return text
