"""What DP buys against membership inference, on rows a model can memorise: client desk notes whose answers carry
facts no model could guess (names, account numbers, amounts, dates), as a bank's own fine-tuning data would.

    python bench/privacy_tradeoff.py                      # make the data, train the three runs, audit each, print the table
    python bench/privacy_tradeoff.py --rows 300 --memorise-epochs 4 --work /tmp/privacy
    python bench/privacy_tradeoff.py --data-only --work /tmp/privacy     # only write train.jsonl / unseen.jsonl

The rows are written by a seeded generator: `train.jsonl` (the members) and `unseen.jsonl` (as many rows from the
same generator that no run sees, the non-members). Three runs train on train.jsonl: `lancy sft` with the defaults,
`lancy sft --num-train-epochs 8` (a run trained long enough to memorise) and `lancy sft --dp-epsilon 8` with the
defaults DP chooses; `lancy audit RUN --data-files unseen.jsonl` scores each, and `--base` once (the control: the
base model on the same rows). Prints one table row per run (membership AUC of the best attack with its 95%
interval, the loss attack, TPR at 1% FPR, the answer loss of members and unseen rows, verbatim extraction) and
one JSON line. A run that finished in an earlier call with the same --rows, --seed and settings is audited again,
not retrained.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

FIRMS = ["Harlow", "Brightwater", "Kestrel", "Ashgrove", "Marlin", "Coldstream", "Pemberton", "Redfern", "Osprey",
         "Thornbury", "Calloway", "Westmere", "Fairhaven", "Larchmont", "Quillon", "Stanhope", "Verity", "Oakridge",
         "Halden", "Sable", "Northgate", "Elmstead", "Granby", "Rowan", "Tamsin", "Ellery", "Bramwell", "Corvin"]
KINDS = ["Capital", "Partners", "Holdings", "Family Office", "Pension Trust", "Asset Management", "Foundation"]
ADVISORS = ["A. Okafor", "M. Lindqvist", "R. Castellano", "J. Whitcombe", "S. Nakamura", "P. Duvall", "K. Brennan",
            "L. Moreau", "T. Haddad", "E. Sorensen", "D. Kowalczyk", "F. Abernathy"]
ACTIONS = ["moved", "rebalanced", "redeemed", "subscribed", "pledged", "transferred", "hedged", "sold down"]
FROM_TO = ["from money market funds into investment-grade credit", "from US equities into short-dated Treasuries",
           "out of the emerging-markets sleeve", "into a three-year fixed deposit", "from cash into covered bonds",
           "from European equities into gold", "out of the high-yield fund", "into a euro money market fund",
           "from the balanced mandate into the income mandate", "into the infrastructure fund"]
CURRENCIES = ["USD", "EUR", "GBP", "CHF", "JPY"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
FOLLOW = ["a review of the concentration limit", "a call about the margin facility", "signing the updated mandate",
          "a tax-lot report for the auditors", "a meeting on the succession plan", "confirming the wire instructions",
          "a stress test of the bond ladder", "renewing the credit line", "a KYC refresh of the beneficial owners"]


def note(rng: random.Random) -> dict[str, str]:
    """One client desk note: a prompt naming the account, an answer whose facts only the note itself holds."""
    account = f"{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"
    client = f"{rng.choice(FIRMS)} {rng.choice(KINDS)}"
    amount = f"{rng.randint(1, 999):,}{rng.choice(['', ',000', ',500', ',250'])},{rng.randint(0, 999):03d}.00"
    day, month, day2 = rng.randint(1, 28), rng.randrange(12), rng.randint(1, 28)
    answer = (f"{client} {rng.choice(ACTIONS)} {amount} {rng.choice(CURRENCIES)} {rng.choice(FROM_TO)} on {day} "
              f"{MONTHS[month]} 2025. Advisor {rng.choice(ADVISORS)} set a limit of {rng.randint(5, 40)}% and booked "
              f"{rng.choice(FOLLOW)} for {day2} {MONTHS[(month + 1) % 12]}.")
    return {"prompt": f"Write the desk note for client account {account}.", "completion": answer}


def write_data(work: Path, rows: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    notes: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(notes) < 2 * rows:
        row = note(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            notes.append(row)
    work.mkdir(parents=True, exist_ok=True)
    train, unseen = work / "train.jsonl", work / "unseen.jsonl"
    for path, part in ((train, notes[:rows]), (unseen, notes[rows:])):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return train, unseen


def lancy(*args: str) -> None:
    print("$ lancy", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lancy_trl", *args], check=True)


def audit(run: Path, unseen: Path, base: bool) -> dict:
    lancy("audit", str(run), "--data-files", str(unseen), *(["--base"] if base else []), "--json")
    return json.loads((run / ("audit-base.json" if base else "audit.json")).read_text())


def summary(report: dict) -> dict:
    attacks, best = report["attacks"], report["best"]
    return {"best": best, "auc": attacks[best]["auc"], "low": attacks[best]["auc_low"],
            "high": attacks[best]["auc_high"], "loss_auc": attacks["loss"]["auc"],
            "tpr_at_1pct": attacks[best]["tpr_at_1pct_fpr"], "verbatim": report["verbatim"], "rows": report["members"],
            "loss": report["answer_loss"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/lancy-privacy"))
    p.add_argument("--rows", type=int, default=150, help="training rows (and as many unseen rows)")
    p.add_argument("--memorise-epochs", type=float, default=8.0, help="epochs of the non-private run trained to "
                   "memorise (0: no such run)")
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0, help="the generator's seed (the runs keep lancy's seed)")
    p.add_argument("--data-only", action="store_true")
    opts = p.parse_args()

    train, unseen = write_data(opts.work, opts.rows, opts.seed)
    print(f"wrote {train} and {unseen}: {opts.rows} rows each", flush=True)
    if opts.data_only:
        return
    data = f"{opts.rows}rows-seed{opts.seed}"  # a run is reused only by a call with the same data and settings
    runs = {"no DP, defaults": (f"nonprivate-{data}", []),
            f"no DP, {opts.memorise_epochs:g} epochs": (f"memorised{opts.memorise_epochs:g}-{data}",
                                                       ["--num-train-epochs", str(opts.memorise_epochs)]),
            f"--dp-epsilon {opts.epsilon:g}, defaults": (f"dp{opts.epsilon:g}-{data}", ["--dp-epsilon", str(opts.epsilon)])}
    if not opts.memorise_epochs:
        runs = {k: v for k, v in runs.items() if not v[0].startswith("memorised")}
    table = {}
    for label, (name, extra) in runs.items():
        run = opts.work / "runs" / name
        if not (run / "run.json").is_file() or json.loads((run / "run.json").read_text())["status"] != "complete":
            shutil.rmtree(run, ignore_errors=True)  # a complete run of an earlier call is audited again, not retrained
            lancy("sft", "--dataset", str(train), "--eval-fraction", "0", "--output-dir", str(run.parent),
                  "--run-name", name, *extra)
        table[label] = summary(audit(run, unseen, False))
    control = summary(audit(opts.work / "runs" / f"nonprivate-{data}", unseen, True))  # the same rows for every run
    table["base model (`--base`, the control)"] = control
    print("\n| run | best attack | AUC [95%] | loss AUC | TPR at 1% FPR | loss per token, members / unseen | verbatim |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, a in table.items():
        print(f"| {label} | {a['best']} | {a['auc']:.3f} [{a['low']:.2f}-{a['high']:.2f}] | {a['loss_auc']:.3f} | "
              f"{a['tpr_at_1pct']:.3f} | {a['loss']['members']:.3f} / {a['loss']['non_members']:.3f} | "
              f"{a['verbatim']['members']:.2f} / {a['verbatim']['non_members']:.2f} |")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
