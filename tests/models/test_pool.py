"""Tests of the model pool: fake models of known sizes, then real tiny torch models on the CPU.

Fake devices ("fake0") with explicit budgets exercise the accelerator paths (offload, restore,
out-of-memory fallback) without a GPU: their spec.move records each move instead of copying.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import psutil
import pytest
import torch

from zoomearth.errors import (
    ModelFallbackRequired,
    ModelPoolError,
    ModelTooLargeError,
    ZoomEarthError,
)
from zoomearth.models import (
    CudaDevice,
    ModelPool,
    ModelSpec,
    PoolWarning,
    format_bytes,
    format_stats,
    get_default_pool,
    is_out_of_memory,
    measure_bytes,
    parse_bytes,
    pool_from_settings,
    set_default_pool,
    visible_cuda_devices,
)

FAST = 1e15  # bytes/s: offloading always beats reloading
SLOW = 1.0  # bytes/s: reloading always beats offloading


# ---- fakes ----------------------------------------------------------------------------------


@dataclass
class FakeModel:
    key: str
    nbytes: int
    device: str

    def __call__(self, x: int) -> int:
        return x + 1


@dataclass
class Recorder:
    """Records every load and move, and can make loads slow or failing."""

    loads: list[tuple[str, str]] = field(default_factory=list)
    moves: list[tuple[str, str]] = field(default_factory=list)
    load_delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spec(
        self, key: str, nbytes: int | None, *, true_size: int | None = None, **kw
    ) -> ModelSpec:
        size = nbytes if true_size is None else true_size

        def load(device: str) -> FakeModel:
            if self.load_delay:
                time.sleep(self.load_delay)
            with self.lock:
                self.loads.append((key, device))
            return FakeModel(key, size, device)

        def move(model: FakeModel, device: str) -> FakeModel:
            with self.lock:
                self.moves.append((key, device))
            model.device = device
            return model

        return ModelSpec(key=key, load=load, size_bytes=nbytes, move=move, **kw)


def use_once(pool: ModelPool, spec: ModelSpec, device: str = "cpu") -> None:
    with pool.use(spec, device) as model:
        assert model.device == device


def states(pool: ModelPool) -> dict[str, str]:
    return {m.key: m.state for m in pool.stats().models}


# ---- helpers --------------------------------------------------------------------------------


def test_parse_and_format_bytes():
    assert parse_bytes("8GiB") == 8 * 2**30
    assert parse_bytes("512 MB") == 512 * 10**6
    assert parse_bytes("1.5g") == 1_500_000_000
    assert parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("lots")
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(12) == "12 B"


def test_import_does_not_import_torch():
    code = "import sys, zoomearth.models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_is_out_of_memory_recognises_oom_errors():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(ModelTooLargeError("too big"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("allocation failed"))
    wrapped = ValueError("tool failed")
    wrapped.__cause__ = RuntimeError("CUDA error: out of memory")
    assert is_out_of_memory(wrapped)
    assert not is_out_of_memory(ValueError("bad box"))
    assert not is_out_of_memory(ModelFallbackRequired("ran out of memory everywhere"))


# ---- loading, hits, LRU ---------------------------------------------------------------------


def test_lazy_load_then_hit():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    spec = rec.spec("a", 40)
    assert rec.loads == []  # a spec alone loads nothing
    use_once(pool, spec)
    use_once(pool, spec)
    assert rec.loads == [("a", "cpu")]
    stats = pool.stats()
    assert (stats.misses, stats.hits) == (1, 1)
    assert stats.model("a").nbytes == 40
    assert pool.resident_bytes("cpu") == 40


def test_lru_eviction_order():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    a, b, c, d = (rec.spec(k, 40) for k in "abcd")
    use_once(pool, a)
    use_once(pool, b)
    use_once(pool, a)  # a is now more recent than b
    use_once(pool, c)  # needs 40 of 100 with 80 used: evicts b, the least recently used
    assert states(pool) == {"a": "resident", "b": "unloaded", "c": "resident"}
    use_once(pool, d)  # evicts a (c was used later)
    assert states(pool)["a"] == "unloaded"
    assert states(pool)["c"] == "resident"
    assert pool.stats().evictions == 2
    assert pool.stats().frees == 2  # on the CPU eviction frees


def test_budget_never_exceeded_random_sequence():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    specs = [rec.spec(f"m{i}", size) for i, size in enumerate([10, 25, 40, 55, 60, 100])]
    rng = random.Random(0)
    for _ in range(300):
        use_once(pool, rng.choice(specs))
        assert pool.resident_bytes("cpu") <= 100
    cpu = pool.stats().device("cpu")
    assert cpu.peak_bytes <= cpu.budget_bytes == 100
    assert cpu.peak_bytes == 100  # the 100-byte model was loaded at some point


def test_pinned_models_are_not_evicted():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    a, b, c = rec.spec("a", 50), rec.spec("b", 30), rec.spec("c", 40)
    use_once(pool, b)
    with pool.use(a, "cpu"):
        use_once(pool, c)  # 80 used + 40: must evict b, never the pinned a
        assert states(pool)["a"] == "resident"
        assert states(pool)["b"] == "unloaded"
        big = rec.spec("big", 60)
        with pytest.raises(ModelTooLargeError, match="still using"):
            use_once(pool, big)  # a (pinned by this thread) + big > budget: fail, do not hang
    assert pool.stats().model("a").pinned == 0


def test_model_larger_than_budget_gives_clear_error():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    with pytest.raises(ModelTooLargeError) as info:
        use_once(pool, rec.spec("huge", 101))
    message = str(info.value)
    assert "model_pool_budget" in message and "huge" in message
    assert isinstance(info.value, ModelPoolError)
    assert isinstance(info.value, ZoomEarthError)
    assert isinstance(info.value, RuntimeError)
    assert rec.loads == []  # refused before loading
    assert pool.resident_bytes("cpu") == 0


def test_unknown_size_is_measured_after_load_and_remembered():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    other = rec.spec("other", 50)
    unknown = rec.spec("unknown", None, true_size=70)  # FakeModel.nbytes is measured
    use_once(pool, other)
    use_once(pool, unknown)  # measured 70: other must go to keep the accounting within budget
    stats = pool.stats()
    assert stats.model("unknown").nbytes == 70
    assert stats.model("other").state == "unloaded"
    assert stats.device("cpu").peak_bytes <= 100
    use_once(pool, other)  # evicts unknown
    use_once(pool, unknown)  # the remembered size makes room before the load this time
    assert pool.stats().device("cpu").peak_bytes <= 100


def test_measured_size_over_budget_is_refused_after_load():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    use_once(pool, rec.spec("small", 30))
    with pytest.raises(ModelTooLargeError, match="model_pool_budget"):
        use_once(pool, rec.spec("liar", None, true_size=150))
    assert pool.stats().model("liar").state == "unloaded"
    assert pool.resident_bytes("cpu") <= 100
    assert pool.stats().device("cpu").peak_bytes <= 100


def test_set_budget_applies_to_the_next_load():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    use_once(pool, rec.spec("a", 60))
    pool.set_budget("cpu", 50)
    use_once(pool, rec.spec("b", 40))  # a must go: 60 + 40 > 50
    assert states(pool) == {"a": "unloaded", "b": "resident"}
    assert pool.budget("cpu") == 50


def test_failed_load_leaves_no_trace():
    calls = []

    def load(device: str) -> FakeModel:
        calls.append(device)
        if len(calls) == 1:
            raise OSError("checkpoint truncated")
        return FakeModel("flaky", 10, device)

    pool = ModelPool(budgets={"cpu": 100})
    spec = ModelSpec("flaky", load=load, size_bytes=10)
    with pytest.raises(OSError, match="truncated"):
        use_once(pool, spec)
    assert pool.resident_bytes("cpu") == 0
    assert pool.stats().model("flaky").state == "unloaded"
    use_once(pool, spec)  # the next use loads again
    assert pool.stats().model("flaky").loads == 1


def test_unknown_device_without_budget_is_an_error():
    pool = ModelPool(budgets={"cpu": 100})
    with pytest.raises(ModelPoolError, match="budgets="):
        use_once(pool, Recorder().spec("a", 1), "fake9")


def test_default_cpu_budget_is_a_fraction_of_available_ram():
    pool = ModelPool(budget_fraction=0.5)
    budget = pool.budget("cpu")
    assert 0 < budget <= psutil.virtual_memory().total * 0.5


# ---- threads ------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 8])
def test_concurrent_acquire_of_one_key_loads_once(concurrency):
    rec = Recorder(load_delay=0.05)
    pool = ModelPool(budgets={"cpu": 100}, concurrency=concurrency)
    spec = rec.spec("shared", 60)
    barrier = threading.Barrier(8)
    seen: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            with pool.use(spec, "cpu") as model:
                seen.append(id(model))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert rec.loads == [("shared", "cpu")]
    assert len(set(seen)) == 1 and len(seen) == 8
    stats = pool.stats()
    assert (stats.misses, stats.hits) == (1, 7)


def _overlap_run(pool: ModelPool, specs: list[ModelSpec]) -> int:
    active = 0
    peak = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(spec: ModelSpec) -> None:
        nonlocal active, peak
        try:
            for _ in range(3):
                with pool.use(spec, "cpu"):
                    with lock:
                        active += 1
                        peak = max(peak, active)
                    time.sleep(0.005)
                    with lock:
                        active -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    return peak


def test_concurrency_one_serialises_use_of_a_device():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100}, concurrency=1)
    specs = [rec.spec(f"m{i}", 20) for i in range(4)]
    assert _overlap_run(pool, specs) == 1


def test_concurrency_two_allows_at_most_two():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100}, concurrency=2)
    specs = [rec.spec(f"m{i}", 20) for i in range(4)]
    assert _overlap_run(pool, specs) <= 2


def test_concurrent_mixed_use_keeps_budget():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100}, concurrency=3)
    specs = [rec.spec(f"m{i}", size) for i, size in enumerate([20, 30, 45, 50, 25, 33])]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                with pool.use(rng.choice(specs), "cpu"):
                    assert pool.resident_bytes("cpu") <= 100
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert pool.stats().device("cpu").peak_bytes <= 100


def test_waits_for_other_threads_to_release_memory():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100}, concurrency=2)
    a, b = rec.spec("a", 60), rec.spec("b", 60)
    a_in_use = threading.Event()
    release_a = threading.Event()
    b_done = threading.Event()

    def hold_a() -> None:
        with pool.use(a, "cpu"):
            a_in_use.set()
            release_a.wait(10)

    def want_b() -> None:
        with pool.use(b, "cpu"):
            b_done.set()

    holder = threading.Thread(target=hold_a)
    holder.start()
    assert a_in_use.wait(10)
    waiter = threading.Thread(target=want_b)
    waiter.start()
    assert not b_done.wait(0.2)  # b cannot fit while a is in use by another thread
    release_a.set()
    assert b_done.wait(10)
    holder.join(10)
    waiter.join(10)
    assert states(pool) == {"a": "unloaded", "b": "resident"}
    assert pool.stats().device("cpu").peak_bytes <= 100


def test_nested_use_on_one_device_does_not_deadlock():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100}, concurrency=1, wait_timeout=5)
    a, b = rec.spec("a", 30), rec.spec("b", 30)
    with pool.use(a, "cpu") as model_a, pool.use(b, "cpu") as model_b:
        assert model_a(1) == model_b(1) == 2


def test_wait_timeout_for_a_device_slot():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100}, concurrency=1, wait_timeout=0.1)
    entered = threading.Event()
    leave = threading.Event()

    def hold() -> None:
        with pool.use(rec.spec("a", 10), "cpu"):
            entered.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    try:
        with pytest.raises(ModelPoolError, match="free slot"):
            use_once(pool, rec.spec("b", 10))
    finally:
        leave.set()
        holder.join(10)


# ---- offload (fake accelerator) -------------------------------------------------------------


def test_eviction_offloads_when_cheaper_and_restores_without_reloading():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=FAST)
    a, b = rec.spec("a", 60), rec.spec("b", 60)
    use_once(pool, a, "fake0")
    use_once(pool, b, "fake0")  # evicts a: offloaded to the CPU
    assert rec.moves == [("a", "cpu")]
    model_a = pool.stats().model("a")
    assert (model_a.state, model_a.location) == ("offloaded", "cpu")
    assert pool.resident_bytes("cpu") == 60
    assert pool.resident_bytes("fake0") == 60
    use_once(pool, a, "fake0")  # restored by a move, b offloaded to make room
    assert rec.moves == [("a", "cpu"), ("b", "cpu"), ("a", "fake0")]
    assert rec.loads == [("a", "fake0"), ("b", "fake0")]  # no reload
    stats = pool.stats()
    assert (stats.misses, stats.restores, stats.offloads) == (2, 1, 2)
    assert stats.model("a").state == "resident"
    assert stats.device("fake0").peak_bytes <= 100


def test_eviction_frees_when_reloading_is_cheaper():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=SLOW)
    a, b = rec.spec("a", 60), rec.spec("b", 60)
    use_once(pool, a, "fake0")
    use_once(pool, b, "fake0")
    use_once(pool, a, "fake0")
    assert rec.moves == []
    assert rec.loads == [("a", "fake0"), ("b", "fake0"), ("a", "fake0")]
    assert pool.stats().frees == 2


def test_offload_respects_the_cpu_budget():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 100}, transfer_bytes_per_s=FAST)
    a, b, c = rec.spec("a", 60), rec.spec("b", 60), rec.spec("c", 60)
    use_once(pool, a, "fake0")
    use_once(pool, b, "fake0")  # a -> cpu (60 of 100)
    use_once(pool, c, "fake0")  # b -> cpu needs room: a (offloaded, LRU) is freed
    assert states(pool) == {"a": "unloaded", "b": "offloaded", "c": "resident"}
    assert pool.stats().device("cpu").peak_bytes <= 100


def test_not_offloadable_spec_is_freed():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=FAST)
    a = rec.spec("a", 60, offloadable=False)
    use_once(pool, a, "fake0")
    use_once(pool, rec.spec("b", 60), "fake0")
    assert rec.moves == [] and states(pool)["a"] == "unloaded"


def test_explicit_evict_and_clear():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=FAST)
    use_once(pool, rec.spec("a", 30), "fake0")
    use_once(pool, rec.spec("b", 30), "cpu")
    assert pool.evict(device="fake0") == 1  # offloaded
    assert states(pool) == {"a": "offloaded", "b": "resident"}
    assert pool.clear() == 2
    assert pool.resident_bytes("cpu") == pool.resident_bytes("fake0") == 0


# ---- out-of-memory policy -------------------------------------------------------------------


class FakeOOM(RuntimeError):
    def __init__(self) -> None:
        super().__init__("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 1 GiB total)")


def test_oom_evicts_the_others_and_retries_once():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=SLOW)
    other, spec = rec.spec("other", 50), rec.spec("model", 40)
    use_once(pool, other, "fake0")
    calls: list[tuple[str, dict[str, str]]] = []

    def fn(model: FakeModel, device: str) -> str:
        calls.append((device, states(pool)))
        if len(calls) == 1:
            raise FakeOOM()
        return f"ok on {device}"

    assert pool.run(spec, fn, "fake0") == "ok on fake0"
    assert calls[0] == ("fake0", {"other": "resident", "model": "resident"})
    assert calls[1] == ("fake0", {"other": "unloaded", "model": "resident"})
    assert pool.warnings == []  # a successful retry on the same device is no fallback
    assert pool.stats().ooms == 1


def test_oom_falls_back_to_cpu_with_a_warning():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=SLOW)
    spec = rec.spec("sam", 40, description="SAM vit_b")
    devices: list[str] = []

    def fn(model: FakeModel, device: str) -> str:
        devices.append(device)
        if device == "fake0":
            raise FakeOOM()
        return model.device

    with pool.collect_warnings() as bucket:
        assert pool.run(spec, fn, "fake0") == "cpu"
    assert devices == ["fake0", "fake0", "cpu"]
    assert len(bucket) == 1 and bucket == pool.warnings
    warning = bucket[0]
    assert isinstance(warning, PoolWarning)
    assert (warning.key, warning.device, warning.fallback) == ("sam", "fake0", "cpu")
    assert "SAM vit_b" in str(warning) and "cpu" in str(warning)
    assert pool.drain_warnings() == bucket
    assert pool.warnings == []


def test_oom_everywhere_requires_the_classical_backend():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000})
    spec = rec.spec("inpaint", 40)

    def fn(model: FakeModel, device: str) -> None:
        raise MemoryError()

    with pool.collect_warnings() as bucket, pytest.raises(ModelFallbackRequired) as info:
        pool.run(spec, fn, "fake0")
    assert info.value.devices == ("fake0", "cpu")
    assert info.value.key == "inpaint"
    assert "model_pool_budget" in str(info.value)
    assert [w.fallback for w in bucket] == ["cpu", "classical"]
    stats = pool.stats()
    assert stats.ooms == 3 and stats.fallbacks == 2


def test_model_too_large_for_device_falls_back_to_cpu():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000})
    result = pool.run(rec.spec("big", 500), lambda model, device: device, "fake0")
    assert result == "cpu"
    assert rec.loads == [("big", "cpu")]
    assert pool.warnings[0].fallback == "cpu"


def test_no_cpu_fallback_when_the_spec_forbids_it():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000})
    spec = rec.spec("gpu-only", 40, cpu_fallback=False)

    def fn(model, device):
        raise FakeOOM()

    with pytest.raises(ModelFallbackRequired) as info:
        pool.run(spec, fn, "fake0")
    assert info.value.devices == ("fake0",)


def test_other_errors_propagate_without_retry():
    rec = Recorder()
    pool = ModelPool(budgets={"cpu": 100})
    calls = []

    def fn(model, device):
        calls.append(device)
        raise ValueError("our bug")

    with pytest.raises(ValueError, match="our bug"):
        pool.run(rec.spec("a", 10), fn, "cpu")
    assert calls == ["cpu"]
    assert pool.warnings == [] and pool.stats().ooms == 0


def test_arun_from_async_code_collects_warnings():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000})

    def fn(model, device):
        if device == "fake0":
            raise FakeOOM()
        return device

    async def main() -> tuple[str, list[PoolWarning]]:
        with pool.collect_warnings() as bucket:
            result = await pool.arun(rec.spec("a", 10), fn, "fake0")
        return result, bucket

    result, bucket = asyncio.run(main())
    assert result == "cpu"
    assert [w.fallback for w in bucket] == ["cpu"]


# ---- stats and the default pool -----------------------------------------------------------


def test_stats_are_serialisable_and_formatted():
    rec = Recorder()
    pool = ModelPool(budgets={"fake0": 100, "cpu": 1000}, transfer_bytes_per_s=FAST)
    use_once(pool, rec.spec("planner", 70, description="ZoomEarth-3B"), "fake0")
    use_once(pool, rec.spec("sam", 50), "fake0")
    stats = pool.stats()
    payload = json.loads(json.dumps(stats.to_dict()))
    assert {m["key"] for m in payload["models"]} == {"planner", "sam"}
    assert payload["misses"] == 2 and payload["offloads"] == 1
    text = format_stats(stats)
    assert "planner" in text and "offloaded (cpu)" in text and "fake0" in text
    assert "evictions 1" in text
    assert "no model loaded yet" in format_stats(ModelPool(budgets={"cpu": 1}).stats())


def test_default_pool_accessors():
    previous = set_default_pool(None)
    try:
        first = get_default_pool()
        assert get_default_pool() is first
        mine = ModelPool(budgets={"cpu": 10})
        assert set_default_pool(mine) is None  # no pool was installed before
        assert get_default_pool() is mine
        assert set_default_pool(None) is mine
        assert get_default_pool() is not mine
    finally:
        set_default_pool(previous)


@pytest.fixture()
def no_installed_pool():
    previous = set_default_pool(None)
    yield
    set_default_pool(previous)


def _budget_settings(tmp_path, budget, **more):
    from zoomearth.config import load_settings

    flags = {"data_dir": tmp_path / "data", "model_pool_budget_bytes": budget, **more}
    return load_settings(flags=flags, environ={})


def test_default_pool_follows_the_settings_budget(tmp_path, no_installed_pool):
    """Issue #13: a second Agent with another budget must not get the first one's pool."""
    small = _budget_settings(tmp_path, 1000)
    large = _budget_settings(tmp_path, 5000)
    first, second = get_default_pool(small), get_default_pool(large)
    assert first is not second
    assert first.budget("cpu") == 1000 and second.budget("cpu") == 5000
    # Same configuration, same pool: the planner and tools of one Agent share resident models.
    assert get_default_pool(_budget_settings(tmp_path / "other", 1000)) is first
    assert get_default_pool(small) is first and first.budget("cpu") == 1000


