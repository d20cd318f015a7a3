"""The gate on the balancers of pinned engine releases, against the known findings.

``nox -s downstream`` runs ``python -m properties.downstream``: it fetches the pinned
releases (``properties.engines.PINNED_RELEASES``) into the engine cache, gates every
balancing algorithm they ship (``--quick`` unless ``--thorough``), and compares each
report's findings with the expected-findings file kept in the repository
(``docs/engines/expected-findings.json``, like array-api-tests' xfail files). It fails
when a finding appears or a known one disappears, and runs the reproduction script of
every known finding, which must still confirm it (exit status 1).

Findings are compared as the set of ``(check, code)`` pairs per target. The gate's JSON
lists them under ``"findings"`` (``check``, ``code``, ...); an older report's
``"violations"`` are read with ``code = check``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
EXPECTED_FILE = REPOSITORY / "docs" / "engines" / "expected-findings.json"
EXPECTED_FORMAT = 1

FindingKey = tuple[str, str]  # (check, code)

# The gate options every run uses (a user's options come after them, so they add to
# these; a repeated option takes the user's value): a gap above 99 % to the proven
# optimum on a tiny problem is a finding. The engines' greedy heuristics stay below it
# (worst found: 60 %, docs/ENGINES.md); a tie that sends spare replicas to the wrong
# expert doubles the peak.
DEFAULT_GATE_OPTIONS = ("--max-gap", "99")


@dataclass(frozen=True)
class KnownFinding:
    check: str
    code: str
    reproduction: str | None  # a script in the expected file's folder, or None
    note: str
    thorough_only: bool = False  # the quick gate may miss it

    @property
    def key(self) -> FindingKey:
        return (self.check, self.code)


@dataclass(frozen=True)
class Comparison:
    target: str
    appeared: frozenset[FindingKey]
    disappeared: frozenset[FindingKey]

    @property
    def matches(self) -> bool:
        return not self.appeared and not self.disappeared


def findings_of(report: Mapping[str, Any]) -> set[FindingKey]:
    """The ``(check, code)`` pairs of a gate report (JSON as a mapping)."""
    if isinstance(report.get("findings"), list):
        entries = report["findings"]
        return {(str(f["check"]), str(f.get("code") or f["check"])) for f in entries}
    if isinstance(report.get("violations"), list):
        return {(str(v["check"]), str(v["check"])) for v in report["violations"]}
    raise ValueError("not a gate report: it has neither 'findings' nor 'violations'")


def target_key(target: str) -> str:
    """A target without its release (``sglang@0.5.23:deepseek`` -> ``sglang:deepseek``),
    the key of the expected-findings file, so a version bump keeps its entries."""
    head, colon, algorithm = target.partition(":")
    return head.partition("@")[0] + colon + algorithm


def load_expected(path: Path = EXPECTED_FILE) -> dict[str, list[KnownFinding]]:
    """The expected findings per target key; ValueError naming what is malformed."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the expected findings ({error})") from None
    if not isinstance(document, dict) or document.get("format") != EXPECTED_FORMAT:
        raise ValueError(f'{path}: expected a JSON object with "format": {EXPECTED_FORMAT}')
    targets = document.get("targets")
    if not isinstance(targets, dict):
        raise ValueError(f'{path}: "targets" must map each target to a list of findings')
    expected: dict[str, list[KnownFinding]] = {}
    for target, entries in targets.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: findings of {target!r} must be a list")
        known = []
        for entry in entries:
            if not isinstance(entry, dict) or not {"check", "code"} <= entry.keys():
                raise ValueError(f"{path}: each finding of {target!r} needs check and code")
            known.append(
                KnownFinding(
                    str(entry["check"]),
                    str(entry["code"]),
                    entry.get("reproduction"),
                    str(entry.get("note", "")),
                    bool(entry.get("thorough_only", False)),
                )
            )
        expected[target] = known
    return expected


def compare(
    target: str, found: set[FindingKey], known: Sequence[KnownFinding], thorough: bool = True
) -> Comparison:
    """What appeared and what disappeared; a quick run need not report the findings
    marked ``thorough_only``."""
    expected = {k.key for k in known}
    required = {k.key for k in known if thorough or not k.thorough_only}
    return Comparison(target, frozenset(found - expected), frozenset(required - found))


