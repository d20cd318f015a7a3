"""Properties written once, applied to any ``rebalance_experts`` implementation.

Each property takes a ``Caller`` (a function that calls the implementation under test on
``(weight, num_replicas, num_groups, num_nodes, num_gpus)`` and returns a ``CallResult``
or a ``CallFailure``) and one problem, and raises ``Finding`` when the implementation
breaks it. The gate runs them in a separate process; tests run them in-process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from oracle.pipeline import optimal_layer
from oracle.result import Status
from properties.isolation import CallFailure, CallResult, TensorArg
from properties.quality import (
    HEURISTIC_SLOTS,
    ProvenGap,
    UpperBound,
    above_limit,
    describe_gap,
    lower_bounds,
    proven_gaps,
    upper_bounds,
)
from spec.objectives import peak_gpu_load
from spec.placement import as_int_array, check_placement, placement_from_phy2log
from spec.problem import BalancingProblem

IntArray = npt.NDArray[np.int64]
Caller = Callable[..., CallResult | CallFailure]


class OracleContradiction(Exception):
    """A valid placement beat the oracle's proven bound: a fault of this project (the
    contract or the oracle), never of the implementation under test."""


class Finding(Exception):
    """What an implementation did wrong, the one word for it in the kit: ``check`` names
    the property it broke, ``code`` the finer cause (a contract violation code, a
    bad-input case; the check itself otherwise), ``message`` what and where. A property
    raises it; a report keeps it with ``count`` (how often the same cause was seen),
    ``input`` (the smallest input that showed it) and a ``note``."""

    def __init__(
        self,
        check: str,
        message: str,
        code: str | None = None,
        *,
        count: int = 1,
        input: dict[str, Any] | None = None,
        note: str = "",
    ) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check
        self.message = message
        self.code = code or check
        self.count = count
        self.input = input
        self.note = note

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "code": self.code,
            "message": self.message,
            "count": self.count,
            "input": self.input,
            "note": self.note,
        }


def percent(fraction: float) -> str:
    """A share as a percentage, never rounding a nonzero gap to 0.00%."""
    if 0 < fraction < 5e-5:
        return "<0.01%"
    return f"{fraction:.2%}"


def number(value: float) -> str:
    """A load as written: integers in full, other values to 12 significant digits."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**63:
        return str(int(value))
    return f"{value:.12g}"


@dataclass(frozen=True)
class Outputs:
    phy2log: Any
    log2phy: Any
    logcnt: Any
    derived: str | None
    returned: str


def read_outputs(result: CallResult, problem: BalancingProblem) -> Outputs:
    """The three arrays of an answer; a lone ``phy2log`` gets the rest derived."""
    value = result.value
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return Outputs(value[0], value[1], value[2], None, result.returned)
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.dtype.kind in "iu":
        wanted = (problem.num_layers, problem.num_replicas)
        if value.shape != wanted:  # before any work derived from it
            raise Finding(
                "contract",
                f"[shape] phy2log has shape {list(value.shape)}, expected {list(wanted)}",
                "shape",
            )
        log2phy, logcnt = placement_from_phy2log(value.astype(np.int64), problem.num_experts)
        return Outputs(
            value, log2phy, logcnt, "log2phy and logcnt derived from phy2log", result.returned
        )
    raise Finding(
        "contract",
        f"returned {result.returned}; expected (phy2log, log2phy, logcnt) or phy2log alone",
        "returned-value",
    )


def tensor_arg(
    problem: BalancingProblem, dtype: str = "float64", contiguous: bool = True
) -> TensorArg:
    values = problem.loads
    if dtype.startswith("int"):
        values = values.astype(np.int64)
    return TensorArg(np.array(values), dtype, contiguous)


def cluster_of(problem: BalancingProblem) -> tuple[int, int, int, int]:
    return problem.num_replicas, problem.num_groups, problem.num_nodes, problem.num_gpus


