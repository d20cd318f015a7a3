"""The gate's checks of a rebalance from an old placement, and of a transfer schedule.

**Calling a rebalance.** The target is the one the gate checks
(``f(weight, num_replicas, num_groups, num_nodes, num_gpus)``); an old placement goes in
as an int64 tensor ``[layers, replicas]`` (a ``phy2log``), either under a keyword
(``--previous previous``: ``f(..., previous=old)``, this project's convention) or as the
sixth positional argument (``--previous 6``: ``f(..., old)``, vLLM's
``old_global_expert_indices``). The engine adapters that take one say so themselves
(``EngineAdapter.previous_argument``).

**What a rebalance must do** (``spec.check_rebalance``, docs/migration.md §5), per case:

- its answer passes the placement contract (``placement-invalid`` otherwise);
- its GPU loads are, layer by layer, exactly the multiset of its own stateless answer's
  (``balance-changed``);
- every expert that stays on a GPU keeps its old slot (``slot-not-kept``);
- it needs no more transfers than the relabeling optimum of its own stateless answer
  (``impl.migrate``; ``transfers-above-fewest``). This one is a finding, and a measure:
  once the balance equals the stateless answer's, an exact relabeling of that answer
  (milliseconds) reaches the same balance with fewer transfers, so more is strictly
  dominated. It does not stop the search (the gate goes on counting how far above the
  optimum the target is, over every case it tries).

On tiny layers the target's transfers are also compared with the oracle's fewest
(``oracle.migration.fewest_transfers_exact``, with the target's own peak as the budget):
a measure, not a finding, since the oracle may change the replica counts and so the
balance. A target below the oracle's proven fewest would be a fault of this project.

**Calling a schedule.** ``f(previous, phy2log, num_experts, num_gpus, num_nodes)``
(int64 tensors ``[layers, replicas]`` and ints) returns ``(transfers, num_batches)``:
``[T, 5]`` integer rows ``(layer, batch, expert, source, destination)`` and ``[L]``
batch counts (torch, NumPy or lists), checked with ``spec.check_schedule``.
``reference_schedule`` is this project's ``impl.schedule_transfers`` in that form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from impl.migration import migrate, schedule_transfers
from properties.isolation import CallFailure, CallResult, TensorArg
from properties.strategies import RebalanceCase, ScheduleCase
from properties.suite import Caller, Finding, OracleContradiction, check_contract
from spec.migration import (
    TransferSchedule,
    check_rebalance,
    check_schedule,
    count_transfers,
    exact_gpu_loads,
    network_nodes,
    validate_placement,
)
from spec.problem import BalancingProblem, Policy
from spec.violations import MigrationCode, Violation

IntArray = npt.NDArray[np.int64]
PreviousArgument = str | int
"""How a target takes an old placement: a keyword name, or the position 6."""

POSITION = 6
TINY_EXPERTS, TINY_SLOTS = 6, 8  # the exact migration oracle runs on layers this small
ORACLE_TIME_LIMIT_S = 10.0

# The order in which one case's rebalance violations are reported (one per case).
PRIORITY = (
    MigrationCode.PLACEMENT_INVALID,
    MigrationCode.BALANCE_CHANGED,
    MigrationCode.SLOT_NOT_KEPT,
)


def parse_previous(value: str | int) -> PreviousArgument:
    """``--previous``: a keyword name (an identifier), or ``6`` for the sixth positional
    argument (right after ``num_gpus``). ValueError otherwise."""
    text = str(value).strip()
    if text.isdigit():
        if int(text) != POSITION:
            raise ValueError(
                f"--previous {text}: an old placement can only be passed positionally as "
                f"argument {POSITION}, right after num_gpus (or give a keyword name)"
            )
        return POSITION
    if not text.isidentifier():
        raise ValueError(f"--previous must be a keyword name or {POSITION}, got {value!r}")
    return text


def describe_previous(argument: PreviousArgument) -> str:
    if argument == POSITION:
        return "as the sixth positional argument"
    return f"as the keyword argument {argument}="


def placement_arg(rows: Any) -> TensorArg:
    """An old placement as the target receives it: an int64 tensor [layers, replicas]."""
    return TensorArg(np.asarray(rows, dtype=np.int64), "int64", True)


def with_previous(call: Caller, argument: PreviousArgument, previous: IntArray) -> Caller:
    """``call`` with the old placement added the way the target takes it."""
    tensor = placement_arg(previous)

    def caller(*args: Any) -> CallResult | CallFailure:
        if argument == POSITION:
            return call(*args, tensor)
        return call(*args, **{str(argument): tensor})

    return caller


@dataclass
class RebalanceTally:
    """What the rebalance section measured over the cases it checked (per layer sums)."""

    cases: int = 0
    layers: int = 0
    transfers: int = 0  # the target's, with the old placement
    stateless_transfers: int = 0  # its stateless answer's, from the same old placement
    fewest_relabeled: int = 0  # the relabeling optimum of its stateless answer
    layers_above_fewest: int = 0
    oracle_layers: int = 0  # tiny layers the exact oracle solved
    oracle_proven: int = 0
    oracle_target_transfers: int = 0  # the target's, on the proven layers
    oracle_fewest: int = 0  # the oracle's fewest at the target's peak, proven layers
    oracle_at_fewest: int = 0
    origins: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "layers": self.layers,
            "transfers": self.transfers,
            "stateless_transfers": self.stateless_transfers,
            "fewest_relabeled": self.fewest_relabeled,
            "layers_above_fewest": self.layers_above_fewest,
            "oracle": {
                "layers": self.oracle_layers,
                "proven": self.oracle_proven,
                "target_transfers": self.oracle_target_transfers,
                "fewest": self.oracle_fewest,
                "at_fewest": self.oracle_at_fewest,
            },
            "origins": dict(sorted(self.origins.items())),
        }


def is_tiny(problem: BalancingProblem) -> bool:
    return (
        problem.num_layers == 1
        and problem.num_experts <= TINY_EXPERTS
        and problem.num_replicas <= TINY_SLOTS
    )


def relabeling_optimum(
    problem: BalancingProblem, previous: IntArray, new: IntArray, *, relabel: bool = True
) -> IntArray:
    """``new`` relabeled (and slot-preserved) for the fewest transfers from ``previous``
    among the placements equivalent to it (``impl.migrate``); ``relabel=False``: slot
    preservation alone."""
    result: IntArray = migrate(
        previous,
        new,
        num_experts=problem.num_experts,
        num_gpus=problem.num_gpus,
        num_nodes=network_nodes(problem),
        keep_nodes=problem.policy is Policy.HIERARCHICAL,
        relabel=relabel,
    ).phy2log
    return result


def transfers_per_layer(problem: BalancingProblem, previous: IntArray, new: IntArray) -> IntArray:
    result: IntArray = count_transfers(
        previous,
        new,
        num_experts=problem.num_experts,
        num_gpus=problem.num_gpus,
        num_nodes=network_nodes(problem),
    ).per_layer
    return result


def where(violation: Violation) -> str:
    """A violation's message with its layer (its code is the finding's)."""
    return (
        violation.message
        if violation.layer is None
        else (f"layer {violation.layer}: {violation.message}")
    )


def in_context(finding: Finding, what: str) -> Finding:
    """A finding of a call made with an old placement, saying so."""
    message = finding.message
    if finding.check == "input-unmodified":
        message = "the implementation changed its weight tensor or the old placement it was given"
    return Finding(finding.check, f"{what}: {message}", finding.code)


def old_placement(
    call: Caller, case: RebalanceCase, soft: list[Finding], dtype: Callable[[Any], str]
) -> IntArray:
    """The case's old placement: given, or the target's own answer on the old loads."""
    problem = case.problem
    if case.previous is not None:
        return validate_placement(problem, np.asarray(case.previous, dtype=np.int64), "previous")
    before = case.previous_problem
    assert before is not None
    outputs, _ = check_contract(call, before, soft, dtype(before.loads))
    return np.asarray(outputs.phy2log, dtype=np.int64)


def answers_with_and_without_previous(
    call: Caller,
    case: RebalanceCase,
    argument: PreviousArgument,
    soft: list[Finding],
    dtype: Callable[[Any], str],
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """The old placement handed to the target, its stateless answer, its answer given
    the old placement (a contract failure there is ``placement-invalid``) and the
    relabeling optimum's transfers per layer."""
    problem = case.problem
    previous = old_placement(call, case, soft, dtype)
    stateless_outputs, _ = check_contract(call, problem, soft, dtype(problem.loads))
    stateless = np.asarray(stateless_outputs.phy2log, dtype=np.int64)
    what = f"called with an old placement ({describe_previous(argument)})"
    try:
        outputs, _ = check_contract(
            with_previous(call, argument, previous), problem, soft, dtype(problem.loads)
        )
    except Finding as finding:
        if finding.check == "contract":
            raise Finding(
                "rebalance", f"{what}: {finding.message}", MigrationCode.PLACEMENT_INVALID.value
            ) from None
        raise in_context(finding, what) from None
    rebalanced = np.asarray(outputs.phy2log, dtype=np.int64)
    fewest = transfers_per_layer(
        problem, previous, relabeling_optimum(problem, previous, stateless)
    )
    return previous, stateless, rebalanced, fewest


