"""What needs the tokenizer: examples that lose their answer to truncation, tokens per source, label words that
share a first token (the template itself: lancy_trl/data/template.py).

    kwargs = chat_kwargs(tokenizer, enable_thinking=False)     # {"enable_thinking": False} for Qwen3, else {}
    train, report = fit(train, tokenizer, max_length=256, kwargs=kwargs, where="train")
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from lancy_trl.data.template import chat_kwargs, encode_conversations, fold_system, refuses_system
from lancy_trl.errors import LancyError


def fit(ds: Any, tokenizer: Any, max_length: int, kwargs: dict[str, Any], where: str,
        batch: int = 512) -> tuple[Any, dict[str, Any]]:
    """Drop examples that truncation to max_length would change: a prompt that fills it (no answer token left to
    learn), or an answer it would cut (trained without its end, the end-of-turn token or a final answer line).
    Count tokens per source. All dropped is an error naming the fix."""
    if ds is None:
        return None, {}
    text = "text" in ds.column_names
    answers = [c for c in ("completion", "chosen", "rejected") if c in ds.column_names]
    keep: list[int] = []
    tokens: Counter = Counter()
    examples: Counter = Counter()
    dropped: Counter = Counter()
    cut: Counter = Counter()
    sources = ds["source"] if "source" in ds.column_names else None
    for start in range(0, len(ds), batch):
        rows = ds[start: start + batch]
        n = len(rows["text" if text else "prompt"])
        if text:
            lengths = [len(ids) for ids in tokenizer(rows["text"], add_special_tokens=True)["input_ids"]]
            prompt_lengths = [0] * n
        else:
            prompt_lengths = [len(ids) for ids in encode_conversations(tokenizer, rows["prompt"], kwargs, True)]
            lengths = [0] * n
            for column in answers:  # a preference pair: its longer answer must fit
                full = [p + c for p, c in zip(rows["prompt"], rows[column])]
                lengths = [max(a, len(b)) for a, b in zip(lengths, encode_conversations(tokenizer, full, kwargs, False))]
        for i in range(n):
            source = sources[start + i] if sources else "all"
            if prompt_lengths[i] >= max_length:
                dropped[source] += 1
                continue
            if not text and lengths[i] > max_length:
                cut[source] += 1
                continue
            keep.append(start + i)
            examples[source] += 1
            tokens[source] += min(lengths[i], max_length)
    if not keep:
        raise LancyError(
            f"every {where} example is longer than --max-length {max_length} ({sum(dropped.values())} prompt(s) fill "
            f"it, {sum(cut.values())} answer(s) would be cut); raise --max-length"
        )
    report: dict[str, Any] = {"examples": dict(examples), "tokens": dict(tokens)}
    if dropped:
        report["dropped_truncated"] = dict(dropped)
    if cut:
        report["dropped_answer_cut"] = dict(cut)
    if dropped or cut:
        ds = ds.select(keep)
    return ds, report


def label_collisions(tokenizer: Any, labels: list[str], kwargs: dict[str, Any]) -> list[list[str]]:
    """Groups of label words whose answer starts with the same token: generation must get past it to tell them
    apart, and a model that has learned only the first token looks right while being undecided."""
    if len(labels) < 2:
        return []
    prompt = [{"role": "user", "content": "x"}]
    prefix = encode_conversations(tokenizer, [prompt], kwargs, True)[0]
    fulls = encode_conversations(tokenizer, [prompt + [{"role": "assistant", "content": w}] for w in labels], kwargs, False)
    groups: dict[int, list[str]] = defaultdict(list)
    for word, ids in zip(labels, fulls):
        rest = ids[len(prefix):] if ids[: len(prefix)] == prefix else tokenizer(word, add_special_tokens=False)["input_ids"]
        if rest:
            groups[rest[0]].append(word)
    return [words for words in groups.values() if len(words) > 1]


def fit_to_model(data: Any, tokenizer: Any, args: Any) -> dict[str, Any]:
    """Tokenizer-dependent data checks, done once before training: the thinking-mode switch, examples whose answer
    truncation would remove (dropped, counted), tokens per source, and label words sharing a first token."""
    kwargs = chat_kwargs(tokenizer, args.enable_thinking)
    if refuses_system(tokenizer, kwargs):
        for split in ("train", "eval", "test"):
            ds = getattr(data, split)
            if ds is not None and "prompt" in ds.column_names:
                setattr(data, split, ds.map(lambda r: {"prompt": fold_system(r["prompt"])}))
        data.notes.append("the chat template takes no system message: the system prompt is folded into the first user "
                          "turn (in training and eval alike)")
    if kwargs:
        for split in ("train", "eval"):
            ds = getattr(data, split)
            if ds is not None and "prompt" in ds.column_names:
                setattr(data, split, ds.add_column("chat_template_kwargs", [kwargs] * len(ds)))
    data.train, report = fit(data.train, tokenizer, args.max_length, kwargs, "training")
    if data.eval is not None:
        data.eval, eval_report = fit(data.eval, tokenizer, args.max_length, kwargs, "evaluation")
        for key in ("dropped_truncated", "dropped_answer_cut"):
            if eval_report.get(key):
                report[f"eval_{key}"] = eval_report[key]
    for source, n in report.get("dropped_truncated", {}).items():
        data.notes.append(f"{source}: dropped {n} example(s) whose prompt fills --max-length {args.max_length}")
    for source, n in report.get("dropped_answer_cut", {}).items():
        data.notes.append(f"{source}: dropped {n} example(s) whose answer --max-length {args.max_length} would cut "
                          "(raise --max-length to keep them)")
    for words in label_collisions(tokenizer, list(data.labels), kwargs):
        data.notes.append(f"label words {', '.join(words)} start with the same token; `lancy eval --method score` "
                          "still tells them apart, generation must get past it")
    return {"train_tokens": report, "chat_template_kwargs": kwargs}
