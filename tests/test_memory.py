"""The memory plan's pure rules (nst_jax.memory), with the bytes given: no compilation."""

import pytest

from nst_jax import MemoryLimitError, StyleConfig, memory


def test_batch_size_halves_to_a_multiple_of_the_devices_until_it_fits():
    tried = []
    needed = lambda size: tried.append(size) or 100 * size  # bytes per device grow with the batch
    assert memory.batch_size(10, None, 1, 1000, 0.8, needed) == 5  # 1000 > 800, 500 fits
    assert tried == [10, 5]
    tried.clear()
    assert memory.batch_size(10, None, 4, 500, 0.8, needed) == 4  # 12 -> 8 -> 4 (multiples of 4)
    assert tried == [12, 8, 4]
    assert memory.batch_size(3, None, 1, None, 0.8, needed) == 3  # no known limit
    assert memory.batch_size(10, 2, 1, 1000, 0.8, needed) == 2


def test_an_asked_batch_that_does_not_fit_is_refused():
    with pytest.raises(MemoryLimitError, match=r"`batch_size` 9 needs about 0.0 GiB per device, more than 80% of"):
        memory.batch_size(10, 9, 1, 1000, 0.8, lambda size: 100 * size)
    with pytest.raises(MemoryLimitError, match="`batch_size` 1 needs"):  # one member per device does not fit
        memory.batch_size(10, None, 1, 50, 0.8, lambda size: 100 * size)


def test_check_asks_the_analysis_only_near_the_limit(monkeypatch):
    monkeypatch.setattr(memory, "limit_per_device", lambda sharded: 100 * 2**20)
    asked = []
    analysis = lambda: asked.append(1) or 2**20
    memory.check(StyleConfig(size=64), (48, 64), analysis)  # far below half the memory: no analysis
    assert asked == []
    memory.check(StyleConfig(size=4096), (3072, 4096), analysis)  # near: XLA's figure decides (it fits)
    assert asked == [1]
    with pytest.raises(
        MemoryLimitError, match=r"`size` 4096 \(3072x4096 output\) needs about 0.2 GiB, more than the 0.1 GiB"
    ):
        memory.check(StyleConfig(size=4096), (3072, 4096), lambda: 2**27)