def check_rebalance_case(
    call: Caller,
    case: RebalanceCase,
    argument: PreviousArgument,
    *,
    soft: list[Finding],
    tally: RebalanceTally | None = None,
    dtype: Callable[[Any], str] = lambda loads: "float64",
    oracle: bool = True,
) -> None:
    """Check one rebalance; raise ``Finding`` for what stops the case, append
    ``transfers-above-fewest`` (and type-only findings) to ``soft``, and add what was
    measured to ``tally``."""
    problem = case.problem
    previous, stateless, rebalanced, fewest = answers_with_and_without_previous(
        call, case, argument, soft, dtype
    )
    violations = check_rebalance(problem, previous, rebalanced, stateless, fewest_transfers=fewest)
    for code in PRIORITY:
        first = next((v for v in violations if v.code is code), None)
        if first is not None:
            raise Finding("rebalance", where(first), code.value)
    transfers = transfers_per_layer(problem, previous, rebalanced)
    above = [v for v in violations if v.code is MigrationCode.TRANSFERS_ABOVE_FEWEST]
    if above:
        soft.append(
            Finding(
                "rebalance",
                f"{where(above[0])}; {len(above)} of {problem.num_layers} layer(s) above the "
                f"relabeling optimum of its own stateless answer, {int(transfers.sum())} "
                f"transfers where "
                f"{int(fewest.sum())} give the same GPU loads",
                MigrationCode.TRANSFERS_ABOVE_FEWEST.value,
            )
        )
    if tally is not None:
        tally.cases += 1
        tally.layers += problem.num_layers
        tally.transfers += int(transfers.sum())
        tally.stateless_transfers += int(transfers_per_layer(problem, previous, stateless).sum())
        tally.fewest_relabeled += int(fewest.sum())
        tally.layers_above_fewest += len(above)
        tally.origins[case.origin] = tally.origins.get(case.origin, 0) + 1
    if oracle and is_tiny(problem):
        compare_with_oracle(problem, previous, rebalanced, transfers, tally)


