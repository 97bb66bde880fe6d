"""The ``report`` stage: our results beside the published ones, as Markdown and HTML, from the DVC metrics.

Reads what earlier stages wrote (``data/metrics/<stage>.json``, the reward diagnostics, the agent evaluation
``data/evaluate/results.json`` and the agents' ``metrics.jsonl``), draws learning curves, copies the pictures
next to the report and writes ``data/report/report.md`` and ``report.html``, and the curves as TSVs under
``data/report/plots`` for ``dvc plots show`` (dvc.yaml declares that folder and the pictures as plots). A task
that has not been run still gets its row, marked "not run", so a missing result is visible rather than silently
absent.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from viper import paths
from viper.config import Config
from viper.errors import ViperError
from viper.eval.keys import AGENT_REWARDS, reward_eval_by_task
from viper.eval.published import TARGET_RATIO, in_published_unit, published
from viper.metrics import save_figure, write_json, write_text
from viper.stages import STAGES, metrics_path

PICTURE_SUFFIXES = (".png", ".gif")


@dataclass
class Report:
    """Blocks rendered to both Markdown and HTML: ("h", text), ("p", text), ("table", rows), ("img", path)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "img":
                out += [f"![{Path(value).stem}]({value})", ""]
            elif kind == "table" and value:
                header = list(value[0])
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_cell(row.get(k)) for k in header) + " |" for row in value]
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h":
                body.append(f"<h2>{html.escape(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "img":
                body.append(f'<p><img src="{html.escape(value)}" alt="{html.escape(Path(value).stem)}"></p>')
            elif kind == "table" and value:
                header = list(value[0])
                head = "".join(f"<th>{html.escape(k)}</th>" for k in header)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k)))}</td>" for k in header) + "</tr>"
                    for r in value
                )
                body.append(f"<table><tr>{head}</tr>{rows}</table>")
        style = "body{font-family:sans-serif;max-width:70em;margin:auto}td,th{border:1px solid #ccc;padding:2px 6px}"
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
        )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it does not exist (the stage has not run) or is not JSON (said)."""
    try:
        return json.loads(path.read_text())
    except OSError:
        return None
    except json.JSONDecodeError as exc:
        print(f"report: {path} is not valid JSON ({exc}); left out of the report (re-run the stage that writes it)")
        return None


def agent_rows(cfg: Config, data_dir: Path) -> list[dict[str, Any]]:
    """One row per configured task: our VIPER and oracle agents' task returns (mean over seeds) beside the
    paper's, in the paper's unit (Atari human-normalised); and the summed VIPER reward each kind of agent's
    episodes get (does the VIPER agent look more like the expert videos than the oracle?)."""
    results_path = paths.evaluate_dir(data_dir) / "results.json"
    results = _read_json(results_path) or []
    baselines = {b["task"]: b for b in _read_json(paths.evaluate_dir(data_dir) / "baselines.json") or []}
    returns: dict[tuple[str, str], list[float]] = defaultdict(list)
    likelihoods: dict[tuple[str, str], list[float]] = defaultdict(list)
    for i, record in enumerate(results):
        if not isinstance(record, dict) or not isinstance(record.get("task"), str) or "task_return_mean" not in record:
            raise ViperError(
                f"{results_path}: record {i} is {record!r}; expected an object with 'task' and 'task_return_mean' "
                "(as `viper evaluate` writes; run it again)"
            )
        key = (record["task"], record.get("reward", "viper"))
        returns[key].append(float(record["task_return_mean"]))
        if record.get("viper_return_mean") is not None:
            likelihoods[key].append(float(record["viper_return_mean"]))

    def mean(values: list[float]) -> float | None:
        return statistics.fmean(values) if values else None

    rows = []
    for task in cfg.agent.tasks:
        ours = [in_published_unit(task, r) for r in returns.get((task, "viper"), [])]
        oracle = mean([in_published_unit(task, r) for r in returns.get((task, "task"), [])])
        random = baselines[task]["task_return_mean"] if task in baselines else None
        paper = published(task)
        row = {
            "task": task,
            "unit": paper.unit,
            "seeds": len(ours) or ("not run (oracle only)" if oracle is not None else "not run"),
            "VIPER (ours)": mean(ours),
            "std": statistics.pstdev(ours) if len(ours) > 1 else None,
            "oracle (ours)": oracle,
            "random actions (ours)": in_published_unit(task, random),
            "VIPER/oracle (ours)": mean(ours) / oracle if ours and oracle is not None and oracle > 0 else None,
            "VIPER (paper)": paper.viper,
            "oracle (paper)": paper.oracle,
            "VIPER/oracle (paper)": round(paper.viper / paper.oracle, 2) if paper.viper and paper.oracle else None,
            "target ratio": TARGET_RATIO.get(task),
            "summed VIPER reward, VIPER agent": mean(likelihoods.get((task, "viper"), [])),
            "summed VIPER reward, oracle": mean(likelihoods.get((task, "task"), [])),
        }
        rows.append(row)
    return rows


def reward_rows(cfg: Config, data_dir: Path) -> list[dict[str, Any]]:
    """Per-task reward diagnostics (AUROC, Spearman, ...) from the reward-eval metrics."""
    metrics = _read_json(paths.reward_eval_dir(data_dir, cfg.collect.suite) / "metrics.json")
    by_task = reward_eval_by_task(metrics, cfg.collect.tasks) if isinstance(metrics, dict) else {}
    rows = []
    for task in cfg.collect.tasks:
        if task not in by_task:
            rows.append({"task": task, "status": "not run"})
            continue
        rows.append({"task": task, **by_task[task]})
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in keys} for row in rows]


def read_series(log: Path, keys: Any) -> dict[str, list[tuple[int, float]]]:
    """``(step, value)`` points of every key of a ``metrics.jsonl`` that ``keys(key)`` accepts, in file order."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut short by a killed run (or not a metrics row); the rest of the file is still good
        for key, value in row.items():
            if key not in ("step", "time_s") and keys(key) and isinstance(value, (int, float)):
                series[key].append((step, float(value)))
    return series


