import hashlib
import json
import time
from pathlib import Path

import pytest

from neat_studio import model_files as MF
from neat_studio import models as M
from neat_studio.config import Workspace

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
LONG_CHAT = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
             {"role": "user", "content": "Tell me about bread, please."}]


def _digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


# -- tiny model ----------------------------------------------------------------------------------------------------
def test_tiny_model_build_is_deterministic_fast_and_idempotent(tmp_path, tiny_model_dir):
    t0 = time.monotonic()
    a = M.build_tiny_model(tmp_path / "a")
    assert time.monotonic() - t0 < 2.0
    assert a == (tmp_path / "a").resolve()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(_digest(a))
    assert _digest(a) == _digest(tiny_model_dir)  # same bytes as the session fixture's build
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert M.build_tiny_model(a) == a  # complete -> reused, not rewritten
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_tiny_model_refuses_a_nonempty_foreign_dir(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(M.ModelLoadError, match="not a complete model directory"):
        M.build_tiny_model(d)


def test_load_tiny_by_path_and_by_name(tiny_model_dir, workspace):
    import torch

    lm = M.load_model(str(tiny_model_dir))
    assert lm.model_id == "tiny-lm" and lm.spec == str(tiny_model_dir) and lm.path == tiny_model_dir
    assert lm.model.config.model_type == "llama" and lm.model.config.num_hidden_layers == 2
    assert lm.model.dtype == torch.float32 and not lm.model.training
    tok = lm.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.convert_tokens_to_ids("<|endoftext|>"), tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == lm.model.config.vocab_size == 512
    assert M.model_max_length(lm) == 512
    assert M.end_of_turn_ids(tok) == [2, 0]

    by_name = M.load_model("tiny", workspace=workspace)
    assert by_name.model_id == "tiny" and by_name.path == workspace.model_cache / "tiny"
    assert by_name.fingerprint == lm.fingerprint  # deterministic build

    bf = M.load_model(tiny_model_dir, dtype="bfloat16")
    assert bf.model.dtype == torch.bfloat16
    assert M.load_model(tiny_model_dir, dtype="auto").model.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        M.load_model(tiny_model_dir, dtype="float8")


def test_run_dir_resolves_to_final(tiny_model_dir, tmp_path):
    import shutil

    run = tmp_path / "run-42"
    shutil.copytree(tiny_model_dir, run / "final")
    lm = M.load_model(str(run))
    assert lm.path == run / "final" and lm.model_id == "run-42"
    assert M.load_model(str(run / "final")).model_id == "run-42"

    unfinished = tmp_path / "run-43"
    (unfinished / "checkpoints" / "step-10").mkdir(parents=True)
    (unfinished / "checkpoints" / "step-200").mkdir(parents=True)
    (unfinished / "checkpoints" / "step-30").mkdir(parents=True)
    with pytest.raises(M.ModelLoadError, match=r"no config\.json and no final/config\.json.*step-200"):
        M.load_model(str(unfinished))


def test_fingerprint_tracks_weights(tiny_model_dir, tmp_path):
    import torch

    lm = M.load_model(str(tiny_model_dir))
    fp = lm.fingerprint
    assert len(fp) == 12 and int(fp, 16) >= 0
    assert M.fingerprint(lm.model) == fp == M.fingerprint(lm)
    again = M.load_model(str(tiny_model_dir))
    assert again.fingerprint == fp  # reloaded copy

    lm.model.save_pretrained(tmp_path / "copy")  # saved + reloaded copy
    lm.tokenizer.save_pretrained(tmp_path / "copy")
    assert M.load_model(str(tmp_path / "copy")).fingerprint == fp

    with torch.no_grad():
        lm.model.model.layers[1].mlp.down_proj.weight[3, 7] += 1e-3  # one weight
    assert lm.fingerprint == fp  # cached until refreshed
    assert lm.refresh_fingerprint() != fp
    assert M.fingerprint(lm.model) == lm.fingerprint
    assert M.fingerprint(M.load_model(str(tiny_model_dir), dtype="bfloat16")) != fp  # dtype is part of it


# -- encoding ------------------------------------------------------------------------------------------------------
def test_encode_chat_uses_template_and_system(tiny_model_dir):
    tok = M.load_model(str(tiny_model_dir)).tokenizer
    text = tok.decode(M.encode_chat(tok, CHAT, system="Be brief."))
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                    "<|im_end|>\n<|im_start|>assistant\n")
    # system replaces an existing system turn
    replaced = tok.decode(M.encode_chat(tok, LONG_CHAT, system="New."))
    assert replaced.startswith("<|im_start|>system\nNew.<|im_end|>\n<|im_start|>user\nHi<|im_end|>")
    assert "You are terse." not in replaced
    assert tok.decode(M.encode_chat(tok, "hello", add_generation_prompt=False)) == "<|im_start|>user\nhello<|im_end|>\n"
    assert M.encode_chat(tok, CHAT) == list(tok.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"])
    with pytest.raises(ValueError, match="message 0"):
        M.encode_chat(tok, [{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        M.encode_chat(tok, [])


def _check_split(tok, messages, response, system=None):
    p, r = M.encode_prompt_and_response(tok, messages, response, system=system)
    assert p == M.encode_chat(tok, messages, system=system)
    full = M.render_chat(tok, M.with_system(messages, system) + [{"role": "assistant", "content": response}],
                         add_generation_prompt=False)
    assert full.endswith("<|im_end|>\n")
    assert p + r == list(tok(full[:-1], add_special_tokens=False)["input_ids"])  # exact, minus trailing "\n"
    assert r[-1] == tok.convert_tokens_to_ids("<|im_end|>") and r.count(r[-1]) == 1
    assert tok.decode(r[:-1]) == response
    return p, r


RESPONSES = ["Paris is the capital.", "", "Sure!\n\nStep 1: mix.\nStep 2: bake.", "Ünïcödé ✓ 東京"]


@pytest.mark.parametrize("response", RESPONSES)
def test_prompt_response_split_is_exact_tiny(tiny_model_dir, response):
    tok = M.load_model(str(tiny_model_dir)).tokenizer
    for msgs, system in ((CHAT, None), (LONG_CHAT, None), (LONG_CHAT, "Other system."), (CHAT, "S")):
        p, r = _check_split(tok, msgs, response, system)
    assert M.encode_prompt_and_response(tok, CHAT, "")[1] == [tok.eos_token_id]


def test_prompt_response_split_boundary_merge_falls_back_to_separate_tokenization(tiny_model_dir):
    tok = M.load_model(str(tiny_model_dir)).tokenizer
    p, r = M.encode_prompt_and_response(tok, CHAT, "\n\nleading newlines")
    assert p == M.encode_chat(tok, CHAT)
    assert tok.decode(p + r) == M.render_chat(tok, CHAT) + "\n\nleading newlines<|im_end|>"
    assert r[-1] == tok.eos_token_id


def test_plain_fallback_without_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.chat_template = None
    assert tok.decode(M.encode_chat(tok, CHAT, system="S")) == "System: S\n\nUser: What is the capital of France?\n\nAssistant:"
    p, r = M.encode_prompt_and_response(tok, CHAT, "Paris.")
    assert tok.decode(p) + tok.decode(r) == "User: What is the capital of France?\n\nAssistant: Paris.<|im_end|>"
    assert r[-1] == tok.eos_token_id


def test_pad_token_defaults_to_eos(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tok.pad_token = None
    assert tok.pad_token is None
    M.ensure_pad_token(tok)
    assert tok.pad_token == "<|im_end|>"


# -- errors --------------------------------------------------------------------------------------------------------
def test_clear_errors(tmp_path, workspace):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(M.ModelLoadError, match=r"model path does not exist: .*no/such/model"):
        M.load_model(str(missing), workspace=workspace)
    with pytest.raises(M.ModelLoadError, match="model path does not exist"):
        M.load_model("./not-here-either", workspace=workspace)
    with pytest.raises(M.ModelLoadError, match=r"not a local path and not in the local Hugging Face cache; the network is off"):
        M.load_model("some-org/definitely-not-cached-model-xyz", workspace=workspace)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(M.ModelLoadError, match="not a model directory"):
        M.load_model(str(empty), workspace=workspace)
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(M.ModelLoadError, match="not a directory"):
        M.load_model(str(f), workspace=workspace)
    with pytest.raises(M.ModelLoadError, match="empty model spec"):
        M.load_model("  ", workspace=workspace)


def test_default_cache_is_atomic_and_cleans_crashed_temp_dirs(tmp_path, monkeypatch):
    """No GGUF conversion here: a crashed conversion's temp dir is removed and a half-written target is not used."""
    ws = Workspace(tmp_path / "ws").ensure()
    target = M.default_cache_dir(ws)
    dead = target.parent / f".{target.name}.tmp-999999999-deadbeef"
    dead.mkdir(parents=True)
    (dead / "config.json").write_text("{}")
    MF._remove_dead_temp_dirs(target)
    assert not dead.exists()
    target.mkdir()
    (target / "config.json").write_text("{}")  # no weights: incomplete
    assert not MF._is_complete_model_dir(target)


# -- the real model --------------------------------------------------------------------------------------------------
@pytest.mark.realmodel
def test_default_model_converts_once_then_loads_from_cache(tmp_path):
    from neat_studio.generation import GenParams, generate

    ws = Workspace(tmp_path / "ws").ensure()
    t0 = time.monotonic()
    lm = M.load_model("default", workspace=ws)
    first = time.monotonic() - t0
    cache = ws.model_cache / "SmolLM2-135M-Instruct"
    assert lm.model_id == "SmolLM2-135M-Instruct" and lm.path == cache
    assert {"config.json", "model.safetensors", "tokenizer.json", "neat_studio_source.json"} <= {
        p.name for p in cache.iterdir()}
    assert json.loads((cache / "neat_studio_source.json").read_text())["gguf_file"] == M.DEFAULT_GGUF_FILE
    assert "quantization_config" not in json.loads((cache / "config.json").read_text())
    assert [p.name for p in ws.model_cache.iterdir()] == ["SmolLM2-135M-Instruct"]  # no temp dirs left

    t0 = time.monotonic()
    lm2 = M.load_model("default", workspace=ws)
    second = time.monotonic() - t0
    assert second < 10 and second * 4 < first, (first, second)
    print(f"default model: first load {first:.1f} s (GGUF conversion), cached load {second:.2f} s")

    tok = lm2.tokenizer
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and M.model_max_length(lm2) == 8192
    for response in RESPONSES:  # the split on the real tokenizer
        for msgs, system in ((CHAT, None), (LONG_CHAT, "Be kind.")):
            _check_split(tok, msgs, response, system)
    # SmolLM2's template inserts its default system prompt when there is none
    assert tok.decode(M.encode_chat(tok, CHAT)).startswith("<|im_start|>system\nYou are a helpful AI assistant")

    s = generate(lm2, [CHAT], params=GenParams(temperature=0, max_new_tokens=8))[0][0]
    assert s.text.strip() and s.n_tokens <= 8
    assert s.text.startswith("The capital of France is")


def test_run_id_resolves_under_workspace_runs(tiny_model_dir, workspace):
    import shutil

    shutil.copytree(tiny_model_dir, workspace.runs / "run-7" / "final")
    lm = M.load_model("run-7", workspace=workspace)
    assert lm.path == workspace.runs / "run-7" / "final" and lm.model_id == "run-7" and lm.spec == "run-7"


@pytest.mark.parametrize("flags, native", [("fpu avx2 avx512f avx512bw avx512_vnni", False),
                                           ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),
                                           ("fpu avx2 amx_tile amx_bf16 amx_int8", True),
                                           ("fpu avx2 xavx512_bf16x", False)])
def test_generation_dtype_auto_follows_the_cpu_bf16_instructions(tmp_path, monkeypatch, flags, native):
    import torch

    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    monkeypatch.setattr(M, "_CPUINFO", info)
    assert M.native_bf16("cpu") is native
    assert M.generation_dtype("auto") == (torch.bfloat16 if native else torch.float32)
    assert M.generation_dtype(None) == M.generation_dtype("auto")
    assert M.generation_dtype("float32") == torch.float32 and M.generation_dtype("bfloat16") == torch.bfloat16
    monkeypatch.setattr(M, "_CPUINFO", tmp_path / "missing")
    assert M.native_bf16("cpu") is False and M.generation_dtype("auto") == torch.float32
    with pytest.raises(ValueError, match="unknown generation dtype 'float16'"):
        M.generation_dtype("float16")


def test_studio_loads_its_generation_models_in_its_dtype(tmp_path, monkeypatch, tiny_model_dir):
    import torch

    from neat_studio.studio import Studio

    with pytest.raises(ValueError, match="unknown generation dtype"):
        Studio(Workspace(tmp_path / "bad"), gen_dtype="int8")
    assert not (tmp_path / "bad").exists()  # refused before anything was created

    monkeypatch.setattr(M, "native_bf16", lambda device="cpu": True)
    monkeypatch.setenv("NEAT_STUDIO_MODEL_ROOTS", str(tiny_model_dir.parent))
    with Studio(Workspace(tmp_path / "ws"), model_spec="tiny") as st:
        assert st.gen_dtype == torch.bfloat16
        assert st.policy().model.dtype == torch.bfloat16
        assert st.compare_model(str(tiny_model_dir)).model.dtype == torch.bfloat16
        assert st.compare_info(str(tiny_model_dir))["dtype"] == "bfloat16"  # shown beside the fingerprint
        st.use_model(str(tiny_model_dir))
        assert st.policy().model.dtype == torch.bfloat16
        from neat_studio.generation import GenParams, generate

        out = generate(st.policy(), ["Hello"], params=GenParams(temperature=0.0, max_new_tokens=5, seed=0))
        assert out[0][0].n_tokens >= 1  # generation runs in bf16
    with Studio(Workspace(tmp_path / "ws"), model_spec="tiny", gen_dtype="float32") as st:
        assert st.policy().model.dtype == torch.float32
