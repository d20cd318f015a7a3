"""Project sessions: ``nox -s tests typecheck lint`` is what CI runs."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "typecheck", "lint"]
nox.options.reuse_existing_virtualenvs = True

# A CPU build of torch that installs from local disk; any other request may fetch CUDA.
TORCH = "torch==2.13.0"


def install_project(session: nox.Session, extra: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extra}]")


@nox.session
def tests(session: nox.Session) -> None:
    """Unit, property and differential tests (Hypothesis profile ``ci`` unless set)."""
    install_project(session, "test")
    profile = session.env.get("HYPOTHESIS_PROFILE", "ci")
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": profile})


@nox.session
def nightly(session: nox.Session) -> None:
    """The same tests with the long Hypothesis profile."""
    install_project(session, "test")
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": "nightly"})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package, the tests and this file."""
    install_project(session, "dev")
    session.run("mypy", "--strict")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def gate(session: nox.Session) -> None:
    """The default (thorough) gate on the reference; pass --impl TARGET to check another."""
    install_project(session, "test")
    session.run("eplb-spec", "gate", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed: reference, baseline and fast implementation side by side (no assertions)."""
    install_project(session, "test")
    session.run("eplb-spec", "bench", *session.posargs)


@nox.session
def ray(session: nox.Session) -> None:
    """Opt-in (not in CI): the evaluator's batch through a local Ray cluster."""
    install_project(session, "test,ray")
    session.run("pytest", "tests/test_evaluate.py", "-k", "ray", *session.posargs)


@nox.session(name="bench-evaluate")
def bench_evaluate(session: nox.Session) -> None:
    """Candidates per hour of the evaluator: local pool (1, 2 workers), Dask LocalCluster."""
    install_project(session, "test")
    session.run("eplb-spec", "evaluate-bench", *session.posargs)


@nox.session(name="bench-oracle")
def bench_oracle(session: nox.Session) -> None:
    """The oracle's speed and reach, and the balancers' certified gaps on the traces."""
    install_project(session, "test")
    session.run("eplb-spec", "bench-oracle", *session.posargs)


@nox.session(name="balancer-vectors")
def balancer_vectors(session: nox.Session) -> None:
    """Rewrite vectors/balancer/ (the reference's exact outputs for ports)."""
    install_project(session, "test")
    session.run("eplb-spec", "balancer-vectors", *session.posargs)


@nox.session
def vectors(session: nox.Session) -> None:
    """Write test vectors; ``nox -s vectors -- --tiers small,medium,large --out DIR``."""
    install_project(session, "test")
    session.run("eplb-spec", "vectors", *(session.posargs or ["--tiers", "small,medium"]))


@nox.session
def report(session: nox.Session) -> None:
    """The main job: reference vs baseline on the real traces."""
    install_project(session, "test")
    session.run("eplb-spec", "report", *session.posargs)


@nox.session
def downstream(session: nox.Session) -> None:
    """Opt-in (not in CI): the gate on every balancer of the pinned vLLM and SGLang
    releases, fetched without dependencies into the engine cache, against
    docs/engines/expected-findings.json. ``-- --thorough`` runs the full gate,
    ``-- --update`` re-baselines the expected file."""
    install_project(session, "test")
    session.run("python", "-m", "properties.downstream", *session.posargs)
