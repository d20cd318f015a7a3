"""Engine adapters against the fake engine packages in ``tests/engines`` (no download).

The fakes have the real entry points' shapes and record how they are called; every
package ``__init__`` in them raises, so a passing load proves none of them ran.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from properties import engines
from properties.engines import (
    ENGINES,
    SglangAlgorithm,
    VllmPolicy,
    VllmScheduler,
    fetch,
    find_engine,
    parse_target,
    pinned_targets,
    unpack_subtree,
)
from properties.isolation import CallResult, IsolatedTarget, TargetError
from properties.worker import load_target

FAKES = Path(__file__).parent / "engines"
WEIGHT = torch.tensor([[5, 1, 7, 3], [2, 2, 9, 0]], dtype=torch.int64)


def install_fake(root: Path, engine: str) -> Path:
    """A copy of the fake ``engine`` under ``root`` (a cache entry or a site folder)."""
    shutil.copytree(FAKES / engine, root / engine)
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An engine cache holding fake vllm 0.0.1 and sglang 0.0.1; engine modules that a
    test imports are removed from ``sys.modules`` afterwards."""
    folder = tmp_path / "cache"
    for engine in ("vllm", "sglang"):
        install_fake(folder / f"{engine}-0.0.1", engine)
    monkeypatch.setenv(engines.CACHE_ENV, str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ENGINES:
            del sys.modules[name]


def vllm_adapter(target: str = "vllm@0.0.1") -> VllmPolicy:
    adapter = find_engine(target)
    assert isinstance(adapter, VllmPolicy)
    return adapter


def sglang_adapter(algorithm: str) -> SglangAlgorithm:
    adapter = find_engine(f"sglang@0.0.1:{algorithm}")
    assert isinstance(adapter, SglangAlgorithm)
    return adapter


# --- target strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    ["impl:rebalance_experts", "tests/targets/broken.py:f", "vllmx:f", "my.vllm:f", "vllm@:x"],
)
def test_ordinary_targets_name_no_engine(target: str) -> None:
    assert parse_target(target) is None
    assert find_engine(target) is None


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("vllm", ("vllm", None, "default")),
        ("vllm@0.33.0", ("vllm", "0.33.0", "default")),
        ("vllm:default", ("vllm", None, "default")),
        ("sglang:deepseek_vec", ("sglang", None, "deepseek_vec")),
        ("sglang@0.5.23:elasticity_aware", ("sglang", "0.5.23", "elasticity_aware")),
    ],
)
def test_engine_target_forms(target: str, expected: tuple[str, str | None, str]) -> None:
    parsed = parse_target(target)
    assert parsed is not None
    engine, version, algorithm = parsed
    assert (engine.name, version, algorithm) == expected


def test_an_engine_with_several_balancers_needs_one_named() -> None:
    with pytest.raises(TargetError, match="sglang:deepseek_hierarchical"):
        parse_target("sglang")
    with pytest.raises(TargetError, match="no balancer 'lplb'"):
        parse_target("sglang:lplb")


def test_pinned_targets_cover_every_algorithm_of_every_engine() -> None:
    targets = pinned_targets()
    assert len(targets) == sum(len(e.algorithms) for e in ENGINES.values())
    for target in targets:
        parsed = parse_target(target)
        assert parsed is not None
        assert parsed[1] == engines.PINNED_RELEASES[parsed[0].name]


# --- where the release comes from -----------------------------------------------------------


def test_cached_release_resolves_without_running_engine_code(cache: Path) -> None:
    adapter = vllm_adapter()
    assert (adapter.name, adapter.version, adapter.origin) == (
        "vllm@0.0.1:default",
        "0.0.1",
        "cache",
    )
    assert adapter.root == cache / "vllm-0.0.1"
    assert adapter.source == adapter.root / "vllm/distributed/eplb/policy/default.py"
    assert all(p.is_file() for p in adapter.sources)
    assert str(adapter.root) in adapter.description
    assert "DefaultEplbPolicy.rebalance_experts" in adapter.description
    assert not any(name.split(".")[0] in ENGINES for name in sys.modules)


def test_a_loaded_cached_release_is_not_taken_for_an_installed_one(cache: Path) -> None:
    sglang_adapter("deepseek").load()
    adapter = sglang_adapter("deepseek_vec")
    assert (adapter.origin, adapter.version) == ("cache", "0.0.1")


