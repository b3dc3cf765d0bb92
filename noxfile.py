"""nox sessions: `nox -l` lists them. Each installs torch's CPU build first, so no CUDA download happens."""

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_venv = "yes"


def install(session: nox.Session, extras: str = "dev") -> None:
    session.install("torch==2.13.0", "-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit and integration tests on a tiny in-process model (seconds), plus the real-model e2e test."""
    install(session)
    session.run("pytest", *session.posargs)


@nox.session(default=False)
def fast(session: nox.Session) -> None:
    """The development loop (under a minute): the unit tests in this process, none that starts processes."""
    install(session)
    session.run("pytest", "tests/unit", "-n", "0", "-m", "not slow and not e2e", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and import order."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package."""
    install(session)
    session.run("mypy", "lancy_trl", *session.posargs)


@nox.session(default=False)
def faults(session: nox.Session) -> None:
    """Seeded fault sweep: sft, pretrain and grpo runs killed -9 at 60 points, recovered; prints what was lost."""
    install(session)
    session.run("python", "-m", "tests.faults.sweep", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Training throughput against the padded and TRL-default baselines (minutes)."""
    install(session)
    session.run("python", "bench/sft_throughput.py", *session.posargs)
