"""Several processes for one run. `--num-processes N` re-launches the command under torch's own launcher
(`torch.distributed.run`, what `torchrun` runs); under any launcher (that one, `torchrun` by hand, `accelerate
launch`, a second node) global rank 0 owns the run directory, run.json, the log file, TensorBoard, the final model and
the screen, and the other ranks follow it.

    if distributed.needs_launch(args): raise typer.Exit(distributed.launch(args, "sft"))  # cli.training_console
    distributed.start(device)                        # the process group (gloo on CPU, NCCL on CUDA), once
    run_dir = distributed.share(run_dir)             # rank 0's new run directory, on every rank
    stop = distributed.agree(stop)                   # one decision for all ranks (Ctrl-C, time-based saves)
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from lancy_trl.errors import LancyError
from lancy_trl.ranks import is_main, rank, world_size  # noqa: F401  (distributed.is_main() reads on)


def processes_wanted(args: Any) -> int:
    """--num-processes, or with --multi-gpu every visible CUDA GPU."""
    if getattr(args, "multi_gpu", False):
        import torch

        if not torch.cuda.is_available():
            raise LancyError("--multi-gpu uses every CUDA GPU and torch sees none: pass --num-processes N for CPU "
                             "processes, or drop --multi-gpu")
        return torch.cuda.device_count()
    return getattr(args, "num_processes", 1)


def needs_launch(args: Any) -> bool:
    """Whether this process is the user's command asking for several processes, or for DeepSpeed or FSDP (which want
    a launcher's environment even for one), and not already one of the launched processes."""
    engine = getattr(args, "deepspeed", None) or getattr(args, "fsdp", None)
    wanted = processes_wanted(args) > 1 or bool(engine)  # config.validate refuses N < 1
    return wanted and "LOCAL_RANK" not in os.environ


def launch_arguments(n: int, argv: list[str]) -> list[str]:
    """torchrun's arguments for the same lancy command line, N processes on this machine (`--standalone`: a free
    local port). The workers get --num-processes too: they see the launcher's environment and do not launch again.
    The launcher leaves SIGINT to the workers (see `launch`)."""
    return ["--standalone", f"--nproc-per-node={n}", "--signals-to-handle=SIGTERM,SIGHUP,SIGQUIT", "-m", "lancy_trl",
            *argv]


def launch(args: Any, command: str) -> int:
    """Run the command line this process was started with under torch's launcher, in this process (no `torchrun` on
    PATH needed); the workers' exit code. A worker's own error is its one line; the launcher adds no report."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = sys.argv[1:]
    if not argv or argv[0] != command:
        raise LancyError(f"--num-processes, --deepspeed and --fsdp re-launch the `lancy {command}` command line; from Python, "
                         f"start it with torchrun --nproc-per-node N -m lancy_trl {command} ...")
    n = processes_wanted(args)
    if args.device != "cuda" and "OMP_NUM_THREADS" not in os.environ:  # the launcher would give each process 1 thread
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    print(f"Launching {n} process{'es' if n > 1 else ''}: torchrun --standalone --nproc-per-node {n} -m lancy_trl {' '.join(argv)}",
          flush=True)
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # a worker's failure is its own line
    # The workers run in sessions of their own, out of the terminal's reach: Ctrl-C here is passed on to them, and
    # they stop at a step, agree, save and exit while the launcher waits, rather than being killed 30 s into a
    # checkpoint's save as torch's launcher would.
    previous = signal.signal(signal.SIGINT, _pass_on)
    try:
        run(get_args_parser().parse_args(launch_arguments(n, argv)))
    except ChildFailedError as e:
        return max((f.exitcode for f in e.failures.values() if f.exitcode and f.exitcode > 0), default=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _pass_on(signum: int, frame: Any) -> None:
    """SIGINT for the launched workers (a second Ctrl-C: they abort)."""
    import psutil  # accelerate's dependency

    for child in psutil.Process().children():
        child.send_signal(signum)


def start(device: str) -> None:
    """The process group for a launched run, through accelerate (what the Trainer uses): gloo on CPU, where TRL's
    trainers otherwise each train alone, NCCL on CUDA."""
    if world_size() > 1:
        import atexit

        from accelerate import PartialState

        PartialState(cpu=device == "cpu")
        atexit.register(stop)


def stop() -> None:
    """The process group taken down among the exit handlers (which `exit_worker` runs before the process exits), not
    left to interpreter teardown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()  # local: no rank waits on another that failed


def exit_worker(code: int) -> NoReturn:
    """A launched process's end: its threads joined and its exit handlers run (the process group goes down, log
    files close), then the process exits without interpreter teardown.

    During teardown a gloo thread that finishes a collective late must take the GIL to free the collective's tensors;
    a finalizing interpreter ends that thread inside a C++ destructor, and the C++ runtime aborts the process
    ("terminate called without an active exception", a failed exit after a finished run). A core dump of such a
    ZeRO-3 worker showed exactly that thread, freeing an all-gather's outputs."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def share(path: Path | None) -> Path:
    """Rank 0's path on every rank (the run directory it just created)."""
    if world_size() == 1:
        assert path is not None
        return path
    from accelerate.utils import broadcast_object_list

    box = [str(path) if is_main() else None]
    broadcast_object_list(box, from_process=0)
    return Path(box[0])  # type: ignore[arg-type]


def agree(flag: bool) -> bool:
    """True on every rank when it is true on any: a stop or a save every rank takes at the same step."""
    if world_size() == 1:
        return flag
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    value = torch.tensor([int(flag)], device=PartialState().device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class NullWriter:
    """TensorBoard's SummaryWriter for ranks other than 0: they write nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