def test_a_folder_named_like_an_engine_is_not_an_installed_engine(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "site" / "vllm").mkdir(parents=True)  # a namespace package at most
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert vllm_adapter().origin == "cache"


def test_bare_engine_name_takes_the_pinned_release(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(engines.PINNED_RELEASES, "vllm", "0.0.1")
    assert vllm_adapter("vllm").version == "0.0.1"


def test_missing_release_says_how_to_fetch_it(cache: Path) -> None:
    with pytest.raises(TargetError) as raised:
        find_engine("sglang@9.9.9:deepseek")
    message = str(raised.value)
    assert "sglang 9.9.9 is neither installed nor cached" in message
    assert "pip download sglang==9.9.9 --no-deps" in message
    assert "python -m properties.engines fetch sglang@9.9.9" in message
    assert str(cache / "sglang-9.9.9") in message


def test_default_cache_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(engines.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert engines.cache_dir() == tmp_path / "eplb-spec" / "engines"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path) -> Path:
    """Fake vllm 0.0.3 installed on sys.path (with its dist-info), beside the cache."""
    site = install_fake(tmp_path / "site", "vllm")
    info = site / "vllm-0.0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.0.3\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_installed_engine_wins_for_a_bare_name_or_its_own_version(installed: Path) -> None:
    for target in ("vllm", "vllm@0.0.3"):
        adapter = vllm_adapter(target)
        assert (adapter.origin, adapter.version, adapter.root) == ("installed", "0.0.3", installed)
    cached = vllm_adapter("vllm@0.0.1")
    assert (cached.origin, cached.version) == ("cache", "0.0.1")


def test_installed_engine_loads_without_its_init(installed: Path) -> None:
    function = vllm_adapter("vllm").load()
    function(WEIGHT, 8, 2, 1, 4)
    policy = sys.modules["vllm.distributed.eplb.policy.default"]
    assert Path(str(policy.__file__)).is_relative_to(installed)
    assert not hasattr(sys.modules["vllm"], "__file__")


def test_another_copy_already_imported_is_refused(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = type(sys)("vllm")
    elsewhere.__path__ = ["/somewhere/else/vllm"]
    monkeypatch.setitem(sys.modules, "vllm", elsewhere)
    with pytest.raises(TargetError, match="another 'vllm' is already imported"):
        vllm_adapter().load()


def test_source_digest_covers_every_source(cache: Path) -> None:
    adapter = sglang_adapter("elasticity_aware")
    before = adapter.source_sha256()
    assert len(before) == 64
    assert before == adapter.source_sha256()
    deepseek = adapter.root / "sglang/srt/eplb/eplb_algorithms/deepseek.py"
    assert deepseek in adapter.sources
    deepseek.write_text(deepseek.read_text() + "\n# changed\n")
    assert adapter.source_sha256() != before


# --- how each engine is called -------------------------------------------------------------


def test_vllm_policy_is_called_like_eplb_state_calls_it(cache: Path) -> None:
    function = vllm_adapter().load()
    result = function(WEIGHT, 8, 2, 1, 4)
    policy_module = sys.modules["vllm.distributed.eplb.policy.default"]
    call: dict[str, Any] = policy_module.CALLS[-1]
    assert call["cls"] is policy_module.DefaultEplbPolicy  # called as a classmethod
    assert call["weight"] is WEIGHT
    assert (call["num_replicas"], call["num_groups"], call["num_nodes"], call["num_ranks"]) == (
        8,
        2,
        1,
        4,
    )
    assert call["old_global_expert_indices"] is None
    assert result is policy_module.RESULTS[-1]  # phy2log alone, unchanged


def test_vllm_policy_gets_the_old_placement_sixth_as_eplb_state_passes_it(cache: Path) -> None:
    adapter = vllm_adapter()
    assert adapter.previous_argument == "previous"
    old = torch.arange(8).remainder(4).repeat(2, 1)
    vllm_adapter().load()(WEIGHT, 8, 2, 1, 4, previous=old)
    policy_module = sys.modules["vllm.distributed.eplb.policy.default"]
    call: dict[str, Any] = policy_module.CALLS[-1]
    assert call["old_global_expert_indices"] is old
    assert call["weight"] is WEIGHT


def test_vllm_migration_scheduler_is_called_like_the_async_worker_calls_it(cache: Path) -> None:
    adapter = find_engine("vllm@0.0.1:migration_scheduler")
    assert isinstance(adapter, VllmScheduler)
    assert (adapter.kind, adapter.exchanges) == ("schedule", False)
    assert adapter.source.name == "migration_scheduler.py"
    old = torch.arange(8).remainder(4).repeat(2, 1)
    new = old.flip(1)
    transfers, num_batches = adapter.load()(old, new, 4, 4, 1)
    module = sys.modules["vllm.distributed.eplb.migration_scheduler"]
    call = module.CALLS[-1]
    assert call["num_local_experts"] == 2  # slots per rank: 8 replicas on 4 ranks
    assert np.array_equal(call["old"], old.numpy())
    assert np.array_equal(call["new"], new.numpy())
    # Each flow's experts, in vLLM's order, as (layer, batch, expert, source, destination).
    assert transfers.tolist() == [[0, 0, 3, 0, 1], [0, 0, 2, 0, 1], [0, 0, 5, 2, 3]]
    assert num_batches.tolist() == [1, 0]
    assert "migration_scheduler" not in " ".join(pinned_targets())  # not a balancer


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_hierarchical", "deepseek_vec"])
def test_sglang_dispatcher_is_called_like_init_by_eplb_calls_it(
    cache: Path, algorithm: str
) -> None:
    function = sglang_adapter(algorithm).load()
    weight = WEIGHT.to(torch.int32)
    result = function(weight, 12, 2, 2, 4)
    dispatcher = sys.modules["sglang.srt.eplb.eplb_algorithms"]
    call: dict[str, Any] = dispatcher.CALLS[-1]
    tokens = call["tokens_per_expert"]
    assert tokens.shape == (1, 2, 4)  # [steps, layers, experts]
    assert tokens.dtype == torch.int32
    assert torch.equal(tokens[0], weight)
    assert call["num_physical_experts"] == 12
    assert call["num_local_physical_experts"] == 3  # num_physical_experts // ep_size
    assert (call["num_groups"], call["num_nodes"]) == (2, 2)
    assert call["algorithm"] is dispatcher.EplbAlgorithm[algorithm]
    assert result is dispatcher.RESULTS[-1]
    assert all(array.dtype == torch.int32 for array in result)  # int32 stays int32


@pytest.mark.parametrize("hierarchical", [False, True])
def test_sglang_elastic_algorithm_gets_all_ranks_active(cache: Path, hierarchical: bool) -> None:
    name = "elasticity_aware_hierarchical" if hierarchical else "elasticity_aware"
    function = sglang_adapter(name).load()
    result = function(WEIGHT, 12, 2, 2, 4)
    module = sys.modules["sglang.srt.eplb.eplb_algorithms.elasticity_aware"]
    call: dict[str, Any] = module.CALLS[-1]
    assert torch.equal(call["weight"], WEIGHT)
    assert call["weight"].shape == (2, 4)
    assert (call["num_replicas"], call["num_groups"], call["num_nodes"], call["num_gpus"]) == (
        12,
        2,
        2,
        4,
    )
    assert call["enable_hierarchical"] is hierarchical
    assert call["active_ranks"].dtype == torch.int32
    assert call["active_ranks"].tolist() == [1, 1, 1, 1]
    assert result[0].dtype == torch.int32


def test_load_target_and_the_worker_resolve_the_same_engine(cache: Path) -> None:
    function = load_target("vllm@0.0.1")
    assert function(WEIGHT, 8, 2, 1, 4).tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]] * 2
    from properties.suite import tensor_arg
    from spec.problem import BalancingProblem

    problem = BalancingProblem(WEIGHT.numpy(), 8, 2, 1, 4)
    with IsolatedTarget("sglang@0.0.1:deepseek_vec", timeout_s=120) as worker:
        outcome = worker.call(tensor_arg(problem, "int64"), 8, 2, 1, 4)
    assert isinstance(outcome, CallResult)
    assert outcome.returned == "tuple of 3 torch.Tensor"
    assert [array.dtype for array in outcome.value] == [np.int32] * 3


