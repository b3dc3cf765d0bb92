"""The chat template, in one place: the switches a template takes (a thinking mode), a system message folded in
where the template refuses one, conversations encoded as training, eval and chat all encode them, each label's
tokens as the assistant's turn, the end-of-turn token that stops generation, and the template lancy adds to a
tokenizer that has none.

    kwargs = chat_kwargs(tokenizer, enable_thinking=False)     # {"enable_thinking": False} for Qwen3, else {}
    ids = encode_prompts(tokenizer, prompts, kwargs)            # each prompt, ready for the assistant's answer
    stops = stop_ids(tokenizer, kwargs)                         # EOS and <|im_end|> / <|eot_id|> / <end_of_turn>
"""

from __future__ import annotations

from typing import Any

GENERIC_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def chat_kwargs(tokenizer: Any, enable_thinking: bool) -> dict[str, Any]:
    """Templates with a thinking mode (Qwen3) render with it off unless asked, so training, eval and chat agree."""
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
    return {"enable_thinking": enable_thinking} if "enable_thinking" in template else {}


def refuses_system(tokenizer: Any, kwargs: dict[str, Any] | None = None) -> bool:
    """Whether the chat template rejects a system message (Gemma's raises "System role not supported")."""
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **(kwargs or {}))
    except Exception:
        try:
            tokenizer.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=True, **(kwargs or {}))
        except Exception:
            return False  # it refuses more than the system message: leave the error to the template
        return True
    return False


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system message folded into the first user turn (as Gemma's own docs suggest), for templates without one;
    the same in training, eval and chat."""
    if not messages or messages[0]["role"] != "system":
        return messages
    system, rest = messages[0]["content"], list(messages[1:])
    at = next((i for i, m in enumerate(rest) if m["role"] == "user"), None)
    if at is None:
        return [{"role": "user", "content": system}, *rest]
    rest[at] = {**rest[at], "content": f"{system}\n\n{rest[at]['content']}"}
    return rest


def encode_conversations(tokenizer: Any, conversations: list[list[dict]], kwargs: dict[str, Any],
                         generation: bool) -> list[list[int]]:
    out = tokenizer.apply_chat_template(
        conversations, add_generation_prompt=generation, tokenize=True, return_dict=False, **kwargs
    )
    return [list(ids) for ids in out]


def stop_ids(tokenizer: Any, chat_kwargs: dict | None = None) -> list[int]:
    """EOS and the chat template's end-of-turn token: the first special or added token the template writes after an
    assistant message (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`), which base models of Qwen3 and Llama-3.2 do not
    use as EOS."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    kw = chat_kwargs or {}
    prompt = [{"role": "user", "content": "x"}]
    try:
        prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False, **kw)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "y"}], tokenize=True,
                                             return_dict=False, **kw)
    except Exception:  # a template that refuses this minimal conversation: EOS only
        return ids
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    tail = list(full[len(prefix):]) if list(full[: len(prefix)]) == list(prefix) else []
    end = next((t for t in tail if t in special), None)
    return ids + ([end] if end is not None and end not in ids else [])


def label_token_ids(tokenizer: Any, prompt: list[dict], labels: list[str], chat_kwargs: dict | None = None) -> list[list[int]]:
    """Each label's tokens as the chat template renders the assistant turn, through its end-of-turn token."""
    kw = chat_kwargs or {}
    stops = set(stop_ids(tokenizer, chat_kwargs))
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False, **kw)
    out = []
    for label in labels:
        full = tokenizer.apply_chat_template(
            prompt + [{"role": "assistant", "content": label}], tokenize=True, return_dict=False, **kw
        )
        if full[: len(prefix)] != prefix:  # templates that rewrite earlier turns: fall back to plain tokens
            ids = tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        else:
            ids = list(full[len(prefix):])
            end = next((i for i, t in enumerate(ids) if t in stops), None)
            if end is not None:
                ids = ids[: end + 1]
        out.append(ids)
    return out


def encode_prompts(tokenizer: Any, prompts: list[list[dict]], chat_kwargs: dict | None = None) -> list[list[int]]:
    kw = chat_kwargs or {}
    return [
        list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False, **kw))
        for p in prompts
    ]


def render(tokenizer: Any, messages: list[dict[str, str]], kwargs: dict[str, Any] | None = None) -> str:
    """A conversation as the text the model reads, ready for the assistant's answer (a system message folded into
    the first user turn where the template refuses one)."""
    kwargs = kwargs or {}
    if refuses_system(tokenizer, kwargs):
        messages = fold_system(messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
