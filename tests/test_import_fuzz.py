"""Fuzzed episode files (hypothesis): a damaged or mis-shaped npz is a ViperError naming the file and the
expected array, never an uncaught traceback."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from viper.data.importers import load_npz_episode
from viper.errors import ViperError


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
)
def test_fuzzed_npz_never_escapes_as_a_traceback(tmp_path, cut, flips):
    path = tmp_path / "fuzz.npz"
    np.savez_compressed(path, np.random.default_rng(0).integers(0, 4, (6, 64, 64, 3), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    for where, value in flips:  # flip bits anywhere (zip headers, deflate stream, central directory)
        data[int(where * len(data))] ^= value
    path.write_bytes(bytes(data[: len(data) - int(cut * len(data) * 0.5)]) if cut > 0.5 else bytes(data))
    try:
        frames = load_npz_episode(path)
    except ViperError as exc:
        assert "fuzz.npz" in str(exc) and "64, 64, 3" in str(exc)
    else:
        assert frames.dtype == np.uint8 and frames.shape[1:] == (64, 64, 3)


@pytest.mark.parametrize("bad", [b"'shape': )6, 64, 64, 3*,", b"'shape': (6, 64, 64, 3\n\n"])
def test_corrupt_array_header_is_a_clear_error(tmp_path, bad):
    """A header that numpy's parser rejects (SyntaxError / tokenize.TokenError, found by the fuzz test above)."""
    path = tmp_path / "header.npz"
    np.savez(path, np.zeros((6, 64, 64, 3), np.uint8))  # stored, not deflated: the header bytes are in the file
    data = path.read_bytes()
    good = b"'shape': (6, 64, 64, 3),"
    assert good in data
    path.write_bytes(data.replace(good, bad[: len(good)].ljust(len(good)), 1))
    with pytest.raises(ViperError, match="header.npz: truncated or corrupt npz"):
        load_npz_episode(path)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 66), min_size=0, max_size=5),
    dtype=st.sampled_from(["uint8", "int16", "float32", "bool"]),
)
def test_fuzzed_array_shapes(tmp_path, shape, dtype):
    if np.prod(shape) > 200_000:
        shape = shape[:2]
    path = tmp_path / "arr.npz"
    np.savez(path, np.zeros(shape, dtype))
    ok = dtype == "uint8" and len(shape) == 4 and shape[0] >= 1 and tuple(shape[1:]) == (64, 64, 3)
    if ok:
        assert load_npz_episode(path).shape == tuple(shape)
    else:
        with pytest.raises(ViperError, match="arr.npz: arr_0 is"):
            load_npz_episode(path)