# --- preconditions of the engines' callers --------------------------------------------------


def test_vllm_domain(cache: Path) -> None:
    adapter = vllm_adapter()
    assert adapter.outside_domain(12, (16, 4, 2, 8)) is None
    assert adapter.outside_domain(12, (16, 3, 2, 8)) is None  # global policy
    reason = adapter.outside_domain(12, (20, 4, 2, 8))
    assert reason is not None
    assert "num_replicas % num_gpus" in reason
    assert adapter.outside_domain(12, (16, 4, 2, 0)) is not None
    reason = adapter.outside_domain(12, (8, 4, 2, 8))
    assert reason is not None
    assert "num_redundant_experts" in reason
    reason = adapter.outside_domain(12, (16, 3, 3, 4))
    assert reason is not None
    assert "num_nodes=1" in reason


def test_sglang_domain(cache: Path) -> None:
    hierarchical = sglang_adapter("deepseek_hierarchical")
    flat = sglang_adapter("deepseek_vec")
    for adapter in (hierarchical, flat):
        reason = adapter.outside_domain(12, (20, 4, 2, 8))
        assert reason is not None
        assert "num_physical_experts % ep_size" in reason
        assert adapter.outside_domain(12, (16, 4, 1, 8)) is None  # one node: either policy
    assert hierarchical.outside_domain(12, (16, 4, 2, 8)) is None
    assert flat.outside_domain(12, (16, 4, 2, 8)) is not None
    assert flat.outside_domain(12, (16, 3, 2, 8)) is None
    reason = hierarchical.outside_domain(12, (16, 3, 2, 8))
    assert reason is not None
    assert "num_groups % num_nodes" in reason