def call_ok(
    call: Caller, problem: BalancingProblem, dtype: str = "float64", contiguous: bool = True
) -> CallResult:
    """Call on a valid problem; a raise, crash or hang is a finding."""
    outcome = call(tensor_arg(problem, dtype, contiguous), *cluster_of(problem))
    if isinstance(outcome, CallFailure):
        check = {
            "raised": "raises-on-valid-input",
            "timeout": "timeout",
            "crash": "crash",
            "undecodable": "undecodable-result",
        }[outcome.kind]
        raise Finding(check, f"on a valid problem: {outcome.message}", outcome.exception_type)
    return outcome


def check_contract(
    call: Caller,
    problem: BalancingProblem,
    soft: list[Finding] | None = None,
    dtype: str = "float64",
) -> tuple[Outputs, CallResult]:
    """Valid output, input left alone.

    With ``soft`` given, a finding about output types only (say int32 where the contract
    says int64) is appended there and the placement is checked on its values; without
    it, such a finding is raised like any other. The outputs returned are int64.
    ``dtype``: of the weight tensor passed.
    """
    result = call_ok(call, problem, dtype)
    if result.input_modified:
        raise Finding("input-unmodified", "the implementation changed its weight tensor")
    outputs = read_outputs(result, problem)
    arrays = {}
    notes: dict[str, list[str]] = {}  # one finding for all outputs of the same type
    for name in ("phy2log", "log2phy", "logcnt"):
        array, note = as_int_array(getattr(outputs, name))
        if array is None:
            raise Finding("contract", f"[dtype] {name} {note}", "dtype")
        if note is not None:
            notes.setdefault(note, []).append(name)
        arrays[name] = array
    if notes:
        message = "; ".join(f"{', '.join(names)} {note}" for note, names in notes.items())
        finding = Finding("dtype", message, "dtype")
        if soft is None:
            raise finding
        soft.append(finding)
    outputs = Outputs(**arrays, derived=outputs.derived, returned=outputs.returned)
    violations = check_placement(problem, outputs.phy2log, outputs.log2phy, outputs.logcnt)
    if violations:
        listed = "; ".join(str(v) for v in violations[:3])
        more = f" (+{len(violations) - 3} more)" if len(violations) > 3 else ""
        raise Finding("contract", listed + more, violations[0].code.value)
    return outputs, result


def same_outputs(a: Outputs, b: Outputs) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in ((a.phy2log, b.phy2log), (a.log2phy, b.log2phy), (a.logcnt, b.logcnt))
    )


def other_inputs(problem: BalancingProblem) -> list[BalancingProblem]:
    """Inputs to call between two calls on ``problem``: its loads reversed (same shape),
    and a small problem of another shape."""
    reversed_loads = np.ascontiguousarray(problem.loads[:, ::-1])
    return [
        BalancingProblem(reversed_loads, *cluster_of(problem)),
        BalancingProblem([[5.0, 1.0, 3.0, 3.0], [0.0, 2.0, 7.0, 1.0]], 6, 2, 1, 2),
    ]


def check_deterministic(
    call: Caller,
    problem: BalancingProblem,
    dtype: str = "float64",
    between: list[BalancingProblem] | None = None,
) -> None:
    """The same input gives the same placement back to back (A, A), and again after other
    inputs (A, B, C, A; ``between``, default ``other_inputs``): an answer that depends on
    the calls before is a finding."""
    first = read_outputs(call_ok(call, problem, dtype), problem)
    second = read_outputs(call_ok(call, problem, dtype), problem)
    if not same_outputs(first, second):
        raise Finding("deterministic", "the same input gave two different placements")
    for other in other_inputs(problem) if between is None else between:
        call_ok(call, other, dtype)
    third = read_outputs(call_ok(call, problem, dtype), problem)
    if not same_outputs(first, third):
        raise Finding(
            "deterministic",
            "the same input gave another placement after other inputs were balanced in "
            "between (the answer depends on earlier calls)",
            "earlier-calls",
        )


