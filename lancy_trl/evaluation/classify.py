"""Generative classification: the model writes the label word; lancy scores it two ways.

- `score`: the log-likelihood of each label word (and the end-of-turn token) as the assistant's answer under the
  training template. The prompt is encoded once per example and its KV cache shared by all labels.
- `generate`: greedy decoding, then a forgiving parse (case, punctuation, a label inside a sentence).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from lancy_trl.data.template import encode_prompts, label_token_ids, stop_ids


def cache_keyword(model: Any) -> str:
    """`cache` where the model's forward takes it (transformers >= 5.2x), else the older `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """A forward's KV cache: `cache` where the output has it (transformers >= 5.2x, whose `past_key_values` still
    answers but warns), else `past_key_values`."""
    return out["cache"] if "cache" in out else out.past_key_values


def common_prefix(prompt_ids: list[list[int]]) -> int:
    """Length of the token prefix every prompt shares (system message, instructions), leaving each a token."""
    n = min(map(len, prompt_ids)) - 1
    first = prompt_ids[0]
    for k in range(max(n, 0)):
        if any(p[k] != first[k] for p in prompt_ids):
            return k
    return max(n, 0)


def shared_prefix(prompt_ids: list[list[int]]) -> int:
    """The prefix a batch's prompts share that is worth running once (system message, instructions): 0 for one
    prompt or a prefix under 4 tokens."""
    shared = common_prefix(prompt_ids) if len(prompt_ids) > 1 else 0
    return shared if shared >= 4 else 0


def score_batch(model: Any, prompt_ids: list[list[int]], label_ids: list[list[int]], pad_id: int) -> Any:
    """(batch, labels) summed log-probabilities of each label continuation (see `score_pass`)."""
    impl = str(getattr(model.config, "_attn_implementation", "sdpa"))
    if impl.startswith("flash"):
        return score_batch_cached(model, prompt_ids, label_ids, pad_id)
    return score_pass(model, prompt_ids, label_ids, pad_id)[0]


def score_pass(model: Any, prompt_ids: list[list[int]], label_ids: list[list[int]], pad_id: int,
               keep_cache: bool = False) -> tuple[Any, Any]:
    """(batch, labels) summed log-probabilities of each label continuation, and with `keep_cache` the KV cache of
    the prompts as generation continues from it: [shared prefix | each rest left-padded] without its last column.

    The prefix all prompts share (system message and instructions) is encoded once for the batch. Then each row is
    [left-padded rest of its prompt | label 1 | label 2 | ...] under a tree-shaped attention mask: every label
    attends to the prompt and to its own earlier tokens only, and its positions restart where the prompt ends. So
    each prompt is encoded once and shared by all labels without copying a KV cache per label, and logits are
    computed only where a label token is predicted. Flash-attention takes no custom masks (`score_batch` gives it
    the cached path).
    """
    import torch

    impl = str(getattr(model.config, "_attn_implementation", "sdpa"))
    device = model.device
    shared = shared_prefix(prompt_ids)
    cache = None
    if shared:
        prefix = torch.tensor([prompt_ids[0][:shared]], device=device)
        cache = output_cache(model(input_ids=prefix, use_cache=True, logits_to_keep=1))
        cache.batch_repeat_interleave(len(prompt_ids))
    rests = [p[shared:] for p in prompt_ids]
    ids, pos, allowed, where = tree_layout(rests, label_ids, shared, pad_id)
    b, mask = len(rests), allowed[:, None]
    if impl != "sdpa":  # eager and others add the mask to the scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    keep = sorted(set(where))
    # a mixture-of-experts model trained with its router loss has it on in its config: not wanted here, and its
    # formula reads a 2-D attention mask
    routers = {"output_router_logits": False} if hasattr(model.config, "output_router_logits") else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=cache is not None or keep_cache, logits_to_keep=torch.tensor(keep, device=device), **routers,
                **({cache_keyword(model): cache} if cache is not None else {}))
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # (b, len(keep), vocab)
    index = {c: n for n, c in enumerate(keep)}
    targets = torch.tensor([tok for ids_j in label_ids for tok in ids_j], device=device)
    rows = logp[:, [index[c] for c in where]].gather(2, targets[None, :, None].expand(b, -1, 1)).squeeze(2)
    lens = [len(ids_j) for ids_j in label_ids]
    scores = torch.stack([rows[:, sum(lens[:j]): sum(lens[: j + 1])].sum(1) for j in range(len(lens))], dim=1)
    if not keep_cache:
        return scores, None
    kept = output_cache(out)  # the prompts, then every label's tokens: keep the prompts less their last column
    kept.crop(shared + max(map(len, rests)) - 1 - kept.get_seq_length())
    return scores, kept


def tree_layout(rests: list[list[int]], label_ids: list[list[int]], shared: int, pad_id: int) -> tuple[Any, Any, Any, list[int]]:
    """score_batch's rows: ids and positions of [left-padded rest of the prompt | label 1 | label 2 | ...], the
    (batch, query, shared + key) boolean mask, and for each label token in order the column whose logits predict it."""
    import torch

    b, p_len = len(rests), max(map(len, rests))
    lens = [len(ids) for ids in label_ids]
    starts = [p_len + sum(lens[:j]) for j in range(len(lens))]
    total = p_len + sum(lens)
    ids = torch.full((b, total), pad_id, dtype=torch.long)
    pos = torch.zeros((b, total), dtype=torch.long)
    for i, p in enumerate(rests):
        ids[i, p_len - len(p): p_len] = torch.tensor(p)
        pos[i, p_len - len(p): p_len] = shared + torch.arange(len(p))
        for start, n in zip(starts, lens):
            pos[i, start: start + n] = shared + len(p) + torch.arange(n)
    segment = torch.full((total,), -1)
    for j, (start, n) in enumerate(zip(starts, lens)):
        segment[start: start + n] = j
        ids[:, start: start + n] = torch.tensor(label_ids[j])
    col = torch.arange(total)
    causal = col[None, :] <= col[:, None]
    key_prompt = (col < p_len)[None, :]
    tree = torch.where((col < p_len)[:, None], causal & key_prompt, key_prompt | ((segment[:, None] == segment[None, :]) & causal))
    first_real = torch.tensor([p_len - len(p) for p in rests])
    key_real = col[None, :] >= first_real[:, None]  # (b, total): padding is never attended to
    allowed = tree[None] & key_real[:, None, :]
    allowed |= torch.eye(total, dtype=torch.bool)[None] & ~key_real[:, :, None]  # padding rows see themselves
    allowed = torch.cat([torch.ones((b, total, shared), dtype=torch.bool), allowed], dim=2)  # the shared prefix
    # label j's token t is predicted at the prompt's end (t = 0) or at its own token t - 1
    where = [p_len - 1 if t == 0 else start + t - 1 for start, n in zip(starts, lens) for t in range(n)]
    return ids, pos, allowed, where


def score_batch_cached(model: Any, prompt_ids: list[list[int]], label_ids: list[list[int]], pad_id: int) -> Any:
    """(batch, labels) summed log-probabilities: the prompt runs once, its KV cache is repeated for each label."""
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
    cache = output_cache(out)
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
                     use_cache=True, **{cache_keyword(model): cache})
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


class Encoded(NamedTuple):
    """Prompts as `classify` runs them: token ids, the order of its batches, and what scoring and decoding need."""

    ids: list[list[int]]
    order: list[int]  # longest first: batches of like lengths pad little
    pad_id: int
    label_ids: list[list[int]]
    max_new: int
    stops: list[int]


def encode(tokenizer: Any, prompts: list[list[dict]], labels: list[str], chat_kwargs: dict | None,
           max_new: int | None, scoring: bool) -> Encoded:
    ids = encode_prompts(tokenizer, prompts, chat_kwargs)
    return Encoded(
        ids=ids, order=sorted(range(len(ids)), key=lambda i: -len(ids[i])),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        label_ids=label_token_ids(tokenizer, prompts[0], labels, chat_kwargs) if scoring else [],
        max_new=max_new or 2 + max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels),
        stops=stop_ids(tokenizer, chat_kwargs))


def classify(model: Any, tokenizer: Any, prompts: list[list[dict]], labels: list[str], method: str,
             batch_size: int = 16, progress: Any = None, chat_kwargs: dict | None = None,
             max_new: int | None = None) -> list[dict[str, Any]]:
    """One prediction per prompt: {"prediction", "probs"} for score, {"prediction", "output"} for generate."""
    import torch

    enc = encode(tokenizer, prompts, labels, chat_kwargs, max_new, scoring=method == "score")
    results: list[dict[str, Any]] = [{}] * len(enc.ids)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(enc.order), batch_size):
            batch = enc.order[start:start + batch_size]
            rows = [enc.ids[i] for i in batch]
            if method == "score":
                _score_results(results, batch, score_batch(model, rows, enc.label_ids, enc.pad_id), labels)
            else:
                texts = _generate(model, tokenizer, rows, enc.pad_id, enc.max_new, enc.stops)
                _generate_results(results, batch, texts, labels)
            if progress is not None:
                progress(len(batch))
    return results


def _score_results(results: list[dict], batch: list[int], scores: Any, labels: list[str]) -> None:
    import torch

    for i, row in zip(batch, torch.softmax(scores, dim=-1).tolist()):
        best = max(range(len(labels)), key=row.__getitem__)
        results[i] = {"prediction": labels[best], "probs": dict(zip(labels, row))}


def _generate_results(results: list[dict], batch: list[int], texts: list[str], labels: list[str]) -> None:
    for i, text in zip(batch, texts):
        results[i] = {"prediction": parse_label(text, labels), "output": text}


def classify_both(model: Any, tokenizer: Any, prompts: list[list[dict]], labels: list[str], batch_size: int = 16,
                  progress: Any = None, chat_kwargs: dict | None = None,
                  max_new: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """`classify` by score and by generate from one prompt pass a batch: score's forward keeps the prompts' cache and
    greedy decoding continues from it. Models outside the checked families and attention implementations
    (`PREFIX_GENERATION`) run the two methods apart."""
    import torch

    if not prefix_generation_checked(model):
        def half(n: int) -> None:
            if progress is not None:
                progress(n / 2)

        return {m: classify(model, tokenizer, prompts, labels, m, batch_size, half, chat_kwargs, max_new)
                for m in ("score", "generate")}
    enc = encode(tokenizer, prompts, labels, chat_kwargs, max_new, scoring=True)
    out: dict[str, list[dict[str, Any]]] = {"score": [{}] * len(enc.ids), "generate": [{}] * len(enc.ids)}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(enc.order), batch_size):
            batch = enc.order[start:start + batch_size]
            rows = [enc.ids[i] for i in batch]
            scores, cache = score_pass(model, rows, enc.label_ids, enc.pad_id, keep_cache=True)
            _score_results(out["score"], batch, scores, labels)
            texts = _generate(model, tokenizer, rows, enc.pad_id, enc.max_new, enc.stops, cache)
            _generate_results(out["generate"], batch, texts, labels)
            if progress is not None:
                progress(len(batch))
    return out


# model families whose generation from a shared prefix's cache is checked against plain generation by the tests
PREFIX_GENERATION = ("llama", "qwen2", "qwen3")


def generation_prefix(model: Any, ids: list[list[int]]) -> int:
    """How many leading tokens (system message, instructions) a batch's prompts share and generation runs once: 0
    for one prompt, a short prefix, or a model outside the checked families or attention implementations."""
    shared = shared_prefix(ids)
    if not shared:
        return 0
    return shared if prefix_generation_checked(model) else 0


def prefix_generation_checked(model: Any) -> bool:
    """Whether decoding from a prompt cache laid out as [shared prefix | left-padded rests] is checked by the tests
    for this model: its family in `PREFIX_GENERATION`, under sdpa or eager attention."""
    impl = str(getattr(model.config, "_attn_implementation", "sdpa"))
    return model.config.model_type in PREFIX_GENERATION and impl in ("sdpa", "eager")


def _generate(model: Any, tokenizer: Any, ids: list[list[int]], pad_id: int, max_new: int,
              stops: list[int] | None = None, prompt_cache: Any = None) -> list[str]:
    """Greedy continuations, stopping at any of `stops` (EOS and the end-of-turn token). The prefix the prompts share
    runs once and its cache is repeated for each row; each row's rest is left-padded after it (the mask skips the
    padding, and positions count on from the prefix as in the row alone). `prompt_cache`: that layout's cache already
    computed up to the last column (`score_pass`), which decoding then starts from."""
    import torch

    shared = shared_prefix(ids) if prompt_cache is not None else generation_prefix(model, ids)
    head, rests = ids[0][:shared], [p[shared:] for p in ids]
    width = max(map(len, rests))
    input_ids = torch.tensor([head + [pad_id] * (width - len(r)) + r for r in rests], device=model.device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rests], device=model.device)
    cached = {cache_keyword(model): prompt_cache} if prompt_cache is not None else {}
    if shared and prompt_cache is None:
        cache = output_cache(model(input_ids=input_ids[:1, :shared], use_cache=True, logits_to_keep=1))
        cache.batch_repeat_interleave(len(ids))
        cached = {cache_keyword(model): cache}
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         pad_token_id=pad_id, eos_token_id=stops or tokenizer.eos_token_id, **cached)
    return tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)


def generate_texts(model: Any, tokenizer: Any, prompts: list[list[dict]], max_new: int, batch_size: int = 16,
                   progress: Any = None, chat_kwargs: dict | None = None) -> list[str]:
    """Greedy answers to chat prompts, batched with left padding (longest prompts first, so batches pad little)."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = encode_prompts(tokenizer, prompts, chat_kwargs)
    stops = stop_ids(tokenizer, chat_kwargs)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    texts: list[str] = [""] * len(ids)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            for i, text in zip(batch, _generate(model, tokenizer, [ids[i] for i in batch], pad_id, max_new, stops)):
                texts[i] = text
            if progress is not None:
                progress(len(batch))
    return texts
