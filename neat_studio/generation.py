"""Batched, seeded sampling with optional system prompts, and streaming chat.

How it works (a small decoding loop over the model's forward pass, rather than ``model.generate``):

* Prompts are rendered with the chat template (:func:`neat_studio.models.encode_chat`, ``system`` replaces or inserts
  the system turn), sorted by token length (longest first, so batches hold similar lengths and little padding) and
  cut into batches of at most ``batch_size`` sequences (prompts x k).
* Each batch is LEFT padded; position ids come from the attention mask, so a prompt's tokens are identical alone or
  in a batch. The prompt is run once (prefill; only the last position's logits are computed) and its KV cache is
  repeated k times for the k samples (prompt KV reuse instead of k copies of the prompt). The prefill and the
  cache it fills are :mod:`neat_studio.kv_cache` (length groups, shared system-turn prefixes, growing buffers).
* Decoding keeps only unfinished rows: a row that emits an end-of-turn/eos token leaves the batch (its KV cache rows
  are dropped), so a batch costs what its live rows cost, not what its longest answer costs.
* Sampling: temperature, then nucleus (top-p) filtering, then one uniform draw per row and step from that row's own
  ``torch.Generator``. Every sample has its own seed, derived from ``params.seed``, the prompt's position in the
  call and the sample index (:func:`sample_seed`), recorded in ``Sample.seed``. Hence the same call reproduces
  exactly, a sample does not depend on which other prompts share its batch (up to float rounding of padded
  batches), and the global torch RNG is neither used nor disturbed (safe next to other threads).
* ``temperature == 0`` means greedy decoding (``do_sample`` is False); the seed is then irrelevant but recorded.
* Text: the generated tokens before the first end-of-turn token, decoded without special tokens, stripped.

``stream_chat`` runs the same loop for one conversation and yields the growing text; it produces exactly the text
``generate`` returns for the same messages/params (sample 0), and stops decoding as soon as the consumer stops
iterating (closing the generator cancels the generation, no thread is left running).
"""
from __future__ import annotations

import functools
import hashlib
import threading
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterator, Sequence

from .kv_cache import prefill
from .models import LoadedModel, encode_chat, end_of_turn_ids, model_max_length

Progress = Callable[[int, int], None] | None


@dataclass
class GenParams:
    """Sampling parameters. ``temperature == 0`` is greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    k: int = 1          # samples per prompt
    seed: int = 0

    def __post_init__(self):
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)
        if isinstance(self.max_new_tokens, bool) or int(self.max_new_tokens) != self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}")
        if isinstance(self.k, bool) or int(self.k) != self.k:
            raise ValueError(f"k must be an integer, got {self.k!r}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed:
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        self.max_new_tokens, self.k, self.seed = int(self.max_new_tokens), int(self.k), int(self.seed)
        if not (0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature must be in [0, 100], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def to_dict(self) -> dict:
        """The five fields (``GenParams(**p.to_dict()) == p``); ``do_sample`` follows from temperature."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "GenParams":
        """Build from a dict, ignoring keys that are not fields (e.g. ``do_sample`` or a prompt's other params)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


@dataclass
class Sample:
    text: str
    seed: int             # this sample's own seed (see sample_seed)
    params: dict          # GenParams.to_dict() of the call
    n_tokens: int         # tokens generated, the end-of-turn token included when reached
    sample_index: int = 0  # 0..k-1
    finish_reason: str = "stop"  # "stop": ended with an end-of-turn/eos token; "length": hit max_new_tokens


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of sample `sample_index` of the prompt at `prompt_index` in a call with ``params.seed == seed``:
    63 bits of SHA-256 over the three numbers (so consecutive base seeds give unrelated samples)."""
    d = hashlib.sha256(f"neat-studio:{int(seed)}:{int(prompt_index)}:{int(sample_index)}".encode()).digest()
    return int.from_bytes(d[:8], "big") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------
