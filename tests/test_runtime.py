"""Process setup done on ``import viper`` (viper/runtime.py): huge pages for large CPU tensors, glibc's allocator
keeping freed memory, and the ``viper`` command's restart that applies the latter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from viper import cli, runtime

PROBE = """
import resource
import viper  # before torch, as every entry point does
import torch
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(20_000_000).fill_(1.0)  # 80 MB, freed at once
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[0], sum(faults[1:]) // 9)
"""


THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# With "[always]" every large mapping gets huge pages anyway and with "[never]" none does: the setting matters (and
# the tests that use it mean something) only under "[madvise]", the usual default.
needs_madvise_thp = pytest.mark.skipif(
    not THP.exists() or "[madvise]" not in THP.read_text(), reason="transparent huge pages not madvise"
)


def _faults_per_tensor(**env) -> tuple[int, int]:
    """Minor page faults of a process's first fresh 80 MB tensor and the mean of the next nine."""
    environ = {k: v for k, v in os.environ.items() if k not in ("THP_MEM_ALLOC_ENABLE", "GLIBC_TUNABLES")}
    # glibc's defaults unless a test names GLIBC_TUNABLES: these tests measure one setting at a time.
    env.setdefault("GLIBC_TUNABLES", "")
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    first, rest = map(int, out.stdout.split())
    return first, rest


@needs_madvise_thp
def test_large_cpu_tensors_use_huge_pages_unless_the_environment_says_otherwise():
    # 80 MB is ~20k pages of 4 KiB: each fresh tensor faults them all in; with huge pages a few hundred (~600 here).
    _, default = _faults_per_tensor()
    _, opted_out = _faults_per_tensor(THP_MEM_ALLOC_ENABLE="0")
    assert opted_out > 15_000, opted_out
    assert default < opted_out / 10, (default, opted_out)


@needs_madvise_thp
def test_glibc_tunables_make_freed_tensors_reuse_their_memory():
    # With glibc's defaults each fresh 80 MB tensor faults its pages in again (hundreds of huge-page faults); with
    # runtime.env's tunables (and its huge pages, whose 2 MiB-aligned blocks glibc can hand out again) the first
    # tensor faults and the next nine reuse its memory.
    tunables = runtime.settings()["GLIBC_TUNABLES"]
    _, plain = _faults_per_tensor()
    first, kept = _faults_per_tensor(GLIBC_TUNABLES=tunables)
    assert first > 20, first
    if plain < 300:  # seen: 115 on a run where the kernel served fresh mappings cheaply (usually ~630)
        pytest.skip(f"glibc's defaults refaulted only {plain} pages per tensor here: no cost to remove")
    # Mostly 0 faults, but on a busy VM a run sometimes refaults part of a tensor (12-69 of ~630 seen): the
    # tunables' effect is the factor, not an absolute count.
    assert kept * 5 < plain, (kept, plain)


RESTART_PROBE = """
import os, sys
print("started with", os.environ.get("GLIBC_TUNABLES"), flush=True)
from viper import cli
sys.argv = ["viper", "config", "--preset", "tiny"]
sys.exit(cli.main())
"""


