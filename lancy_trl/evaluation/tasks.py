"""Scoring for the other task kinds: multiple choice (letters), math (final numbers), QA (exact match, token F1)
and pretraining text (perplexity).

    parse_choice("I think the answer is (C).", "ABCD")        # "C"
    numbers_match("The total is $1,234.50", "1234.5")         # True
    token_f1("The fee is 1% a year", "a 1% yearly fee")       # 0.5
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any

# ---------------------------------------------------------------------------------------------
# Multiple choice

ANSWER_IS = re.compile(r"answer\s+is:?\s*\(?([A-Z])\)?", re.IGNORECASE)
LEADING_LETTER = re.compile(r"^[\s*]*(?:\(([A-Z])\)|\[([A-Z])\]|([A-Z])(?:[).:,*]|$))")  # "B", "(B)", "B.", "B) x"


def parse_choice(text: str, letters: str) -> str | None:
    """The option letter in a generated answer: `answer is (X)` (the MMLU-Pro convention), else a reply that is or
    starts with a letter (`B`, `(B)`, `B.`, `B) Inventory`), else the one option letter standing alone in it."""
    text = text.strip()
    m = ANSWER_IS.search(text)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    start = LEADING_LETTER.match(text)
    letter = next((g for g in start.groups() if g), "") if start else ""
    if letter and letter in letters:
        return letter
    # a letter standing alone; "A" and "I" followed by a lowercase word are English words, not options
    alone = {x for x in re.findall(r"(?<![A-Za-z])\(?([A-Z])\)?(?![A-Za-z])(?!(?<=[AI])\s[a-z])", text) if x in letters}
    return alone.pop() if len(alone) == 1 else None


# ---------------------------------------------------------------------------------------------
# Math

SCALES = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "m": 1e6, "billion": 1e9, "bn": 1e9, "b": 1e9,
          "trillion": 1e12, "tn": 1e12}
NUMBER = re.compile(
    r"(?<![\w.])(?P<neg>[-\u2212])?\$?\s?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:(?P<pct>\s?%|\s?percent\b)|\s?(?P<word>thousand|million|billion|trillion|mn|bn|tn)\b|(?P<short>[kmb])\b)?",
    re.IGNORECASE,
)


def parse_numbers(text: str) -> list[tuple[float, bool, int]]:
    """Every number in the text: (value with its scale word applied, written as a percentage?, decimals shown).
    Commas group thousands; `$` is ignored; million / bn / `4.2m` scale the value; an amount in parentheses is
    negative, as in accounts (`(1,234)`, `($5.2m)`, `(3.5%)`), while a bare integer in them (`(3)`, `(2019)`) is a
    reference and stays positive. Digits of other scripts (`٣`, `３`) read as the digits they are."""
    out = []
    for m in NUMBER.finditer(text):
        digits = m.group("num").replace(",", "")
        value = float(digits) * (-1 if m.group("neg") or _accounting_negative(text, m) else 1)
        scale = (m.group("word") or m.group("short") or "").lower()
        value *= SCALES.get(scale, 1.0)
        decimals = len(digits.split(".")[1]) if "." in digits and not scale else 0
        out.append((value, bool(m.group("pct")), decimals))
    return out


def _accounting_negative(text: str, m: re.Match) -> bool:
    """Whether a matched amount is wrapped in parentheses and written as an amount (grouped, decimal, currency,
    percentage or scaled), the accounting notation for a negative number."""
    before, after = text[:m.start()].rstrip(" $"), text[m.end():].lstrip()
    if not (before.endswith("(") and after.startswith(")")) or m.group("neg"):
        return False
    amount = m.group(0).strip()
    return any(c in amount for c in ",.$%") or bool(m.group("word") or m.group("short") or m.group("pct"))


def final_number(text: str) -> tuple[float, bool, int] | None:
    """The answer a solution ends on: after `####`, else after `answer is`, else its last number."""
    for marker in ("####", "answer is", "answer:"):
        at = text.lower().rfind(marker)
        if at >= 0:
            found = parse_numbers(text[at + len(marker):])
            if found:
                return found[0]
    found = parse_numbers(text)
    return found[-1] if found else None


def numbers_match(prediction: str, target: str, rel_tol: float = 1e-6) -> bool:
    """The prediction's final number equals the target's, at the precision the target is written to; a percentage
    on either side may also be read as a fraction (25% == 0.25)."""
    p, t = final_number(prediction), final_number(target)
    if p is None or t is None:
        return False
    (pv, p_pct, _), (tv, t_pct, t_dec) = p, t
    candidates = [pv] + ([pv / 100] if p_pct != t_pct and p_pct else []) + ([pv * 100] if p_pct != t_pct and t_pct else [])
    for v in candidates:
        if math.isclose(v, tv, rel_tol=rel_tol, abs_tol=1e-9) or (t_dec and round(v, t_dec) == round(tv, t_dec)):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# QA


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, target: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(target)


def token_f1(prediction: str, target: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(target).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# Pretraining text


def perplexity(model: Any, tokenizer: Any, texts: list[str], max_length: int = 1024, batch_size: int = 8) -> dict[str, Any]:
    """Token-level perplexity over the texts: each text in windows of max_length, every token after the first of a
    window predicted; padding never counts."""
    import torch

    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
            ids = [tokenizer.bos_token_id] + ids
        windows += [ids[i: i + max_length] for i in range(0, len(ids), max_length) if len(ids[i: i + max_length]) > 1]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            batch = windows[start: start + batch_size]
            length = max(map(len, batch))
            ids = torch.tensor([w + [pad] * (length - len(w)) for w in batch], device=model.device)
            mask = torch.tensor([[1] * len(w) + [0] * (length - len(w)) for w in batch], device=model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            keep = mask[:, 1:].bool()
            total_nll += nll[keep].sum().item()
            total_tokens += int(keep.sum().item())
    mean = total_nll / max(total_tokens, 1)
    return {"n": len(texts), "tokens": total_tokens, "nll": mean, "perplexity": math.exp(mean)}
