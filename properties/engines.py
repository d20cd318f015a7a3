"""Built-in adapters for the balancers that inference engines ship.

An adapter names an engine's EPLB entry point (``--impl vllm``,
``--impl sglang:deepseek_hierarchical``, optionally with a release: ``vllm@0.33.0``,
``sglang@0.5.23:deepseek``), imports its module from an installed or cached release
without running the engine's package ``__init__`` files, and calls it the way the
engine's own caller does. Adapters adapt calls only; they never change behaviour: what
the engine returns is handed back unchanged.

The split of work between the two processes of the gate:

- ``find_engine(target)`` runs in both: pure path logic (the import system's finders
  asked for the top-level package, which executes nothing, and the cache folder), so
  both resolve the same release.
- ``EngineAdapter.load()`` runs in the worker: it imports the engine's module and
  returns a function with DeepSeek's signature
  ``f(weight, num_replicas, num_groups, num_nodes, num_gpus)`` (vLLM's also takes the
  old placement as ``previous=``), or for a transfer scheduler
  (``vllm:migration_scheduler``) one with the gate's schedule signature
  ``f(previous, phy2log, num_experts, num_gpus, num_nodes)``.
- ``EngineAdapter.outside_domain(...)`` and ``outside_load_domain(...)`` run on the
  checking side: they say why the engine's caller would never make a call (its
  preconditions), so the gate does not report what the engine never allows. They never
  run engine code.

Which release: ``ENGINE@VERSION`` takes an installed engine of exactly that version,
else the cached release. A bare ``ENGINE`` takes the installed engine, whatever its
version, else the cached pinned release (``PINNED_RELEASES``). The cache is
``$EPLB_SPEC_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/eplb-spec/engines``, else
``~/.cache/eplb-spec/engines``; ``python -m properties.engines fetch`` fills it with the
EPLB subtrees of the pinned releases (``pip download NAME==VERSION --no-deps``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from properties.worker import TargetError

# The engine releases the project gates (``nox -s downstream``); bump one line to move on.
PINNED_RELEASES: dict[str, str] = {
    "vllm": "0.33.0",
    "sglang": "0.5.23",
}

CACHE_ENV = "EPLB_SPEC_ENGINE_CACHE"
RELEASE_RECORD = "release.json"

Cluster = tuple[int, int, int, int]  # (num_replicas, num_groups, num_nodes, num_gpus)


@dataclass(frozen=True)
class Engine:
    """What this project knows about an engine: where its EPLB code lives in a wheel."""

    name: str  # the distribution and its top-level package
    subtree: str  # the EPLB folder inside the wheel
    algorithms: tuple[str, ...]  # the balancers it ships, as gate targets name them
    default_algorithm: str | None  # what a bare ``--impl NAME`` means
    # ``pip download`` options that pick one wheel whatever the local platform (only its
    # pure-Python EPLB subtree is unpacked).
    download_options: tuple[str, ...]
    # Its transfer schedulers, as ``--schedule`` targets name them (not balancers).
    schedulers: tuple[str, ...] = ()


ENGINES: dict[str, Engine] = {
    "vllm": Engine(
        name="vllm",
        subtree="vllm/distributed/eplb",
        algorithms=("default",),
        default_algorithm="default",
        download_options=(
            "--only-binary=:all:",
            "--platform=manylinux_2_28_x86_64",
            "--python-version=3.11",
            "--implementation=cp",
        ),
        schedulers=("migration_scheduler",),
    ),
    "sglang": Engine(
        name="sglang",
        subtree="sglang/srt/eplb",
        algorithms=(
            "deepseek",
            "deepseek_hierarchical",
            "deepseek_vec",
            "deepseek_vec_hierarchical",
            "elasticity_aware",
            "elasticity_aware_hierarchical",
        ),
        default_algorithm=None,
        download_options=(
            "--only-binary=:all:",
            "--platform=manylinux_2_34_x86_64",
            "--python-version=3.11",
            "--implementation=cp",
            "--abi=cp311",
        ),
    ),
}


def cache_dir() -> Path:
    """Where unpacked engine releases live (created by ``fetch``, never by a lookup)."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "eplb-spec" / "engines"