def _starts(env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", RESTART_PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "preset: tiny" in out.stdout, out.stdout
    return [line.removeprefix("started with ") for line in out.stdout.splitlines() if line.startswith("started with")]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES matters only with glibc")
def test_viper_command_restarts_once_to_apply_glibc_tunables():
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert _starts(environ) == ["None", runtime.settings()["GLIBC_TUNABLES"]]
    # Started with the variable (any value: the user's wins), the command runs in its first process.
    assert _starts({**environ, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == ["glibc.malloc.arena_max=2"]


def test_cli_main_called_in_process_never_restarts(monkeypatch, capsys):
    # A caller's process (tests, notebooks) runs main(argv) where it is: no exec even if the variable was missing.
    monkeypatch.setattr(runtime, "_missing_at_start", ["GLIBC_TUNABLES"])
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail(f"execv{a}"))
    assert cli.main(["config", "--preset", "tiny"]) == 0
    assert "preset: tiny" in capsys.readouterr().out


def test_the_prefect_flows_use_the_project_prefect_home(tmp_path):
    """Prefect reads its home when first imported: importing the flows (what `prefect deploy`, serve.py and the
    UI's workers do first) must already see the project's PREFECT_HOME, not ~/.prefect."""
    probe = "import pipeline.flows, prefect.settings; print(prefect.settings.get_current_settings().home)"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = {**environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == tmp_path / ".prefect"


def test_make_keeps_runtime_values_the_environment_already_has():
    """runtime.env's values are defaults: `GLIBC_TUNABLES= make test` (README) really runs with glibc's own."""
    show = 'show: ; @echo "$$PREFECT_HOME|$$GLIBC_TUNABLES|$$MUJOCO_GL"'
    root = Path(__file__).parents[1]
    environ = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "GLIBC_TUNABLES", "MUJOCO_GL")}
    default = subprocess.run(
        ["make", "-s", "--eval", show, "show"], cwd=root, env=environ, capture_output=True, text=True
    )
    assert default.stdout.strip() == f".prefect|{runtime.settings()['GLIBC_TUNABLES']}|egl", default.stderr
    env = {**environ, "PREFECT_HOME": "/elsewhere", "GLIBC_TUNABLES": "", "MUJOCO_GL": "osmesa"}
    mine = subprocess.run(["make", "-s", "--eval", show, "show"], cwd=root, env=env, capture_output=True, text=True)
    assert mine.stdout.strip() == "/elsewhere||osmesa", mine.stderr


def test_device_settings_resolve_or_name_the_setting():
    """Every device setting goes through one resolver: a bad name or a missing CUDA is an error naming the key
    (it was a raw torch error, or an assertion deep in torch)."""
    import torch

    from viper.errors import ViperError

    assert runtime.resolve_device("cpu", "agent.device") == torch.device("cpu")
    expected = torch.device("cuda:1") if torch.cuda.is_available() else torch.device("cpu")
    assert runtime.resolve_device("auto", "device", local_rank=1) == expected
    with pytest.raises(ViperError, match=r"reward.device='gpu': expected auto, cpu, mps, cuda or cuda:<i>"):
        runtime.resolve_device("gpu", "reward.device")
    if not torch.cuda.is_available():
        with pytest.raises(ViperError, match=r"--device='cuda': CUDA is not available on this machine"):
            runtime.resolve_device("cuda", "--device")
    if not torch.backends.mps.is_available():
        with pytest.raises(ViperError, match=r"agent.device='mps': no Apple GPU"):
            runtime.resolve_device("mps", "agent.device")


def _ignore_sigterm_and_sleep(ready) -> None:
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def test_kill_workers_ends_workers_that_ignore_sigterm():
    """What a broken process pool's survivors need (the executor's SIGTERM does not end them)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    worker = context.Process(target=_ignore_sigterm_and_sleep, args=(ready,))
    worker.start()
    assert ready.wait(60)  # the child ignores SIGTERM from here on
    worker.terminate()
    worker.join(2)
    assert worker.is_alive()  # SIGTERM ignored
    runtime.kill_workers([worker])
    worker.join(10)
    assert not worker.is_alive()


def test_importing_viper_raises_a_low_open_files_limit():
    """The store's direct reader keeps every shard it reads open: a soft limit of 256 (the hard one stays) is
    raised on import, up to the hard limit."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit here is {hard}")
    code = (
        "import resource; N = resource.RLIMIT_NOFILE; resource.setrlimit(N, (256, resource.getrlimit(N)[1]));"
        "import viper; print(resource.getrlimit(N)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    expected = runtime.OPEN_FILES if hard == resource.RLIM_INFINITY else min(runtime.OPEN_FILES, hard)
    assert int(out) == expected


def test_a_refused_open_files_limit_never_stops_viper(monkeypatch):
    import resource

    def refuse(*args):
        raise ValueError("not allowed here")

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (256, resource.RLIM_INFINITY))
    monkeypatch.setattr(resource, "setrlimit", refuse)
    runtime.raise_open_files_limit()  # best effort: no error
