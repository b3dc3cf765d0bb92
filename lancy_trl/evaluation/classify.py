"""Generative classification: the model writes the label word; lancy scores it two ways.

- `score`: the log-likelihood of each label word (and the end-of-turn token) as the assistant's answer under the
  training template. The prompt is encoded once per example and its KV cache shared by all labels.
- `generate`: greedy decoding, then a forgiving parse (case, punctuation, a label inside a sentence).
"""

from __future__ import annotations

import re
from typing import Any


def label_token_ids(tokenizer: Any, prompt: list[dict], labels: list[str]) -> list[list[int]]:
    """Each label's tokens as the chat template renders the assistant turn, through its end-of-turn token."""
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    out = []
    for label in labels:
        full = tokenizer.apply_chat_template(
            prompt + [{"role": "assistant", "content": label}], tokenize=True, return_dict=False
        )
        if full[: len(prefix)] != prefix:  # templates that rewrite earlier turns: fall back to plain tokens
            ids = tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        else:
            ids = list(full[len(prefix):])
            if tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
        out.append(ids)
    return out


def encode_prompts(tokenizer: Any, prompts: list[list[dict]]) -> list[list[int]]:
    return [
        list(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False))
        for p in prompts
    ]


def score_batch(model: Any, prompt_ids: list[list[int]], label_ids: list[list[int]], pad_id: int) -> Any:
    """(batch, labels) summed log-probabilities of each label continuation; prompts run once, left-padded."""
    import torch

    device = model.device
    b, k = len(prompt_ids), len(label_ids)
    p_len = max(map(len, prompt_ids))
    ids = torch.full((b, p_len), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p_len), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
        ids[i, p_len - len(p):] = torch.tensor(p)
        mask[i, p_len - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (b, vocab): the first label token
    cache = out.past_key_values
    cache.batch_repeat_interleave(k)
    l_len = max(map(len, label_ids))
    lab = torch.full((k, l_len), pad_id, dtype=torch.long)
    lab_mask = torch.zeros((k, l_len), dtype=torch.long)
    for j, ids_j in enumerate(label_ids):
        lab[j, : len(ids_j)] = torch.tensor(ids_j)
        lab_mask[j, : len(ids_j)] = 1
    lab, lab_mask = lab.to(device).repeat(b, 1), lab_mask.to(device).repeat(b, 1)  # (b*k, l_len)
    full_mask = torch.cat([mask.repeat_interleave(k, dim=0), lab_mask], dim=1)
    lab_pos = positions[:, -1:].repeat_interleave(k, dim=0) + 1 + torch.arange(l_len, device=device)
    total = first.repeat_interleave(k, dim=0).gather(1, lab[:, :1]).squeeze(1)
    if l_len > 1:
        out2 = model(input_ids=lab[:, :-1], attention_mask=full_mask[:, :-1], position_ids=lab_pos[:, :-1],
                     past_key_values=cache, use_cache=True)
        logp = torch.log_softmax(out2.logits.float(), dim=-1).gather(2, lab[:, 1:, None]).squeeze(2)
        total = total + (logp * lab_mask[:, 1:]).sum(1)
    return total.view(b, k)


def parse_label(text: str, labels: list[str]) -> str | None:
    """A label word from free text: exact (case/punctuation-insensitive), else the one label named in it."""
    clean = text.strip().lower()
    norm = {label.lower(): label for label in labels}
    bare = re.sub(r"^[\s\"'*`(\[]+|[\s\"'*`.!,;:)\]]+$", "", clean)
    if bare in norm:
        return norm[bare]
    # a label inside a sentence: longest labels first, so "not_entailment" wins over "entailment"
    found: list[tuple[int, int, str]] = []
    for low in sorted(norm, key=len, reverse=True):
        pattern = r"(?<![\w-])" + re.escape(low).replace("_", "[_ ]") + r"(?![\w-])"
        m = re.search(pattern, clean)
        if m and not any(s <= m.start() < e for s, e, _ in found):
            found.append((m.start(), m.end(), norm[low]))
    return min(found)[2] if len({f[2] for f in found}) == 1 else None


def classify(model: Any, tokenizer: Any, prompts: list[list[dict]], labels: list[str], method: str,
             batch_size: int = 16, progress: Any = None) -> list[dict[str, Any]]:
    """One prediction per prompt: {"prediction", "probs"} for score, {"prediction", "output"} for generate."""
    import torch

    results: list[dict[str, Any]] = []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    label_ids = label_token_ids(tokenizer, prompts[0], labels) if method == "score" else []
    max_new = 2 + max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            ids = encode_prompts(tokenizer, batch)
            if method == "score":
                probs = torch.softmax(score_batch(model, ids, label_ids, pad_id), dim=-1).tolist()
                for row in probs:
                    best = max(range(len(labels)), key=row.__getitem__)
                    results.append({"prediction": labels[best], "probs": dict(zip(labels, row))})
            else:
                for text in _generate(model, tokenizer, ids, pad_id, max_new):
                    results.append({"prediction": parse_label(text, labels), "output": text})
            if progress is not None:
                progress(len(batch))
    return results


def _generate(model: Any, tokenizer: Any, ids: list[list[int]], pad_id: int, max_new: int) -> list[str]:
    import torch

    p_len = max(map(len, ids))
    input_ids = torch.tensor([[pad_id] * (p_len - len(p)) + p for p in ids], device=model.device)
    mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) for p in ids], device=model.device)
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         pad_token_id=pad_id, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.batch_decode(out[:, p_len:], skip_special_tokens=True)
