"""The specification cannot drift from the code.

- Every code reference in the project's documents exists: ``path/to/file.py::name``
  (the file, and ``name`` defined at its top level; a test is a function), dotted names
  of the project's packages (``spec.check_placement``), bare test names
  (``test_contract``: a test function somewhere in ``tests/``), paths of the project's
  files in code spans, and relative links (with their ``#anchor`` when they point into a
  document).
- Every ``python`` block of docs/specification.md runs: blocks with ``>>>`` prompts as
  doctests, others as plain code with their ``assert``s, each in a fresh namespace from
  the repository root.
- Every code of the violation enums is named in the specification or in the chapter on
  rebalancing, and every step function of ``impl/steps.py`` in the specification.
- Nothing refers to the page the algorithm was first described on, outside the
  repository.
"""

from __future__ import annotations

import ast
import doctest
import enum
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from spec import MigrationCode, RefinementRule, SolutionCode, ViolationCode

ROOT = Path(__file__).resolve().parents[1]
SPECIFICATION = ROOT / "docs" / "specification.md"
MIGRATION = ROOT / "docs" / "migration.md"
PACKAGES = ("spec", "impl", "oracle", "properties", "studies", "eplb_spec", "tests")
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "vectors").rglob("*.md")]
)

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`]+)`")
PATH_NAME = re.compile(r"(?<![\w./-])([\w./-]+\.py)::([\w.]+)")
PACKAGE_NAMES = "|".join(PACKAGES[:-1])
DOTTED = re.compile(rf"(?<![\w./-])((?:{PACKAGE_NAMES})(?:\.\w+)+)")
PROJECT_PATH = re.compile(rf"^(?:{PACKAGE_NAMES}|tests|docs|vectors)/[\w./-]*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")
BARE_TEST = re.compile(r"(?<![\w/.:])test_\w+(?!\.py)")


def prose(text: str) -> str:
    """The text without its fenced code blocks (their lines kept, blank)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


@cache
def top_level(path: Path) -> dict[str, ast.AST]:
    """The names a module defines at its top level (functions, classes, assignments)."""
    names: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


@cache
def importable(path: Path) -> set[str]:
    """Top-level definitions and imports: what ``module.name`` can reach."""
    names = set(top_level(path))
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
    return names


def defines(path: Path, dotted_name: str) -> bool:
    """``name`` or ``Class.attribute`` is defined in ``path``; a test is a function."""
    first, _, rest = dotted_name.partition(".")
    node = top_level(path).get(first)
    if node is None:
        return False
    if path.name.startswith("test_") and first.startswith("test_"):
        return isinstance(node, ast.FunctionDef) and not rest
    if not rest:
        return True
    if not isinstance(node, ast.ClassDef):
        return False
    members = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members.add(item.target.id)
        elif isinstance(item, ast.Assign):
            members.update(t.id for t in item.targets if isinstance(t, ast.Name))
    return rest in members


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def resolves(dotted: str) -> bool:
    """``package.module.name``: the longest module prefix exists and defines or imports
    the next part (deeper attributes are not followed)."""
    parts = dotted.split(".")
    for stop in range(len(parts), 0, -1):
        found = module_file(parts[:stop])
        if found is not None:
            return stop == len(parts) or parts[stop] in importable(found)
    return False


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            base = slug(heading.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


@cache
def project_test_names() -> set[str]:
    """Every test function of the project's tests, by name."""
    return {
        name
        for path in (ROOT / "tests").rglob("test_*.py")
        for name, node in top_level(path).items()
        if isinstance(node, ast.FunctionDef) and name.startswith("test_")
    }


