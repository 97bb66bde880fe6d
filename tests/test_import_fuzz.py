"""Fuzzed episode files (hypothesis): a damaged or mis-shaped npz, or a damaged HDF5 export, is a ViperError
naming the file and what was expected, never an uncaught traceback."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from viper.data import hdf5
from viper.data.importers import load_npz_episode
from viper.data.store import open_store
from viper.errors import ViperError


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=4),
)
def test_fuzzed_npz_never_escapes_as_a_traceback(tmp_path, cut, flips):
    path = tmp_path / "fuzz.npz"
    original = np.random.default_rng(0).integers(0, 4, (6, 64, 64, 3), dtype=np.uint8)
    np.savez_compressed(path, original)
    data = bytearray(path.read_bytes())
    for where, value in flips:  # flip bits anywhere (zip headers, deflate stream, central directory)
        data[int(where * len(data))] ^= value
    path.write_bytes(bytes(data[: len(data) - int(cut * len(data) * 0.5)]) if cut > 0.5 else bytes(data))
    try:
        frames = load_npz_episode(path)
    except ViperError as exc:
        assert "fuzz.npz" in str(exc) and "64, 64, 3" in str(exc)
    else:  # damage that reads back whole (a flipped bit in a field nobody reads) must not change the frames
        np.testing.assert_array_equal(frames, original)


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


def test_a_header_shortened_in_place_is_found_not_loaded_as_a_shorter_episode(tmp_path):
    """numpy read the 4 frames a damaged header promised and stopped before the zip's checksum: the episode was
    imported cut short, silently."""
    path = tmp_path / "short.npz"
    np.savez(path, np.zeros((6, 64, 64, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"'shape': (6, 64", b"'shape': (4, 64", 1))
    with pytest.raises(ViperError, match="short.npz: arr_0.npy differs from its zip checksum"):
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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small task exported by `viper export`: (file bytes, the episodes' frames)."""
    root = tmp_path_factory.mktemp("h5")
    store = open_store(root / "a.zarr", "a", chunk_frames=8, shard_frames=32)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 4, (10, 64, 64, 3), dtype=np.uint8) for _ in range(2)]
    for f in frames:
        store.append_episode("dmc/cheetah_run", f, rng.normal(size=(10, 2)), rng.normal(size=10), attrs={})
    hdf5.export_task(open_store(root / "a.zarr"), "dmc/cheetah_run", root / "task.h5")
    return (root / "task.h5").read_bytes(), frames


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_fuzzed_hdf5_is_a_clear_error_or_the_same_frames(tmp_path, exported, cut, flips):
    """HDF5's own OSError / RuntimeError (a chunk that fails to decode, a B-tree cut short) escaped as tracebacks
    without the file's name; a flipped frame byte imported silently. Each chunk now carries a checksum."""
    data, frames = bytearray(exported[0]), exported[1]
    for where, value in flips:
        data[int(where * len(data))] ^= value
    path = tmp_path / "fuzz.h5"
    path.write_bytes(bytes(data[: int(len(data) * cut)]) if cut < 0.3 else bytes(data))
    store = open_store(tmp_path / f"{uuid.uuid4().hex}.zarr", "a")
    try:
        task = hdf5.import_task(path, store)
    except ViperError as exc:
        assert "fuzz.h5" in str(exc)
        assert store.tasks == []  # nothing half-imported
    else:
        group = open_store(store.url).task(task)
        for i, f in enumerate(frames):
            np.testing.assert_array_equal(group.read_episode(i)["frames"], f)