def compare_with_oracle(
    problem: BalancingProblem,
    previous: IntArray,
    rebalanced: IntArray,
    transfers: IntArray,
    tally: RebalanceTally | None,
) -> None:
    """The oracle's fewest transfers at the target's own peak, against the target's."""
    from oracle.cpsat import SolverSettings
    from oracle.migration import fewest_transfers_exact
    from oracle.result import Status

    settings = SolverSettings(time_limit_s=ORACLE_TIME_LIMIT_S)
    for layer in range(problem.num_layers):
        peak = max(
            exact_gpu_loads(
                problem.loads[layer : layer + 1], rebalanced[[layer]], problem.num_gpus
            )[0]
        )
        answer = fewest_transfers_exact(problem, layer, previous, Fraction(peak), settings).result
        if answer.status is Status.INFEASIBLE:
            raise OracleContradiction(
                f"layer {layer}: the oracle finds no placement within a peak of {peak} that "
                f"a valid answer reaches, on {problem.loads.tolist()}"
            )
        if Fraction(int(transfers[layer])) < answer.bound:
            raise OracleContradiction(
                f"layer {layer}: a valid placement with peak {peak} needs "
                f"{int(transfers[layer])} transfers, below the oracle's proven "
                f"{answer.bound}, from {previous[layer].tolist()} on {problem.loads.tolist()}"
            )
        if tally is None:
            continue
        tally.oracle_layers += 1
        if answer.status is Status.OPTIMAL and answer.objective is not None:
            tally.oracle_proven += 1
            tally.oracle_target_transfers += int(transfers[layer])
            tally.oracle_fewest += int(answer.objective)
            tally.oracle_at_fewest += int(transfers[layer]) == int(answer.objective)


