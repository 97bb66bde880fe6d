"""The metrics Logger's sinks: metrics.jsonl always, TensorBoard and dvclive unless switched off."""

from __future__ import annotations

import json

import pytest

from viper.metrics import Logger


def _log_two_steps(log_dir):
    with Logger(log_dir, total=2, progress=False, resume=False) as log:
        log.scalars({"loss/a": 1.5, "loss/b": float("nan")}, step=1)
        log.scalars({"loss/a": 0.5}, step=2)


def test_jsonl_and_dvclive_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("VIPER_DVCLIVE", raising=False)
    _log_two_steps(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss/a"]) for r in rows] == [(1, 1.5), (2, 0.5)]
    assert rows[0]["loss/b"] is None  # non-finite values become JSON null, not an unparsable NaN
    tsv = (tmp_path / "dvclive" / "plots" / "metrics" / "loss" / "a.tsv").read_text().splitlines()
    assert [line.split("\t") for line in tsv[1:]] == [["1", "1.5"], ["2", "0.5"]]


def test_viper_dvclive_0_drops_only_dvclive(tmp_path, monkeypatch):
    monkeypatch.setenv("VIPER_DVCLIVE", "0")
    _log_two_steps(tmp_path)
    assert not (tmp_path / "dvclive").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert any((tmp_path / "tensorboard").iterdir())


def test_a_figure_is_saved_whole_or_not_at_all(tmp_path):
    """A kill mid-save left a truncated PNG where the report's learning curves were (saved in place)."""
    from matplotlib.figure import Figure

    from viper.metrics import save_figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "plots" / "curve.png")
    good = path.read_bytes()
    assert good[:8] == b"\x89PNG\r\n\x1a\n"

    def killed(target, **kwargs):
        with open(target, "wb") as handle:
            handle.write(good[:100])
        raise KeyboardInterrupt

    fig.savefig = killed
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path)
    assert path.read_bytes() == good


def test_a_resumed_log_sets_aside_the_rows_logged_after_its_checkpoint(tmp_path):
    """A killed run logged steps past its last checkpoint; the resumed run logs them again, so metrics.jsonl's
    steps went backwards (the report's learning curves zigzagged). Those rows move aside, nothing is deleted."""
    log_dir = tmp_path / "logs"
    with Logger(log_dir, tensorboard=False, dvclive=False, progress=False) as log:
        for step in range(1, 11):
            log.scalars({"agent/loss": step}, step)
    with open(log_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 11, "agent/lo')  # a line cut short by the kill
    with Logger(log_dir, initial=6, tensorboard=False, dvclive=False, progress=False) as log:
        log.scalars({"agent/loss": 7.5}, 7)
    steps = [json.loads(line)["step"] for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    aside = [json.loads(line)["step"] for line in (log_dir / "metrics.replaced.jsonl").read_text().splitlines()]
    assert aside == [7, 8, 9, 10]


def test_a_fragment_left_by_a_kill_is_dropped_even_when_no_row_follows_the_resume_step(tmp_path):
    """With nothing logged past the resume step but the cut line, the file was left as it was: the resumed run's
    first row was appended onto the fragment, and that row was lost to every reader."""
    log_dir = tmp_path / "logs"
    with Logger(log_dir, tensorboard=False, dvclive=False, progress=False) as log:
        for step in range(1, 4):
            log.scalars({"agent/loss": step}, step)
    with open(log_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 4, "agent/lo')  # cut short by the kill, right after the checkpoint at step 3
    with Logger(log_dir, initial=3, tensorboard=False, dvclive=False, progress=False) as log:
        log.scalars({"agent/loss": 4.0}, 4)
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["agent/loss"] == 4.0


def test_a_resumed_log_drops_dvclives_and_tensorboards_rows_after_its_checkpoint(tmp_path, monkeypatch):
    """dvclive only appends on resume and TensorBoard purged nothing for a run restarted from step 0: the steps a
    resumed run logs again appeared twice in `dvc plots` and TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("VIPER_DVCLIVE", raising=False)
    log_dir = tmp_path / "logs"
    with Logger(log_dir, progress=False) as log:
        for step in range(1, 8):
            log.scalars({"agent/loss": float(step)}, step)
    tsv = log_dir / "dvclive" / "plots" / "metrics" / "agent" / "loss.tsv"
    with open(tsv, "a") as handle:
        handle.write("8\t8.")  # a row a kill cut short
    with Logger(log_dir, initial=4, progress=False) as log:
        for step in range(5, 8):
            log.scalars({"agent/loss": step + 0.5}, step)
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    assert [int(step) for step, _ in rows] == list(range(1, 8)) and rows[-1][1] == "7.5", rows
    events = EventAccumulator(str(log_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("agent/loss")][3:] == [(4, 4.0), (5, 5.5), (6, 6.5), (7, 7.5)]
    # Started afresh (no checkpoint yet): a killed first attempt's rows go too.
    with Logger(log_dir, initial=0, progress=False) as log:
        log.scalars({"agent/loss": 9.0}, 1)
    assert [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]] == ["1"]


def test_metrics_json_has_no_nan(tmp_path):
    """json.dumps wrote NaN (a Spearman over constant scores, an evaluation that never ran): not JSON to jq,
    JavaScript or DVC Studio."""
    from viper.metrics import write_json

    write_json(tmp_path / "m.json", {"a": float("nan"), "b": {"c": float("inf"), "d": [1.0, float("-inf")]}, "e": 2})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=pytest.fail) == {
        "a": None,
        "b": {"c": None, "d": [1.0, None]},
        "e": 2,
    }
