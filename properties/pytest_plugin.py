"""The gate as a pytest plugin: ``pytest --eplb-target my_engine.eplb:rebalance_experts``.

Installed with the package (entry point ``pytest11``) and inert until a target is named,
by ``--eplb-target`` or the ini setting ``eplb_target``. Then the session gets one test
item per gate section (``eplb-spec::contract``, ``eplb-spec::deterministic``, ...), each
running ``properties.gate.run_gate`` on that section alone, with the target in the gate's
isolated worker; a failing item shows the section's findings and their smallest inputs.
``--eplb-same-as REFERENCE`` adds the fidelity item.

With an expected-findings file (``--eplb-expected FILE`` or ``eplb_expected``; the format
of ``docs/engines/expected-findings.json``, read by ``properties.downstream``), a section
whose findings are all known is an expected failure (xfail), a new finding fails, and
known findings no run section found are listed at the end as fixed (or in a section not
run). ``--eplb-update-expected`` rewrites the file from what this run found.

Nothing heavy is imported until an item runs: pytest loads this module in every session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from properties.downstream import FindingKey, KnownFinding

# The sections that need only the target; ``rebalance`` joins them with --eplb-previous.
BALANCER_SECTIONS = (
    "contract",
    "deterministic",
    "input-forms",
    "optimality",
    "bad-input",
    "traces",
)
SECTION_CHOICES = (*BALANCER_SECTIONS, "rebalance")
BUDGETS = ("quick", "thorough")
NODE = "eplb-spec"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eplb-spec", "the eplb-spec gate on a balancer")
    group.addoption(
        "--eplb-target",
        metavar="TARGET",
        help="gate this balancer (package.module:function or path/to/file.py:function), "
        "one test item per section",
    )
    group.addoption("--eplb-budget", choices=BUDGETS, help="examples per section (default: quick)")
    group.addoption(
        "--eplb-sections",
        metavar="SECTIONS",
        help="comma-separated sections (default: "
        + ",".join(BALANCER_SECTIONS)
        + ", and rebalance with --eplb-previous)",
    )
    group.addoption(
        "--eplb-previous",
        metavar="KEYWORD|6",
        help="how the target takes an old placement (the gate's --previous): adds rebalance",
    )
    group.addoption(
        "--eplb-same-as",
        metavar="REFERENCE",
        help="add the fidelity item: the target's placements against a reference's "
        "(refined, baseline, ...)",
    )
    group.addoption("--eplb-expected", metavar="FILE", help="expected-findings file (JSON)")
    group.addoption(
        "--eplb-update-expected",
        action="store_true",
        help="rewrite the expected-findings file from this run's findings",
    )
    group.addoption("--eplb-timeout", type=float, help="seconds per call (default 60)")
    group.addoption("--eplb-max-gap", type=float, metavar="PERCENT", help="the gate's --max-gap")
    group.addoption("--eplb-data", metavar="DIR", help="trace folder (default: shipped traces)")
    group.addoption("--eplb-memory-mb", type=int, help="address-space limit of the target (MB)")
    parser.addini("eplb_target", "the balancer to gate (as --eplb-target)", default="")
    parser.addini("eplb_budget", "quick or thorough (as --eplb-budget)", default="quick")
    parser.addini("eplb_expected", "expected-findings file (as --eplb-expected)", default="")


@dataclass
class Settings:
    target: str
    budget: str
    sections: tuple[str, ...]
    previous: str | None
    same_as: str | None
    expected: Path | None
    update_expected: bool
    timeout_s: float
    max_gap: float | None
    data: str | None
    memory_mb: int | None
    found: dict[str, set[FindingKey]] = field(default_factory=dict)  # section -> findings
    ran: set[str] = field(default_factory=set)

    @property
    def quick(self) -> bool:
        return self.budget == "quick"

    def known(self) -> list[KnownFinding]:
        """The expected findings of this target (none without a file)."""
        if self.expected is None or not self.expected.exists():
            return []
        from properties.downstream import load_expected, target_key

        return load_expected(self.expected).get(target_key(self.target), [])


SETTINGS = pytest.StashKey[Settings]()


def settings_from(config: pytest.Config) -> Settings | None:
    """The run's settings, or None when no target is named (the plugin stays inert).
    ``pytest.UsageError`` (exit status 4) for a malformed option."""
    target = config.getoption("eplb_target") or str(config.getini("eplb_target"))
    if not target:
        return None
    budget = config.getoption("eplb_budget") or str(config.getini("eplb_budget")) or "quick"
    if budget not in BUDGETS:
        raise pytest.UsageError(f"eplb_budget must be one of {BUDGETS}, got {budget!r}")
    previous = config.getoption("eplb_previous")
    text = config.getoption("eplb_sections")
    if text is None:
        sections = BALANCER_SECTIONS + (("rebalance",) if previous else ())
    else:
        sections = tuple(s.strip() for s in text.split(",") if s.strip())
        unknown = sorted(set(sections) - set(SECTION_CHOICES))
        if unknown or not sections:
            raise pytest.UsageError(
                f"--eplb-sections: unknown or no section(s) {unknown}; "
                f"known: {', '.join(SECTION_CHOICES)}"
            )
        if "rebalance" in sections and not previous:
            raise pytest.UsageError("--eplb-sections rebalance needs --eplb-previous")
    expected_text = config.getoption("eplb_expected") or str(config.getini("eplb_expected"))
    expected = Path(expected_text) if expected_text else None
    update = bool(config.getoption("eplb_update_expected"))
    if update and expected is None:
        raise pytest.UsageError("--eplb-update-expected needs --eplb-expected FILE")
    if expected is not None and not update and not expected.is_file():
        raise pytest.UsageError(f"--eplb-expected {expected}: no such file")
    timeout = config.getoption("eplb_timeout")
    if timeout is not None and not 0 < timeout <= 86_400:
        raise pytest.UsageError(f"--eplb-timeout must be in (0, 86400] seconds, got {timeout}")
    return Settings(
        target=target,
        budget=budget,
        sections=sections,
        previous=previous,
        same_as=config.getoption("eplb_same_as"),
        expected=expected,
        update_expected=update,
        timeout_s=60.0 if timeout is None else float(timeout),
        max_gap=config.getoption("eplb_max_gap"),
        data=config.getoption("eplb_data"),
        memory_mb=config.getoption("eplb_memory_mb"),
    )


def pytest_configure(config: pytest.Config) -> None:
    settings = settings_from(config)
    if settings is not None:
        config.stash[SETTINGS] = settings


class GateFindings(Exception):
    """A section found what the target does wrong (the text lists it)."""


class GateCollector(pytest.Collector):
    """The gate's items of the session (``eplb-spec::SECTION``)."""

    def collect(self) -> list[pytest.Item]:
        settings = self.config.stash[SETTINGS]
        items: list[pytest.Item] = [
            SectionItem.from_parent(self, name=section) for section in settings.sections
        ]
        if settings.same_as is not None:
            items.append(FidelityItem.from_parent(self, name="fidelity"))
        return items


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Add the gate's items first, so that ``-k`` and ``-m`` select among them too."""
    if SETTINGS not in config.stash:
        return
    collector = GateCollector.from_parent(session, name=NODE, nodeid=NODE, path=session.path / NODE)
    report = collector.ihook.pytest_make_collect_report(collector=collector)
    collector.ihook.pytest_collectreport(report=report)  # counted in "collected N items"
    items.extend(node for node in report.result if isinstance(node, pytest.Item))


