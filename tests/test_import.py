"""Importers/exporters and inspect: the published npz layout, manifests, Atari masks, HDF5, bad input (fuzzing:
test_import_fuzz.py)."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
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
    with pytest.raises(ViperError, match="garbage.npz: truncated or corrupt"):
        load_npz_episode(garbage)
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


def test_collect_stage_imports_the_published_dataset_with_the_published_preset(tmp_path, capsys):
    """``--preset tiny,published``: ``viper collect`` imports data/published/<suite>/ (manifest-checked) instead
    of rolling out, ``viper expert`` trains nothing, and envs render with MuJoCo's defaults."""
    from viper import config as C
    from viper.data import collect

    data = tmp_path / "data"
    overrides = [f"data_dir={data}", "collect.tasks=[dmc/cartpole_balance, dmc/walker_walk]"]
    cfg = C.load("tiny,published", overrides, params_path=None)
    assert cfg.collect.policy == "published" and cfg.collect.fast_render is False
    with pytest.raises(ViperError, match=r"published/dmc does not exist; place the published dataset there"):
        collect.run(cfg)
    root = data / "published" / "dmc"
    episodes = make_published(root)
    manifest = tmp_path / "manifest.sha256"
    write_manifest(root, manifest)
    pinned = C.load("tiny,published", [*overrides, f"collect.manifest={manifest}"], params_path=None)
    out = collect.run(pinned)
    assert out["dmc/cartpole_balance/episodes"] == 4 and out["dmc/walker_walk/episodes"] == 4
    group = open_store(out["store"]).task("dmc/walker_walk")
    np.testing.assert_array_equal(group.read_episode(3)["frames"], episodes[("walker_walk", "test", 0)])
    # Collect again (code or settings changed): the same files keep their groups, whose identity the tokenizer
    # and prior record (a re-import gave them new ones, and the whole pipeline trained again).
    identities = {task: open_store(out["store"]).task(task).identity for task in pinned.collect.tasks}
    capsys.readouterr()
    assert collect.run(pinned)["dmc/walker_walk/episodes"] == 4
    assert "dmc/walker_walk: 4 published episodes, up to date" in capsys.readouterr().out
    assert {task: open_store(out["store"]).task(task).identity for task in pinned.collect.tasks} == identities
    # An export brought back by `viper import` carries the source record along (edited or not): not the files.
    hdf5.export_task(open_store(out["store"]), "dmc/cartpole_balance", tmp_path / "cb.h5")
    hdf5.import_task(tmp_path / "cb.h5", open_store(out["store"], "a"))
    reimported = open_store(out["store"]).task("dmc/cartpole_balance").identity
    capsys.readouterr()
    collect.run(pinned)
    assert "dmc/cartpole_balance: 4 published episodes, up to date" not in capsys.readouterr().out
    after = open_store(out["store"]).task("dmc/cartpole_balance").identity
    assert after not in (reimported, identities["dmc/cartpole_balance"])
    identities["dmc/cartpole_balance"] = open_store(out["store"]).task("dmc/cartpole_balance").identity
    # A changed file fails the pinned import, naming it.
    np.savez_compressed(root / "walker_walk" / "train" / "ep000.npz", np.zeros((3, 64, 64, 3), np.uint8))
    with pytest.raises(ViperError, match=r"ep000\.npz: sha256 .* does not match the manifest"):
        collect.run(pinned)
    # Without a manifest the changed file is imported again, replacing that task's group (the other keeps its).
    assert collect.run(cfg)["dmc/walker_walk/episodes"] == 4
    store = open_store(out["store"])
    assert store.task("dmc/walker_walk").read_episode(0)["frames"].shape == (3, 64, 64, 3)
    assert store.task("dmc/walker_walk").identity != identities["dmc/walker_walk"]
    assert store.task("dmc/cartpole_balance").identity == identities["dmc/cartpole_balance"]
    assert cli.main(["expert", "--preset", "tiny,published", "-S", f"data_dir={data}"]) == 0
    assert "nothing to train" in capsys.readouterr().out


def make_h5(tmp_path: Path, task: str = "dmc/cartpole_balance", name: str = "task.h5") -> Path:
    """One task's HDF5 file as `viper export` writes it (two short episodes)."""
    store = open_store(tmp_path / "h5_source.zarr", "a")
    for split in ("train", "test"):
        store.append_episode(task, np.full((5, 64, 64, 3), 7, np.uint8), split=split)
    hdf5.export_task(open_store(tmp_path / "h5_source.zarr"), task, tmp_path / name)
    return tmp_path / name


def cli_args(tmp_path: Path) -> list[str]:
    (tmp_path / "none.yaml").write_text("")  # an empty params file: the repository's is not read
    return ["--params", str(tmp_path / "none.yaml"), "-S", f"data_dir={tmp_path / 'data'}"]


