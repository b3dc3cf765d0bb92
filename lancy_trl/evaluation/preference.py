"""Preference accuracy: how often a model finds the chosen answer likelier than the rejected one after the prompt,
each answer scored as the sum of its tokens' log-probabilities under the chat template (through the end of turn), the
measure DPO trains (its implicit reward, before the reference is subtracted).

    report = preference_report(model, tokenizer, rows, batch_size=16)   # {"n", "accuracy", "margin"}
"""

from __future__ import annotations

from typing import Any

from lancy_trl.data.template import encode_conversations


def answer_logps(model: Any, tokenizer: Any, prompts: list[list[dict]], answers: list[list[dict]],
                 chat_kwargs: dict[str, Any] | None = None, batch_size: int = 16) -> list[float]:
    """log p(answer | prompt) for each pair of lists, the prompt rendered ready for the assistant's turn."""
    import torch

    kwargs = chat_kwargs or {}
    heads = encode_conversations(tokenizer, prompts, kwargs, True)
    fulls = encode_conversations(tokenizer, [p + a for p, a in zip(prompts, answers)], kwargs, False)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(fulls), batch_size):
            chunk, starts = fulls[start:start + batch_size], heads[start:start + batch_size]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in chunk], device=model.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in chunk], device=model.device)
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            token = logp.gather(2, ids[:, 1:, None]).squeeze(2)
            for i, (full, head) in enumerate(zip(chunk, starts)):
                first = common_prefix(full, head)  # where the answer starts in the whole conversation
                out.append(float(token[i, first - 1:len(full) - 1].sum()))
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def preference_report(model: Any, tokenizer: Any, rows: list[dict], batch_size: int = 16,
                      chat_kwargs: dict[str, Any] | None = None, progress: Any = None) -> dict[str, Any]:
    """The share of pairs whose chosen answer is the likelier, the mean log-likelihood margin, and each pair's."""
    prompts = [r["prompt"] for r in rows]
    chosen = answer_logps(model, tokenizer, prompts, [r["chosen"] for r in rows], chat_kwargs, batch_size)
    rejected = answer_logps(model, tokenizer, prompts, [r["rejected"] for r in rows], chat_kwargs, batch_size)
    if progress:
        progress(len(rows))
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"n": len(rows), "accuracy": sum(m > 0 for m in margins) / len(rows), "margin": sum(margins) / len(rows),
            "predictions": [{"prompt": _user(r), "chosen": _text(r["chosen"]), "rejected": _text(r["rejected"]),
                             "chosen_logp": c, "rejected_logp": j, "right": c > j}
                            for r, c, j in zip(rows, chosen, rejected)]}


def _user(row: dict[str, Any]) -> str:
    return next((m["content"] for m in reversed(row["prompt"]) if m["role"] == "user"), "")


def _text(messages: list[dict]) -> str:
    return " ".join(m["content"] for m in messages)
