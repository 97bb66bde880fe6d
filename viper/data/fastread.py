"""Synchronous reads of a local sharded frame array, without zarr's async machinery.

Each zarr read call hops through an event-loop thread and a thread pool (read the shard index, then the
chunk): ~0.3 ms on an idle machine, several ms on a busy one, which dominated random-window reads. The
sharded format is a published spec (Zarr v3 ``sharding_indexed``): a shard file is the encoded inner chunks
followed by an index of ``(offset, nbytes)`` little-endian uint64 pairs, one per inner chunk in C order, and
a CRC32C of the index. This reader opens each shard once, reads and checks its index once, then reads a
chunk with one ``pread`` and one zstd decode in the calling thread.

Only the exact layout ``VideoStore`` writes is accepted (uint8, fill 0, regular grid sharded along time,
inner codecs bytes + zstd, index bytes + crc32c at the end, "/" chunk keys); for anything else
``ShardedFrames.open`` returns None and callers use zarr. Keeping the shard file open also gives snapshot
reads: a writer replaces shard files by rename, and an open file keeps the version this reader indexed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs.zstd import Zstd

from viper.errors import ViperError

DAMAGED = (
    "the store is damaged: `dvc checkout` restores a DVC-tracked store; otherwise re-collect or re-import the task "
    "(`viper collect --task T` / `viper import`)"
)
"""What a read of damaged stored bytes tells the user to do."""

_EMPTY = np.iinfo(np.uint64).max
_EXPECTED_INNER = [{"name": "bytes"}, {"name": "zstd"}]
_EXPECTED_INDEX = [{"name": "bytes"}, {"name": "crc32c"}]


def _names(codecs: list[dict]) -> list[dict]:
    return [{"name": c.get("name")} for c in codecs]


def join_chunks(chunks: dict[int, np.ndarray], chunk_rows: int, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` from decoded chunks ``{index: rows}``: a view for one chunk, else one copy of
    only the needed rows."""
    first, last = start // chunk_rows, (stop - 1) // chunk_rows
    if first == last:
        return chunks[first][start - first * chunk_rows : stop - first * chunk_rows]
    parts = [chunks[first][start - first * chunk_rows :]]
    parts += [chunks[c] for c in range(first + 1, last)]
    parts.append(chunks[last][: stop - last * chunk_rows])
    return np.concatenate(parts)


class ShardedFrames:
    """Frames ``[start, stop)`` of one sharded uint8 array in a local folder (``read``)."""

    def __init__(
        self,
        array_dir: Path,
        shape: tuple[int, ...],
        shard_rows: int,
        chunk_rows: int,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        self.array_dir = array_dir
        self.on_open = on_open
        self.shape = shape
        self.shard_rows, self.chunk_rows = shard_rows, chunk_rows
        self.chunk_shape = (chunk_rows, *shape[1:])
        self.chunks_per_shard = shard_rows // chunk_rows
        self._zstd = Zstd()
        self._shards: dict[int, tuple[int, np.ndarray] | None] = {}

    @classmethod
    def open(cls, array_dir: str | Path, on_open: Callable[[], None] | None = None) -> ShardedFrames | None:
        """A reader if ``array_dir/zarr.json`` describes the layout above, else None. ``on_open`` runs after each
        shard file is opened (or found missing) and may raise: e.g. a check that the array was not replaced."""
        array_dir = Path(array_dir)
        try:
            meta = json.loads((array_dir / "zarr.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None
        codecs = meta.get("codecs", [])
        if (
            meta.get("data_type") != "uint8"
            or meta.get("fill_value") != 0
            or meta.get("chunk_key_encoding") != {"name": "default", "configuration": {"separator": "/"}}
            or meta.get("storage_transformers")
            or len(codecs) != 1
            or codecs[0].get("name") != "sharding_indexed"
        ):
            return None
        conf = codecs[0]["configuration"]
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        inner = conf["chunk_shape"]
        if (
            _names(conf.get("codecs", [])) != _EXPECTED_INNER
            or _names(conf.get("index_codecs", [])) != _EXPECTED_INDEX
            or conf["index_codecs"][0].get("configuration", {}).get("endian", "little") != "little"
            or conf.get("index_location", "end") != "end"
            or shard[1:] != meta["shape"][1:]
            or inner[1:] != meta["shape"][1:]
            or shard[0] % inner[0]
        ):
            return None
        return cls(array_dir, tuple(meta["shape"]), shard[0], inner[0], on_open)

    def _shard(self, s: int) -> tuple[int, np.ndarray] | None:
        """(open file descriptor, index (chunks_per_shard, 2) uint64) of shard ``s``; None if not written."""
        if s not in self._shards:
            path = self.array_dir / "c" / str(s) / "/".join("0" * (len(self.shape) - 1))
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                if self.on_open is not None:
                    self.on_open()
                self._shards[s] = None  # zarr writes no shard whose chunks are all fill value
                return None
            if self.on_open is not None:
                try:
                    self.on_open()
                except BaseException:
                    os.close(fd)
                    raise
            size = os.fstat(fd).st_size
            nbytes = self.chunks_per_shard * 16 + 4
            raw = os.pread(fd, nbytes, size - nbytes)
            if len(raw) != nbytes or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                os.close(fd)
                raise ViperError(f"{path}: corrupt shard index (checksum mismatch); {DAMAGED}")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.chunks_per_shard, 2)
            self._shards[s] = (fd, index)
        return self._shards[s]

    def chunk(self, c: int) -> np.ndarray:
        """Decoded inner chunk ``c``: uint8 (chunk_rows, ...) (the array's last chunk is padded with 0)."""
        found = self._shard(c // self.chunks_per_shard)
        if found is not None:
            fd, index = found
            offset, nbytes = index[c % self.chunks_per_shard]
            if offset != _EMPTY:
                out = np.empty(self.chunk_shape, np.uint8)
                self._zstd.decode(os.pread(fd, int(nbytes), int(offset)), out=out)
                return out
        return np.zeros(self.chunk_shape, np.uint8)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` (caller checks bounds against the committed length)."""
        size = self.chunk_rows
        first, last = start // size, (stop - 1) // size
        if stop <= start:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        return join_chunks({c: self.chunk(c) for c in range(first, last + 1)}, size, start, stop)

    def close(self) -> None:
        for found in self._shards.values():
            if found is not None:
                os.close(found[0])
        self._shards.clear()

    def __del__(self) -> None:
        self.close()