def generate(lm: LoadedModel, prompts: Sequence, *, system: str | None = None, params: GenParams | None = None,
             batch_size: int = 8, progress: Progress = None, systems: Sequence[str | None] | None = None,
             seed_index: Sequence[int] | None = None,
             on_step: Callable[[list[int], Callable[[], list[list[str]]]], None] | None = None,
             max_prompt_tokens: int | None = None, ids: Sequence | None = None) -> list[list[Sample]]:
    """k samples for each prompt (messages, or a plain string = one user turn), in input order.

    ``batch_size`` is the number of sequences decoded together (prompts x k; a prompt's k samples stay in one
    batch, so a batch holds ``max(1, batch_size // k)`` prompts). ``progress(done_prompts, total_prompts)`` is called
    after every batch. ``systems`` gives each prompt its own system prompt (instead of ``system`` for all).
    Sample j of prompt i is seeded with ``sample_seed(params.seed, seed_index[i], j)`` (default seed_index[i] = i).
    ``on_step(prompt_indices, texts)`` (optional) is called after every decoding step of a batch with the batch's
    prompt indices and a function returning the text so far of each of their k samples (decoded only when
    called; for streaming several prompts at once).
    ``max_prompt_tokens`` (optional) keeps only the LAST that many tokens of each rendered prompt (system turn and
    generation prompt included), as training does with ``max_prompt_len``: the end of a long prompt (the latest
    turn and the assistant header the reply follows) is what a reply conditions on.
    ``ids`` (optional, one per prompt, e.g. the stored prompt ids) name the prompts in error messages; without
    them a prompt is named by its position in the call.
    Raises ValueError for malformed messages or a prompt longer than the model's context (naming the prompt)."""
    params = params or GenParams()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = list(prompts)
    if not prompts:
        return []
    if systems is not None and len(systems) != len(prompts):
        raise ValueError(f"systems has {len(systems)} entries for {len(prompts)} prompts")
    if seed_index is not None and len(seed_index) != len(prompts):
        raise ValueError(f"seed_index has {len(seed_index)} entries for {len(prompts)} prompts")
    if ids is not None and len(ids) != len(prompts):
        raise ValueError(f"ids has {len(ids)} entries for {len(prompts)} prompts")
    if max_prompt_tokens is not None and (isinstance(max_prompt_tokens, bool) or int(max_prompt_tokens) < 1):
        raise ValueError(f"max_prompt_tokens must be a positive integer or None, got {max_prompt_tokens!r}")

    where = "" if ids is not None else " (prompts are numbered from 0 in the order given)"

    def name(i: int) -> str:
        return f"prompt {ids[i]}" if ids is not None else f"prompt {i}"

    tok, model = lm.tokenizer, lm.model
    encoded = []
    for i, p in enumerate(prompts):
        try:
            e = encode_chat(tok, p, system=systems[i] if systems is not None else system)
        except ValueError as ex:
            raise ValueError(f"{name(i)}{where}: {ex}") from None
        encoded.append(list(e)[-int(max_prompt_tokens):] if max_prompt_tokens is not None else e)
    prepare_for_inference(model)
    max_len = model_max_length(lm)
    for i, e in enumerate(encoded):
        if len(e) >= max_len:
            cut = f" (after keeping its last {int(max_prompt_tokens)})" if max_prompt_tokens is not None else ""
            raise ValueError(f"{name(i)} has {len(e)} tokens{cut}; the model's context is {max_len} tokens: "
                             f"shorten the prompt or keep fewer prompt tokens (max_prompt_len){where}")
    k = params.k
    per_batch = max(1, batch_size // k)
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    results: list[list[Sample] | None] = [None] * len(encoded)
    pd = params.to_dict()
    done = 0
    with _no_grad(lm.model):
        for b in range(0, len(order), per_batch):
            idx = order[b:b + per_batch]
            seeds = [sample_seed(params.seed, seed_index[i] if seed_index is not None else i, j)
                     for i in idx for j in range(k)]
            max_new = min(params.max_new_tokens, max_len - max(len(encoded[i]) for i in idx))
            step_cb = None
            if on_step is not None:
                def step_cb(texts, idx=idx):
                    def per_prompt():
                        t = texts()
                        return [t[n * k:(n + 1) * k] for n in range(len(idx))]
                    on_step(list(idx), per_prompt)
            outs = _decode_batch(lm, [encoded[i] for i in idx], k=k, params=params, seeds=seeds, max_new=max_new,
                                 on_step=step_cb)
            for n, i in enumerate(idx):
                results[i] = [
                    Sample(text=text, seed=seeds[n * k + j], params=dict(pd), n_tokens=n_tok, sample_index=j,
                           finish_reason=reason)
                    for j, (text, n_tok, reason) in enumerate(outs[n * k:(n + 1) * k])]
            done += len(idx)
            if progress is not None:
                progress(done, len(encoded))
    return results  # type: ignore[return-value]


def stream_chat(lm: LoadedModel, messages, params: GenParams | None = None, system: str | None = None
                ) -> Iterator[str]:
    """Yield the growing reply text to `messages` (each item is the whole text so far; the last one equals
    ``generate(lm, [messages], system=system, params=params)[0][0].text``). Uses sample 0's seed of that call."""
    params = params or GenParams()
    tok = lm.tokenizer
    ids = encode_chat(tok, messages, system=system)
    max_len = model_max_length(lm)
    if len(ids) >= max_len:
        raise ValueError(f"the conversation has {len(ids)} tokens; the model's context is {max_len} tokens")
    max_new = min(params.max_new_tokens, max_len - len(ids))
    prepare_for_inference(lm.model)
    stops = set(end_of_turn_ids(tok))
    generated: list[int] = []
    last = ""
    with _no_grad(lm.model):
        for _rows, toks in _decode_steps(lm.model, [ids], k=1, params=params, seeds=[sample_seed(params.seed, 0, 0)],
                                         max_new=max_new, stop_ids=stops, pad_id=_pad_id(tok)):
            t = int(toks[0])
            if t in stops:
                break
            generated.append(t)
            text = tok.decode(generated, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # an unfinished multi-byte character: wait for its next byte(s)
                continue
            text = text.strip()
            if text != last:
                last = text
                yield text
    final = tok.decode(generated, skip_special_tokens=True).strip()
    if final != last:
        yield final


# ---------------------------------------------------------------------------------------------------------------
# the decoding loop
# ---------------------------------------------------------------------------------------------------------------
_LAYOUT_LOCK = threading.Lock()


def _no_grad(model):
    """The no-autograd context of decoding: inference_mode, except under autocast (the trainer samples its rounds
    with fp32 master weights under bf16 autocast). There it is no_grad, because autocast caches its bf16 copy of
    each weight for the whole autocast block only outside inference_mode; under inference_mode it re-casts every
    weight in every decoding step (measured: a 16-prompt batch 4.9 s under inference_mode vs 3.0 s with bf16
    weights)."""
    import torch

    device = next(model.parameters()).device.type
    return torch.no_grad() if torch.is_autocast_enabled(device) else torch.inference_mode()


def prepare_for_inference(model) -> None:
    """CPU fast path, applied once per model by generate/stream_chat: store every (untied) Linear weight
    transposed in memory, i.e. as ``W.t().contiguous().t()``. Values, shapes, names and
    parameter objects are unchanged (ties too; save_pretrained, fingerprint and training still work), but
    ``F.linear`` then hands MKL an [in, out] row-major matrix, which is ~2x faster for the small batches of
    decoding (e.g. 8 rows x 576 -> 1536: 0.20 ms instead of 0.41 ms on one core)."""
    import torch

    if getattr(model, "_neat_inference_layout", False):
        return
    with _LAYOUT_LOCK:
        if getattr(model, "_neat_inference_layout", False):
            return
        if next(model.parameters()).device.type == "cpu":
            # tied weights (lm_head = embed_tokens) are left alone: save_pretrained's tie detection needs them
            # contiguous, and the embedding lookup prefers rows
            counts: dict[int, int] = {}
            for _, mod in model.named_modules(remove_duplicate=False):
                for p in mod.parameters(recurse=False):
                    counts[id(p)] = counts.get(id(p), 0) + 1
            with torch.no_grad():
                for mod in model.modules():
                    if isinstance(mod, torch.nn.Linear):
                        w = mod.weight
                        if (w.dim() == 2 and w.is_contiguous() and w.shape[0] > 1 and w.shape[1] > 1
                                and counts.get(id(w), 0) == 1):
                            w.data = w.data.t().contiguous().t()
                        elif counts.get(id(w), 0) > 1 and w.dim() == 2 and "forward" not in vars(mod):
                            mod.forward = functools.partial(_tied_linear_forward, mod)  # undone by
                            mod._neat_tied_forward = True                                # restore_training_layout
        model._neat_inference_layout = True


def _tied_linear_forward(mod, x):
    """Forward of a tied Linear (lm_head = embed_tokens, kept row-major) during CPU decoding: for 2..48 rows,
    ``(W @ x.T).T`` is ~2x faster than ``F.linear(x, W)`` with a [vocab, hidden] row-major W (49152 x 576 at 16
    rows: 11 ms instead of 24 ms on 2 cores). Same values up to float rounding; anything else (training, autograd,
    other devices, larger batches) takes F.linear."""
    import torch
    import torch.nn.functional as F

    w = mod.weight
    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if 2 <= rows <= 48 and not torch.is_grad_enabled() and x.device.type == "cpu" and w.is_contiguous():
        y = (w @ x.reshape(rows, x.shape[-1]).t()).t().contiguous()
        if mod.bias is not None:
            y = y + mod.bias
        return y.reshape(*x.shape[:-1], w.shape[0])
    return F.linear(x, w, mod.bias)


def _pad_id(tok) -> int:
    for v in (tok.pad_token_id, tok.eos_token_id, 0):
        if v is not None:
            return int(v)
    return 0


def _decode_batch(lm: LoadedModel, prompt_ids: list[list[int]], *, k: int, params: GenParams, seeds: list[int],
                  max_new: int, on_step: Callable[[Callable[[], list[str]]], None] | None = None
                  ) -> list[tuple[str, int, str]]:
    """(text, n_tokens, finish_reason) for each of len(prompt_ids) * k rows (row = prompt * k + sample).
    ``on_step(texts)`` (optional) is called after each decoding step; ``texts()`` returns every row's text so far."""
    tok = lm.tokenizer
    stops = set(end_of_turn_ids(tok))
    rows = len(prompt_ids) * k
    out_tokens: list[list[int]] = [[] for _ in range(rows)]

    def text_of(toks):
        stop_at = next((n for n, t in enumerate(toks) if t in stops), None)
        body = toks if stop_at is None else toks[:stop_at]
        return tok.decode(body, skip_special_tokens=True).strip(), stop_at

    for active, toks in _decode_steps(lm.model, prompt_ids, k=k, params=params, seeds=seeds, max_new=max_new,
                                      stop_ids=stops, pad_id=_pad_id(tok)):
        for r, t in zip(active, toks.tolist()):
            out_tokens[r].append(t)
        if on_step is not None:  # the consumer decodes only when it wants the texts (e.g. 4 times a second)
            on_step(lambda: [text_of(t)[0].rstrip("\ufffd") for t in out_tokens])
    res = []
    for toks in out_tokens:
        text, stop_at = text_of(toks)
        res.append((text, len(toks) if stop_at is None else stop_at + 1, "length" if stop_at is None else "stop"))
    return res


def _decode_steps(model, prompt_ids: list[list[int]], *, k: int, params: GenParams, seeds: list[int], max_new: int,
                  stop_ids: set[int], pad_id: int):
    """Yield (active_rows, next_tokens) per decoding step; rows that emitted a stop token leave the batch.

    Must run without autograd (`_no_grad`). Row r = prompt r // k, sample r % k; seeds[r] seeds row r."""
    import torch

    device = next(model.parameters()).device
    n_prompts = len(prompt_ids)
    width = max(len(p) for p in prompt_ids)
    attn = torch.zeros((n_prompts, width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):  # left padding
        attn[i, width - len(p):] = 1
    attn = attn.to(device)
    next_pos = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long, device=device)
    # prompt KV reuse: one prefill per prompt, its KV written into k decoding rows (with room to grow)
    cache, logits = prefill(model, prompt_ids, width, pad_id, device, k=k, reserve=max_new)
    if k > 1:
        attn = attn.repeat_interleave(k, dim=0)
        next_pos = next_pos.repeat_interleave(k, dim=0)
    rows = n_prompts * k
    gens = []
    if params.do_sample:
        for s in seeds[:rows]:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s))
            gens.append(g)
    active = list(range(rows))
    stop_t = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device) if stop_ids else None
    for step in range(max_new):
        toks = _pick(logits, params, [gens[r] for r in active] if gens else None)
        yield active, toks
        if step == max_new - 1:
            break
        finished = torch.isin(toks, stop_t) if stop_t is not None else torch.zeros_like(toks, dtype=torch.bool)
        if bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            attn, next_pos, toks = attn[keep], next_pos[keep], toks[keep]
            active = [active[i] for i in keep.tolist()]
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=-1)
        out = model(input_ids=toks[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1


def _pick(logits, params: GenParams, gens):
    """Next token per row: argmax when greedy; else temperature, top-p and an inverse-CDF draw from each row's
    generator (one uniform number per row and step)."""
    import torch

    if not params.do_sample:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_p < 1.0:
        sorted_logits, sorted_idx = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(dim=-1)
        probs = probs.masked_fill((cum - probs) > params.top_p, 0.0)  # keep the smallest prefix reaching top_p
    else:
        sorted_idx = None
        probs = torch.softmax(logits, dim=-1)
    cum = probs.cumsum(dim=-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float32) for g in gens]).to(logits.device)
    x = (u * cum[:, -1]).unsqueeze(-1)
    choice = torch.searchsorted(cum, x, right=True).squeeze(-1)
    choice = torch.minimum(choice, (probs > 0).sum(dim=-1) - 1 if sorted_idx is not None else
                           torch.full_like(choice, probs.shape[-1] - 1))
    if sorted_idx is not None:
        return sorted_idx.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return choice