def write_expected(
    path: Path,
    found: Mapping[str, set[FindingKey]],
    previous: Mapping[str, list[KnownFinding]],
    thorough: bool = True,
) -> None:
    """Rewrite the expected findings from ``found``, keeping the notes, reproductions and
    marks of findings that were already known (and, after a quick run, the known
    ``thorough_only`` ones); targets not in ``found`` are kept as they are."""
    targets: dict[str, list[dict[str, Any]]] = {}
    for target in sorted(set(previous) | set(found)):
        old = {k.key: k for k in previous.get(target, [])}
        keys = set(found[target]) if target in found else set(old)
        if not thorough:
            keys |= {key for key, k in old.items() if k.thorough_only}
        entries = []
        for check, code in sorted(keys):
            entry: dict[str, Any] = {"check": check, "code": code}
            if (check, code) in old:
                known = old[(check, code)]
                if known.reproduction:
                    entry["reproduction"] = known.reproduction
                entry["note"] = known.note
                if known.thorough_only:
                    entry["thorough_only"] = True
            else:
                entry["note"] = "NEW: describe it, and add a reproduction or say why none"
            entries.append(entry)
        targets[target] = entries
    document: dict[str, Any] = {"format": EXPECTED_FORMAT, "targets": targets}
    if path.is_file():  # sections other than the findings stay as they are
        kept = json.loads(path.read_text())
        document.update({k: v for k, v in kept.items() if k not in document})
    path.write_text(json.dumps(document, indent=2) + "\n")


FIDELITY_OPTIONS = ("--same-as", "baseline", "--same-balance")
"""The fidelity run of every target: the same GPU loads as DeepSeek's algorithm as the
specification states it, up to ties, numbering and slot order."""


def load_fidelity(path: Path = EXPECTED_FILE) -> dict[str, str]:
    """The expected fidelity verdict per target key (``"fidelity"`` in the expected
    file; empty when it has none)."""
    document = json.loads(path.read_text())
    section = document.get("fidelity", {})
    verdicts = section.get("verdicts", {}) if isinstance(section, dict) else {}
    if not isinstance(verdicts, dict) or not all(v in ("pass", "fail") for v in verdicts.values()):
        raise ValueError(f'{path}: "fidelity" must hold "verdicts": {{target: "pass"|"fail"}}')
    return {str(k): str(v) for k, v in verdicts.items()}


