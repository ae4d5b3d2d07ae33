"""Seeded mutants of every weight-file format: each converts or fails in one line, in its own process, under limits.

The long run (500 mutants per format, issue 13's target) is ``scripts/fuzz_weights.py``;
its smoke test and a larger sample run behind ``slow`` (``.ci/run`` runs them); the default suite keeps
the regression tests for what the fuzzer found.
"""

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_weights.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_weights", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outcomes(fuzz, tmp_path, fmt, seeds):
    original = tmp_path / f"{fmt}.original"
    fuzz.write_fixture(fmt, original)

    def one(seed):
        path = tmp_path / f"{fmt}.{seed}"
        fuzz.mutant(fmt, original, path, seed)
        try:
            return seed, fuzz.run_one(path, time_limit=60, memory_limit=2_000_000_000)
        finally:  # a fixture is a whole VGG-19 (77 MB): 40 kept mutants a format filled 24 GB of disk
            path.unlink(missing_ok=True)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, seeds))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch-legacy", "torch-zip-pickle", "caffe-v2", "keras", "matconvnet"])
def test_mutants_convert_or_fail_in_one_line(fuzz, tmp_path, fmt):
    for seed, (outcome, detail, seconds, _) in _outcomes(fuzz, tmp_path, fmt, range(3)):
        assert outcome in ("converted", "one-line"), f"{fmt} mutant {seed}: {outcome} {detail}"
        assert seconds < 60


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch-legacy", "torch-zip", "torch-zip-pickle", "torchvision", "caffe-v1",
                                 "caffe-v2", "keras", "matconvnet"])  # fmt: skip
def test_many_mutants(fuzz, tmp_path, fmt):
    bad = [
        (seed, outcome, detail)
        for seed, (outcome, detail, _, _) in _outcomes(fuzz, tmp_path, fmt, range(100, 140))
        if outcome not in ("converted", "one-line")
    ]
    assert not bad


def test_found_by_the_fuzzer_a_multi_line_repr_in_a_message(fuzz, tmp_path):
    """torch-zip-pickle mutant 212 named a persistent id holding an array: its repr spanned lines."""
    original, path = tmp_path / "original", tmp_path / "m212"
    fuzz.write_fixture("torch-zip-pickle", original)
    fuzz.mutant("torch-zip-pickle", original, path, 212)
    outcome, detail, _, _ = fuzz.run_one(path, time_limit=60, memory_limit=2_000_000_000)
    assert outcome == "one-line", detail
