"""Chats -> token ids: the token conventions shared by generation, the trainer and evaluation.

* :func:`encode_chat` renders messages with the tokenizer's chat template (a plain ``Role: text`` fallback when the
  tokenizer has none) and tokenizes the rendered string with ``add_special_tokens=False`` (templates carry their own
  special tokens), exactly as ``tokenizer.apply_chat_template(..., tokenize=True)`` does.
* :func:`encode_prompt_and_response` gives ``(prompt_ids, response_ids)``: ``prompt_ids == encode_chat(messages)``
  (with the generation prompt) and ``response_ids`` are the assistant reply followed by the end-of-turn token. The
  template's text after the final end-of-turn token (ChatML's trailing ``"\\n"``) is not part of the response: the
  model never generates it (generation stops at end-of-turn).

Callers import these from neat_studio.models, which re-exports them.
"""
from __future__ import annotations

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Special tokens that end an assistant turn in common chat formats (only those present in a vocabulary are used).
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_ROLES = ("system", "user", "assistant")


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
