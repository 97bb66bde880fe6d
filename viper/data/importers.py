"""``viper import`` / ``viper export``: published npz folders and HDF5 files in, HDF5 out.

Published layout (viper_rl's datasets): ``<root>/<task>/{train,test}/*.npz``, one episode per file under key
``arr_0``, uint8 (T, 64, 64, 3); Atari adds ``<root>/mask_map.pkl`` (game -> mask multiplied into frames).
Task folders are named without the suite (``cartpole_balance``; a ``<suite>_`` prefix is also accepted).
Each task is written into a hidden group and swapped in whole, so a failed import never leaves half a task.

Manifest (optional, how users pin published data): a text file in ``sha256sum`` format, one line per file,
``<64 hex sha256><two spaces><path relative to root>`` (``#`` comments and blank lines ignored); make one
with ``cd <root> && find . -type f \\( -name '*.npz' -o -name '*.pkl' \\) | sort | xargs sha256sum``. With a
manifest every imported file must be listed and match; any listed file that is missing is an error too.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import re
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from viper import paths
from viper.checkpoint import file_sha256
from viper.config import ATARI_TASKS, DMC_TASKS, Config
from viper.data.store import VideoStore, open_store
from viper.data.taskgroup import FRAME_SHAPE
from viper.errors import ViperError

KNOWN = {"dmc": DMC_TASKS, "atari": ATARI_TASKS}
IMPORTING = "importing"
_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def read_manifest(path: str | Path) -> dict[str, str]:
    """``{relative path: sha256}`` from a sha256sum-format manifest; malformed lines are an error."""
    path = Path(path)
    if not path.is_file():
        raise ViperError(f"manifest {path} not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ViperError(f"manifest {path}: not a text file ({exc.reason}); expected sha256sum output") from None
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _MANIFEST_LINE.match(line.rstrip("\n"))
        if not match:
            raise ViperError(f"manifest {path}:{number}: expected '<sha256 hex>  <relative path>', got {line!r}")
        out[match.group(2).removeprefix("./")] = match.group(1).lower()
    return out


def load_npz_episode(path: Path) -> np.ndarray:
    """Frames uint8 (T, 64, 64, 3) from a published episode file; errors name the file and the expectation."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ViperError(f"{path}: a single .npy array, not an .npz archive; expected arr_0 = uint8 (T, 64, 64, 3)")
        with loaded as data:
            if "arr_0" not in data.files:
                raise ViperError(f"{path}: no array 'arr_0' (has {data.files}); expected arr_0 = uint8 (T, 64, 64, 3)")
            frames = data["arr_0"]
    except ViperError:
        raise
    # A corrupt array header reaches numpy's header parser: SyntaxError or tokenize.TokenError; a corrupt shape can
    # ask for an impossible allocation (MemoryError).
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        SyntaxError,
        tokenize.TokenError,
        MemoryError,
    ) as exc:
        raise ViperError(
            f"{path}: truncated or corrupt npz ({exc.__class__.__name__}: {exc}); expected a zip "
            "with arr_0 uint8 (T, 64, 64, 3)"
        ) from exc
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != FRAME_SHAPE or len(frames) == 0:
        raise ViperError(f"{path}: arr_0 is {frames.dtype} {frames.shape}; expected uint8 (T>=1, 64, 64, 3)")
    return frames


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays only: a downloaded pickle must not run arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def load_mask(path: Path, task: str) -> np.ndarray:
    """The bool (64, 64) keep-mask of an Atari game from ``mask_map.pkl`` (dict game -> 0/1 array)."""
    try:
        masks = _ArrayUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:
        raise ViperError(f"{path}: cannot read the mask map ({exc}); expected a pickled dict game -> array") from exc
    if not isinstance(masks, dict):
        raise ViperError(f"{path}: expected a dict game -> mask array, got {type(masks).__name__}")
    game = task.split("/", 1)[1]
    norm = {re.sub(r"[^a-z0-9]", "", str(k).lower()).removeprefix("atari"): k for k in masks}
    key = norm.get(re.sub(r"[^a-z0-9]", "", game))
    if key is None:
        raise ViperError(f"{path}: no mask for {game!r}; the map has {sorted(map(str, masks))}")
    mask = np.asarray(masks[key])
    if mask.shape[:2] != FRAME_SHAPE[:2] or mask.ndim not in (2, 3):
        raise ViperError(f"{path}: mask for {game!r} has shape {mask.shape}; expected (64, 64) or (64, 64, C)")
    return (mask.reshape(64, 64, -1) != 0).all(axis=-1)


def scan_published(root: Path, suite: str, tasks: list[str] | None = None) -> dict[str, list[tuple[Path, str]]]:
    """``{task: [(npz path, split), ...]}`` (train files, then test files, each sorted by name)."""
    if suite not in KNOWN:
        raise ViperError(f"unknown suite {suite!r}; known suites: {', '.join(KNOWN)}")
    if not root.is_dir():
        raise ViperError(f"{root}: not a folder; expected the published layout <root>/<task>/{{train,test}}/*.npz")
    folders = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        task = f"{suite}/{folder.name.removeprefix(suite + '_')}"
        if task not in KNOWN[suite]:
            raise ViperError(f"{folder}: unknown task {task!r}; known {suite} tasks: {', '.join(KNOWN[suite])}")
        folders[task] = folder
    wanted = tasks if tasks else sorted(folders)
    out = {}
    for task in wanted:
        if task not in folders:
            raise ViperError(f"{root}: no folder for task {task!r}; found {sorted(folders) or 'no task folders'}")
        files = [(p, split) for split in ("train", "test") for p in sorted((folders[task] / split).glob("*.npz"))]
        if not files:
            raise ViperError(f"{folders[task]}: no episodes; expected {folders[task]}/{{train,test}}/*.npz")
        out[task] = files
    if not out:
        raise ViperError(f"{root}: no task folders; expected <root>/<task>/{{train,test}}/*.npz")
    return out