class GateItem(pytest.Item):
    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{NODE}::{self.name} ({self.config.stash[SETTINGS].target})"

    def repr_failure(
        self,
        excinfo: pytest.ExceptionInfo[BaseException],
        style: Any = None,
    ) -> str:
        if isinstance(excinfo.value, GateFindings):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def gate_kwargs(self, settings: Settings) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if settings.memory_mb is not None:
            extra["memory_mb"] = settings.memory_mb
        return extra


def run_section(settings: Settings, section: str, extra: dict[str, Any]) -> Any:
    """The gate's report of one section; a target that cannot be used, a bad option or a
    fault of the gate is the item's failure, with the gate's words."""
    from properties.gate import InternalError, run_gate
    from properties.isolation import TargetError

    try:
        return run_gate(
            settings.target,
            quick=settings.quick,
            timeout_s=settings.timeout_s,
            max_gap_percent=settings.max_gap,
            data=settings.data,
            checks=[section],
            previous=settings.previous if section == "rebalance" else None,
            **extra,
        )
    except TargetError as error:
        raise GateFindings(f"cannot use target {settings.target}: {error}") from None
    except ValueError as error:
        raise GateFindings(f"eplb-spec gate: error: {error}") from None
    except InternalError as error:
        raise GateFindings(f"INTERNAL ERROR of eplb-spec (not of the target): {error}") from None