def test_default_pool_follows_fraction_and_concurrency(tmp_path, no_installed_pool):
    base = get_default_pool(_budget_settings(tmp_path, None))
    halves = get_default_pool(_budget_settings(tmp_path, None, model_pool_fraction=0.5))
    two = get_default_pool(_budget_settings(tmp_path, None, model_pool_concurrency=2))
    assert len({id(base), id(halves), id(two)}) == 3
    assert halves.budget_fraction == 0.5
    # No settings = the default configuration = settings that leave the pool values alone.
    assert get_default_pool() is base


def test_installed_pool_wins_over_settings(tmp_path, no_installed_pool):
    mine = ModelPool(budgets={"cpu": 10})
    set_default_pool(mine)
    assert get_default_pool(_budget_settings(tmp_path, 1000)) is mine
    set_default_pool(None)
    assert get_default_pool(_budget_settings(tmp_path, 1000)).budget("cpu") == 1000


def test_pool_from_settings_builds_a_new_pool(tmp_path):
    settings = _budget_settings(tmp_path, 1234)
    pool = pool_from_settings(settings)
    assert pool is not pool_from_settings(settings)
    assert pool.budget("cpu") == 1234 and pool.configured_budget("cuda:3") == 1234


def test_configured_budget_never_measures():
    pool = ModelPool(budgets={"fake0": 7}, budget_fraction=0.5)
    assert pool.configured_budget("fake0") == 7
    assert pool.configured_budget("cpu") is None  # would be measured: not known yet
    assert pool.configured_budget("auto") is None
    measured = pool.budget("cpu")
    assert pool.configured_budget("cpu") == measured