def release_dir(engine: str, version: str, cache: Path | None = None) -> Path:
    return (cache if cache is not None else cache_dir()) / f"{engine}-{version}"


# ---------------------------------------------------------------------------------------
# Adapters


@dataclass(frozen=True)
class EngineAdapter:
    """One engine algorithm as a gate target.

    ``name``: the canonical target (``vllm@0.33.0:default``); ``root``: the folder that
    holds the engine's top-level package; ``source``: the file of the function called;
    ``sources``: every engine file the call executes (hash these for the report).
    """

    name: str
    description: str
    engine: str
    algorithm: str
    version: str
    origin: str  # "installed" or "cache"
    root: Path
    source: Path
    sources: tuple[Path, ...]

    def load(self) -> Callable[..., Any]:
        raise NotImplementedError

    def outside_domain(self, num_experts: int, cluster: Cluster) -> str | None:
        """Why the engine's caller never makes this call, or None when it may."""
        return None

    caller_dtype: ClassVar[str | None] = None
    """The dtype the engine's caller passes its loads in (None: none in particular)."""

    only_caller_dtype: ClassVar[bool] = False
    """True when no other dtype ever reaches the engine."""

    kind: ClassVar[str] = "balancer"
    """``balancer`` (a ``--impl`` target) or ``schedule`` (a ``--schedule`` target)."""

    previous_argument: ClassVar[str | None] = None
    """The keyword under which the loaded function takes an old placement (the engine's
    caller passes its current ``phy2log``), or None when the balancer takes none."""

    exchanges: ClassVar[bool] = True
    """For a schedule: whether a GPU may send to and receive from its one peer in a
    batch (``spec.check_schedule``'s ``exchanges``)."""

    def outside_load_domain(self, weight: npt.NDArray[Any]) -> str | None:
        """Why the engine's caller never passes these loads, or None when it may."""
        values = np.asarray(weight, dtype=np.float64)
        if not np.isfinite(values).all() or (values < 0).any():
            return (
                f"{self.engine}'s caller passes token counts recorded by the engine, which are "
                "finite and non-negative"
            )
        if self.only_caller_dtype and self.caller_dtype is not None and values.size:
            largest = np.iinfo(np.dtype(self.caller_dtype)).max
            if values.max() > largest:
                return (
                    f"{self.engine}'s caller passes {self.caller_dtype} counts, at most {largest}"
                )
        return None

    def source_sha256(self) -> str:
        """One digest over the engine files the call executes, in ``sources`` order."""
        digest = hashlib.sha256()
        for path in self.sources:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def import_module(self, dotted: str, packages: Sequence[str]) -> types.ModuleType:
        """``dotted`` imported from ``root``, with ``packages`` (its parents whose
        ``__init__`` files need the whole engine) registered as empty packages."""
        for package in packages:
            path = self.root.joinpath(*package.split("."))
            existing = sys.modules.get(package)
            if existing is not None:
                if [str(Path(p)) for p in getattr(existing, "__path__", [])] != [str(path)]:
                    raise TargetError(
                        f"another {package!r} is already imported in this process "
                        f"({getattr(existing, '__path__', None)}); cannot import {self.name} "
                        f"from {self.root}"
                    )
                continue
            module = types.ModuleType(package)
            spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
            spec.submodule_search_locations = [str(path)]
            module.__spec__ = spec
            module.__path__ = [str(path)]
            module.__package__ = package
            sys.modules[package] = module
            parent, _, child = package.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)
        try:
            return importlib.import_module(dotted)
        except Exception as error:  # third-party import-time failure
            raise TargetError(
                f"importing {dotted} from {self.root} failed: {type(error).__name__}: {error}"
            ) from None


VLLM_POLICY = "vllm.distributed.eplb.policy.default"
VLLM_PACKAGES = (
    "vllm",
    "vllm.distributed",
    "vllm.distributed.eplb",
    "vllm.distributed.eplb.policy",
)