# --- schedules ------------------------------------------------------------------------------


@dataclass
class ScheduleTally:
    """What the schedule section measured over the cases it checked."""

    cases: int = 0
    layers: int = 0
    transfers: int = 0
    batches: int = 0
    most_links: int = 0  # sum over layers of the most links a GPU is in: a floor on batches
    inter_node: int = 0  # transfers whose source is on another node than the destination
    fewest_inter_node: int = 0  # those no source on the destination's node could serve

    def to_json(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "layers": self.layers,
            "transfers": self.transfers,
            "batches": self.batches,
            "most_links": self.most_links,
            "inter_node": self.inter_node,
            "fewest_inter_node": self.fewest_inter_node,
        }


def reference_schedule(
    previous: Any, phy2log: Any, num_experts: int, num_gpus: int, num_nodes: int
) -> tuple[IntArray, IntArray]:
    """``impl.schedule_transfers`` with the gate's schedule signature (a ``--schedule``
    target: ``properties.rebalance:reference_schedule``)."""
    old = np.asarray(previous, dtype=np.int64)
    new = np.asarray(phy2log, dtype=np.int64)
    schedule = schedule_transfers(
        old, new, num_experts=num_experts, num_gpus=num_gpus, num_nodes=num_nodes
    )
    return schedule.transfers, schedule.num_batches


def read_schedule(result: CallResult) -> TransferSchedule:
    """The ``(transfers, num_batches)`` pair a schedule target returned, as arrays
    (``spec.check_schedule`` judges their shapes and dtypes); a ``schedule-malformed``
    finding when it is not a pair of arrays."""
    value = result.value
    expected = "expected (transfers [T, 5], num_batches [L])"
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        raise Finding(
            "schedule",
            f"returned {result.returned}; {expected}",
            MigrationCode.SCHEDULE_MALFORMED.value,
        )
    arrays = []
    for name, item in zip(("transfers", "num_batches"), value, strict=True):
        try:
            array = np.asarray(item)
        except (TypeError, ValueError) as error:
            raise Finding(
                "schedule",
                f"{name} is not an array ({error}); {expected}",
                MigrationCode.SCHEDULE_MALFORMED.value,
            ) from None
        if array.size == 0 and array.dtype.kind == "f":  # an empty list
            array = array.astype(np.int64).reshape((0, 5) if name == "transfers" else (0,))
        arrays.append(array)
    return TransferSchedule(arrays[0], arrays[1])


