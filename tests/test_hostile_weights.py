"""Readers of foreign weight files trust nothing in them (issue 13, section 3)."""

import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch_files

from nst_jax.converters import load_torch_state_dict

SAVES = pytest.mark.parametrize("save", [torch_files.save_legacy, torch_files.save_zip], ids=["legacy", "zip"])


@SAVES
@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (dict(storage=np.ones(6, np.float32), size=(4, 4), stride=(4, 1)), "reaches element 15 of a storage of 6"),
        (dict(storage=np.ones(6, np.float32), size=(2,), stride=(2**40,)), "reaches element 1099511627776"),
        (dict(storage=np.ones(6, np.float32), size=(2,), stride=(-1,)), "must hold integers >= 0"),
        (dict(storage=np.ones(6, np.float32), offset=9, size=(1,), stride=(1,)), "reaches element 9"),
        (dict(storage=np.ones(6, np.float32), size=(1 << 20, 1 << 20), stride=(0, 0)), "more than"),
        (dict(storage=np.ones(6, np.float32), size=(1,) * 9, stride=(1,) * 9), "at most 8 integers"),
    ],
)
def test_tensor_indices_are_checked_against_the_storage(tmp_path, save, tensor, match):
    path = tmp_path / "bad.pth"
    save(path, {"w": torch_files.tensor(**tensor)})
    with pytest.raises(pickle.UnpicklingError, match=match):
        load_torch_state_dict(path)


@SAVES
def test_a_storage_claiming_more_than_it_holds_is_refused(tmp_path, save):
    path = tmp_path / "bad.pth"
    save(path, {"w": torch_files.tensor(np.ones(6, np.float32), size=(6,), stride=(1,), numel=1 << 27)})
    with pytest.raises(pickle.UnpicklingError, match="holds|truncated|elements"):
        load_torch_state_dict(path)


def _legacy_with_object_pickle(path, body: bytes):
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(body)
        pickle.dump([], f, protocol=2)


def test_shared_nested_lists_are_refused_not_walked(tmp_path):
    """60 lists, each holding the one before twice: 700 bytes, 2^60 paths."""
    body = bytearray(b"\x80\x02]q\x00.")[:-1]  # an empty list, memo 0
    for i in range(1, 61):
        body += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])  # (prev, prev) tuple
    body += b"."
    path = tmp_path / "nested.pth"
    _legacy_with_object_pickle(path, bytes(body))
    with pytest.raises(pickle.UnpicklingError, match="expected a state dict of tensors, got tuple"):
        load_torch_state_dict(path)


@pytest.mark.parametrize("opcode", [b"r" + struct.pack("<I", 2**31), b"j" + struct.pack("<I", 2**31)])
def test_huge_memo_indices_are_refused_before_unpickling(tmp_path, opcode):
    path = tmp_path / "memo.pth"
    _legacy_with_object_pickle(path, b"\x80\x02}" + opcode + b".")
    with pytest.raises(pickle.UnpicklingError, match="memo index 2147483648"):
        load_torch_state_dict(path)


def test_a_huge_declared_string_is_refused_without_allocating_it(tmp_path):
    path = tmp_path / "string.pth"
    _legacy_with_object_pickle(path, b"\x80\x02X" + struct.pack("<I", 2**31) + b"abc.")
    with pytest.raises(pickle.UnpicklingError, match="not a readable PyTorch checkpoint"):
        load_torch_state_dict(path)


def test_a_zip_member_is_never_inflated_past_its_tensor(tmp_path):
    path = tmp_path / "bomb.pth"
    torch_files.save_zip(path, {"w": np.ones(4, np.float32)})
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["archive/data/0"] = members["archive/data/0"] + bytes(64 << 20)  # 64 MiB of zeros behind the tensor
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert path.stat().st_size < 1 << 20
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], np.ones(4, np.float32))


def test_non_finite_weights_are_refused(tmp_path):
    from nst_jax import vgg
    from nst_jax.vgg import check_params

    params = {k: {n: np.zeros(s, np.float32) for n, s in v.items()} for k, v in vgg.param_shapes().items()}
    params["conv3_1"]["bias"][5] = np.nan
    with pytest.raises(ValueError, match="conv3_1/bias has 1 NaN or infinite values"):
        check_params(params)