# ---- CUDA devices without torch ------------------------------------------------------------


def _fake_smi(tmp_path, lines: list[str], rc: int = 0) -> str:
    script = tmp_path / "nvidia-smi"
    body = "".join(f"echo '{line}'\n" for line in lines)
    script.write_text(f"#!/bin/sh\n{body}exit {rc}\n")
    script.chmod(0o755)
    return str(script)


_TWO_GPUS = ["0, GPU-aaaa-1111, 1000, 2000", "1, GPU-bbbb-2222, 3000, [N/A]"]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [(1000, 2000), (3000, None)]),
        ("1", [(3000, None)]),
        ("1,0", [(3000, None), (1000, 2000)]),
        ("GPU-bbbb", [(3000, None)]),
        ("0,7,1", [(1000, 2000)]),  # CUDA stops at the first entry naming no device
        ("0,0", [(1000, 2000)]),
        ("", []),
        ("-1", []),
    ],
)
def test_visible_cuda_devices_from_nvidia_smi(tmp_path, visible, expected):
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    smi = _fake_smi(tmp_path, _TWO_GPUS)
    devices = visible_cuda_devices(environ=environ, allow_torch=False, nvidia_smi=smi)
    mib = 2**20
    assert devices == [
        CudaDevice(f"cuda:{i}", free * mib, total * mib if total else None)
        for i, (free, total) in enumerate(expected)
    ]


