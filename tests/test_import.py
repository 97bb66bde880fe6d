"""Importers/exporters and inspect: the published npz layout, manifests, Atari masks, HDF5, bad input (fuzzing:
test_import_fuzz.py; collect's published policy and the checks `viper import` makes before writing:
test_import_checks.py)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from viper import cli
from viper.data import hdf5
from viper.data.importers import import_published, load_mask, load_npz_episode, read_manifest
from viper.data.inspect import describe, montage
from viper.data.store import open_store
from viper.errors import ViperError
from viper.hashing import file_sha256


def make_published(root: Path, tasks=("cartpole_balance", "walker_walk"), n_train=3, n_test=1, seed=0):
    """The published layout: <root>/<task>/{train,test}/*.npz, key arr_0, uint8 (T, 64, 64, 3)."""
    rng = np.random.default_rng(seed)
    episodes = {}
    for task in tasks:
        for split, n in (("train", n_train), ("test", n_test)):
            folder = root / task / split
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                frames = rng.integers(0, 255, (int(rng.integers(3, 20)), 64, 64, 3), dtype=np.uint8)
                np.savez_compressed(folder / f"ep{i:03d}.npz", frames)
                episodes[(task, split, i)] = frames
    return episodes


def write_manifest(root: Path, path: Path) -> None:
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}")
    path.write_text("# pinned\n" + "\n".join(lines) + "\n")


def test_import_published_layout_with_manifest(tmp_path):
    root = tmp_path / "published"
    episodes = make_published(root)
    manifest = tmp_path / "manifest.sha256"
    write_manifest(root, manifest)
    store = open_store(tmp_path / "dmc.zarr", "a")
    assert import_published(root, store, "dmc", manifest=manifest) == {"dmc/cartpole_balance": 4, "dmc/walker_walk": 4}
    reader = open_store(tmp_path / "dmc.zarr")
    assert reader.tasks == ["dmc/cartpole_balance", "dmc/walker_walk"]
    group = reader.task("dmc/walker_walk")
    assert group.split.tolist() == [0, 0, 0, 1] and np.isnan(group.returns).all()
    for index, key in enumerate(
        [
            ("walker_walk", "train", 0),
            ("walker_walk", "train", 1),
            ("walker_walk", "train", 2),
            ("walker_walk", "test", 0),
        ]
    ):
        np.testing.assert_array_equal(group.read_episode(index)["frames"], episodes[key])
    source = group.attrs["source"]
    assert source["format"] == "published-npz" and len(source["dataset_sha256"]) == 64
    assert source["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    # Re-importing replaces the task (no duplicated episodes), --task restricts.
    import_published(root, store, "dmc", tasks=["dmc/walker_walk"])
    assert open_store(tmp_path / "dmc.zarr").task("dmc/walker_walk").num_episodes == 4


def test_manifest_errors_name_the_file(tmp_path):
    root = tmp_path / "published"
    make_published(root, tasks=("cartpole_balance",))
    manifest = tmp_path / "m.sha256"
    write_manifest(root, manifest)
    store = open_store(tmp_path / "s.zarr", "a")
    target = root / "cartpole_balance" / "train" / "ep001.npz"
    data = np.load(target)["arr_0"]
    np.savez_compressed(target, data[::-1])
    with pytest.raises(ViperError, match=r"ep001.npz: sha256 .* does not match the manifest"):
        import_published(root, store, "dmc", manifest=manifest)
    write_manifest(root, manifest)
    np.savez_compressed(root / "cartpole_balance" / "test" / "extra.npz", data)
    with pytest.raises(ViperError, match="extra.npz: not listed in the manifest"):
        import_published(root, store, "dmc", manifest=manifest)
    write_manifest(root, manifest)
    (root / "cartpole_balance" / "train" / "ep000.npz").unlink()
    with pytest.raises(ViperError, match="missing: cartpole_balance/train/ep000.npz"):
        import_published(root, store, "dmc", manifest=manifest)
    manifest.write_text("abc  file.npz\n")
    with pytest.raises(ViperError, match=r"m.sha256:1: expected '<sha256 hex>  <relative path>'"):
        read_manifest(manifest)
    manifest.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ViperError, match="m.sha256: not a text file"):
        read_manifest(manifest)
    assert store.tasks == []  # nothing half-imported


def test_bad_episode_files(tmp_path):
    good = tmp_path / "good.npz"
    np.savez_compressed(good, np.zeros((4, 64, 64, 3), np.uint8))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ViperError, match=r"truncated.npz: truncated or corrupt npz.*uint8 \(T, 64, 64, 3\)"):
        load_npz_episode(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip at all" * 10)
    with pytest.raises(ViperError, match="garbage.npz: truncated or corrupt") as refused:
        load_npz_episode(garbage)
    # numpy's own text would invite allow_pickle=True for a file that is simply not an npz.
    assert "not an npz (zip) archive" in str(refused.value) and "pickle" not in str(refused.value)
    cases = {
        "float.npz": np.zeros((4, 64, 64, 3), np.float32),
        "shape.npz": np.zeros((4, 32, 32, 3), np.uint8),
        "gray.npz": np.zeros((4, 64, 64), np.uint8),
        "empty.npz": np.zeros((0, 64, 64, 3), np.uint8),
    }
    for name, array in cases.items():
        np.savez(tmp_path / name, array)
        with pytest.raises(ViperError, match=rf"{name}: arr_0 is .*expected uint8 \(T>=1, 64, 64, 3\)"):
            load_npz_episode(tmp_path / name)
    np.savez(tmp_path / "key.npz", frames=np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ViperError, match="key.npz: no array 'arr_0'"):
        load_npz_episode(tmp_path / "key.npz")
    with open(tmp_path / "plain.npz", "wb") as f:  # np.save's format under an npz name
        np.save(f, np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ViperError, match="plain.npz: a single .npy array, not an .npz archive"):
        load_npz_episode(tmp_path / "plain.npz")


def test_bad_layouts(tmp_path):
    store = open_store(tmp_path / "s.zarr", "a")
    root = tmp_path / "published"
    (root / "cartpole_balance" / "train").mkdir(parents=True)
    with pytest.raises(ViperError, match=r"cartpole_balance: no episodes; expected .*\{train,test\}/\*.npz"):
        import_published(root, store, "dmc")
    (root / "cartpole_balance").rename(root / "cartpole_dance")
    with pytest.raises(ViperError, match="cartpole_dance: unknown task 'dmc/cartpole_dance'; known dmc tasks:"):
        import_published(root, store, "dmc")
    with pytest.raises(ViperError, match="nowhere: does not exist; expected the published npz layout"):
        import_published(tmp_path / "nowhere", store, "dmc")
    make_published(tmp_path / "p2", tasks=("cartpole_balance",))
    with pytest.raises(ViperError, match="no folder for task 'dmc/walker_walk'"):
        import_published(tmp_path / "p2", store, "dmc", tasks=["dmc/walker_walk"])
    # A corrupt file midway leaves the task unimported (its hidden group is never promoted).
    (tmp_path / "p2" / "cartpole_balance" / "test" / "ep000.npz").write_bytes(b"PK\x03\x04broken")
    with pytest.raises(ViperError, match="ep000.npz: truncated or corrupt"):
        import_published(tmp_path / "p2", store, "dmc")
    assert open_store(tmp_path / "s.zarr").tasks == []


def test_atari_mask_map(tmp_path):
    root = tmp_path / "atari"
    make_published(root, tasks=("pong",), n_train=1, n_test=1)
    mask = np.ones((64, 64, 1), np.float32)
    mask[:8] = 0
    with open(root / "mask_map.pkl", "wb") as f:
        pickle.dump({"Pong": mask, "boxing": np.ones((64, 64))}, f)
    store = open_store(tmp_path / "atari.zarr", "a")
    import_published(root, store, "atari")
    got = open_store(tmp_path / "atari.zarr").task("atari/pong").mask
    assert got.dtype == bool and not got[:8].any() and got[8:].all()
    with pytest.raises(ViperError, match="no mask for 'freeway'"):
        load_mask(root / "mask_map.pkl", "atari/freeway")
    # A manifest that pins the mask file: the file gone is an error, not a task imported without its mask.
    manifest = tmp_path / "atari.sha256"
    write_manifest(root, manifest)
    assert "mask_map.pkl" in read_manifest(manifest)
    (root / "mask_map.pkl").rename(tmp_path / "aside.pkl")
    with pytest.raises(ViperError, match="missing: mask_map.pkl"):
        import_published(root, open_store(tmp_path / "atari2.zarr", "a"), "atari", manifest=manifest)
    (tmp_path / "aside.pkl").rename(root / "mask_map.pkl")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "mask_map.pkl").write_bytes(pickle.dumps({"pong": Evil()}))
    with pytest.raises(ViperError, match="refusing to load"):
        load_mask(root / "mask_map.pkl", "atari/pong")


def test_hdf5_round_trip_and_errors(tmp_path):
    store = open_store(tmp_path / "a.zarr", "a", chunk_frames=8, shard_frames=32)
    rng = np.random.default_rng(0)
    eps = []
    for i in range(3):
        length = int(rng.integers(4, 30))
        eps.append(
            (
                rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
                rng.normal(size=(length, 2)).astype(np.float32),
                rng.normal(size=length).astype(np.float32),
            )
        )
        store.append_episode(
            "dmc/cheetah_run",
            *eps[-1],
            split="test" if i == 1 else "train",
            attrs={"action_repeat": 2, "source": {"policy": "expert"}},
            episode_id=10 + i,
        )
    out = tmp_path / "out" / "cheetah.h5"
    assert hdf5.export_task(open_store(tmp_path / "a.zarr"), "dmc/cheetah_run", out) == {
        "episodes": 3,
        "frames": sum(len(e[0]) for e in eps),
    }
    other = open_store(tmp_path / "b.zarr", "a")
    assert hdf5.import_task(out, other) == "dmc/cheetah_run"
    a, b = (
        open_store(tmp_path / "a.zarr").task("dmc/cheetah_run"),
        open_store(tmp_path / "b.zarr").task("dmc/cheetah_run"),
    )
    for key in ("episode_ends", "lengths", "returns", "split", "episode_ids"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for i in range(3):
        for key, value in b.read_episode(i).items():
            np.testing.assert_array_equal(value, a.read_episode(i)[key])
    assert b.attrs["action_repeat"] == 2 and b.attrs["source"]["policy"] == "expert"
    with pytest.raises(ViperError, match="holds task 'dmc/cheetah_run', not 'dmc/walker_walk'"):
        hdf5.import_task(out, other, task="dmc/walker_walk")
    with h5py.File(out, "r+") as f:
        f["lengths"][0] += 1
    with pytest.raises(ViperError, match="cheetah.h5: episode_ends/lengths"):
        hdf5.import_task(out, other)
    (tmp_path / "x.h5").write_bytes(b"nope")
    with pytest.raises(ViperError, match="x.h5: not a readable HDF5 file"):
        hdf5.import_task(tmp_path / "x.h5", other)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["frames"] = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(ViperError, match="y.h5: not a viper task-group HDF5 file"):
        hdf5.import_task(tmp_path / "y.h5", other)
    # Hand-made files: a missing or unknown task and broken group attributes are errors naming the file.
    good = tmp_path / "out" / "cheetah_again.h5"
    hdf5.export_task(open_store(tmp_path / "a.zarr"), "dmc/cheetah_run", good)
    for attr, value, message in [
        ("task", None, "cheetah_again.h5: missing root attribute 'task'"),
        ("task", "dmc/my_robot", "cheetah_again.h5: attribute task: unknown task 'dmc/my_robot': expected '<suite>/"),
        ("suite", "atari", "cheetah_again.h5: attribute suite='atari' disagrees with task='dmc/cheetah_run'"),
        ("group_attrs", "{not json", "cheetah_again.h5: attribute group_attrs is not a JSON object"),
        ("group_attrs", '{"action_repeat": "two"}', "cheetah_again.h5: group_attrs action_repeat='two'; expected"),
        ("schema_version", "one", "cheetah_again.h5: schema_version one, expected 1"),
    ]:
        bad = tmp_path / f"bad_{attr}.h5"
        bad.write_bytes(good.read_bytes())
        with h5py.File(bad, "r+") as f:
            if value is None:
                del f.attrs[attr]
            else:
                f.attrs[attr] = value
        with pytest.raises(ViperError, match=message.replace("cheetah_again", f"bad_{attr}")):
            hdf5.import_task(bad, other)
    # A split code other than 0/1, and a file with frames but no episodes, are refused (the latter would have
    # replaced the task with an empty one).
    bad = tmp_path / "bad_split.h5"
    bad.write_bytes(good.read_bytes())
    with h5py.File(bad, "r+") as f:  # hand-made: signed codes
        codes = f["split"][:].astype(np.int64)
        codes[0] = -1
        del f["split"]
        f["split"] = codes
    with pytest.raises(ViperError, match="bad_split.h5: .*split must be 0 \\(train\\) or 1 \\(test\\)"):
        hdf5.import_task(bad, other)
    empty = tmp_path / "no_episodes.h5"
    empty.write_bytes(good.read_bytes())
    with h5py.File(empty, "r+") as f:
        for key in ("episode_ends", "lengths", "returns", "split", "episode_ids"):
            data = f[key][:0]
            del f[key]
            f[key] = data
        del f["frames"]
        f["frames"] = np.zeros((0, 64, 64, 3), np.uint8)
        for key in ("actions", "rewards"):
            if key in f:
                del f[key]
    with pytest.raises(ViperError, match="no_episodes.h5: holds no episodes"):
        hdf5.import_task(empty, other)
    assert open_store(tmp_path / "b.zarr").task("dmc/cheetah_run").num_episodes == 3  # the store kept its task


def test_inspect_and_cli(tmp_path, capsys):
    root = tmp_path / "published"
    make_published(root)
    data_dir = tmp_path / "data"
    (tmp_path / "none.yaml").write_text("")  # an empty params file: the repository's is not read
    base = ["--params", str(tmp_path / "none.yaml"), "-S", f"data_dir={data_dir}"]
    assert cli.main(["import", str(root), *base]) == 0
    store_path = data_dir / "videos" / "dmc.zarr"
    rows = describe(open_store(store_path))
    lengths = open_store(store_path).task("dmc/walker_walk").lengths
    assert (rows[1]["length_min"], rows[1]["length_max"]) == (lengths.min(), lengths.max())
    assert [(r["task"], r["episodes"], r["train"], r["test"]) for r in rows] == [
        ("dmc/cartpole_balance", 4, 3, 1),
        ("dmc/walker_walk", 4, 3, 1),
    ]
    image = montage(open_store(store_path), frames_per_task=5)
    assert image.shape == (128, 320, 3)
    first = open_store(store_path).task("dmc/cartpole_balance").read_episode(0)["frames"]
    np.testing.assert_array_equal(image[:64, :64], first[0])
    preview = tmp_path / "prev.png"
    assert cli.main(["inspect", str(store_path), "--preview", str(preview), *base]) == 0
    printed = capsys.readouterr().out
    assert "dmc/walker_walk" in printed and preview.stat().st_size > 0
    assert cli.main(["inspect", str(store_path), "--preview", str(tmp_path), *base]) == 2
    assert "is a directory; expected the PNG file to write" in capsys.readouterr().err
    assert cli.main(["export", "--task", "dmc/walker_walk", "--output", str(tmp_path / "w.h5"), *base]) == 0
    assert cli.main(["import", str(tmp_path / "w.h5"), "--store", str(tmp_path / "c.zarr"), *base]) == 0
    assert open_store(tmp_path / "c.zarr").tasks == ["dmc/walker_walk"]
    assert "dmc/walker_walk: 4 episodes\n" in capsys.readouterr().out
    assert cli.main(["import", str(tmp_path / "w.h5"), "--store", str(tmp_path / "c.zarr"), *base]) == 0
    assert "dmc/walker_walk: 4 episodes (replacing the 4 episodes it held)" in capsys.readouterr().out
    assert cli.main(["import", str(root / "missing"), *base]) == 2
    assert f"{root / 'missing'}: does not exist; expected the published npz layout" in capsys.readouterr().err
    assert cli.main(["export", "--task", "dmc/hopper_stand", "--output", str(tmp_path / "h.h5"), *base]) == 2
    assert "unknown task 'dmc/hopper_stand'" in capsys.readouterr().err
    # An HDF5 file of another suite goes to its own suite's store; into a store of another suite it is refused.
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        f.attrs["task"], f.attrs["suite"] = "atari/pong", "atari"
    assert cli.main(["import", str(tmp_path / "w.h5"), *base]) == 0
    assert open_store(data_dir / "videos" / "atari.zarr").tasks == ["atari/pong"]
    assert "dmc/walker_walk" in open_store(store_path).tasks and "atari/pong" not in open_store(store_path).tasks
    assert cli.main(["import", str(tmp_path / "w.h5"), "--store", str(store_path), *base]) == 2
    assert "a store keeps one suite" in capsys.readouterr().err
    # --manifest pins an HDF5 file too (it was ignored): listed by its name, with its sha256.
    listed = tmp_path / "pins.sha256"
    listed.write_text(f"{'0' * 64}  w.h5\n")
    assert cli.main(["import", str(tmp_path / "w.h5"), "--manifest", str(listed), *base]) == 2
    assert "does not match the manifest" in capsys.readouterr().err
    listed.write_text(f"{file_sha256(tmp_path / 'w.h5')}  w.h5\n")
    assert cli.main(["import", str(tmp_path / "w.h5"), "--manifest", str(listed), *base]) == 0
