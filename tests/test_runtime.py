"""Process setup done on ``import viper`` (viper/runtime.py): huge pages for large CPU tensors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import resource
import viper  # before torch, as every entry point does
import torch
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(20_000_000).fill_(1.0)  # 80 MB, freed at once
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) // 10)
"""

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _faults_per_tensor(**env) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**environ, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


# With "[always]" every large mapping gets huge pages anyway and with "[never]" none does: the setting matters (and
# this test means something) only under "[madvise]", the usual default.
@pytest.mark.skipif(not THP.exists() or "[madvise]" not in THP.read_text(), reason="transparent huge pages not madvise")
def test_large_cpu_tensors_use_huge_pages_unless_the_environment_says_otherwise():
    # 80 MB is ~20k pages of 4 KiB: each fresh tensor faults them all in; with huge pages it is ~40.
    default = _faults_per_tensor()
    opted_out = _faults_per_tensor(THP_MEM_ALLOC_ENABLE="0")
    assert opted_out > 15_000, opted_out
    assert default < opted_out / 10, (default, opted_out)