def check_schedule_case(
    call: Caller,
    case: ScheduleCase,
    *,
    exchanges: bool,
    tally: ScheduleTally | None = None,
) -> None:
    """Call the schedule target on one pair of placements and check its answer."""
    problem = case.problem
    previous = np.asarray(case.previous, dtype=np.int64)
    new = np.asarray(case.phy2log, dtype=np.int64)
    nodes = network_nodes(problem)
    outcome = call(
        placement_arg(previous), placement_arg(new), problem.num_experts, problem.num_gpus, nodes
    )
    if isinstance(outcome, CallFailure):
        code = {
            "raised": "raises-on-valid-input",
            "timeout": "timeout",
            "crash": "crash",
            "undecodable": "undecodable-result",
        }[outcome.kind]
        raise Finding("schedule", f"on valid placements: {outcome.message}", code)
    if outcome.input_modified:
        raise Finding(
            "schedule", "the schedule changed the placements it was given", "input-unmodified"
        )
    schedule = read_schedule(outcome)
    violations = check_schedule(problem, previous, new, schedule, exchanges=exchanges)
    if violations:
        more = f" (and {len(violations) - 1} more violation(s))" if len(violations) > 1 else ""
        raise Finding("schedule", f"{where(violations[0])}{more}", violations[0].code.value)
    if tally is None:
        return
    counts = count_transfers(
        previous, new, num_experts=problem.num_experts, num_gpus=problem.num_gpus, num_nodes=nodes
    )
    rows = schedule.transfers
    per_node = problem.num_gpus // nodes
    tally.cases += 1
    tally.layers += problem.num_layers
    tally.transfers += int(rows.shape[0])
    tally.batches += int(schedule.num_batches.sum())
    tally.inter_node += int((rows[:, 3] // per_node != rows[:, 4] // per_node).sum())
    tally.fewest_inter_node += int(counts.inter_node.sum())
    tally.most_links += sum(busiest_gpu_links(rows, problem.num_layers, exchanges))


def busiest_gpu_links(rows: IntArray, num_layers: int, exchanges: bool) -> list[int]:
    """Per layer, the most links one GPU is in (a link: a pair of GPUs, or with
    ``exchanges=False`` a directed pair): no schedule with these sources has fewer
    batches, since a batch gives a GPU one link."""
    most = []
    for layer in range(num_layers):
        links: dict[int, set[tuple[int, int]]] = {}
        for _, _, _, source, destination in rows[rows[:, 0] == layer].tolist():
            link = (
                (min(source, destination), max(source, destination))
                if exchanges
                else (
                    source,
                    destination,
                )
            )
            links.setdefault(source, set()).add(link)
            links.setdefault(destination, set()).add(link)
        most.append(max((len(held) for held in links.values()), default=0))
    return most


__all__ = [
    "POSITION",
    "RebalanceTally",
    "ScheduleTally",
    "check_rebalance_case",
    "check_schedule_case",
    "parse_previous",
    "reference_schedule",
]


# --- budgeted rebalances --------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetedMode:
    """What a budgeted rebalance is asked for: a peak within ``(1 + eps)`` of its own
    stateless answer's (``eps``), or at most ``max_transfers`` transfers per layer."""

    eps: float | None = None
    max_transfers: int | None = None

    @staticmethod
    def parse(eps: object, max_transfers: object) -> BudgetedMode | None:
        """``--eps`` / ``--max-transfers``: at most one; ValueError naming the option."""
        if eps is not None and max_transfers is not None:
            raise ValueError("--eps and --max-transfers are two modes: give one")
        if eps is not None:
            if isinstance(eps, bool) or not isinstance(eps, (int, float)):
                raise ValueError(f"--eps must be a number, got {eps!r}")
            if not 0 <= float(eps) < math.inf:
                raise ValueError(f"--eps must be a finite tolerance >= 0, got {eps!r}")
            return BudgetedMode(eps=float(eps))
        if max_transfers is not None:
            if isinstance(max_transfers, bool) or not isinstance(max_transfers, int):
                raise ValueError(f"--max-transfers must be an int, got {max_transfers!r}")
            if max_transfers < 0:
                raise ValueError(f"--max-transfers must be >= 0, got {max_transfers}")
            return BudgetedMode(max_transfers=max_transfers)
        return None

    def describe(self) -> str:
        if self.eps is not None:
            return f"peak within (1 + {self.eps:g}) x its own stateless answer's"
        return f"at most {self.max_transfers} transfers per layer"


# The order in which one case's budgeted violations stop it.
BUDGETED_PRIORITY = (
    MigrationCode.PLACEMENT_INVALID,
    MigrationCode.PEAK_ABOVE_TOLERANCE,
    MigrationCode.TRANSFERS_ABOVE_BUDGET,
    MigrationCode.PEAK_ABOVE_PREVIOUS,
)


@dataclass
class BudgetedTally(RebalanceTally):
    """The rebalance section's measures in a budgeted mode, and beside the target's
    transfers: the reference incremental rebalancer's in the same mode (``impl.
    incremental``, with the target's stateless peaks as the reference), and the load-flow
    lower bound at the target's own peaks (``oracle.budgeted``) on the layers it covers."""

    mode: str = ""
    layers_above_reference: int = 0
    incremental_transfers: int = 0
    bound_layers: int = 0
    bound: int = 0
    bound_target_transfers: int = 0
    worst_peak_over_stateless: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "mode": self.mode,
            "layers_above_reference": self.layers_above_reference,
            "incremental_transfers": self.incremental_transfers,
            "bound": {
                "layers": self.bound_layers,
                "lower": self.bound,
                "target_transfers": self.bound_target_transfers,
            },
            "worst_peak_over_stateless": self.worst_peak_over_stateless,
        }


def check_budgeted_case(
    call: Caller,
    case: RebalanceCase,
    argument: PreviousArgument,
    mode: BudgetedMode,
    *,
    soft: list[Finding],
    tally: BudgetedTally | None = None,
    dtype: Callable[[Any], str] = lambda loads: "float64",
    oracle: bool = True,
) -> None:
    """Check one budgeted rebalance against ``spec.check_budgeted_rebalance``: raise
    ``Finding`` for ``placement-invalid``, ``peak-above-tolerance``,
    ``transfers-above-budget`` and ``peak-above-previous``; append
    ``transfers-above-reference`` (more than the relabeling optimum of its own
    stateless answer) to ``soft``; add the measures to ``tally``."""
    from impl.incremental import rebalance_incremental
    from oracle.budgeted import transfer_lower_bound
    from oracle.pipeline import MAX_SPLITS, split_count
    from spec.budgeted import check_budgeted_rebalance, exact_peaks

    problem = case.problem
    previous, stateless, rebalanced, fewest = answers_with_and_without_previous(
        call, case, argument, soft, dtype
    )
    peaks = exact_peaks(problem.loads, stateless, problem.num_gpus)
    if mode.eps is not None:
        violations = check_budgeted_rebalance(
            problem,
            previous,
            rebalanced,
            reference_peaks=peaks,
            eps=mode.eps,
            reference_transfers=fewest.tolist(),
        )
    else:
        violations = check_budgeted_rebalance(
            problem, previous, rebalanced, max_transfers=mode.max_transfers, not_above_previous=True
        )
    for code in BUDGETED_PRIORITY:
        first = next((v for v in violations if v.code is code), None)
        if first is not None:
            raise Finding("rebalance", where(first), code.value)
    transfers = transfers_per_layer(problem, previous, rebalanced)
    above = [v for v in violations if v.code is MigrationCode.TRANSFERS_ABOVE_REFERENCE]
    if above:
        soft.append(
            Finding(
                "rebalance",
                f"{where(above[0])}; {len(above)} of {problem.num_layers} layer(s) above the "
                f"relabeling optimum of its own stateless answer, which keeps its stateless "
                f"peak exactly: {int(transfers.sum())} transfers where {int(fewest.sum())} "
                f"suffice",
                MigrationCode.TRANSFERS_ABOVE_REFERENCE.value,
            )
        )
    target_peaks = exact_peaks(problem.loads, rebalanced, problem.num_gpus)
    if split_count(problem) <= MAX_SPLITS:
        for layer in range(problem.num_layers):
            found = transfer_lower_bound(
                problem, layer, previous[layer].tolist(), target_peaks[layer]
            )
            if found.bound is None or found.bound > transfers[layer]:
                raise OracleContradiction(
                    f"layer {layer}: a valid placement with peak {target_peaks[layer]} needs "
                    f"{int(transfers[layer])} transfers, but the load-flow bound says "
                    f"{found.bound}, from {previous[layer].tolist()} on {problem.loads.tolist()}"
                )
            if tally is not None:
                tally.bound_layers += 1
                tally.bound += found.bound
                tally.bound_target_transfers += int(transfers[layer])
    if tally is not None:
        reference = (
            rebalance_incremental(problem, previous, eps=mode.eps, reference_peaks=peaks)
            if mode.eps is not None
            else rebalance_incremental(problem, previous, max_transfers=mode.max_transfers)
        )
        tally.mode = mode.describe()
        tally.cases += 1
        tally.layers += problem.num_layers
        tally.transfers += int(transfers.sum())
        tally.stateless_transfers += int(transfers_per_layer(problem, previous, stateless).sum())
        tally.fewest_relabeled += int(fewest.sum())
        tally.layers_above_reference += len(above)
        tally.incremental_transfers += int(reference.transfers.sum())
        tally.origins[case.origin] = tally.origins.get(case.origin, 0) + 1
        ratios = [float(t / p) for t, p in zip(target_peaks, peaks, strict=True) if p > 0]
        tally.worst_peak_over_stateless = max([tally.worst_peak_over_stateless, *ratios])
    if oracle and is_tiny(problem):
        compare_with_oracle(problem, previous, rebalanced, transfers, tally)