def test_visible_cuda_devices_falls_back_to_proc(tmp_path):
    proc = tmp_path / "gpus"
    for bus in ("0000:17:00.0", "0000:65:00.0"):
        (proc / bus).mkdir(parents=True)
    failing = _fake_smi(tmp_path, ["NVIDIA-SMI has failed"], rc=9)
    for smi in (failing, None, str(tmp_path / "missing")):
        devices = visible_cuda_devices(
            environ={}, allow_torch=False, nvidia_smi=smi, proc_dir=str(proc)
        )
        assert devices == [CudaDevice("cuda:0"), CudaDevice("cuda:1")]
    devices = visible_cuda_devices(
        environ={"CUDA_VISIBLE_DEVICES": "1"}, allow_torch=False, nvidia_smi=None,
        proc_dir=str(proc),
    )  # fmt: skip
    assert devices == [CudaDevice("cuda:0")]


def test_visible_cuda_devices_without_a_driver(tmp_path):
    devices = visible_cuda_devices(
        environ={}, allow_torch=False, nvidia_smi=None, proc_dir=str(tmp_path / "none")
    )
    assert devices == []


def test_visible_cuda_devices_asks_torch_when_imported():
    devices = visible_cuda_devices()  # torch is imported by this module
    assert [d.name for d in devices] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]