def write_fidelity(path: Path, verdicts: Mapping[str, str]) -> None:
    """Write the fidelity verdicts into the expected file, keeping the rest (targets
    not run keep their verdicts)."""
    document = json.loads(path.read_text())
    old = document.get("fidelity", {}).get("verdicts", {})
    document["fidelity"] = {
        "command": "eplb-spec gate --impl TARGET --quick " + " ".join(FIDELITY_OPTIONS),
        "verdicts": dict(sorted({**old, **verdicts}.items())),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def fidelity(target: str, report: Path, thorough: bool) -> str | None:
    """The fidelity verdict of ``target`` (None when the run did not finish)."""
    command = [sys.executable, "-m", "eplb_spec", "gate", "--impl", target]
    command += [] if thorough else ["--quick"]
    command += ["--json", str(report), *FIDELITY_OPTIONS]
    print(f"$ {' '.join(command[1:])}", flush=True)
    status = subprocess.run(command, check=False, stdout=subprocess.DEVNULL).returncode
    if status not in (0, 1) or not report.is_file():
        return None
    verdict = json.loads(report.read_text()).get("verdict")
    return verdict if verdict in ("pass", "fail") else None


def run_reproduction(script: Path, target: str) -> tuple[int, str]:
    """Exit status (1: confirmed) and output of one reproduction script for ``target``."""
    result = subprocess.run(
        [sys.executable, str(script), target], capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


def gate(target: str, report: Path, thorough: bool, extra: Sequence[str]) -> int:
    command = [sys.executable, "-m", "eplb_spec", "gate", "--impl", target]
    command += [] if thorough else ["--quick"]
    command += ["--json", str(report), *extra]
    print(f"$ {' '.join(command[1:])}", flush=True)
    return subprocess.run(command, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    from properties.engines import PINNED_RELEASES, fetch, pinned_targets

    parser = argparse.ArgumentParser(
        prog="python -m properties.downstream",
        description="Gate every balancer of the pinned engine releases against the "
        "expected findings.",
    )
    parser.add_argument("--thorough", action="store_true", help="the full gate, not --quick")
    parser.add_argument("--expected", type=Path, default=EXPECTED_FILE)
    parser.add_argument("--reports", type=Path, help="keep the gate's JSON reports here")
    parser.add_argument("--target", action="append", help="only this target (repeatable)")
    parser.add_argument("--no-fetch", action="store_true", help="use the cache as it is")
    parser.add_argument(
        "--no-fidelity",
        action="store_true",
        help="skip the fidelity runs (" + " ".join(FIDELITY_OPTIONS) + ")",
    )
    parser.add_argument(
        "--update", action="store_true", help="rewrite the expected file from this run"
    )
    parser.add_argument(
        "gate_options",
        nargs="*",
        help="more options for eplb-spec gate, after -- (added after the pinned "
        + " ".join(DEFAULT_GATE_OPTIONS)
        + "; --update refuses them)",
    )
    args = parser.parse_args(argv)
    if args.update and args.gate_options:
        print(
            "downstream: --update rewrites the expected findings of the pinned gate options "
            f"({' '.join(DEFAULT_GATE_OPTIONS)}); this run adds {' '.join(args.gate_options)}, "
            "so its findings are not those: run --update without gate options",
            file=sys.stderr,
        )
        return 2

    try:
        expected = load_expected(args.expected)
        expected_fidelity = {} if args.no_fidelity else load_fidelity(args.expected)
    except ValueError as error:
        print(f"downstream: {error}", file=sys.stderr)
        return 2
    if not args.no_fetch:
        for name, version in PINNED_RELEASES.items():
            print(f"{name} {version}: {fetch(name, version)}", flush=True)
    targets = args.target or pinned_targets()
    reports = args.reports or Path(tempfile.mkdtemp(prefix="eplb-downstream-"))
    reports.mkdir(parents=True, exist_ok=True)

    found: dict[str, set[FindingKey]] = {}
    broken: list[str] = []
    for target in targets:
        report = reports / f"{target.replace('@', '_').replace(':', '_')}.json"
        status = gate(target, report, args.thorough, [*DEFAULT_GATE_OPTIONS, *args.gate_options])
        if status not in (0, 1) or not report.is_file():
            broken.append(f"{target}: the gate exited with status {status}")
            continue
        found[target_key(target)] = findings_of(json.loads(report.read_text()))

    verdicts: dict[str, str] = {}
    if expected_fidelity:
        for target in targets:
            path = reports / f"{target.replace('@', '_').replace(':', '_')}.fidelity.json"
            verdict = fidelity(target, path, args.thorough)
            if verdict is None:
                broken.append(f"{target}: the fidelity run did not finish")
            else:
                verdicts[target_key(target)] = verdict

    if args.update:
        write_expected(args.expected, found, expected, args.thorough)
        if verdicts:
            write_fidelity(args.expected, verdicts)
        print(f"downstream: wrote {args.expected}")
        expected = load_expected(args.expected)
        expected_fidelity = load_fidelity(args.expected) if expected_fidelity else {}

    failures = list(broken)
    for key, verdict in verdicts.items():
        wanted = expected_fidelity.get(key)
        state = "as expected" if verdict == wanted else f"CHANGED (expected {wanted})"
        print(f"  fidelity {key:<31} {verdict}, {state}")
        if verdict != wanted:
            failures.append(f"{key}: fidelity verdict {verdict}, expected {wanted}")
    print("\ndownstream findings, against " + str(args.expected))
    for key, keys in found.items():
        result = compare(key, keys, expected.get(key, []), args.thorough)
        state = "as expected" if result.matches else "CHANGED"
        print(f"  {key:<40} {len(keys)} finding(s), {state}")
        for check, code in sorted(result.appeared):
            failures.append(f"{key}: new finding [{check}] {code}")
        for check, code in sorted(result.disappeared):
            failures.append(f"{key}: known finding [{check}] {code} no longer reported")

    folder = args.expected.parent
    pinned = {target_key(t): t for t in targets}
    for key in found:
        scripts = sorted({k.reproduction for k in expected.get(key, []) if k.reproduction})
        for script in scripts:
            status, output = run_reproduction(folder / script, pinned.get(key, key))
            outcome = "confirmed" if status == 1 else f"NOT confirmed (exit {status})"
            print(f"  reproduction {script} on {key}: {outcome}")
            print("".join(f"      {line}\n" for line in output.splitlines()[-3:]), end="")
            if status != 1:
                failures.append(f"{key}: reproduction {script} exited {status}, expected 1")

    if failures:
        print("\ndownstream: FAIL", *failures, sep="\n  ")
        if args.gate_options:
            print(
                f"(reports in {reports}; these gate options ({' '.join(args.gate_options)}) "
                "differ from the pinned ones, so findings may differ from the expected file)"
            )
        else:
            print(f"(reports in {reports}; `--update` rewrites the expected file from them)")
        return 1
    print("\ndownstream: every finding as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
