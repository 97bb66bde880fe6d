"""``viper import`` / ``viper export``: published npz folders and HDF5 files in, HDF5 out.

Published layout (viper_rl's datasets): ``<root>/<task>/{train,test}/*.npz``, one episode per file under key
``arr_0``, uint8 (T, 64, 64, 3); Atari adds ``<root>/mask_map.pkl`` (game -> mask multiplied into frames).
Task folders are named without the suite (``cartpole_balance``; a ``<suite>_`` prefix is also accepted).
Each task is written into a hidden group and swapped in whole, so a failed import never leaves half a task;
``viper import`` checks every file (layout, manifest, frames) before it opens the store, so a refused import
creates or changes no store.

Manifest (optional, how users pin published data): a text file in ``sha256sum`` format, one line per file,
``<64 hex sha256><two spaces><path relative to root>`` (``#`` comments and blank lines ignored); make one
with ``cd <root> && find . -type f \\( -name '*.npz' -o -name '*.pkl' \\) | sort | xargs sha256sum``. With a
manifest every imported file must be listed and match; any listed file that is missing is an error too (importing
a subset with ``--task``: any listed file of those tasks).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from viper import paths
from viper.config import ATARI_TASKS, DMC_TASKS, Config
from viper.data.store import VideoStore, open_store
from viper.data.taskgroup import FRAME_SHAPE
from viper.errors import ViperError
from viper.hashing import file_sha256

KNOWN = {"dmc": DMC_TASKS, "atari": ATARI_TASKS}
IMPORTING = "importing"
H5_SUFFIXES = (".h5", ".hdf5")
"""HDF5 file name endings ``viper import`` accepts (any case)."""
SOURCES = (
    "expected the published npz layout <root>/<task>/{train,test}/*.npz or one task's HDF5 file "
    "(.h5/.hdf5, as `viper export` writes it)"
)
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
        # numpy stops reading where the array's header says it ends, before the zip's CRC is checked: a damaged
        # shape in the header loaded as a shorter episode without a word. testzip reads every member whole.
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise ViperError(
                f"{path}: {damaged} differs from its zip checksum (a damaged file); expected a zip with arr_0 "
                "uint8 (T, 64, 64, 3)"
            )
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
        # numpy reads a file that is not a zip as a pickle, and its refusal suggests allow_pickle: never do that.
        why = "not an npz (zip) archive" if "pickle" in str(exc) else f"{exc.__class__.__name__}: {exc}"
        raise ViperError(
            f"{path}: truncated or corrupt npz ({why}); expected a zip with arr_0 uint8 (T, 64, 64, 3)"
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
        raise ViperError(f"{root}: {'not a folder' if root.exists() else 'does not exist'}; {SOURCES}")
    folders = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        task = f"{suite}/{folder.name.removeprefix(suite + '_')}"
        if task not in KNOWN[suite]:
            hint = _layout_hint(root, folder, suite)
            raise ViperError(f"{folder}: unknown task {task!r}{hint}; known {suite} tasks: {', '.join(KNOWN[suite])}")
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
        raise ViperError(f"{root}: no task folders; expected <root>/<task>/{{train,test}}/*.npz" + _layout_hint(root))
    return out


def _layout_hint(root: Path, folder: Path | None = None, suite: str = "") -> str:
    """Which folder to pass when ``root`` is one level off the published layout (or names another suite)."""
    if folder is not None and folder.name in KNOWN:
        return f" ({folder.name!r} is a suite's folder, not a task's: pass {folder})"
    if folder is not None and folder.name in ("train", "test"):
        return f" ({root} is one task's folder: pass the folder above it, {root.parent})"
    if folder is not None and root.name in KNOWN and root.name != suite:
        return f" ({root} is named after suite {root.name!r}: add -S collect.suite={root.name})"
    if folder is None and root.name in ("train", "test") and any(root.glob("*.npz")):
        return f" ({root} holds the episodes of one task's split: pass {root.parent.parent})"
    return ""


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


def _missing(root: Path, listed: list[str]) -> None:
    """A pinned file that is gone is as wrong as a changed one: name the missing ones (and absent task folders)."""
    missing = sorted(r for r in listed if not (root / r).is_file())
    if not missing:
        return
    gone = sorted({r.split("/", 1)[0] for r in missing if "/" in r and not (root / r.split("/", 1)[0]).is_dir()})
    absent = f" (no folder {', '.join(gone)} in {root})" if gone else ""
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise ViperError(f"{root}: files listed in the manifest are missing: {', '.join(missing[:5])}{more}{absent}")


@dataclass(frozen=True)
class PublishedTask:
    """One task's checked source: ``files`` [(npz path, split)] in import order, the ``source`` record the store
    group keeps, and the Atari ``mask`` file (None: no mask)."""

    files: list[tuple[Path, str]]
    source: dict[str, Any]
    mask: Path | None


def check_published(
    root: str | Path,
    suite: str,
    tasks: list[str] | None = None,
    manifest: str | Path | None = None,
    read: bool = False,
) -> dict[str, PublishedTask]:
    """Check the published npz layout at ``root`` before anything is written: task folders, checksums against
    ``manifest`` (every listed file of the imported tasks must be there; of every task when ``tasks`` is None),
    and with ``read`` every episode decoded once (so a damaged file is refused before a store is opened)."""
    root = Path(root)
    found = scan_published(root, suite, tasks)
    pinned = read_manifest(manifest) if manifest is not None else None
    mask_file = root / "mask_map.pkl"
    if pinned is not None and not tasks:
        _missing(root, list(pinned))  # importing every task: every listed file, task folders included
    out = {}
    for task, files in found.items():
        extra = [mask_file] if suite == "atari" and mask_file.is_file() else []
        sums = verify(root, [p for p, _ in files] + extra, pinned)
        if pinned is not None:
            folder = files[0][0].parent.parent.name
            # (the Atari mask file too, when the manifest pins it)
            _missing(
                root, [r for r in pinned if r.startswith(folder + "/") or (suite == "atari" and r == mask_file.name)]
            )
        if read:
            for path, _ in files:
                load_npz_episode(path)
            if extra:
                load_mask(mask_file, task)
        dataset = hashlib.sha256("".join(f"{d}  {r}\n" for r, d in sorted(sums.items())).encode()).hexdigest()
        source = {"format": "published-npz", "root": str(root), "files": len(files), "dataset_sha256": dataset}
        if manifest is not None:
            source["manifest_sha256"] = file_sha256(manifest)
        out[task] = PublishedTask(files, source, mask_file if extra else None)
    return out


def write_published(store: VideoStore, task: str, checked: PublishedTask) -> int:
    """Write one checked task into ``store`` (an atomic task-group replace); returns its episode count."""
    with store.replacing(task, IMPORTING, attrs={"action_repeat": None, "source": checked.source}) as group:
        for index, (path, split) in enumerate(checked.files):
            group.append(load_npz_episode(path), split=split, episode_id=index)
        if checked.mask is not None:
            group.set_mask(load_mask(checked.mask, task))
    return len(checked.files)


def import_published(
    root: str | Path,
    store: VideoStore,
    suite: str,
    tasks: list[str] | None = None,
    manifest: str | Path | None = None,
) -> dict[str, int]:
    """Import the published npz layout into ``store`` (one atomic task-group replace per task); every task's
    files are checked (``check_published``) before the first is written."""
    checked = check_published(root, suite, tasks, manifest)
    return {task: write_published(store, task, one) for task, one in checked.items()}


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

    if command == "export":
        url = args.store or str(paths.store(cfg.data_dir, cfg.collect.suite))
        info = hdf5.export_task(open_store(url), args.task, args.output)
        print(f"wrote {args.output}: {info['episodes']} episodes, {info['frames']} frames of {args.task}")
        return info
    from viper.data.collect import task_lock

    source = Path(args.source)
    h5 = source.suffix.lower() in H5_SUFFIXES
    if source.is_file() and not h5:
        raise ViperError(f"{source}: not a folder or an HDF5 file; {SOURCES}")
    # Everything is checked before the store is opened for writing: a refused import creates or changes nothing.
    if h5:
        task = hdf5.task_of(source)
        # An HDF5 file names its task: without --store it goes to its own suite's store (not collect.suite's).
        url = args.store or str(paths.store(cfg.data_dir, task.split("/", 1)[0]))
        if args.manifest:
            verify(source.parent, [source], read_manifest(args.manifest))  # the file, listed by its name
        hdf5.check_file(source)
        other = next((t for t in args.task or [] if t != task), None)
        if other is not None:
            raise ViperError(f"{source}: holds task {task!r}, not {other!r}")
        try:
            held = open_store(url).tasks
        except ViperError:  # no store yet (or a folder the writer's open below creates a store in or refuses)
            held = []
        hdf5.check_suite(source, task, held, url)
        checked = {task: None}
    else:
        url = args.store or str(paths.store(cfg.data_dir, cfg.collect.suite))
        checked = check_published(source, cfg.collect.suite, args.task, args.manifest, read=True)
    summary = {}
    for task, one in checked.items():
        # One task at a time, as its only writer: the lock `viper collect` takes, and a store handle that leaves
        # other tasks' working groups alone (their writers may be running).
        with task_lock(cfg, url, task, "viper import"):
            store = open_store(url, "a", cfg.collect.chunk_frames, cfg.collect.shard_frames, task=task)
            before = store.task(task).num_episodes if task in store.tasks else None
            if one is None:
                hdf5.import_task(source, store, task=task)
            else:
                write_published(store, task, one)
            summary[task] = store.task(task).num_episodes
        replaced = f" (replacing the {before} episodes it held)" if before is not None else ""
        print(f"{url}: {task}: {summary[task]} episodes{replaced}")
    return {f"{task}/episodes": n for task, n in summary.items()}
