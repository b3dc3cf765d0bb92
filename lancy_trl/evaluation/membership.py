"""Membership inference: how much a run reveals about which rows it trained on (`lancy audit RUN`).

    report = run_audit(resolve(AuditArgs, flags={"run": "runs/<run>"}), console)

Equal numbers of members (the run's training rows, rebuilt from its saved config) and non-members (its held-out
rows, or a file the user names) are scored on the tokens the run trained on (a chat row's answer through the end of
its turn; a text row's every token) by the standard attacks, each a score where higher means "member":

- loss: the mean token log-likelihood (Yeom et al. 2018);
- zlib: the summed log-likelihood over the answer's zlib-compressed length in bytes (Carlini et al. 2021);
- min_k: the mean of the lowest k% token log-likelihoods (Min-K%, Shi et al. 2024);
- min_k_plus: the same over each token's log-likelihood standardised by the mean and deviation of the model's
  log-probabilities at that position (Min-K%++, Zhang et al. 2025);
- reference: the mean log-likelihood minus the base model's (Carlini et al. 2022, the reference-model attack).

Each attack's ROC AUC (scikit-learn) comes with a stratified bootstrap interval and the true-positive rate at 1%
false positives. `--base` scores the same rows with the base model in the run's place: the control, near 0.5.
Verbatim extraction is the share of member answers that greedy decoding from their prompts writes exactly (up to
whitespace), and for comparison of non-member answers: for a classification run that is its accuracy, which needs
no memorising.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Any

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus", "reference")


@dataclass
class Tokens:
    """One row's scored tokens under a model: each token's log-probability, and the mean and deviation of the
    model's log-probabilities at its position (what Min-K%++ standardises by)."""

    logps: list[float]
    mu: list[float]
    sigma: list[float]


def scored_ids(tokenizer: Any, rows: list[dict], chat_kwargs: dict[str, Any]) -> list[tuple[list[int], int]]:
    """(token ids, where the scored tokens start) per row: a chat row's answer after its rendered prompt, a text
    row's tokens after the first."""
    from lancy_trl.data.template import encode_conversations
    from lancy_trl.evaluation.preference import common_prefix

    if all("text" in r for r in rows):
        return [(tokenizer(r["text"])["input_ids"], 1) for r in rows]
    heads = encode_conversations(tokenizer, [r["prompt"] for r in rows], chat_kwargs, True)
    fulls = encode_conversations(tokenizer, [r["prompt"] + answer(r) for r in rows], chat_kwargs, False)
    return [(full, max(1, common_prefix(full, head))) for full, head in zip(fulls, heads)]


def answer(row: dict[str, Any]) -> list[dict[str, str]]:
    """The answer a row trains on: its completion, or a preference pair's chosen answer."""
    return row["completion"] if "completion" in row else row["chosen"]


def answer_text(row: dict[str, Any]) -> str:
    return row["text"] if "text" in row else " ".join(m["content"] for m in answer(row))


def token_stats(model: Any, tokenizer: Any, rows: list[dict], chat_kwargs: dict[str, Any], batch_size: int = 8,
                max_tokens: int = 1024) -> list[Tokens]:
    """Each row's scored tokens under `model` (right-padded batches; a row is cut at `max_tokens`)."""
    import torch

    encoded = [(ids[:max_tokens], min(start, max_tokens - 1)) for ids, start in scored_ids(tokenizer, rows, chat_kwargs)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[Tokens] = []
    with torch.no_grad():
        for at in range(0, len(encoded), batch_size):
            chunk = encoded[at:at + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in chunk], device=model.device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk], device=model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            for i, (x, start) in enumerate(chunk):
                logp = torch.log_softmax(logits[i, start - 1:len(x) - 1], -1)
                p = logp.exp()
                mu = (p * logp).sum(-1)
                sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
                token = logp.gather(1, ids[i, start:len(x), None]).squeeze(1)
                out.append(Tokens(token.tolist(), mu.tolist(), sigma.tolist()))
    return out


def lowest_mean(values: list[float], k: float) -> float:
    n = max(1, math.ceil(k * len(values)))
    return sum(sorted(values)[:n]) / n


def attack_scores(rows: list[dict], target: list[Tokens], reference: list[Tokens] | None,
                  k: float = 0.2) -> dict[str, list[float]]:
    """Every attack's score per row, higher meaning "member"; the reference attack only with reference scores."""
    mean = [sum(t.logps) / len(t.logps) for t in target]
    scores = {
        "loss": mean,
        "zlib": [sum(t.logps) / len(zlib.compress(answer_text(r).encode())) for r, t in zip(rows, target)],
        "min_k": [lowest_mean(t.logps, k) for t in target],
        "min_k_plus": [lowest_mean([(lp - m) / s for lp, m, s in zip(t.logps, t.mu, t.sigma)], k) for t in target],
    }
    if reference is not None:
        scores["reference"] = [m - sum(t.logps) / len(t.logps) for m, t in zip(mean, reference)]
    return scores


def roc(members: list[float], others: list[float], rounds: int = 1000, seed: int = 0) -> dict[str, float]:
    """ROC AUC with a 95% stratified bootstrap interval, and the true-positive rate at 1% false positives."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.r_[np.ones(len(members)), np.zeros(len(others))]
    s = np.r_[members, others]
    fpr, tpr, _ = roc_curve(y, s)
    rng = np.random.default_rng(seed)
    m, o = np.asarray(members), np.asarray(others)
    boot = [roc_auc_score(y, np.r_[rng.choice(m, len(m)), rng.choice(o, len(o))]) for _ in range(rounds)]
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"auc": float(roc_auc_score(y, s)), "auc_low": float(low), "auc_high": float(high),
            "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max())}


def verbatim(model: Any, tokenizer: Any, rows: list[dict], chat_kwargs: dict[str, Any], batch_size: int) -> float:
    """The share of rows whose answer greedy decoding from the prompt writes exactly (a text row: the second half
    of its first 64 tokens from the first half)."""
    from lancy_trl.evaluation.classify import generate_texts

    if all("text" in r for r in rows):
        return _continues(model, tokenizer, rows)
    targets = [answer_text(r) for r in rows]
    budget = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in targets) + 2
    outputs = generate_texts(model, tokenizer, [r["prompt"] for r in rows], budget, batch_size, None, chat_kwargs)
    return sum("".join(o.split()) == "".join(t.split()) for o, t in zip(outputs, targets)) / len(rows)


def _continues(model: Any, tokenizer: Any, rows: list[dict]) -> float:
    import torch

    hits = 0
    with torch.no_grad():
        for r in rows:
            ids = tokenizer(r["text"])["input_ids"][:64]
            half = len(ids) // 2
            x = torch.tensor([ids[:half]], device=model.device)
            out = model.generate(x, max_new_tokens=len(ids) - half, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            hits += out[0, half:].tolist() == ids[half:]
    return hits / len(rows)


def balanced(members: list[dict], others: list[dict], limit: int | None, seed: int) -> tuple[list[dict], list[dict]]:
    """Equal numbers of each: the smaller side (or `limit`), a seeded sample of the larger."""
    n = min(len(members), len(others), limit or len(members))
    rng = random.Random(seed)
    return rng.sample(members, n), rng.sample(others, n)