@dataclass(frozen=True)
class VllmPolicy(EngineAdapter):
    """vLLM's ``DefaultEplbPolicy``: ``EplbState.rearrange`` (and the async worker's
    ``run_rebalance_experts``) call the classmethod ``rebalance_experts(load,
    num_replicas, num_groups, num_nodes, num_gpus, old_map)`` positionally with the int64
    token counts and the current ``physical_to_logical_map`` ([layers, replicas], int64),
    both on the CPU. The loaded function takes the old map as ``previous=`` and passes it
    sixth, as they do; without it the sixth argument is left out (its default, None)."""

    caller_dtype: ClassVar[str | None] = "int64"
    only_caller_dtype: ClassVar[bool] = True
    previous_argument: ClassVar[str | None] = "previous"

    def load(self) -> Callable[..., Any]:
        module = self.import_module(VLLM_POLICY, VLLM_PACKAGES)
        policy = getattr(module, "DefaultEplbPolicy", None)
        if policy is None:
            raise TargetError(f"{self.source} has no DefaultEplbPolicy")

        def rebalance_experts(
            weight: Any,
            num_replicas: int,
            num_groups: int,
            num_nodes: int,
            num_gpus: int,
            previous: Any = None,
        ) -> Any:
            if previous is None:
                return policy.rebalance_experts(
                    weight, num_replicas, num_groups, num_nodes, num_gpus
                )
            return policy.rebalance_experts(
                weight, num_replicas, num_groups, num_nodes, num_gpus, previous
            )

        return rebalance_experts

    def outside_domain(self, num_experts: int, cluster: Cluster) -> str | None:
        num_replicas, _, num_nodes, num_gpus = cluster
        if num_gpus < 1 or num_replicas % num_gpus != 0:
            return (
                "vLLM refuses to start EPLB unless the physical experts divide evenly over "
                "the EP ranks (FusedMoE raises ValueError), so num_replicas % num_gpus == 0"
            )
        if num_replicas < num_experts:
            return (
                "vLLM has num_replicas = num_logical_experts + num_redundant_experts, and "
                "num_redundant_experts >= 0 is validated (EPLBConfig)"
            )
        if num_nodes < 1 or num_gpus % num_nodes != 0:
            return (
                "vLLM's caller (EplbState.rearrange) passes num_nodes=1 instead when "
                "num_gpus % num_nodes != 0"
            )
        return None

    def outside_load_domain(self, weight: npt.NDArray[Any]) -> str | None:
        reason = super().outside_load_domain(weight)
        if reason is None and not np.array_equal(np.asarray(weight), np.round(weight)):
            return "vLLM's caller passes integer token counts (int64), never fractions"
        return reason


VLLM_SCHEDULER = "vllm.distributed.eplb.migration_scheduler"