# ---- real tiny torch models on the CPU ------------------------------------------------------


def _build(width: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(width, width),
        torch.nn.GELU(),
        torch.nn.LayerNorm(width),
        torch.nn.Linear(width, 8),
    )


def _torch_spec(tmp_path, name: str, width: int, seed: int, **kw) -> ModelSpec:
    torch.manual_seed(seed)
    path = tmp_path / f"{name}.pt"
    torch.save(_build(width).state_dict(), path)

    def load(device: str) -> torch.nn.Module:
        model = _build(width)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(device).eval()

    return ModelSpec(key=f"{name}:{path}", load=load, description=name, **kw)


def _size(width: int) -> int:
    return measure_bytes(_build(width))


def test_measure_bytes_counts_parameters_buffers_and_tied_weights():
    model = torch.nn.Linear(4, 4)  # 16 + 4 float32 parameters
    assert measure_bytes(model) == 80
    model.register_buffer("scale", torch.ones(5))
    assert measure_bytes(model) == 100
    tied = torch.nn.ModuleDict({"a": model, "b": model})
    assert measure_bytes(tied) == 100
    assert measure_bytes({"model": model, "extra": torch.zeros(10, dtype=torch.float16)}) == 120
    assert measure_bytes(object()) is None


def test_torch_eviction_and_reload_gives_identical_outputs(tmp_path):
    width = 64
    budget = int(_size(width) * 1.5)  # one model at a time
    pool = ModelPool(budgets={"cpu": budget})
    a = _torch_spec(tmp_path, "a", width, seed=1)
    b = _torch_spec(tmp_path, "b", width, seed=2)
    x = torch.randn(5, width, generator=torch.Generator().manual_seed(0))

    def forward(model, device):
        with torch.no_grad():
            return model(x.to(device))

    first = pool.run(a, forward, "cpu")
    other = pool.run(b, forward, "cpu")  # evicts (frees) a
    assert pool.stats().model(a.key).state == "unloaded"
    again = pool.run(a, forward, "cpu")  # reloaded from the file
    assert pool.stats().model(a.key).loads == 2
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert pool.stats().device("cpu").peak_bytes <= budget
    assert pool.stats().model(a.key).nbytes == _size(width)  # measured, not estimated


