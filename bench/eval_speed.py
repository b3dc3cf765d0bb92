"""Evaluation speed: `score` (label likelihoods) against `generate` (greedy decode + parse) on the same examples.

    python bench/eval_speed.py                          # SmolLM2-135M-Instruct, the 75 finsent test sentences
    python bench/eval_speed.py --model runs/<run> --repeats 3
    python bench/eval_speed.py --model tiny             # a tiny random model: checks the script in seconds

Methods, A/B interleaved over --repeats after one untimed warm-up batch:
  score         lancy's default: one forward per batch, prompt shared by all labels through a tree attention mask
  score_cached  the prompt runs once and its KV cache is repeated for each label (the flash-attention path)
  generate      lancy's greedy decoding of a few tokens, then the label parse: the prefix the prompts share runs
                once a batch and its cache is repeated for each row
  generate_plain  the same decoding from the plain left-padded batch (each row runs its whole prompt)
  prefill       generate with one new token: its prompt pass alone, the floor under generate's time
  both          score and generate from one prompt pass a batch (`lancy eval`'s default): against the two apart
Prints a table and one JSON line with examples per second, the ratio score / generate, each method's accuracy on
the rows, and agreement of the predictions between the two score paths (they compute the same numbers). It also
counts the positions each prompt pass computes and prints the ratio score would reach over generate if it ran at
generate's prompt pass's speed per position: the bound the positions set on these prompts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]


def load(name: str):
    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.models import load_model, pick_device, resolve_model

    if name == "tiny":
        from harness import model_path

        name = model_path("tiny")
    source = resolve_model(name, log=lambda *a: None)
    args = resolve(EvalArgs, flags={"model": name})
    return load_model(source, args, device=pick_device("auto"), for_training=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from lancy_trl.config import EvalArgs, resolve
    from lancy_trl.data.template import label_token_ids
    from lancy_trl.evaluation import classify
    from lancy_trl.evaluation.runner import eval_rows

    loaded = load(args.model)
    es = eval_rows(resolve(EvalArgs, flags={"dataset": "finsent", "limit": args.limit}), {}, None)
    rows, labels = es.rows, es.labels
    prompts = [r["prompt"] for r in rows]
    methods = {
        "score": lambda: classify.classify(loaded.model, loaded.tokenizer, prompts, labels, "score", args.batch_size),
        "generate": lambda: classify.classify(loaded.model, loaded.tokenizer, prompts, labels, "generate", args.batch_size),
    }

    def cached():
        original = classify.score_batch
        classify.score_batch = classify.score_batch_cached
        try:
            return methods["score"]()
        finally:
            classify.score_batch = original

    def batches():
        """The prompts' token ids in the batches `classify` runs: longest first, so each pads little."""
        from lancy_trl.data.template import encode_prompts

        ids = encode_prompts(loaded.tokenizer, prompts, None)
        ids.sort(key=len, reverse=True)
        return [ids[start: start + args.batch_size] for start in range(0, len(ids), args.batch_size)]

    def tokens() -> dict[str, int]:
        """Positions each prompt pass computes: score's (the shared prefix once a batch, each rest padded to the
        batch's longest, then every label's tokens), generate's (the same without labels) and the plain batch's."""
        n_label = sum(map(len, label_token_ids(loaded.tokenizer, prompts[0], labels, None)))
        out = {"score": 0, "generate": 0, "generate_plain": 0}
        for ids in batches():
            shared = classify.shared_prefix(ids)
            out["score"] += shared + len(ids) * (max(map(len, ids)) - shared + n_label)
            head = classify.generation_prefix(loaded.model, ids)
            out["generate"] += head + len(ids) * (max(map(len, ids)) - head)
            out["generate_plain"] += len(ids) * max(map(len, ids))
        return out

    def generate_with(prefix: bool, max_new: int | None = None):
        original = classify.generation_prefix
        classify.generation_prefix = original if prefix else (lambda *a: 0)
        try:
            return classify.classify(loaded.model, loaded.tokenizer, prompts, labels, "generate", args.batch_size,
                                     max_new=max_new)
        finally:
            classify.generation_prefix = original

    methods["score_cached"] = cached
    methods["generate_plain"] = lambda: generate_with(prefix=False)
    methods["prefill"] = lambda: generate_with(prefix=True, max_new=1)
    methods["both"] = lambda: classify.classify_both(loaded.model, loaded.tokenizer, prompts, labels,
                                                     args.batch_size)["generate"]
    classify.classify(loaded.model, loaded.tokenizer, prompts[: args.batch_size], labels, "score", args.batch_size)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    preds: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            out = run()
            times[name].append(time.perf_counter() - start)
            preds[name] = [r["prediction"] for r in out]
    eps = {m: len(prompts) / statistics.median(t) for m, t in times.items()}
    device = str(loaded.model.device)
    print(f"{len(prompts)} finsent examples, batch {args.batch_size}, {args.model} on {device} "
          f"({torch.get_num_threads()} threads), median of {args.repeats}")
    targets = [r["target"] for r in rows]
    accuracy = {m: sum(p == t for p, t in zip(preds[m], targets)) / len(targets) for m in ("score", "score_cached",
                                                                                            "generate", "generate_plain", "both")}
    print(f"{'method':14s} {'ex/s':>8s} {'vs generate':>12s} {'accuracy':>9s}")
    for m in ("score", "score_cached", "generate", "generate_plain", "prefill"):
        acc = f"{accuracy[m]:9.3f}" if m in accuracy else f"{'-':>9s}"
        print(f"{m:14s} {eps[m]:8.1f} {eps[m] / eps['generate']:11.2f}x {acc}")
    apart = 1 / (1 / eps["score"] + 1 / eps["generate"])
    print(f"score and generate from one prompt pass: {eps['both']:.1f} ex/s for the pair, against {apart:.1f} "
          f"run apart ({eps['both'] / apart:.2f}x); generate's answers equal generate alone's: "
          f"{preds['both'] == preds['generate']}")
    work = tokens()
    floor = eps["prefill"] * work["generate"] / work["score"] / eps["generate"]
    print(f"positions computed: score {work['score']}, generate's prompt pass {work['generate']}, the plain batch's "
          f"{work['generate_plain']}; at generate's prompt-pass speed per position, score would run {floor:.2f}x "
          "generate: the bound for these prompts")
    agree = sum(a == b for a, b in zip(preds["score"], preds["score_cached"])) / len(prompts)
    print(json.dumps({"bench": "eval_speed", "model": args.model, "device": device, "n": len(prompts),
                      "examples_per_second": {m: round(v, 2) for m, v in eps.items()},
                      "score_over_generate": round(eps["score"] / eps["generate"], 3),
                      "score_over_score_cached": round(eps["score"] / eps["score_cached"], 3),
                      "prefill_over_generate": round(eps["prefill"] / eps["generate"], 3),
                      "generate_over_generate_plain": round(eps["generate"] / eps["generate_plain"], 3),
                      "both_over_apart": round(eps["both"] / apart, 3),
                      "positions": work, "score_over_generate_bound": round(floor, 3),
                      "accuracy": {m: round(a, 3) for m, a in accuracy.items()},
                      "score_paths_agree": agree}))


if __name__ == "__main__":
    main()