@dataclass(frozen=True)
class VllmScheduler(EngineAdapter):
    """vLLM's ``migration_scheduler``: the async EPLB worker (with
    ``migration_batching_enabled``) calls ``schedule_migration_batches_for_layers(
    num_local_experts, old_map.numpy(), new_map.numpy())`` on the ``[layers, replicas]``
    int64 maps, ``num_local_experts`` being the slots per rank; it returns, per layer,
    batches of ``MigrationFlow(src_rank, dst_rank, expert_ids)``. The loaded function has
    the gate's schedule signature ``f(previous, phy2log, num_experts, num_gpus,
    num_nodes)`` and lists the flows as ``(layer, batch, expert, source, destination)``
    rows in the order vLLM returns them, with ``num_batches[l] = len(batches[l])``: plain
    data, since ``MigrationFlow`` objects cannot cross the gate's isolation."""

    kind: ClassVar[str] = "schedule"
    exchanges: ClassVar[bool] = False  # each flow's both endpoints are busy in its batch

    def load(self) -> Callable[..., Any]:
        module = self.import_module(VLLM_SCHEDULER, VLLM_PACKAGES[:3])
        scheduler = getattr(module, "schedule_migration_batches_for_layers", None)
        if scheduler is None:
            raise TargetError(f"{self.source} has no schedule_migration_batches_for_layers")

        def schedule(
            previous: Any, phy2log: Any, num_experts: int, num_gpus: int, num_nodes: int
        ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
            old, new = previous.numpy(), phy2log.numpy()
            layers = scheduler(old.shape[1] // num_gpus, old, new)
            rows = [
                (layer, batch, int(expert), int(flow.src_rank), int(flow.dst_rank))
                for layer, batches in enumerate(layers)
                for batch, flows in enumerate(batches)
                for flow in flows
                for expert in flow.expert_ids
            ]
            transfers = np.asarray(rows, dtype=np.int64).reshape(-1, 5)
            return transfers, np.asarray([len(b) for b in layers], dtype=np.int64)

        return schedule


SGLANG_DISPATCHER = "sglang.srt.eplb.eplb_algorithms"
SGLANG_ELASTIC = "sglang.srt.eplb.eplb_algorithms.elasticity_aware"
SGLANG_PACKAGES = ("sglang", "sglang.srt", "sglang.srt.eplb")
SGLANG_MODULE_OF = {
    "deepseek": "deepseek",
    "deepseek_hierarchical": "deepseek",
    "deepseek_vec": "deepseek_vec",
    "deepseek_vec_hierarchical": "deepseek_vec",
    "elasticity_aware": "elasticity_aware",
    "elasticity_aware_hierarchical": "elasticity_aware",
}


@dataclass(frozen=True)
class SglangAlgorithm(EngineAdapter):
    """One ``EplbAlgorithm`` of SGLang: ``ExpertLocationMetadata.init_by_eplb`` calls the
    dispatcher ``eplb_algorithms.rebalance_experts`` with ``tokens_per_expert`` of shape
    ``[steps, layers, experts]`` (a 2-D count gets ``unsqueeze(0)``) and
    ``num_local_physical_experts = num_physical_experts // ep_size``."""

    # Recorded counts are int32; a user's expert-location file may hold other numbers.
    caller_dtype: ClassVar[str | None] = "int32"

    @property
    def hierarchical(self) -> bool:
        return self.algorithm.endswith("_hierarchical")

    def load(self) -> Callable[..., Any]:
        dispatcher = self.import_module(SGLANG_DISPATCHER, SGLANG_PACKAGES)
        algorithms = getattr(dispatcher, "EplbAlgorithm", None)
        if algorithms is None or self.algorithm not in algorithms.__members__:
            raise TargetError(
                f"{self.root / SGLANG_DISPATCHER.replace('.', '/')} has no "
                f"EplbAlgorithm.{self.algorithm}"
            )
        if self.algorithm.startswith("elasticity_aware"):
            return self.load_elastic()
        algorithm = algorithms[self.algorithm]

        def rebalance_experts(
            weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
        ) -> Any:
            return dispatcher.rebalance_experts(
                tokens_per_expert=weight.unsqueeze(0),
                num_physical_experts=num_replicas,
                num_local_physical_experts=num_replicas // num_gpus,
                num_groups=num_groups,
                num_nodes=num_nodes,
                algorithm=algorithm,
            )

        return rebalance_experts

    def load_elastic(self) -> Callable[..., Any]:
        """The dispatcher's elastic branch imports the serving stack for the state of
        elastic EP; with it off (or every rank healthy) it passes ``active_ranks`` of all
        ones, which is what this calls the algorithm with, the other arguments exactly as
        the dispatcher computes them."""
        import torch

        module = self.import_module(SGLANG_ELASTIC, SGLANG_PACKAGES)
        hierarchical = self.hierarchical

        def rebalance_experts(
            weight: Any, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
        ) -> Any:
            tokens_per_expert = weight.unsqueeze(0)
            num_local_physical_experts = num_replicas // num_gpus
            return module.rebalance_experts(
                weight=tokens_per_expert.sum(dim=0),
                num_replicas=num_replicas,
                num_groups=num_groups,
                num_nodes=num_nodes,
                num_gpus=num_replicas // num_local_physical_experts,
                enable_hierarchical=hierarchical,
                active_ranks=torch.ones(num_gpus, dtype=torch.int32),
            )

        return rebalance_experts

    def outside_domain(self, num_experts: int, cluster: Cluster) -> str | None:
        num_replicas, num_groups, num_nodes, num_gpus = cluster
        if num_gpus < 1 or num_replicas % num_gpus != 0:
            return (
                "SGLang's caller (ExpertLocationMetadata._init_common) asserts "
                "num_physical_experts % ep_size == 0 before the call"
            )
        if num_nodes >= 1 and num_groups >= 1:
            if self.hierarchical and num_groups % num_nodes != 0:
                return (
                    f"{self.algorithm} asserts num_groups % num_nodes == 0; for such clusters "
                    "SGLang's eplb_algorithm=auto selects the global algorithm"
                )
            if not self.hierarchical and num_nodes > 1 and num_groups % num_nodes == 0:
                return (
                    f"{self.algorithm} is a global algorithm that ignores nodes by design, so the "
                    "hierarchical (group-per-node) contract is not its contract; for such "
                    "clusters SGLang's eplb_algorithm=auto selects the hierarchical one"
                )
        return None


# ---------------------------------------------------------------------------------------
# Resolving a target


@dataclass(frozen=True)
class Release:
    engine: str
    version: str
    origin: str  # "installed" or "cache"
    root: Path  # folder that holds the top-level package


def parse_target(target: str) -> tuple[Engine, str | None, str] | None:
    """``(engine, version or None, algorithm)`` for an engine target, None otherwise.

    Forms: ``ENGINE``, ``ENGINE@VERSION``, ``ENGINE:ALGORITHM``,
    ``ENGINE@VERSION:ALGORITHM``; raises TargetError for an engine target that names no
    known algorithm."""
    head, colon, algorithm = target.partition(":")
    name, at, version = head.partition("@")
    engine = ENGINES.get(name)
    if engine is None or (at and not version):
        return None
    if not colon:
        if engine.default_algorithm is None:
            raise TargetError(
                f"{name} ships several balancers; name one: "
                + ", ".join(f"{name}:{a}" for a in engine.algorithms)
            )
        algorithm = engine.default_algorithm
    if algorithm not in engine.algorithms + engine.schedulers:
        raise TargetError(
            f"{name} has no balancer {algorithm!r}; known: "
            + ", ".join(f"{name}:{a}" for a in engine.algorithms + engine.schedulers)
        )
    return engine, (version or None), algorithm


def installed_release(engine: Engine) -> Release | None:
    """The engine installed in this environment, found without executing it.

    The import system's finders are asked directly: ``importlib.util.find_spec`` would
    return what ``sys.modules`` holds, e.g. the empty package an earlier ``load`` put
    there for a cached release."""
    spec = None
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            spec = find_spec(engine.name, None)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            break
    if spec is None or spec.origin is None or Path(spec.origin).name != "__init__.py":
        return None  # not installed, or only a namespace package (a folder of that name)
    package = Path(spec.origin).parent
    try:
        version = importlib.metadata.version(engine.name)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return Release(engine.name, version, "installed", package.parent)


def how_to_fetch(engine: Engine, version: str) -> str:
    return (
        f"run `python -m properties.engines fetch {engine.name}@{version}` (or `nox -s "
        f"downstream`), which runs `pip download {engine.name}=={version} --no-deps` and "
        f"unpacks only {engine.subtree}/ into {release_dir(engine.name, version)}"
    )


def find_release(engine: Engine, version: str | None) -> Release:
    installed = installed_release(engine)
    if installed is not None and version in (None, installed.version):
        return installed
    wanted = version or PINNED_RELEASES[engine.name]
    cached = release_dir(engine.name, wanted)
    if (cached / engine.subtree).is_dir():
        return Release(engine.name, wanted, "cache", cached)
    found = f"; {engine.name} {installed.version} is installed" if installed else ""
    raise TargetError(
        f"{engine.name} {wanted} is neither installed nor cached{found}: "
        + how_to_fetch(engine, wanted)
    )


def vllm_adapter(release: Release) -> VllmPolicy:
    policy = release.root / "vllm" / "distributed" / "eplb" / "policy"
    source = policy / "default.py"
    description = (
        f"vllm {release.version} ({release.origin}: {release.root}): "
        "DefaultEplbPolicy.rebalance_experts(weight, num_replicas, num_groups, num_nodes, "
        "num_gpus[, old_global_expert_indices]) (classmethod, arguments positional as "
        "EplbState.rearrange passes them; the sixth, the old phy2log [layers, replicas] "
        "int64, only in the rebalance section) -> phy2log; log2phy and logcnt derived by "
        "the gate"
    )
    return VllmPolicy(
        name=f"vllm@{release.version}:default",
        description=description,
        engine="vllm",
        algorithm="default",
        version=release.version,
        origin=release.origin,
        root=release.root,
        source=source,
        sources=(source, policy / "abstract.py"),
    )


def vllm_scheduler_adapter(release: Release) -> VllmScheduler:
    source = release.root / "vllm" / "distributed" / "eplb" / "migration_scheduler.py"
    description = (
        f"vllm {release.version} ({release.origin}: {release.root}): "
        "schedule_migration_batches_for_layers(num_replicas // num_gpus, previous.numpy(), "
        "phy2log.numpy()) as the async EPLB worker calls it -> batches of MigrationFlow, "
        "listed as (layer, batch, expert, source, destination) rows"
    )
    return VllmScheduler(
        name=f"vllm@{release.version}:migration_scheduler",
        description=description,
        engine="vllm",
        algorithm="migration_scheduler",
        version=release.version,
        origin=release.origin,
        root=release.root,
        source=source,
        sources=(source,),
    )


def sglang_adapter(release: Release, algorithm: str) -> SglangAlgorithm:
    package = release.root / "sglang" / "srt" / "eplb" / "eplb_algorithms"
    dispatcher = package / "__init__.py"
    source = package / f"{SGLANG_MODULE_OF[algorithm]}.py"
    sources = [source, dispatcher]
    if algorithm.startswith("elasticity_aware"):
        sources.append(package / "deepseek.py")  # it calls deepseek's hierarchical step
        hierarchical = algorithm.endswith("_hierarchical")
        call = (
            "elasticity_aware.rebalance_experts(weight=weight.unsqueeze(0).sum(dim=0), "
            "num_replicas=num_replicas, num_groups=num_groups, num_nodes=num_nodes, "
            "num_gpus=num_replicas // (num_replicas // num_gpus), "
            f"enable_hierarchical={hierarchical}, "
            "active_ranks=torch.ones(num_gpus, dtype=torch.int32)) as the dispatcher calls it "
            "with elastic EP off"
        )
    else:
        call = (
            "eplb_algorithms.rebalance_experts(tokens_per_expert=weight.unsqueeze(0), "
            "num_physical_experts=num_replicas, "
            "num_local_physical_experts=num_replicas // num_gpus, num_groups=num_groups, "
            f"num_nodes=num_nodes, algorithm=EplbAlgorithm.{algorithm})"
        )
    description = (
        f"sglang {release.version} ({release.origin}: {release.root}): {call} -> "
        "(phy2log, log2phy, logcnt) as returned"
    )
    return SglangAlgorithm(
        name=f"sglang@{release.version}:{algorithm}",
        description=description,
        engine="sglang",
        algorithm=algorithm,
        version=release.version,
        origin=release.origin,
        root=release.root,
        source=source,
        sources=tuple(sources),
    )


def find_engine(target: str) -> EngineAdapter | None:
    """The adapter that ``target`` names, or None when it names no engine.

    Raises TargetError for an engine target that cannot be used (unknown algorithm,
    release neither installed nor cached: the message says how to fetch it)."""
    parsed = parse_target(target)
    if parsed is None:
        return None
    engine, version, algorithm = parsed
    release = find_release(engine, version)
    if engine.name == "vllm" and algorithm in engine.schedulers:
        return vllm_scheduler_adapter(release)
    if engine.name == "vllm":
        return vllm_adapter(release)
    return sglang_adapter(release, algorithm)


def pinned_targets() -> list[str]:
    """Every balancer of every pinned release, as gate targets."""
    return [
        f"{name}@{PINNED_RELEASES[name]}:{algorithm}"
        for name, engine in ENGINES.items()
        for algorithm in engine.algorithms
    ]


# ---------------------------------------------------------------------------------------
# Fetching releases into the cache


def unpack_subtree(wheel: Path, engine: Engine, version: str, cache: Path | None = None) -> Path:
    """Unpack only ``engine.subtree`` of ``wheel`` into the cache; returns its folder."""
    target = release_dir(engine.name, version, cache)
    prefix = engine.subtree + "/"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(prefix) and not m.endswith("/")]
        if not members:
            raise ValueError(f"{wheel} holds no {prefix}; is it a {engine.name} wheel?")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for member in members:
                relative = PurePosixPath(member)
                if relative.is_absolute() or ".." in relative.parts:
                    raise ValueError(f"{wheel}: unsafe member name {member!r}")
                destination = staging.joinpath(*relative.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(archive.read(member))
            record = {
                "engine": engine.name,
                "version": version,
                "wheel": wheel.name,
                "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                "files": sorted(members),
            }
            (staging / RELEASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return target


def fetch(name: str, version: str, *, wheel: Path | None = None, cache: Path | None = None) -> Path:
    """The cached release ``name==version``, downloaded (wheel only, no dependencies)
    and unpacked when missing; ``wheel`` unpacks a wheel already on disk instead."""
    engine = ENGINES[name]
    target = release_dir(name, version, cache)
    if wheel is None and (target / engine.subtree).is_dir():
        return target
    if wheel is not None:
        return unpack_subtree(wheel, engine, version, cache)
    with tempfile.TemporaryDirectory() as downloads:
        command = [
            sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps",
            "--dest", downloads, *engine.download_options,
        ]  # fmt: skip
        subprocess.run(command, check=True)
        wheels = sorted(Path(downloads).glob(f"{name}-{version}-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {name}=={version} gave no wheel")
        return unpack_subtree(wheels[0], engine, version, cache)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m properties.engines",
        description="Engine releases for the gate's built-in engine targets.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser(
        "fetch", help="download pinned releases (wheel only) and cache their EPLB subtree"
    )
    fetch_parser.add_argument(
        "releases", nargs="*", help="ENGINE or ENGINE@VERSION (default: every pinned release)"
    )
    fetch_parser.add_argument("--wheel", type=Path, help="unpack this wheel instead of pip")
    commands.add_parser("targets", help="print the gate target of every pinned balancer")
    commands.add_parser("list", help="say which release each engine target resolves to")
    args = parser.parse_args(argv)

    if args.command == "targets":
        print("\n".join(pinned_targets()))
        return 0
    if args.command == "list":
        status = 0
        for target in pinned_targets():
            try:
                adapter = find_engine(target)
                assert adapter is not None
                print(f"{target}: {adapter.description}")
            except TargetError as error:
                print(f"{target}: {error}")
                status = 1
        return status
    wanted = args.releases or [f"{n}@{v}" for n, v in PINNED_RELEASES.items()]
    if args.wheel is not None and len(wanted) != 1:
        parser.error("--wheel takes exactly one ENGINE@VERSION")
    for item in wanted:
        name, _, version = item.partition("@")
        if name not in ENGINES:
            parser.error(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
        path = fetch(name, version or PINNED_RELEASES[name], wheel=args.wheel)
        print(f"{name} {version or PINNED_RELEASES[name]}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
