"""One logger, several sinks: console progress bar, ``metrics.jsonl``, TensorBoard and dvclive.

Keys are namespaced by stage (``tokenizer/recon_l1``, ``prior/bits_per_token``, ``agent/loss/kl``,
``episode/task_return``). Every stage writes through a ``Logger``:

    with Logger(run_dir / "logs", total=cfg.train_grad_steps, desc="tokenizer") as log:
        for step in range(start, total):
            ...
            log.scalars({"tokenizer/recon_l1": l1}, step)
            log.advance(step + 1)

``metrics.jsonl`` is appended (one JSON object per ``scalars`` call: ``{"step": s, "time_s": t, key: value}``),
so a resumed run continues the same file; rows past the step it resumes from (logged after the last checkpoint
by the run that was killed) move to ``metrics.replaced.jsonl`` first, so every key's steps only increase.
dvclive and TensorBoard are optional sinks that can be switched off.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

REPLACED = "metrics.replaced.jsonl"
"""Rows of ``metrics.jsonl`` past the step a run resumed from (``Logger``), kept rather than deleted."""


def _set_aside_rows_after(path: Path, step: int) -> None:
    """Move the rows of ``path`` logged after ``step`` to ``REPLACED`` beside it: a killed run logged them after
    its last checkpoint and the resumed run logs those steps again (a run that starts afresh, step 0, sets aside
    an older run's rows). Kept rows are rewritten atomically; a line cut short by a kill is dropped."""
    if not path.exists():
        return
    text = path.read_text()
    kept, later, dropped = [], [], False
    for line in text.splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped = True
            continue
        (kept if row_step <= step else later).append(line + "\n")
    if later:
        with open(path.with_name(REPLACED), "a") as aside:
            aside.writelines(later)
    # A fragment the kill cut short goes too: the resumed run's first row would be appended onto it.
    if later or dropped or (text and not text.endswith("\n")):
        write_text(path, "".join(kept))


def _trim_dvclive_rows_after(folder: Path, step: int) -> None:
    """Drop the rows of dvclive's per-metric TSVs (``plots/metrics/**/*.tsv``) logged after ``step``, as
    ``_set_aside_rows_after`` does for metrics.jsonl (the jsonl keeps the replaced rows; these are its copies):
    dvclive only appends on resume, so the steps a resumed run logs again appeared twice in ``dvc plots``."""
    for tsv in sorted((folder / "plots" / "metrics").rglob("*.tsv")):
        header, *rows = tsv.read_text().splitlines() or [""]
        names = header.split("\t")
        if "step" not in names:
            continue
        column = names.index("step")
        kept = []
        for row in rows:
            cells = row.split("\t")
            try:
                if len(cells) == len(names) and int(cells[column]) <= step:
                    kept.append(row)
            except ValueError:
                pass  # a line a kill cut short
        if len(kept) != len(rows):
            write_text(tsv, "\n".join([header, *kept]) + "\n")


def _float(value: Any) -> float:
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


class Logger:
    """Fan scalars out to every sink; show a progress bar over ``total`` units (steps, frames, ...).

    ``VIPER_DVCLIVE=0`` in the environment drops the dvclive sink (metrics.jsonl and TensorBoard stay): for
    machines without DVC's git stack, such as a bare GPU node.
    """

    def __init__(
        self,
        log_dir: str | Path,
        total: int | None = None,
        desc: str = "",
        initial: int = 0,
        tensorboard: bool = True,
        dvclive: bool = True,
        progress: bool = True,
        resume: bool = True,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _set_aside_rows_after(self.log_dir / "metrics.jsonl", initial)
        self._jsonl = open(self.log_dir / "metrics.jsonl", "a" if resume else "w")  # noqa: SIM115
        self._start = time.time()
        self._bar = tqdm(total=total, initial=initial, desc=desc, disable=not progress, dynamic_ncols=True)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides the events a killed run logged past the step it resumes from (from step
            # 1 on for a run that starts afresh: a run killed before its first checkpoint logged them).
            self._tb = SummaryWriter(str(self.log_dir / "tensorboard"), purge_step=initial + 1 if resume else None)
        self._live = None
        if dvclive and os.environ.get("VIPER_DVCLIVE", "1") != "0":
            from dvclive import Live

            if resume:
                _trim_dvclive_rows_after(self.log_dir / "dvclive", initial)
            # save_dvc_exp=False: the pipeline's own `dvc exp` handles experiments; dvclive only writes files.
            self._live = Live(str(self.log_dir / "dvclive"), resume=resume, save_dvc_exp=False, dvcyaml=None)
        self.last: dict[str, float] = {}

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Record ``values`` (numbers or 0-d tensors) at ``step`` in every sink."""
        row = {k: _float(v) for k, v in values.items()}
        self.last.update(row)
        record = {"step": int(step), "time_s": round(time.time() - self._start, 3), **row}
        self._jsonl.write(json.dumps(_json_safe(record)) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in row.items():
                self._tb.add_scalar(key, value, step)
        if self._live is not None:
            self._live.step = int(step)
            for key, value in row.items():
                if math.isfinite(value):
                    self._live.log_metric(key, value, plot=True)
        shown = {k.rsplit("/", 1)[-1]: f"{v:.4g}" for k, v in list(row.items())[:4]}
        self._bar.set_postfix(shown, refresh=False)

    def image(self, key: str, path: str | Path, step: int) -> None:
        """Register a picture already written to ``path`` (PNG) with TensorBoard and dvclive."""
        if self._tb is not None or self._live is not None:
            import imageio.v3 as iio

            pixels = iio.imread(path)
            if self._tb is not None:
                self._tb.add_image(key, pixels[..., :3], step, dataformats="HWC")
            if self._live is not None:
                self._live.log_image(f"{key.replace('/', '_')}.png", pixels)

    def advance(self, position: int) -> None:
        """Move the progress bar to ``position`` (absolute, so resumed runs show the right place)."""
        self._bar.update(position - self._bar.n)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        self._bar.write(message)

    def close(self) -> None:
        self._bar.close()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._live is not None:
            self._live.end()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically: a temp file beside ``path``, then a rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG atomically (a temp file beside ``path``, then a rename); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=dpi)
    tmp.replace(path)
    return path


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (JSON has no such numbers: ``NaN`` breaks strict parsers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, values: Mapping[str, Any]) -> None:
    """Write a metrics JSON (e.g. for ``dvc metrics``) atomically; a value that is not a finite number (a
    Spearman over constant scores, an evaluation that never ran) is written ``null``."""
    text = json.dumps(_json_safe(dict(values)), indent=2, sort_keys=True, allow_nan=False)
    write_text(path, text + "\n")
