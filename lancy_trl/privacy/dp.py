"""Differentially private LoRA (`lancy sft --dp-epsilon E`): DP-SGD through opacus on lancy's SFT trainer.

    plan = make_plan(args, len(train_rows))        # noise for E over the planned steps, before any run directory
    plan = keep_plan(run_dir, plan)                # a resumed run: the same plan as it started with, or a refusal
    trainer = DPTrainer(..., dp=plan)              # lancy_trl/train/dp_trainer.py: Poisson batches, clipping, noise

Each step draws a Poisson sample of the training examples (each one in with probability q = --batch-size / examples),
computes every example's own gradient of the LoRA weights (opacus' per-sample hooks, attached without wrapping the
model), clips each to --dp-max-grad-norm, adds Gaussian noise and averages; the noise multiplier is the smallest that
keeps the planned steps within E at delta (opacus' PRV accountant, its default), and the epsilon spent so far is
computed by the same accountant from the steps taken, so a resumed run counts the steps before it too.

The privacy unit is one training example (one chat row, system prompt and answer included): the guarantee bounds
what the adapter reveals about any single row. It does not cover rows repeated in the data (a client's record copied
into ten rows is ten units), what the base model already knew, or the held-out rows, which the run evaluates on in
the clear. The speed paths that mix examples in one computation (packing, shared-prefix batches) or compute
gradients outside the per-example hooks (lean activations, checkpointed layers, accumulation) are off: a run refuses
them by flag and says so in its summary.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from lancy_trl.errors import LancyError

ACCOUNTANT = "prv"  # opacus' default: the tightest of its accountants
# DP-SGD's recipe (Li et al. 2021, "Large Language Models Can Be Strong Differentially Private Learners"; opacus'
# guidance): large expected batches, so the noise per example shrinks; a higher learning rate; few trained weights
# (LoRA r 4 on the query and value projections); few steps. Each key applies under --dp-epsilon unless set; measured
# on finsent in the README (privacy section). A batch of 32 is one step's Poisson sample, computed whole.
RECIPE: dict[str, Any] = {"batch_size": 32, "learning_rate": 3e-3, "lora_r": 4, "num_train_epochs": 4.0}
TARGETS = ("q_proj", "v_proj")
CEILING = 100.0  # a noise multiplier past any run that learns: a budget this noise cannot meet is refused at once
NOISY = 12.0  # noise-to-signal above which finsent runs learned nothing: 18 (epsilon 1) and 122 did; 5.8-9.2 learned


def check_args(args: Any) -> list[str]:
    """What --dp-epsilon cannot run with, one problem per flag (config.validate reports them with the rest)."""
    problems = []
    if args.dp_epsilon <= 0:
        problems.append(f"--dp-epsilon must be positive (got {args.dp_epsilon})")
    if args.dp_delta is not None and not 0 < args.dp_delta < 1:
        problems.append(f"--dp-delta must be in (0, 1) (got {args.dp_delta})")
    if args.dp_max_grad_norm <= 0:
        problems.append(f"--dp-max-grad-norm must be positive (got {args.dp_max_grad_norm})")
    if not args.use_lora:
        problems.append("--dp-epsilon trains LoRA adapters: drop --no-use-lora")
    mixing = {"packing": args.packing, "shared-prefix": args.shared_prefix, "lean-activations": args.lean_activations,
              "gradient-checkpointing": args.gradient_checkpointing}
    for name, on in mixing.items():
        if on:
            problems.append(f"--{name} is off under --dp-epsilon (each example's gradient must be computed on its "
                            f"own): drop --{name}")
    if args.checkpoint_layers:
        problems.append("--checkpoint-layers is off under --dp-epsilon (recomputed layers would record each example "
                        "twice): drop --checkpoint-layers")
    if args.num_processes > 1 or args.multi_gpu:
        problems.append("--dp-epsilon trains in one process (opacus' per-example hooks and accountant here are "
                        "single-process): drop --num-processes / --multi-gpu")
    for engine in ("deepspeed", "fsdp"):
        if getattr(args, engine, None):
            problems.append(f"--dp-epsilon trains without a sharding engine (opacus clips each example's gradient "
                            f"before any engine would see it): drop --{engine}")
    if args.gradient_accumulation_steps > 1 or (args.micro_batch_size or args.batch_size) < args.batch_size:
        problems.append("--dp-epsilon samples each step's batch whole (Poisson sampling): drop "
                        "--gradient-accumulation-steps and --micro-batch-size, and set --batch-size instead")
    return problems


@dataclass
class Plan:
    """The privacy budget of a run and the noise that keeps to it."""

    epsilon: float
    delta: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    accountant: str = ACCOUNTANT
    train_lora_a: bool = False  # False: LoRA's A matrices frozen at their random start (FFA-LoRA), B trained

    def spent(self, steps: int) -> float:
        """The epsilon `steps` steps of this plan spend, by opacus' accountant."""
        if steps <= 0:
            return 0.0
        from opacus.accountants import create_accountant

        accountant = create_accountant(mechanism=self.accountant)
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)]
        with warnings.catch_warnings():  # the RDP bound PRV starts from may note its range of orders; not the user's
            warnings.simplefilter("ignore", UserWarning)
            return float(accountant.get_epsilon(delta=self.delta))

    def record(self) -> dict[str, Any]:
        return asdict(self)