def test_torch_offload_and_restore_through_move_gives_identical_outputs(tmp_path):
    # "fake0" stands in for an accelerator: loads land on the CPU, and every move copies the
    # module into fresh storage (as a device transfer does), so stale references would show.
    width = 64
    size = _size(width)
    moves: list[str] = []

    def move(model: torch.nn.Module, device: str) -> torch.nn.Module:
        moves.append(device)
        copy = _build(width)
        copy.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        return copy.eval()

    def spec(name: str, seed: int) -> ModelSpec:
        base = _torch_spec(tmp_path, name, width, seed)
        return ModelSpec(
            key=base.key, load=lambda device: base.load("cpu"), size_bytes=size, move=move
        )

    pool = ModelPool(
        budgets={"fake0": int(size * 1.5), "cpu": 10 * size}, transfer_bytes_per_s=FAST
    )
    a, b = spec("a", 1), spec("b", 2)
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(0))

    def forward(model, device):
        with torch.no_grad():
            return model(x)

    first = pool.run(a, forward, "fake0")
    pool.run(b, forward, "fake0")  # offloads a
    assert pool.stats().model(a.key).state == "offloaded"
    again = pool.run(a, forward, "fake0")  # restored through move, not reloaded
    assert moves == ["cpu", "cpu", "fake0"]
    assert pool.stats().model(a.key).loads == 1
    assert torch.equal(first, again)


def test_default_move_on_real_module(tmp_path):
    pool = ModelPool(budgets={"cpu": 10 * _size(16)})
    spec = _torch_spec(tmp_path, "m", 16, seed=3)
    with pool.use(spec, "cpu") as model:
        assert next(model.parameters()).device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_offload_and_restore_gives_identical_outputs(tmp_path):
    width = 256
    size = _size(width)
    pool = ModelPool(budgets={"cuda": int(size * 1.5), "cpu": 10 * size}, transfer_bytes_per_s=FAST)
    a = _torch_spec(tmp_path, "a", width, seed=1, size_bytes=size)
    b = _torch_spec(tmp_path, "b", width, seed=2, size_bytes=size)
    x = torch.randn(4, width)

    def forward(model, device):
        with torch.no_grad():
            return model(x.to(device)).cpu()

    first = pool.run(a, forward, "cuda")
    pool.run(b, forward, "cuda")
    assert pool.stats().model(a.key).state == "offloaded"
    again = pool.run(a, forward, "cuda")
    assert pool.stats().model(a.key).loads == 1
    assert torch.equal(first, again)
