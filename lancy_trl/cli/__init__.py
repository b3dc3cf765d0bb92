"""The `lancy` command line: one Typer app, one module per subcommand, one error boundary.

    lancy sft                                  # the embedded demo: LoRA on SmolLM2-135M, finance sentiment
    lancy sft --model Qwen/Qwen3-0.6B --dataset my_data.jsonl --max-steps 200
    lancy sft --config recipes/finance_sentiment.yaml --learning-rate 1e-4
    lancy sft --resume latest
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from lancy_trl.errors import LancyError
from lancy_trl.privacy.network import OfflineViolation, no_telemetry

app = typer.Typer(
    name="lancy",
    help="Fine-tune, evaluate and ship small language models on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The single error boundary: user errors become one red line and exit 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from lancy_trl import startup

        startup.defer_bitsandbytes_compile()  # before any command imports a library
        startup.keep_freed_memory()
        no_telemetry()  # no library reports a run anywhere, online or not
        try:
            return fn(*args, **kwargs)
        except (LancyError, OfflineViolation) as e:
            from rich.console import Console
            from rich.markup import escape

            from lancy_trl.scale import distributed

            where = f"rank {distributed.rank()}: " if distributed.world_size() > 1 else ""
            Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {where}{escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def training_console(args: Any, command: str) -> Any:
    """A training command's console, once a launch (--num-processes, --deepspeed, --fsdp, or a resumed run that had
    them) has been handed to torch's launcher (this process then exits with the workers' code); ranks other than 0
    print nothing."""
    from rich.console import Console

    from lancy_trl.scale import distributed, engines

    if engines.fsdp_wanted(args):  # refused on CPU before any process is launched
        from lancy_trl.models import pick_device

        engines.check_device(args, pick_device(args.device))
    if distributed.needs_launch(args):
        raise typer.Exit(distributed.launch(args, command))  # the offline switches are set: the workers inherit them
    return Console(soft_wrap=True, quiet=not distributed.is_main())  # paths and commands printed whole, never wrapped


COMMANDS = ("train", "sweep", "eval", "audit", "runs", "report", "chat", "export", "manifest", "configs", "datasets", "models")


def _register() -> None:
    # Importing a command module only defines its Typer signature; heavy libraries load inside the commands.
    from importlib import import_module

    for name in COMMANDS:  # `lancy --help` lists them in this order: training, then scoring, shipping, the rest
        import_module(f"lancy_trl.cli.{name}")


def run_as_script(argv: list[str]) -> int:
    """`lancy ARGV` as its console script runs it, in this process; its exit code (a process forked to run one
    command: a sweep's point, a test's killable run)."""
    import sys

    sys.argv = ["lancy", *argv]
    try:
        main()
    except SystemExit as e:
        return exit_code(e)
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def main() -> None:
    import sys

    _register()
    if sys.argv[1:] in ([], ["--help"], ["-h"]):
        # The top-level command list renders in plain text: importing rich for it alone doubles the time `lancy
        # --help` takes. Each command's own --help keeps its grouped, coloured panels.
        app.rich_markup_mode = None
    try:
        app()
    except SystemExit as e:
        from lancy_trl import ranks

        if ranks.world_size() > 1:  # one of several processes: no interpreter teardown (see exit_worker)
            from lancy_trl.scale.distributed import exit_worker

            exit_worker(exit_code(e))
        raise
    finally:
        # The process ends here. Its last garbage collection walks every object the libraries made (over a second
        # after a run); freezing them skips that walk. Files and the run's records are closed by then, and the
        # exit handlers (log files, TensorBoard) still run.
        import gc

        gc.freeze()


_register()