class SectionItem(GateItem):
    """One gate section on the target."""

    def runtest(self) -> None:
        from properties.downstream import findings_of

        settings = self.config.stash[SETTINGS]
        report = run_section(settings, self.name, self.gate_kwargs(settings))
        found = findings_of(report.to_json())
        settings.found[self.name] = found
        settings.ran.add(self.name)
        status = report.checks.get(self.name, "did not run")
        if not found:
            return
        known = {k.key for k in settings.known()}
        new = found - known
        lines = [f"{settings.target}: {self.name}: {status}"]
        for finding in report.findings:
            mark = "NEW " if (finding.check, finding.code) in new else "known "
            lines.append(f"{mark}FINDING [{finding.check}/{finding.code}] {finding.message}")
            if finding.note:
                lines.append(f"  {finding.note}")
            if finding.input is not None:
                import json

                lines.append(f"  smallest input: {json.dumps(finding.input)}")
        text = "\n".join(lines)
        if new or settings.update_expected:
            raise GateFindings(text)
        pytest.xfail("only known findings (expected-findings file):\n" + text)


class FidelityItem(GateItem):
    """The fidelity mode: the target's placements against a reference's."""

    def runtest(self) -> None:
        from properties.gate import InternalError, run_same_as
        from properties.isolation import TargetError

        settings = self.config.stash[SETTINGS]
        assert settings.same_as is not None
        try:
            run = run_same_as(
                settings.target,
                settings.same_as,
                quick=settings.quick,
                timeout_s=settings.timeout_s,
                data=settings.data,
                **self.gate_kwargs(settings),
            )
        except (TargetError, ValueError, InternalError) as error:
            raise GateFindings(f"fidelity: {type(error).__name__}: {error}") from None
        if run.verdict != "pass":
            raise GateFindings(run.summary())


def not_found_known(settings: Settings) -> Iterator[KnownFinding]:
    """Known findings no section of this run found (a quick run skips the thorough-only)."""
    found = set().union(*settings.found.values()) if settings.found else set()
    for known in settings.known():
        if known.key not in found and (not settings.quick or not known.thorough_only):
            yield known


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if SETTINGS not in config.stash:
        return
    settings = config.stash[SETTINGS]
    if not settings.ran:
        return
    if settings.update_expected and settings.expected is not None:
        from properties.downstream import load_expected, target_key, write_expected

        previous = load_expected(settings.expected) if settings.expected.exists() else {}
        found = set().union(*settings.found.values()) if settings.found else set()
        write_expected(
            settings.expected, {target_key(settings.target): found}, previous, not settings.quick
        )
        terminalreporter.write_line(
            f"eplb-spec: wrote {len(found)} finding(s) to {settings.expected}"
        )
        return
    gone = list(not_found_known(settings))
    if gone:
        terminalreporter.section("eplb-spec: known findings not found")
        every = set(settings.sections) >= set(BALANCER_SECTIONS)
        for known in gone:
            where = "fixed" if every else "fixed, or in a section this run left out"
            terminalreporter.write_line(f"[{known.check}/{known.code}] ({where}) {known.note}")