def broken_references(text: str, document: Path) -> list[str]:
    """Every reference in ``text`` (a document at ``document``) that does not resolve,
    as ``line N: reference (why)``."""
    text = prose(text)
    broken = []
    for span in CODE_SPAN.finditer(text):
        line = line_of(text, span.start())
        content = span.group(1)
        for match in PATH_NAME.finditer(content):
            path, name = ROOT / match.group(1), match.group(2)
            if not path.is_file():
                broken.append(f"line {line}: {match.group(0)} (no file {match.group(1)})")
            elif not defines(path, name):
                broken.append(f"line {line}: {match.group(0)} (no top-level {name})")
        for match in DOTTED.finditer(PATH_NAME.sub("", content)):
            if not resolves(match.group(1)):
                broken.append(f"line {line}: {match.group(1)} (does not resolve)")
        if PROJECT_PATH.match(content) and not (ROOT / content).exists():
            broken.append(f"line {line}: {content} (no such file)")
        for match in BARE_TEST.finditer(PATH_NAME.sub("", content)):
            if match.group(0) not in project_test_names():
                broken.append(f"line {line}: {match.group(0)} (no test of that name)")
    for link in LINK.finditer(text):
        target = link.group(1)
        if re.match(r"[a-z]+:", target):
            continue
        line = line_of(text, link.start())
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"line {line}: {target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"line {line}: {target} (no heading #{anchor})")
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_every_reference_in_the_documents_exists(document: Path) -> None:
    assert broken_references(document.read_text(), document) == []


def test_a_missing_reference_is_caught() -> None:
    text = "\n".join(
        [
            "`impl/steps.py::no_such_step` and `impl/no_such_file.py::water_fill`",
            "`tests/test_steps.py::test_no_such_test`, `tests/test_steps.py::Packing`",
            "`impl/steps.py::Packing.no_such_field`, `spec.no_such_name`, `oracle.nowhere.x`",
            "`docs/no_such_page.md`, [a link](no_such_page.md), [an anchor](#no-such-heading)",
            "`test_no_such_test_anywhere` beside `test_water_fill_one_slot_per_expert`",
            "```python",
            "`impl/steps.py::ignored_inside_a_code_block`",
            "```",
            "`impl/steps.py::water_fill`, `impl/steps.py::Packing.rank`, `spec.check_placement`,",
            "[the contract](#the-placement-contract), `tests/test_steps.py`",
        ]
    )
    broken = broken_references(text, SPECIFICATION)
    assert [entry.split(" (")[0] for entry in broken] == [
        "line 1: impl/steps.py::no_such_step",
        "line 1: impl/no_such_file.py::water_fill",
        "line 2: tests/test_steps.py::test_no_such_test",
        "line 2: tests/test_steps.py::Packing",
        "line 3: impl/steps.py::Packing.no_such_field",
        "line 3: spec.no_such_name",
        "line 3: oracle.nowhere.x",
        "line 4: docs/no_such_page.md",
        "line 5: test_no_such_test_anywhere",
        "line 4: no_such_page.md",  # links come after the code spans
        "line 4: #no-such-heading",
    ]


@dataclass(frozen=True)
class Block:
    line: int
    source: str


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    return [
        Block(line_of(text, match.start()) + 1, match.group(1))
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)
    ]


BLOCKS = python_blocks(SPECIFICATION)


def test_the_specification_has_worked_examples() -> None:
    assert len(BLOCKS) >= 10
    assert sum(">>>" in block.source for block in BLOCKS) >= 5


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line-{b.line}" for b in BLOCKS])
def test_the_worked_examples_run(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    name = f"docs/specification.md, line {block.line}"
    if ">>>" not in block.source:
        exec(compile(block.source, name, "exec"), {"__name__": "__specification__"})
        return
    test = doctest.DocTestParser().get_doctest(
        block.source, {"__name__": "__specification__"}, name, str(SPECIFICATION), block.line
    )
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=flags)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


CODES: list[type[enum.Enum]] = [ViolationCode, RefinementRule, MigrationCode, SolutionCode]


@pytest.mark.parametrize("codes", CODES, ids=[codes.__name__ for codes in CODES])
def test_every_code_is_named_in_the_documents(codes: type[enum.Enum]) -> None:
    text = SPECIFICATION.read_text() + MIGRATION.read_text()
    assert [c.value for c in codes if f"`{c.value}`" not in text] == []


def test_every_step_function_is_in_the_specification() -> None:
    text = SPECIFICATION.read_text()
    steps = ROOT / "impl" / "steps.py"
    functions = [
        name
        for name, node in top_level(steps).items()
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not name.startswith("_")
    ]
    assert [f for f in functions if f"impl/steps.py::{f}`" not in text] == []


def tracked_text_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        paths = [ROOT / p for p in listed.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        skip = {".git", ".venv", ".nox", "__pycache__"}
        paths = [
            p
            for p in ROOT.rglob("*")
            if p.is_file()
            and not skip.intersection(p.relative_to(ROOT).parts)
            and not p.relative_to(ROOT).parts[0].endswith(".egg-info")
        ]
    texts = []
    for path in paths:
        if not path.is_file() or path.suffix in (".png", ".svg"):
            continue
        try:
            path.read_text()
        except UnicodeDecodeError:
            continue
        texts.append(path)
    return texts


def test_nothing_refers_to_the_page_outside_the_repository() -> None:
    retired = "ALGORITHMS" + ".md"  # spelled in two parts so that this file does not match
    files = tracked_text_files()
    assert ROOT / "docs" / "specification.md" in files
    assert [str(p.relative_to(ROOT)) for p in files if retired in p.read_text()] == []
