"""Canary exposure: how much of the secrets a run planted (lancy_trl/privacy/canaries.py) its model memorised.

    report = exposure(model, tokenizer, planted, candidates=1000)      # `lancy eval --model runs/<run> --canaries`

Exposure ranks each planted secret among `candidates` random secrets of the same format by the model's
log-likelihood after the same prefix: exposure = log2(candidates + 1) - log2(rank). A model that learned nothing of
the secret puts it mid-list (exposure about 1 bit); one that memorised it ranks it first (the maximum,
log2(candidates + 1)). Greedy decoding from the prefix also shows whether the model recites the secret whole.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from lancy_trl.privacy.canaries import FILE, secret


def context_ids(tokenizer: Any, record: dict[str, Any], chat_kwargs: dict[str, Any]) -> list[int]:
    """The tokens before a secret: the chat prompt and the start of the answer, or the prefix as a document."""
    if record.get("prompt"):
        from lancy_trl.data.template import render

        text = render(tokenizer, record["prompt"], chat_kwargs)
        return tokenizer(text + record["prefix"], add_special_tokens=False)["input_ids"]
    return tokenizer(record["prefix"])["input_ids"]


def exposure(model: Any, tokenizer: Any, record: dict[str, Any], chat_kwargs: dict[str, Any] | None = None,
             candidates: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Each canary's rank among `candidates` random secrets, its exposure in bits, and whether greedy decoding from
    the prefix recites it."""
    import torch

    context = context_ids(tokenizer, record, chat_kwargs or {})
    rng = random.Random(seed)
    out = []
    for canary in record["canaries"]:
        others = {secret(rng) for _ in range(candidates * 2)} - {canary["secret"]}
        pool = [canary["secret"]] + sorted(others)[:candidates]
        scores = _log_likelihoods(model, tokenizer, context, pool)
        rank = 1 + int((scores[1:] > scores[0]).sum())
        n = len(pool)
        with torch.no_grad():
            ids = torch.tensor([context], device=model.device)
            new = len(tokenizer(canary["secret"], add_special_tokens=False)["input_ids"])
            greedy = model.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        recited = tokenizer.decode(greedy[0, len(context):], skip_special_tokens=True)
        out.append({"secret": canary["secret"].strip(), "repeats": canary["repeats"], "rank": rank, "candidates": n - 1,
                    "exposure": math.log2(n) - math.log2(rank), "max_exposure": math.log2(n),
                    "recited": recited.strip() == canary["secret"].strip()})
    return out


def _log_likelihoods(model: Any, tokenizer: Any, context: list[int], pool: list[str], batch: int = 256) -> Any:
    """log p(secret | context) for each secret of the pool; the context is computed once and its cache shared."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from lancy_trl.evaluation.classify import output_cache

    with torch.no_grad():
        head = model(torch.tensor([context], device=model.device), use_cache=True)
        last = torch.log_softmax(head.logits[0, -1].float(), -1)
        totals = []
        for start in range(0, len(pool), batch):
            ids = [torch.tensor(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in pool[start:start + batch]]
            lengths = torch.tensor([len(x) for x in ids])
            x = pad_sequence(ids, batch_first=True, padding_value=0).to(model.device)
            cache = _copy(output_cache(head), len(ids))
            mask = torch.cat([torch.ones(len(ids), len(context), dtype=torch.long),
                              (torch.arange(x.shape[1]) < lengths[:, None]).long()], 1).to(model.device)
            logits = model(x, attention_mask=mask, cache=cache, use_cache=True).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(2, x[:, 1:, None]).squeeze(2)
            logp = (logp * (torch.arange(1, x.shape[1]) < lengths[:, None]).to(logp)).sum(1)
            totals.append(logp + last[x[:, 0]])
        return torch.cat(totals)


def _copy(cache: Any, rows: int) -> Any:
    import copy

    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(rows)
    return cache


def evaluate(args: Any, source: Any, run_dir: Path | None, run_info: dict[str, Any], console: Any) -> dict[str, Any]:
    """`lancy eval --model RUN --canaries`: the exposure of every canary the run planted, saved to eval/canaries.json."""
    from lancy_trl import logs
    from lancy_trl.errors import LancyError
    from lancy_trl.models import load_model, pick_device

    if run_dir is None or not (run_dir / FILE).is_file():
        raise LancyError(f"{args.model} planted no canaries: train with `lancy sft --canaries K` (or lancy pretrain), "
                         "then pass that run to --model")
    if args.canary_candidates < 1:
        raise LancyError(f"--canary-candidates must be at least 1 (got {args.canary_candidates})")
    record = json.loads((run_dir / FILE).read_text())
    out = Path(args.output_dir) if args.output_dir else run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    with logs.to_file(out / "eval.log"), console.status(f"Ranking {len(record['canaries'])} canaries..."):
        loaded = load_model(source, args, device=pick_device(args.device), for_training=False)
        loaded.model.eval()
        results = exposure(loaded.model, loaded.tokenizer, record, run_info.get("chat_template_kwargs") or {},
                           args.canary_candidates, args.seed)
    report = {"model": str(run_dir), "canaries": results, "candidates": args.canary_candidates,
              "mean_exposure": sum(r["exposure"] for r in results) / len(results),
              "recited": sum(r["recited"] for r in results), "output_dir": str(out)}
    (out / FILE).write_text(json.dumps(report, indent=2))
    return report
