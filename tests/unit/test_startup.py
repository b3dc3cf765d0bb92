"""How a lancy process starts and ends: the import hook that defers bitsandbytes' torch.compile wrappers (the import
no longer builds a compiler, the kernels still compute, and torch.compile is torch's own again afterwards), the heap
frozen before exit, a launched process's exit without interpreter teardown."""

import os
import subprocess
import sys

import pytest
import torch

from lancy_trl.startup import compile_deferred

PROBE = """
import sys, torch
real = torch.compile
from lancy_trl.startup import defer_bitsandbytes_compile
defer_bitsandbytes_compile()
import peft, bitsandbytes
assert torch.compile is real, "torch.compile left patched"
print("inductor" if "torch._inductor.compile_fx" in sys.modules else "no-inductor")
"""


def test_bitsandbytes_imports_without_building_a_compiler_and_torch_compile_is_restored():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["no-inductor"]


def test_a_deferred_function_compiles_at_its_first_call_and_computes_the_same(monkeypatch):
    built = []
    real = torch.compile

    def counting(model=None, **options):
        built.append(options)
        return real(model, **options)

    monkeypatch.setattr(torch, "compile", counting)

    def f(x):
        return torch.sin(x) * 2 + 1

    with compile_deferred():
        g = torch.compile(f, backend="eager", dynamic=False)
        h = torch.compile(backend="eager")(f)  # the decorator form
        module = torch.compile(torch.nn.Identity(), backend="eager")  # not a function: torch's own, at once
    assert torch.compile is counting
    assert built == [{"backend": "eager"}]  # only the module's
    assert not isinstance(module, torch.nn.Identity)
    x = torch.linspace(-1, 1, 7)
    assert torch.equal(g(x), f(x)) and torch.equal(h(x), f(x))
    assert built[1:] == [{"backend": "eager", "dynamic": False}, {"backend": "eager"}]
    g(x)
    assert len(built) == 3  # compiled once, at the first call
    assert g.__wrapped__ is f


def test_the_command_line_freezes_the_heap_before_the_interpreter_exits():
    """A lancy process ends without the final garbage collection's walk over the libraries' objects (about a second
    after a run), and its exit handlers still run."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
             "from lancy_trl.cli import main\nsys.argv = ['lancy', 'configs']\nmain()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
    assert out.splitlines()[-1] == "frozen True"



TEARDOWN = ("import atexit, os, sys, threading, time, types\n"
            "class Teardown:\n"
            "    def __init__(self): self.write = os.write\n"
            "    def __del__(self): self.write(1, b'teardown\\n')\n"
            "probe = types.ModuleType('probe')\n"  # freed when teardown removes the modules (the heap is frozen)
            "probe.keep = Teardown()\n"
            "sys.modules['probe'] = probe\n"
            "del probe\n"
            "atexit.register(lambda: print('handlers ran', flush=True))\n"
            "threading.Thread(target=lambda: (time.sleep(2), print('thread done', flush=True))).start()\n"
            "from lancy_trl.cli import main\nsys.argv = ['lancy', *sys.argv[1:]]\nmain()\n")


@pytest.mark.parametrize("argv, code", [(["configs", "list"], 0), (["configs", "--no-such-flag"], 2)])
def test_one_of_several_processes_exits_without_interpreter_teardown(argv, code):
    """In teardown, a gloo thread that finishes a collective late must take the GIL to free its tensors, and is ended
    inside a C++ destructor: the process aborts after a finished run. A launched process (WORLD_SIZE > 1) joins its
    threads, runs its exit handlers and exits with the command's code, without teardown; one process alone tears
    down as Python does (which shows the probe sees teardown)."""
    alone = subprocess.run([sys.executable, "-c", TEARDOWN, *argv], capture_output=True, text=True)
    lines = alone.stdout.splitlines()
    assert alone.returncode == code and "thread done" in lines and lines[-2:] == ["handlers ran", "teardown"]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    worker = subprocess.run([sys.executable, "-c", TEARDOWN, *argv], capture_output=True, text=True, env=env)
    lines = worker.stdout.splitlines()
    assert worker.returncode == code, worker.stderr
    assert "thread done" in lines and lines[-1] == "handlers ran" and "teardown" not in lines  # the thread joined


STEP = {  # 8 blocks of 30 MB, freed together, as a step's activations
    "malloc": ("import ctypes\n"
               "libc = ctypes.CDLL(None)\n"
               "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
               "libc.free.argtypes = [ctypes.c_void_p]\n"
               "libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]\n"
               "def step():\n"
               "    held = [libc.malloc(30_000_000) for _ in range(8)]\n"
               "    for p in held: libc.memset(p, 1, 30_000_000)\n"
               "    for p in held: libc.free(p)\n"),
    "torch": ("import torch\n"
              "def step():\n"
              "    held = [torch.ones(7_500_000) for _ in range(8)]\n"
              "    del held\n"),
}
KEEP = """
import resource, sys
from lancy_trl.startup import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(how: str, setting: str) -> int:
    """Page faults of ten steps after three, in a fresh process without the user's MALLOC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return int(subprocess.run([sys.executable, "-c", STEP[how] + KEEP, setting], capture_output=True, text=True,
                              check=True, env=env).stdout)


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    """Ten steps of 240 MB touch 585,620 pages. Straight from malloc, glibc's default trims them off the heap and
    faults them all in again, every time; kept, none. Through torch, small allocations land between the blocks, so
    the default's count varies (0 to 590,000 in 8 tries), and the kept count is none or, once in a CI run, one
    block's 7,324 pages. A step that gave back even one block every time would fault 73,240: the bound is under half."""
    assert faults("malloc", "default") > 500_000  # the probe sees the trimming
    assert faults("malloc", "keep") < 30_000
    assert faults("torch", "keep") < 30_000
