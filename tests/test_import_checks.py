"""Collect's ``published`` policy (import, keep what is up to date) and the checks ``viper import`` makes before
it writes anything: manifests naming absent task folders, errors naming both accepted sources, refused imports
leaving every store as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_import import make_published, write_manifest

from viper import cli
from viper.data import hdf5
from viper.data.importers import import_published
from viper.data.store import open_store
from viper.errors import ViperError


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


@pytest.mark.parametrize(("key", "shape"), [("actions", (10,)), ("rewards", (10, 1)), ("actions", (10, 2, 1))])
def test_an_hdf5_file_with_misshapen_actions_or_rewards_is_refused_before_the_store_opens(tmp_path, capsys, key, shape):
    """Only the row counts were checked: a 1-D /actions passed and failed part-way through the import, naming the
    store's hidden staging group instead of the file, and leaving that group behind."""
    source = open_store(tmp_path / "h5_source.zarr", "a")
    for split in ("train", "test"):
        source.append_episode(
            "dmc/cartpole_balance",
            np.full((5, 64, 64, 3), 7, np.uint8),
            np.zeros((5, 1), np.float32),
            np.zeros(5, np.float32),
            split=split,
        )
    h5 = tmp_path / "task.h5"
    hdf5.export_task(open_store(tmp_path / "h5_source.zarr"), "dmc/cartpole_balance", h5)
    with h5py.File(h5, "r+") as f:
        del f[key]
        f[key] = np.zeros(shape, np.float32)
    new = tmp_path / "new.zarr"
    assert cli.main(["import", str(h5), "--store", str(new), *cli_args(tmp_path)]) == 2
    form = "(N, A)" if key == "actions" else "(N,)"
    assert f"task.h5: /{key} is float32 {shape}; expected numbers shaped {form}" in capsys.readouterr().err
    assert not new.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"mask": np.ones((32, 32), bool)}, "/mask is bool (32, 32); expected bool or 0/1 (64, 64)"),
        ({"mask": np.ones((64, 64), np.float32)}, "/mask is float32 (64, 64); expected bool or 0/1 (64, 64)"),
        ({"group_attrs": '{"source": "hello"}'}, "group_attrs source='hello'; expected a JSON object"),
    ],
)
def test_an_hdf5_file_with_a_bad_mask_or_source_is_refused_before_the_store_opens(tmp_path, capsys, edit, message):
    """A (32, 32) /mask passed the checks, every frame was copied into the store's hidden staging group, and
    set_mask failed last, leaving the group behind (and a new store where there was none)."""
    h5 = make_h5(tmp_path)
    with h5py.File(h5, "r+") as f:
        for key, value in edit.items():
            if key == "group_attrs":
                f.attrs["group_attrs"] = value
            else:
                f[key] = value
    new = tmp_path / "new.zarr"
    assert cli.main(["import", str(h5), "--store", str(new), *cli_args(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not new.exists()


def test_an_import_failing_midway_leaves_no_staging_group(tmp_path, monkeypatch):
    """Whatever stops an import after its staging group exists (here a write error), the group is discarded
    and the task's existing group is kept."""
    from viper.data.taskgroup import TaskGroup

    h5 = make_h5(tmp_path)
    store = open_store(tmp_path / "s.zarr", "a")
    hdf5.import_task(h5, store)
    before = store.task("dmc/cartpole_balance").identity

    def fail(self, *args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(TaskGroup, "append", fail)
    with pytest.raises(OSError, match="disk went away"):
        hdf5.import_task(h5, open_store(tmp_path / "s.zarr", "a"))
    names = sorted(p.name for p in (tmp_path / "s.zarr").iterdir())
    assert names == ["cartpole_balance", "zarr.json"], names
    assert open_store(tmp_path / "s.zarr").task("dmc/cartpole_balance").identity == before
