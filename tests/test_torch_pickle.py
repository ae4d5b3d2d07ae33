import pickle
import zipfile

import numpy as np
import pytest
import torch_files

from nst_jax.converters import UnsafePickleError, load_torch_state_dict


def _state(rng):
    return {
        "0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "0.bias": rng.standard_normal(4).astype(np.float32),
        "steps": np.array([7], np.int64),
        "transposed": np.asfortranarray(rng.standard_normal((5, 6))),  # non-contiguous strides
    }


@pytest.mark.parametrize("save", [torch_files.save_legacy, torch_files.save_zip], ids=["legacy", "zip"])
def test_round_trip(tmp_path, rng, save):
    state = _state(rng)
    path = tmp_path / "model.pth"
    save(path, state)
    loaded = load_torch_state_dict(path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype


def test_real_torch_save_if_available(tmp_path, rng):
    torch = pytest.importorskip("torch")
    state = {"w": torch.randn(3, 4), "b": torch.arange(5), "t": torch.randn(4, 3).t()}
    for zipped in (True, False):
        path = tmp_path / f"real{zipped}.pth"
        torch.save(state, path, _use_new_zipfile_serialization=zipped)
        loaded = load_torch_state_dict(path)
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key], value.numpy())


def _evil_legacy_body(path, payload):
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        f.write(payload)


def _evil_zip(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def _evil_header(path, payload):
    path.write_bytes(payload)


@pytest.mark.parametrize("write", [_evil_legacy_body, _evil_zip, _evil_header], ids=["legacy", "zip", "header"])
def test_malicious_pickle_is_refused(tmp_path, write):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    write(path, torch_files.malicious_pickle(f"touch {marker}"))
    with pytest.raises(UnsafePickleError, match=r"global os\.system.*allowed: collections\.OrderedDict"):
        load_torch_state_dict(path)
    assert not marker.exists()


def test_truncated_legacy_file(tmp_path, rng):
    path = tmp_path / "model.pth"
    torch_files.save_legacy(path, _state(rng))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        load_torch_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "text.pth"
    path.write_bytes(b"hello, world" * 10)
    with pytest.raises(pickle.UnpicklingError, match="not a readable PyTorch checkpoint"):
        load_torch_state_dict(path)


def test_wrapped_state_dict_is_unwrapped(tmp_path, rng):
    state = _state(rng)
    path = tmp_path / "model.pth"
    torch_files.save_zip(path, state)
    assert set(load_torch_state_dict(path)) == set(state)