def verify(root: Path, files: list[Path], manifest: dict[str, str] | None) -> dict[str, str]:
    """sha256 of every file (``{relative path: hex}``), checked against ``manifest`` when given."""
    sums = {p.relative_to(root).as_posix(): file_sha256(p) for p in files}
    if manifest is not None:
        for rel, digest in sums.items():
            if rel not in manifest:
                raise ViperError(f"{root / rel}: not listed in the manifest (a pinned dataset lists every file)")
            if manifest[rel] != digest:
                raise ViperError(f"{root / rel}: sha256 {digest} does not match the manifest's {manifest[rel]}")
    return sums


def import_published(
    root: str | Path,
    store: VideoStore,
    suite: str,
    tasks: list[str] | None = None,
    manifest: str | Path | None = None,
) -> dict[str, int]:
    """Import the published npz layout into ``store`` (one atomic task-group replace per task)."""
    root = Path(root)
    found = scan_published(root, suite, tasks)
    pinned = read_manifest(manifest) if manifest is not None else None
    mask_file = root / "mask_map.pkl"
    summary = {}
    for task, files in found.items():
        extra = [mask_file] if suite == "atari" and mask_file.is_file() else []
        sums = verify(root, [p for p, _ in files] + extra, pinned)
        if pinned is not None:
            # A pinned file that is gone is as wrong as a changed one.
            folder = files[0][0].parent.parent.name
            # (the Atari mask file too, when the manifest pins it)
            mine = [r for r in pinned if r.startswith(folder + "/") or (suite == "atari" and r == mask_file.name)]
            missing = sorted(r for r in mine if r not in sums)
            if missing:
                raise ViperError(f"{root}: files listed in the manifest are missing: {', '.join(missing[:5])}")
        dataset = hashlib.sha256("".join(f"{d}  {r}\n" for r, d in sorted(sums.items())).encode()).hexdigest()
        source = {"format": "published-npz", "root": str(root), "files": len(files), "dataset_sha256": dataset}
        if manifest is not None:
            source["manifest_sha256"] = file_sha256(manifest)
        store.discard_staging(task, IMPORTING)
        group = store.staging(task, IMPORTING, attrs={"action_repeat": None, "source": source})
        for index, (path, split) in enumerate(files):
            group.append(load_npz_episode(path), split=split, episode_id=index)
        if extra:
            group.set_mask(load_mask(mask_file, task))
        store.promote(task, IMPORTING)
        summary[task] = len(files)
    return summary


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """``import SOURCE [--manifest M] [--task T]...`` or ``export --task T --output F``."""
    parser.add_argument("--store", help="video store path or URL (default: <data_dir>/videos/<suite>.zarr)")
    if command == "import":
        parser.add_argument(
            "source",
            help="npz folder <root>/<task>/{train,test}/*.npz (one episode per file, key arr_0, uint8 (T, 64, 64, 3)), "
            "or one task's HDF5 file as `viper export` writes it (schema: viper/data/hdf5.py; README: 'Your own "
            "expert videos'); the imported tasks replace those in the store",
        )
        parser.add_argument(
            "--manifest",
            help="sha256sum-format manifest that every imported file must match (an HDF5 file: listed by its name)",
        )
        parser.add_argument("--task", action="append", help="import only this task (repeatable; full name)")
    else:
        parser.add_argument("--task", required=True, help="task to export (full name, e.g. dmc/cartpole_balance)")
        parser.add_argument("--output", required=True, help="HDF5 file to write")


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    from viper.data import hdf5

    source = Path(args.source) if command == "import" else None
    h5 = source is not None and source.suffix in (".h5", ".hdf5")
    # An HDF5 file names its task: without --store it goes to its own suite's store (not collect.suite's).
    suite = hdf5.task_of(source).split("/", 1)[0] if h5 else cfg.collect.suite
    url = args.store or str(paths.store(cfg.data_dir, suite))
    if command == "export":
        info = hdf5.export_task(open_store(url), args.task, args.output)
        print(f"wrote {args.output}: {info['episodes']} episodes, {info['frames']} frames of {args.task}")
        return info
    if h5 and args.manifest:
        verify(source.parent, [source], read_manifest(args.manifest))  # the file, listed by its name
    from viper.data.collect import task_lock

    tasks = [hdf5.task_of(source)] if h5 else list(scan_published(source, cfg.collect.suite, args.task))
    summary = {}
    for task in tasks:
        # One task at a time, as its only writer: the lock `viper collect` takes, and a store handle that leaves
        # other tasks' working groups alone (their writers may be running).
        with task_lock(cfg, url, task, "viper import"):
            store = open_store(url, "a", cfg.collect.chunk_frames, cfg.collect.shard_frames, task=task)
            before = store.task(task).num_episodes if task in store.tasks else None
            if h5:
                hdf5.import_task(source, store, task=(args.task or [None])[0])
            else:
                import_published(source, store, cfg.collect.suite, [task], args.manifest)
            summary[task] = store.task(task).num_episodes
        replaced = f" (replacing the {before} episodes it held)" if before is not None else ""
        print(f"{url}: {task}: {summary[task]} episodes{replaced}")
    return {f"{task}/episodes": n for task, n in summary.items()}