def planned_steps(args: Any, rows: int) -> int:
    """The optimizer steps the Trainer will take: --max-steps, else the epochs of 1/q Poisson batches each."""
    if args.max_steps > 0:
        return args.max_steps
    return math.ceil(args.num_train_epochs * int(rows / args.batch_size))


def make_plan(args: Any, rows: int) -> Plan:
    """The noise multiplier for --dp-epsilon over this run's steps; one line when the budget cannot be met."""
    try:
        from opacus.accountants.utils import get_noise_multiplier
    except ImportError:
        raise LancyError("--dp-epsilon needs opacus: pip install 'opacus>=1.6'") from None
    from lancy_trl.ranks import world_size

    if world_size() > 1:  # launched by hand (torchrun): --num-processes itself is refused with the flags
        raise LancyError("--dp-epsilon trains in one process: launch it without torchrun")
    if rows < 2 * args.batch_size:
        raise LancyError(f"--dp-epsilon needs more training examples than two batches ({rows} examples, --batch-size "
                         f"{args.batch_size}): lower --batch-size or add data")
    rate, steps = args.batch_size / rows, planned_steps(args, rows)
    delta = args.dp_delta if args.dp_delta is not None else 1 / rows
    unreachable = LancyError(f"--dp-epsilon {args.dp_epsilon} cannot be met over {steps} steps at delta {delta:.2g}: "
                             "raise --dp-epsilon or train fewer steps")
    ceiling = Plan(args.dp_epsilon, delta, args.dp_max_grad_norm, rate, steps, CEILING)
    if ceiling.spent(steps) > args.dp_epsilon:  # one accountant call, not opacus' search up to noise x1e6
        raise unreachable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sigma = get_noise_multiplier(target_epsilon=args.dp_epsilon, target_delta=delta, sample_rate=rate,
                                         steps=steps, accountant=ACCOUNTANT)
    except ValueError:  # opacus: "The privacy budget is too low."
        raise unreachable from None
    return Plan(args.dp_epsilon, delta, args.dp_max_grad_norm, rate, steps, float(sigma),
                train_lora_a=args.dp_train_lora_a)


def noise_to_signal(plan: Plan, weights: int, batch: int) -> float:
    """The norm of one step's noise over the largest norm the step's clipped gradients can sum to:
    sigma x C x sqrt(weights) / (batch x C)."""
    return plan.noise_multiplier * math.sqrt(weights) / batch


def too_noisy(plan: Plan, weights: int, batch: int) -> str | None:
    """A line saying the run will likely learn nothing, with the figure and what would help; None when it may."""
    ratio = noise_to_signal(plan, weights, batch)
    if ratio <= NOISY:
        return None
    return (f"each step's noise is {ratio:.0f}x the largest signal its {batch} examples can carry (noise x"
            f"{plan.noise_multiplier:.2f}, {weights:,} trained weights); runs above {NOISY:g}x learned nothing on "
            "finsent: add training rows, raise --dp-epsilon, raise --batch-size, or train fewer weights "
            "(--lora-r, --lora-target-modules)")


def keep_plan(run_dir: Any, plan: Plan) -> Plan:
    """A resumed run keeps the noise it started with: its plan must be the same (budget, steps, rate, clipping)."""
    from lancy_trl import runs

    saved = runs.read(run_dir).get("dp")
    if saved is None:
        raise LancyError(f"{run_dir} trained without --dp-epsilon; a run cannot become private halfway: start a new run")
    same = all(math.isclose(saved[k], getattr(plan, k)) for k in ("epsilon", "delta", "max_grad_norm", "sample_rate"))
    if not same or saved["steps"] != plan.steps:
        raise LancyError(f"{run_dir} set its noise for epsilon {saved['epsilon']:g} over {saved['steps']} steps; resume "
                         "it with the same --dp-* flags, --max-steps and data, or start a new run")
    plan.noise_multiplier = saved["noise_multiplier"]
    return plan
