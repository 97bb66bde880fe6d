#!/bin/bash
# Agent update speed, ours against the public port, alternating on the same machine (see results/agent.md).
#
#   bash benchmarks/speed_pairs.sh REFERENCE_DIR REFERENCE_PYTHON [ROUNDS] [SIZES]
#
# Each round and size times, one after the other: the port as its users run it (glibc's and PyTorch's allocator
# defaults), ours as the `viper` command runs (viper/runtime.env's huge pages and GLIBC_TUNABLES), and the port
# again with those same two settings, so the report can say how much of the gap is the process environment.
# Prints each run's table rows; the ratios are wall seconds per update of neighbouring runs.
set -euo pipefail
ref_dir=$1
ref_python=$2
rounds=${3:-5}
sizes=${4:-"XS S"}
cd "$(dirname "$0")/.."
tunables=$(sed -n 's/^GLIBC_TUNABLES=//p' viper/runtime.env)
defaults=(-u GLIBC_TUNABLES -u THP_MEM_ALLOC_ENABLE)
ours_env=("GLIBC_TUNABLES=$tunables" THP_MEM_ALLOC_ENABLE=1)
reference() {  # SIZE ENV-ARGS...
    local size=$1
    shift
    env "$@" OMP_NUM_THREADS=2 "$ref_python" benchmarks/bench_reference.py --reference-dir "$ref_dir" \
        --sizes "$size" --threads 2 --repeats 3 --warmup 1 2>&1 | grep '^| [XS]'
}
for round in $(seq "$rounds"); do
    for size in $sizes; do
        echo "== round $round $size port-default $(date +%T)"
        reference "$size" "${defaults[@]}"
        echo "== round $round $size ours-runtime $(date +%T)"
        env "${defaults[@]}" .venv/bin/python benchmarks/bench_agent.py --sizes "$size" \
            --threads 2 --repeats 3 --warmup 1 | grep '^| [XS]\|probe'
        echo "== round $round $size port-tuned $(date +%T)"
        reference "$size" "${ours_env[@]}"
    done
done
