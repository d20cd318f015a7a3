"""Every bad input in the table of docs/specification.md ("Inputs and errors") is refused
as the table says: the command line with exit status 2 and one line naming the key or
option, the API with ValueError or TypeError naming the parameter.

The cases below and the table's rows must match one to one, so the document cannot
drift from the code.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from eplb_spec.cli import main
from impl import rebalance_experts
from oracle.cpsat import SolverSettings
from spec.objectives import balancedness

SPECIFICATION = Path(__file__).parents[1] / "docs" / "specification.md"
CLUSTER = (16, 4, 2, 8)


@dataclass(frozen=True)
class Cli:
    """``eplb-spec ARGS`` with ``{dir}`` replaced by a scratch folder holding ``files``."""

    args: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Api:
    """A call that must raise ``error``; ``where`` names what refuses it."""

    call: Callable[[], object]
    error: type[Exception]
    where: str


def instance(**changes: object) -> str:
    """A valid joint instance with some keys changed (``None`` removes a key)."""
    document: dict[str, object] = {
        "problem": "joint",
        "weights": [7, 5, 3],
        "num_slots": 6,
        "num_packs": 2,
    }
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None})


def solve(text: str | bytes) -> Cli:
    return Cli(["solve", "{dir}/instance.json"], {"instance.json": text})


def trace(rows: str) -> Cli:
    """A report on a folder with one trace whose logical_count is ``rows`` (JSON)."""
    return Cli(["report", "--data", "{dir}"], {"t.json": '{"logical_count": ' + rows + "}"})


GOOD_ROW = json.dumps(list(range(256)))


def bad_row(*first: str) -> str:
    """Two trace layers of 256 experts; the second starts with the JSON texts ``first``."""
    row = [*first, *(str(x) for x in range(len(first), 256))]
    return f"[{GOOD_ROW}, [{', '.join(row)}]]"


def weight_with(value: object) -> list[list[object]]:
    rows: list[list[object]] = [[float(x) for x in range(12)] for _ in range(2)]
    rows[0][1] = value
    return rows


def quiet(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A tensor made without the prototype/deprecation warnings torch prints for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return make()


def api(weight: object, error: type[Exception], **cluster: int) -> Api:
    arguments = dict(
        zip(("num_replicas", "num_groups", "num_nodes", "num_gpus"), CLUSTER, strict=True)
    )
    arguments.update(cluster)
    return Api(
        lambda: rebalance_experts(weight, **arguments),  # type: ignore[arg-type]
        error,
        "BalancingProblem",
    )


CASES: dict[str, Cli | Api] = {
    # Instance files: eplb-spec solve.
    "deep-json": solve("[" * 100_000 + "]" * 100_000),
    "nested-weights": solve(instance(weights=[[7], 5, 3])),
    "float-beyond-range": solve(instance().replace("[7, 5, 3]", "[7, 1e400, 3]")),
    "nan-literal": solve(instance().replace("[7, 5, 3]", "[NaN, 5, 3]")),
    "infinity-literal": solve(
        instance(time_limit_s=1).replace('"time_limit_s": 1', '"time_limit_s": Infinity')
    ),
    "integer-beyond-range": solve(instance(weights=[7, 10**399, 3])),
    "integer-too-long": solve(instance().replace("[7, 5, 3]", "[7, " + "9" * 5000 + ", 3]")),
    "weights-sum-overflow": solve(instance(weights=[1e308, 1e308, 1])),
    "weight-boolean": solve(instance(weights=[True, 5, 3])),
    "weight-string": solve(instance(weights=["7", 5, 3])),
    "time-limit-string": solve(instance(time_limit_s="10")),
    "time-limit-boolean": solve(instance(time_limit_s=True)),
    "time-limit-zero": solve(instance(time_limit_s=0)),
    "seed-out-of-range": solve(instance(seed=2**31)),
    "seed-boolean": solve(instance(seed=False)),
    "count-boolean": solve(instance(num_slots=True)),
    "count-float": solve(instance(num_slots=6.0)),
    "layer-count-string": solve(
        instance(
            problem="layer",
            num_slots=None,
            num_packs=None,
            num_replicas=4,
            num_groups=1,
            num_nodes=1,
            num_gpus="2",
        )
    ),
    "labels-boolean": solve(
        instance(problem="packing", num_slots=None, weights=[1, 2], labels=[True, 0])
    ),
    "distinct-not-boolean": solve(instance(distinct=1)),
    "format-boolean": solve(instance(format=True)),
    "unknown-key": solve(instance(num_slot=6)),
    "missing-key": solve(instance(num_packs=None)),
    "not-an-object": solve("[1, 2]"),
    "instance-too-big": solve(" " * 1_000_001),
    "not-utf8": solve(b"\xff\xfe{}"),
    # Command-line options.
    "timeout-infinite": Cli(["gate", "--timeout", "inf"]),
    "timeout-nan": Cli(["gate", "--timeout", "nan"]),
    "timeout-too-long": Cli(["gate", "--timeout", "1e300"]),
    "max-gap-nan": Cli(["gate", "--max-gap", "nan"]),
    "max-gap-negative": Cli(["gate", "--max-gap", "-1"]),
    "rounds-out-of-range": Cli(["bench", "--rounds", "0"]),
    "rounds-not-integer": Cli(["bench", "--rounds", "inf"]),
    "cluster-option-not-positive": Cli(["report", "--replicas", "0"]),
    "cluster-option-not-integer": Cli(["report", "--gpus", "nan"]),
    "cluster-breaks-a-rule": Cli(
        ["report", "--data", "{dir}", "--gpus", "7"],
        {"t.json": '{"logical_count": [' + GOOD_ROW + "]}"},
    ),
    "json-unwritable": Cli(["report", "--json", "{dir}/missing/report.json"]),
    "json-is-a-folder": Cli(["gate", "--json", "{dir}"]),
    "vectors-count": Cli(["vectors", "--count", "0"]),
    "vectors-tiers": Cli(["vectors", "--tiers", "small,huge"]),
    "vectors-out-is-a-file": Cli(["vectors", "--out", "{dir}/file"], {"file": "x"}),
    "unknown-option": Cli(["report", "--bogus"]),
    # Traces: eplb-spec report --data DIR (and every command that reads traces).
    "trace-string": trace(bad_row('"5"')),
    "trace-boolean": trace(bad_row("true")),
    "trace-nan": trace(bad_row("NaN")),
    "trace-beyond-range": trace(bad_row("1e400")),
    "trace-sum-overflow": trace(bad_row("1e308", "1e308")),
    "trace-negative": trace(bad_row("-1")),
    "trace-ragged": trace(f"[{GOOD_ROW}, [1, 2]]"),
    "trace-deep": Cli(["report", "--data", "{dir}"], {"t.json": "[" * 100_000 + "]" * 100_000}),
    # The API: spec.BalancingProblem, hence impl.rebalance_experts.
    "meta-tensor": api(torch.ones(2, 12, device="meta"), ValueError),
    "quantized-tensor": api(
        quiet(lambda: torch.quantize_per_tensor(torch.ones(2, 12), 0.5, 0, torch.qint8)),
        TypeError,
    ),
    "nested-tensor": api(
        quiet(lambda: torch.nested.nested_tensor([torch.ones(12), torch.ones(12)])), TypeError
    ),
    "sparse-tensor": api(torch.ones(2, 12).to_sparse(), TypeError),
    "layer-sum-overflow": api(torch.full((2, 12), 1e308, dtype=torch.float64), ValueError),
    "absurd-size": api(torch.ones(1, 12), ValueError, num_replicas=10**9),
    "list-boolean": api(weight_with(True), TypeError),
    "list-string": api(weight_with("5"), TypeError),
    "list-integer-beyond-range": api(weight_with(10**400), ValueError),
    "list-ragged": api([[1.0] * 12, [1.0] * 11], ValueError),
    "object-array": api(np.array(weight_with(10**400), dtype=object), ValueError),
    "settings-not-finite": Api(
        lambda: SolverSettings(time_limit_s=float("nan")), ValueError, "SolverSettings"
    ),
    "settings-seed": Api(lambda: SolverSettings(seed=-(2**31) - 1), ValueError, "SolverSettings"),
}


def table_rows() -> dict[str, tuple[str, str]]:
    """``id -> (refused by, message)`` from the specification's table."""
    text = SPECIFICATION.read_text()
    section = text.split("## Inputs and errors", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and not cells[0].startswith("`-"):
            key = cells[0].strip("`")
            message = re.findall(r"`([^`]+)`", cells[3])
            assert message, f"row {key}: the message column has no `quoted` message"
            assert key not in rows, f"row {key} appears twice"
            rows[key] = (cells[2], message[0])
    return rows


def test_the_table_and_the_cases_match() -> None:
    assert sorted(table_rows()) == sorted(CASES)


def run_cli(case: Cli, folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    for name, content in case.files.items():
        target = folder / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    args = [a.replace("{dir}", str(folder)) for a in case.args]
    status = main(args)
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any work
    return status, captured.err


@pytest.mark.parametrize("key", sorted(CASES))
def test_each_bad_input_is_refused_as_the_table_says(
    key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where, message = table_rows()[key]
    case = CASES[key]
    if isinstance(case, Cli):
        assert f"eplb-spec {case.args[0]}" in where
        status, err = run_cli(case, tmp_path, capsys)
        assert status == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("eplb-spec: error: ")
        assert message in lines[0]
    else:
        assert case.where in where
        with pytest.raises(case.error) as raised:
            case.call()
        assert message in str(raised.value)


def test_balancedness_of_loads_near_the_float64_limit_is_a_number() -> None:
    # Each layer's sum is finite, so such loads are valid; summing the peaks over the
    # layers overflowed and printed nan before.
    per_gpu = np.full((3, 2), 1e308)
    per_gpu[0, 1] = 5e307
    assert balancedness(per_gpu) == pytest.approx((1.5 / 2 + 2) / 3)