AgentSeries = dict[tuple[str, str, str], dict[str, list[tuple[int, float]]]]
"""``(reward, task slug, seed folder)`` -> the run's plotted series (``PLOTTED_KEYS["agent"]``)."""


def agent_series(cfg: Config, data_dir: Path) -> AgentSeries:
    """The plotted series of the configured agent runs (``agent.tasks`` x ``agent.seeds``, both rewards) that have
    a log, each log read once. Runs left under ``data/agents`` from other settings (fewer seeds now, another
    preset) are not the preset's: evaluate leaves them out too."""
    out = {}
    for task in cfg.agent.tasks:
        for seed in cfg.agent.seeds:
            for reward in AGENT_REWARDS:
                log = paths.agent_dir(data_dir, reward, task, seed) / "logs" / "metrics.jsonl"
                if log.is_file():
                    out[(reward, paths.slug(task), f"seed{seed}")] = read_series(log, _plotted("agent"))
    return dict(sorted(out.items()))  # the order of the plots' legends: by reward, task, seed


def learning_curves(runs: AgentSeries, out: Path, action_repeat: int = 1) -> list[Path]:
    """Plot ``episode/task_return`` against env frames (the logs' agent steps x ``action_repeat``, the paper's
    unit) for every agent run, one picture per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = defaultdict(list)
    for (reward, task, seed), series in runs.items():
        points = series.get("episode/task_return")
        if points:
            curves[task].append((f"{reward} {seed}", [(step * action_repeat, value) for step, value in points]))
    written = []
    for task, task_runs in curves.items():
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for label, points in task_runs:
            ax.plot(*zip(*points, strict=True), label=label)
        ax.set(title=task, xlabel="env frames", ylabel="task return")
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(save_figure(fig, out / f"curve_{task}.png"))
        plt.close(fig)
    return written


PLOTTED_KEYS = {
    "agent": ("episode/task_return", "episode/viper_return", "train/episode_task_return"),
    "tokenizer": ("tokenizer/eval/",),
    "prior": ("prior/eval_bits_per_token", "prior/train_bits_per_token"),
}
"""Which logged series go into ``plot_data`` (a key matches an entry equal to it or starting with it)."""


def _plotted(kind: str):
    return lambda key: any(key == k or (k.endswith("/") and key.startswith(k)) for k in PLOTTED_KEYS[kind])


def plot_data(cfg: Config, data_dir: Path, agents: AgentSeries, out: Path) -> list[Path]:
    """One two-column TSV (``step``, value) per logged curve, for ``dvc plots show`` (dvc.yaml's top-level plots).

    Files are named ``<run>__<key>.tsv``: the agents' task/VIPER returns per (reward, task, seed), the
    tokenizer's eval losses and the prior's bits per token. The folder holds nothing but these files, so DVC
    renders each as a line plot with ``x: step`` and no parsing warnings.
    """
    suite = cfg.collect.suite
    runs = {f"agent_{r}_{t}_{s}": series for (r, t, s), series in agents.items()}
    for kind, run_dir in (
        ("tokenizer", paths.tokenizer_dir(data_dir, suite)),
        ("prior", paths.prior_dir(data_dir, suite)),
    ):
        runs[f"{kind}_{suite}"] = read_series(run_dir / "logs" / "metrics.jsonl", _plotted(kind))
    written = []
    for name, series in runs.items():
        for key, points in series.items():
            column = key.rsplit("/", 1)[-1]
            path = out / f"{name}__{key.replace('/', '_')}.tsv"
            write_text(path, "".join([f"step\t{column}\n", *(f"{s}\t{v:.6g}\n" for s, v in points)]))
            written.append(path)
    return written


def _copy_pictures(sources: list[Path], data_dir: Path, assets: Path) -> list[Path]:
    copied = []
    for source in sources:
        for picture in sorted(source.rglob("*")) if source.exists() else []:
            # (a killed writer's half-written `*.tmp.png` is not a picture of the run)
            if (
                picture.suffix in PICTURE_SUFFIXES
                and "tensorboard" not in picture.parts
                and ".tmp." not in picture.name
            ):
                target = assets / str(picture.relative_to(data_dir)).replace("/", "__")
                shutil.copyfile(picture, target)
                copied.append(target)
    return copied


def run(cfg: Config) -> dict[str, Any]:
    """Write ``report.md`` and ``report.html`` under ``viper.paths.report_dir``; return summary numbers."""
    data_dir = Path(cfg.data_dir)
    out = paths.report_dir(data_dir)
    assets = paths.report_assets(data_dir)
    shutil.rmtree(assets, ignore_errors=True)
    assets.mkdir(parents=True)
    report = Report(f"VIPER report (preset {cfg.preset})")
    report.blocks.append(("p", "Published numbers are read from the paper's figures (about +-5-10% of the axis)."))

    rows = agent_rows(cfg, data_dir)
    report.blocks += [("h", "Agents: VIPER reward vs task-reward oracle"), ("table", rows)]
    agents = agent_series(cfg, data_dir)
    curves = learning_curves(agents, assets, cfg.agent.action_repeat)
    report.blocks += [("img", str(p.relative_to(out))) for p in curves]
    plots = paths.report_plots(data_dir)
    shutil.rmtree(plots, ignore_errors=True)
    plot_files = plot_data(cfg, data_dir, agents, plots)

    report.blocks += [("h", "Reward model diagnostics"), ("table", reward_rows(cfg, data_dir))]
    stage_rows = []
    for stage in STAGES:
        metrics = _read_json(Path(metrics_path(stage.name, data_dir)))
        if isinstance(metrics, dict):
            stage_rows += [{"stage": stage.name, "metric": k, "value": v} for k, v in sorted(metrics.items())]
    report.blocks += [("h", "Stage metrics"), ("table", stage_rows)]

    sources = [paths.tokenizer_dir(data_dir, cfg.collect.suite), paths.prior_dir(data_dir, cfg.collect.suite)]
    sources += [paths.reward_eval_dir(data_dir, cfg.collect.suite), paths.evaluate_dir(data_dir)]
    pictures = _copy_pictures(sources, data_dir, assets)
    if pictures:
        report.blocks.append(("h", "Pictures: reconstructions, predictions, reward curves, episodes"))
        report.blocks += [("img", str(p.relative_to(out))) for p in pictures]

    write_text(out / "report.md", report.markdown())
    write_text(out / "report.html", report.html())
    summary = {
        "tasks": len(rows),
        "tasks_with_results": sum(1 for r in rows if r["VIPER (ours)"] is not None),
        "plot_files": len(plot_files),
    }
    write_json(out / "summary.json", summary)
    return summary


def cli(cfg: Config, args: Any, command: str) -> dict[str, Any]:
    summary = run(cfg)
    print(f"report: {paths.report_dir(cfg.data_dir) / 'report.md'} ({summary['tasks']} tasks)")
    return summary