def check_input_forms(call: Caller, problem: BalancingProblem, reference: str = "float64") -> None:
    """Integer and float inputs, contiguous or not, give the same answer as the
    ``reference`` dtype (loads are integers here, exact in every dtype)."""
    expected = read_outputs(call_ok(call, problem, reference), problem)
    forms = [
        (dtype, True, "dtype-invariance")
        for dtype in ("int64", "float32", "float64")
        if dtype != reference
    ]
    for dtype, contiguous, check in [*forms, (reference, False, "layout-invariance")]:
        other = read_outputs(call_ok(call, problem, dtype, contiguous), problem)
        if not same_outputs(expected, other):
            form = dtype if contiguous else f"a non-contiguous {dtype}"
            raise Finding(check, f"{form} input gave a different placement than {reference}")


@dataclass(frozen=True)
class BadInput:
    """A precondition broken on purpose; ``structural`` when no placement can be valid;
    ``nodes_matter`` when the case is about the nodes (on one node it is another case).
    """

    name: str
    weight: TensorArg
    cluster: tuple[int, int, int, int]
    structural: bool
    nodes_matter: bool = False

    def on_one_node(self) -> BadInput | None:
        """The same broken precondition on one node (None when nodes are its point)."""
        if self.nodes_matter:
            return None
        replicas, groups, _, gpus = self.cluster
        return replace(self, cluster=(replicas, groups, 1, gpus))


def bad_inputs() -> list[BadInput]:
    good = np.arange(1, 13, dtype=np.float64).reshape(1, 12)
    cluster = (16, 4, 2, 8)

    def loads_with(value: float) -> TensorArg:
        broken = good.copy()
        broken[0, 5] = value
        return TensorArg(broken)

    return [
        BadInput("NaN load", loads_with(math.nan), cluster, False),
        BadInput("infinite load", loads_with(math.inf), cluster, False),
        BadInput("negative load", loads_with(-3.0), cluster, False),
        BadInput("num_replicas < num_experts", TensorArg(good), (8, 4, 2, 8), True),
        BadInput("num_replicas not divisible by num_gpus", TensorArg(good), (20, 4, 2, 8), True),
        BadInput("groups do not divide experts", TensorArg(good), (16, 8, 2, 8), True, True),
        BadInput("gpus not divisible by nodes", TensorArg(good), (16, 3, 3, 4), True, True),
        BadInput("zero gpus", TensorArg(good), (16, 4, 2, 0), True),
    ]