def test_load_domain(cache: Path) -> None:
    vllm, sglang = vllm_adapter(), sglang_adapter("deepseek")
    counts = np.array([[3.0, 0.0, 2.0**40]])
    for adapter in (vllm, sglang):
        assert adapter.outside_load_domain(counts) is None
        for bad in (np.nan, np.inf, -1.0):
            assert adapter.outside_load_domain(np.array([[1.0, bad]])) is not None
    assert vllm.outside_load_domain(np.array([[1.5, 2.0]])) is not None
    assert sglang.outside_load_domain(np.array([[1.5, 2.0]])) is None


# --- fetching releases ---------------------------------------------------------------------


def fake_wheel(path: Path, engine: str, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted((FAKES / engine).rglob("*.py")):
            archive.write(file, file.relative_to(FAKES).as_posix())
        archive.writestr(f"{engine}/outside_the_subtree.py", "raise SystemExit\n")
        for name, text in (extra or {}).items():
            archive.writestr(name, text)
    return path


def test_unpack_keeps_only_the_eplb_subtree(tmp_path: Path) -> None:
    wheel = fake_wheel(tmp_path / "sglang-0.0.2-py3-none-any.whl", "sglang")
    folder = unpack_subtree(wheel, ENGINES["sglang"], "0.0.2", tmp_path / "cache")
    assert folder == tmp_path / "cache" / "sglang-0.0.2"
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert "sglang/srt/eplb/eplb_algorithms/__init__.py" in files
    assert "sglang/__init__.py" not in files
    assert "sglang/outside_the_subtree.py" not in files
    assert "release.json" in files


def test_unpack_refuses_member_names_that_leave_the_cache(tmp_path: Path) -> None:
    wheel = fake_wheel(
        tmp_path / "vllm-0.0.2-py3-none-any.whl",
        "vllm",
        {"vllm/distributed/eplb/../../../../escape.py": "x = 1\n"},
    )
    with pytest.raises(ValueError, match="unsafe member name"):
        unpack_subtree(wheel, ENGINES["vllm"], "0.0.2", tmp_path / "cache")
    assert not (tmp_path / "cache" / "vllm-0.0.2").exists()


def test_fetch_downloads_the_wheel_alone_and_caches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[list[str]] = []

    def pip(command: list[str], check: bool) -> None:
        commands.append(command)
        destination = Path(command[command.index("--dest") + 1])
        fake_wheel(destination / "vllm-0.0.4-cp38-abi3-manylinux_2_28_x86_64.whl", "vllm")

    monkeypatch.setattr(subprocess, "run", pip)
    folder = fetch("vllm", "0.0.4", cache=tmp_path)
    assert (folder / "vllm/distributed/eplb/policy/default.py").is_file()
    (command,) = commands
    assert command[1:5] == ["-m", "pip", "download", "vllm==0.0.4"]
    assert "--no-deps" in command
    assert fetch("vllm", "0.0.4", cache=tmp_path) == folder  # cached: no second download
    assert len(commands) == 1


def test_engines_command_lists_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert engines.main(["targets"]) == 0
    assert capsys.readouterr().out.split() == pinned_targets()
