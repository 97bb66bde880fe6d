#!/usr/bin/env bash
# Build what a device call carries (benchmarks/results/gpu.md) on a fresh workplace VM, in one command:
#   .whl/  cp312 wheels the device machine lacks (versions from requirements.lock) + dm_control without its
#          locomotion / manipulation / blender folders (dm_control_trim.tgz; the full wheel is 56 MB)
#   .gl/   the EGL / GL loader debs MuJoCo's EGL rendering needs (unpacked with `dpkg -x` on the device)
#   data/tokenizer, data/prior   the demo reward model, weights only (benchmarks/trim_reward_model.py)
#
#   bash benchmarks/prepare_gpu_carry.sh [DEMO_DATA_DIR]
#
# DEMO_DATA_DIR holds a trained demo reward model (`dvc repro train-videogpt` on a clone of main: ~31 min on 2
# cores); without it the reward model step is skipped with a message. Needs the package registries (pip, apt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
lock() { grep -i "^$1==" requirements.lock | head -1; }

rm -rf .whl.tmp && mkdir -p .whl.tmp
pkgs=()
# pytest and its dependencies run the GPU-only tests on the device machine (`pytest --noconftest tests/test_cuda_graph.py`).
for name in mujoco dm-env dm-tree gymnasium Farama-Notifications PyOpenGL glfw zarr numcodecs donfig google-crc32c \
  pytest pluggy iniconfig packaging; do
  spec=$(lock "$name") || { echo "requirements.lock has no pin for $name" >&2; exit 1; }
  pkgs+=("$spec")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  -d .whl.tmp "${pkgs[@]}"
# dm_control, trimmed: unpack the pure-Python wheel and drop the folders the DMC suite never imports.
$PY -m pip download -q --no-deps --only-binary=:all: -d .whl.tmp/dmc "$(lock dm_control)"
mkdir -p .whl.tmp/dmc/site
$PY -m zipfile -e .whl.tmp/dmc/dm_control-*.whl .whl.tmp/dmc/site
rm -rf .whl.tmp/dmc/site/dm_control/{locomotion,manipulation,blender}
tar czf .whl.tmp/dm_control_trim.tgz -C .whl.tmp/dmc/site .
rm -rf .whl.tmp/dmc
rm -rf .whl && mv .whl.tmp .whl

rm -rf .gl && mkdir -p .gl
(cd .gl && apt-get download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 libvulkan1 >/dev/null)

if [ $# -ge 1 ]; then
  $PY benchmarks/trim_reward_model.py "$1"
else
  echo "no DEMO_DATA_DIR given: data/tokenizer and data/prior not prepared (the VIPER runs need them)"
fi
du -sh .whl .gl data/tokenizer data/prior 2>/dev/null || true
echo "carry: [\".whl\", \".gl\", \"data/tokenizer\", \"data/prior\"] (64 MiB in all at most)"