def check_bad_input(call: Caller, case: BadInput) -> str:
    """An implementation may reject bad input; it must not return a wrong placement.

    Returns what it did: ``rejected`` or ``returned a valid placement``.
    """
    outcome = call(case.weight, *case.cluster)
    if isinstance(outcome, CallFailure):
        if outcome.kind == "raised":
            return f"rejected ({outcome.exception_type})"
        raise Finding("bad-input", f"{case.name}: {outcome.kind}: {outcome.message}", case.name)
    if case.structural:
        raise Finding(
            "bad-input", f"{case.name}: returned a placement although none can be valid", case.name
        )
    loads = np.nan_to_num(case.weight.values, nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    problem = BalancingProblem(loads, *case.cluster)
    outputs = read_outputs(outcome, problem)
    violations = check_placement(problem, outputs.phy2log, outputs.log2phy, outputs.logcnt)
    if violations:
        raise Finding(
            "bad-input", f"{case.name}: returned an invalid placement: {violations[0]}", case.name
        )
    return "returned a valid placement"


@dataclass(frozen=True)
class Gap:
    """Peak of the implementation against the oracle, for one layer: ``optimum`` is the
    proven optimum when ``proven``, else the oracle's best placement or, when it found
    none in time, its proven lower bound."""

    peak: float
    optimum: Fraction
    proven: bool

    @property
    def relative(self) -> float:
        return self.peak / float(self.optimum) - 1 if self.optimum > 0 else 0.0


def check_optimality(
    call: Caller,
    problem: BalancingProblem,
    max_gap_percent: float | None,
    soft: list[Finding] | None = None,
    dtype: str = "float64",
    seen: list[Gap] | None = None,
    proven: list[ProvenGap] | None = None,
) -> list[Gap]:
    """Per layer: the peak is within ``max_gap_percent`` of the optimum when a limit is
    set and the optimum is proven. ``seen``, when given, receives each layer's gap as it
    is measured, the one above the limit included (the returned list is lost on a
    raise). A valid placement below the oracle's proven bound raises
    ``OracleContradiction``: that is a fault of this project, not of the target.

    With ``proven`` given, it receives every layer's proven gap (``properties.quality``:
    the peak against the best valid placement at hand, the oracle's answer included),
    and a proven gap above ``max_gap_percent`` is a finding on problems of any size;
    the oracle solves only tiny problems (``solved_exactly``) then.

    The oracle solves the contract's problem: under the hierarchical policy it tries
    every split of the groups over the nodes that ``check_placement`` accepts, unequal
    ones included, so a valid placement can never beat its bound."""
    if max_gap_percent is not None and not (
        isinstance(max_gap_percent, (int, float))
        and math.isfinite(max_gap_percent)
        and max_gap_percent >= 0
    ):
        raise ValueError(f"max_gap_percent must be a finite number >= 0, got {max_gap_percent!r}")
    outputs, _ = check_contract(call, problem, soft, dtype)
    peaks = peak_gpu_load(
        problem.loads, np.asarray(outputs.phy2log), np.asarray(outputs.logcnt), problem.num_gpus
    )
    gaps: list[Gap] = [] if seen is None else seen
    oracle: list[UpperBound | None] = []
    for layer in range(problem.num_layers if proven is None or solved_exactly(problem) else 0):
        answer = optimal_layer(problem, layer).result
        peak = float(peaks[layer])
        tolerance = 1e-9 * max(1.0, abs(peak))
        if peak < float(answer.bound) - tolerance:  # the placement passed the contract
            raise OracleContradiction(
                f"layer {layer}: a valid placement's peak {peak!r} is below the oracle's "
                f"proven bound {answer.bound} on {problem.loads.tolist()} at "
                f"{cluster_of(problem)}: the contract and the oracle disagree"
            )
        reference = answer.objective if answer.objective is not None else answer.bound
        gap = Gap(peak, reference, answer.status is Status.OPTIMAL)
        gaps.append(gap)
        solved = "oracle optimum" if gap.proven else "oracle placement"
        oracle.append(None if answer.objective is None else UpperBound(answer.objective, solved))
        if (
            max_gap_percent is not None
            and gap.proven
            and gap.relative * 100 > max_gap_percent + 1e-9
        ):
            raise Finding(
                "optimality",
                f"layer {layer}: peak {number(peak)} is {percent(gap.relative)} above the "
                f"optimum {reference} (limit {max_gap_percent:g}%)",
                "max-gap",
            )
    if proven is not None:
        found = measure_proven_gaps(problem, outputs.phy2log, oracle)
        proven.extend(found)
        worst = None if max_gap_percent is None else above_limit(found, max_gap_percent)
        if worst is not None:
            raise Finding("optimality", describe_gap(worst, max_gap_percent), "max-gap")
    return list(gaps)


def solved_exactly(problem: BalancingProblem) -> bool:
    """Whether the optimality section asks the exact oracle (``tiny_problems``' sizes)."""
    return problem.num_layers == 1 and problem.num_experts <= 6 and problem.num_replicas <= 8


def measure_proven_gaps(
    problem: BalancingProblem, phy2log: Any, oracle: list[UpperBound | None]
) -> list[ProvenGap]:
    """Every layer's proven gap: the oracle heuristic on problems up to
    ``HEURISTIC_SLOTS`` slots per node, the reference and the baseline always."""
    heuristic = problem.slots_per_node <= HEURISTIC_SLOTS
    uppers = upper_bounds(problem, heuristic=heuristic, extra=oracle)
    return proven_gaps(problem, phy2log, uppers, lower_bounds(problem))


@dataclass(frozen=True)
class CountCase:
    """Input of refinement A: one row's loads and replica counts."""

    loads: list[float]
    counts: list[int]


@dataclass(frozen=True)
class SwapCase:
    """Input of refinement B: one node's replicas and their assignment to GPUs."""

    weights: list[float]
    labels: list[int]
    gpu: list[int]
    rank: list[int]
    num_gpus: int


def as_int_list(value: Any, name: str) -> list[int]:
    array = np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise Finding(
            name, f"returned {type(value).__name__} {array.dtype}; expected a list of ints"
        )
    return [int(x) for x in array]


def check_refinement_a(call: Caller, case: CountCase) -> None:
    """``refine(loads, counts) -> counts`` keeps refinement A's contract."""
    from spec.refinements import check_count_refinement

    outcome = call(list(case.loads), list(case.counts))
    if isinstance(outcome, CallFailure):
        raise Finding("refinement-a", f"{outcome.kind}: {outcome.message}")
    after = as_int_list(outcome.value, "refinement-a")
    violations = check_count_refinement(case.loads, case.counts, after)
    if violations:
        raise Finding("refinement-a", "; ".join(str(v) for v in violations))


def check_refinement_b(call: Caller, case: SwapCase) -> None:
    """``refine(weights, gpu, rank, num_gpus) -> (gpu, rank)`` keeps refinement B's
    contract."""
    from spec.refinements import check_swap_refinement

    outcome = call(list(case.weights), list(case.gpu), list(case.rank), case.num_gpus)
    if isinstance(outcome, CallFailure):
        raise Finding("refinement-b", f"{outcome.kind}: {outcome.message}")
    value = outcome.value
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise Finding("refinement-b", f"returned {outcome.returned}; expected (gpu, rank)")
    gpu, rank = as_int_list(value[0], "refinement-b"), as_int_list(value[1], "refinement-b")
    violations = check_swap_refinement(case.weights, case.gpu, case.rank, gpu, rank, case.num_gpus)
    if violations:
        raise Finding("refinement-b", "; ".join(str(v) for v in violations))


def in_process(function: Callable[..., Any]) -> Caller:
    """A ``Caller`` that runs ``function`` in this process (for tests, no isolation):
    the same tensors as the gate's worker builds, and the result passed through the
    same plain-data encoding (``properties.wire``) the gate decodes."""
    import torch

    from properties.wire import decode_frame, encode
    from properties.worker import kinds_of

    def build(arg: TensorArg) -> torch.Tensor:
        values = np.asarray(arg.values)
        stored = values if arg.contiguous else values.T
        tensor = torch.from_numpy(np.ascontiguousarray(stored.astype(np.dtype(arg.dtype))))
        return tensor if arg.contiguous else tensor.t()

    def call(*args: Any, **kwargs: Any) -> CallResult | CallFailure:
        built = [build(a) if isinstance(a, TensorArg) else a for a in args]
        keywords = {k: build(a) if isinstance(a, TensorArg) else a for k, a in kwargs.items()}
        everything = [*built, *keywords.values()]
        before = [a.clone() if isinstance(a, torch.Tensor) else None for a in everything]
        start = time.perf_counter()
        try:
            value = function(*built, **keywords)
        except Exception as error:
            return CallFailure("raised", f"{type(error).__name__}: {error}", type(error).__name__)
        seconds = time.perf_counter() - start
        modified = any(
            b is not None and not torch.equal(a, b) for a, b in zip(everything, before, strict=True)
        )
        return CallResult(decode_frame(encode(value)), seconds, modified, kinds_of(value))

    return call