def test_manifest_entries_of_an_absent_task_folder_are_missing_files(tmp_path, capsys):
    """Importing every task, a manifest entry whose task folder is gone was never checked (exit 0); with --task,
    only that task's entries matter."""
    root = tmp_path / "published"
    make_published(root, tasks=("cartpole_balance", "cartpole_swingup"), n_train=1, n_test=1)
    manifest = tmp_path / "m.sha256"
    write_manifest(root, manifest)
    shutil.rmtree(root / "cartpole_swingup")
    gone = r"missing: cartpole_swingup/test/ep000.npz, cartpole_swingup/train/ep000.npz \(no folder cartpole_swingup"
    with pytest.raises(ViperError, match=gone):
        import_published(root, open_store(tmp_path / "lib.zarr", "a"), "dmc", manifest=manifest)
    assert open_store(tmp_path / "lib.zarr").tasks == []
    store = tmp_path / "s.zarr"
    args = ["import", str(root), "--store", str(store), "--manifest", str(manifest), *cli_args(tmp_path)]
    assert cli.main(args) == 2
    assert "cartpole_swingup/train/ep000.npz" in capsys.readouterr().err and not store.exists()
    assert cli.main([*args, "--task", "dmc/cartpole_balance"]) == 0
    assert open_store(store).tasks == ["dmc/cartpole_balance"]


def test_import_names_both_sources_and_the_folder_to_pass(tmp_path, capsys):
    """A single npz or video file was 'not a folder' (HDF5 unmentioned), .H5 was not HDF5, and a folder one
    level off the published layout was an unknown task with no hint."""
    base = cli_args(tmp_path)
    root = tmp_path / "outer" / "dmc"
    make_published(root, tasks=("cartpole_balance",), n_train=1, n_test=1)
    episode = root / "cartpole_balance" / "train" / "ep000.npz"
    for source in (episode, tmp_path / "clip.mp4"):
        source.touch()
        assert cli.main(["import", str(source), "--store", str(tmp_path / "s.zarr"), *base]) == 2
        err = capsys.readouterr().err
        assert f"{source}: not a folder or an HDF5 file" in err
        assert "<root>/<task>/{train,test}/*.npz or one task's HDF5 file (.h5/.hdf5" in err
    upper = make_h5(tmp_path, name="own.H5")
    assert cli.main(["import", str(upper), "--store", str(tmp_path / "h.zarr"), *base]) == 0
    assert open_store(tmp_path / "h.zarr").tasks == ["dmc/cartpole_balance"]
    for given, hint in [
        (root.parent, f"unknown task 'dmc/dmc' ('dmc' is a suite's folder, not a task's: pass {root})"),
        (root / "cartpole_balance", f"one task's folder: pass the folder above it, {root})"),
        (episode.parent, f"holds the episodes of one task's split: pass {root})"),
    ]:
        assert cli.main(["import", str(given), "--store", str(tmp_path / "s.zarr"), *base]) == 2
        assert hint in capsys.readouterr().err
    assert not (tmp_path / "s.zarr").exists()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_a_refused_import_creates_or_changes_no_store(tmp_path, capsys):
    """`viper import cb.h5 --task dmc/nope` (or a changed or damaged npz) created an empty store that later
    commands took for an existing one; every check now runs before the store is opened for writing."""
    base = cli_args(tmp_path)
    h5 = make_h5(tmp_path)
    new = tmp_path / "new.zarr"
    assert cli.main(["import", str(h5), "--store", str(new), "--task", "dmc/nope", *base]) == 2
    assert "task.h5: holds task 'dmc/cartpole_balance', not 'dmc/nope'" in capsys.readouterr().err
    assert not new.exists()
    root = tmp_path / "published"
    make_published(root, tasks=("cartpole_balance", "walker_walk"), n_train=2, n_test=1)
    manifest = tmp_path / "m.sha256"
    write_manifest(root, manifest)
    # A damaged deflate stream in the second task (its zip directory and array header intact).
    damaged = root / "walker_walk" / "train" / "ep001.npz"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    assert cli.main(["import", str(root), "--store", str(new), *base]) == 2
    assert "ep001.npz: truncated or corrupt npz" in capsys.readouterr().err and not new.exists()
    # An existing store is left byte for byte as it was.
    kept = tmp_path / "kept.zarr"
    assert cli.main(["import", str(h5), "--store", str(kept), *base]) == 0
    before = _snapshot(kept)
    assert cli.main(["import", str(h5), "--store", str(kept), "--task", "dmc/nope", *base]) == 2
    assert cli.main(["import", str(root), "--store", str(kept), *base]) == 2
    assert cli.main(["import", str(root), "--store", str(kept), "--manifest", str(manifest), *base]) == 2
    assert "does not match the manifest" in capsys.readouterr().err
    assert _snapshot(kept) == before
