#!/usr/bin/env bash
# One GPU session's benchmarks and learning runs, in one command (the device tool lends ~15 min per session).
#
#   bash benchmarks/gpu_session.sh OUT_DIR [BUDGET_SECONDS]
#
# Run on a CUDA machine from the repository root. It assumes a Python with torch (CUDA) and that the project's
# other runtime packages are importable (on this workplace's device machine: wheels carried in .whl/, see
# benchmarks/results/gpu.md for the exact call). Writes logs and a tarball of the agents' logs/plots to OUT_DIR.
# BUDGET_SECONDS bounds the whole script (default 540): the benchmarks run first, each under its own timeout capped
# by what the budget has left, and the concurrent learning runs get what is left less 30 s (skipped under 60 s);
# they stop there, wherever they got, saving a checkpoint that the same command continues from on the same (still
# warm) machine.
# Files back in OUT_DIR: env.txt (the machine, the run budget, GPU memory/utilisation each minute, each run's exit,
# capture failures and tracebacks), tests.txt (TESTS), table.md (benchmarks/run_table.py rows), agents.tgz (every
# run's logs/, plots/, metrics, newest evaluation GIF, and the runs' console logs under logs/), bench.txt (every
# benchmark's output, one section each).
# SMOKE=1 shrinks every number so the script can be checked on a CPU machine first (SMOKE_FRAMES, default 400: more
# frames than the budget allows checks the stop and the resume on a second call). SKIP lists steps already
# measured on this card, to leave their time to the learning runs: "bench" (every agent-update benchmark; the runs
# then take agent.cuda_graph=true, fastest on the H100), or one of them: "loops" (compile_loops), "graphs"
# (compile_loops with CUDA-graph trees), "cuda_graph" (the whole-update graph), "fused" (that graph over compiled
# loops); "reward" (relabelling throughput). With "bench" skipped, LOOPS=true gives the runs the fused graph
# (agent.compile_loops=true inside agent.cuda_graph: 0.035 s/update at S on the H100 vs 0.050 without).
# TASK_SEEDS (default "0 1 2") and VIPER_SEEDS (default "0"; empty: none) choose the concurrent learning runs,
# ENVS (default 4, published) their parallel envs, TASK (default dmc/cartpole_balance) their task.
# TESTS (default empty) names pytest files to run beside the learning runs, in the background under their own
# timeout (TESTS_S, default 240 s), output in OUT_DIR/tests.txt: the GPU-only tests then cost no device time of
# their own (they share the GPU with the runs, which slows the runs a little while they last).
set -u
skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
out=${1:?usage: gpu_session.sh OUT_DIR [BUDGET_SECONDS]}
budget_s=${2:-540}
t0=$(date +%s)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl VIPER_DVCLIVE=${VIPER_DVCLIVE:-1} PYTHONPATH=$PWD:${PYTHONPATH:-}
py=${PYTHON:-python3}
dev=cuda
frames=100000   # env frames per learning run (issue: 100k frames, size S, 3 seeds)
bench_sizes="XS S"
reward_steps=(--steps 512 --naive-steps 64)
if [ "${SMOKE:-0}" = 1 ]; then
  dev=cpu; frames=${SMOKE_FRAMES:-400}; bench_sizes=tiny; reward_steps=(--steps 40 --naive-steps 18)
fi
agent_steps=$((frames / 2))   # action repeat 2

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $py -c "import torch, mujoco; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'mujoco', mujoco.__version__)"
  nproc
} 2>&1 | tee "$out/env.txt"

# Each benchmark's timeout is capped by what the budget has left (less 90 s for the runs' start and the packing);
# one that would get under 10 s is skipped. Their output is gathered in OUT_DIR/bench.txt (one file: at most 8
# come back from the device machine), from per-benchmark files in $bdir that the choices below read.
bdir=$(mktemp -d)
left_s() { echo $((budget_s - ($(date +%s) - t0) - 90)); }
bench() {  # bench NAME WANT_S ARGS...: bench_agent.py ARGS under min(WANT_S, left_s) seconds into $bdir/NAME.txt
  local name=$1 want=$2 t; shift 2; t=$(left_s); [ "$t" -lt "$want" ] && want=$t
  if [ "$want" -lt 10 ]; then echo "bench $name skipped: the budget is spent" | tee -a "$out/env.txt"; return 0; fi
  timeout "$want" $py benchmarks/bench_agent.py --device $dev "$@" 2>&1 | tee "$bdir/$name.txt"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "(bench $name: timed out after $want s)" | tee -a "$bdir/$name.txt"
  return "$rc"
}

# 1. Agent update speed (batch 16 x 64), bf16 autocast on CUDA.
bf16=true
if ! skip bench; then
  set -o pipefail
  bench agent 100 --sizes $bench_sizes --repeats 3 --warmup 2
  rc=$?
  if [ $rc != 0 ] && [ $rc != 124 ]; then  # the bf16 path broke: keep the learning runs alive in fp32
    echo "bench_agent exit $rc: learning runs use agent.bf16=false" | tee -a "$bdir/agent.txt"; bf16=false
  fi
  set +o pipefail

  # 1b. The same with torch.compile of the observe / imagination steps (agent.compile_loops: the launch-bound
  #     part), in the default mode and with CUDA graphs (agent.compile_mode=reduce-overhead).
  [ "$dev" = cuda ] && ! skip loops && bench loops 170 --sizes S --repeats 3 --warmup 2 --compile-loops
  [ "$dev" = cuda ] && ! skip graphs && bench graphs 170 --sizes S --repeats 3 --warmup 3 --compile-loops \
    --compile-mode reduce-overhead
  # 1c. The whole update replayed from one CUDA graph (agent.cuda_graph), at XS and S; 1d. the same with the
  #     observe / imagination steps compiled (fewer, fused kernels inside the graph).
  [ "$dev" = cuda ] && ! skip cuda_graph && bench cuda_graph 150 --sizes XS S --repeats 3 --warmup 5 --cuda-graph
  [ "$dev" = cuda ] && ! skip fused && bench fused_graph 200 --sizes S --repeats 3 --warmup 5 --cuda-graph \
    --compile-loops
  # The learning runs take whichever measured fastest at size S (wall s/update, 6th table column).
  wall_s() { awk -F'|' '$2 ~ /^ *S *$/ {gsub(/ /, "", $7); print $7; exit}' "$1" 2>/dev/null; }
  # Only when size S's own graph was captured (a failed capture times eager updates under the graph's name).
  graphed() { grep -q "<!-- S: whole-update CUDA graph captured" "$1" 2>/dev/null && wall_s "$1"; }
  eager=$(wall_s "$bdir/agent.txt"); looped=$(wall_s "$bdir/loops.txt"); graphs=$(wall_s "$bdir/graphs.txt")
  whole=$(graphed "$bdir/cuda_graph.txt"); fused=$(graphed "$bdir/fused_graph.txt")
  read -r loops mode cgraph < <($py -c "
import sys
configs = [('false', 'default', 'false'), ('true', 'default', 'false'), ('true', 'reduce-overhead', 'false'),
           ('false', 'default', 'true'), ('true', 'default', 'true')]
times = {k: float(v) for k, v in zip(configs, sys.argv[1:]) if v}
print(*min(times, key=times.get) if times else configs[0])" "${eager:-}" "${looped:-}" "${graphs:-}" "${whole:-}" \
    "${fused:-}" 2>/dev/null || echo false default false)
  echo "S wall s/update: eager ${eager:-?}, compile_loops ${looped:-?}, + CUDA graphs ${graphs:-?}," \
    "whole-update graph ${whole:-?}, with compiled loops ${fused:-?} -> learning runs" \
    "agent.compile_loops=$loops agent.compile_mode=$mode agent.cuda_graph=$cgraph" | tee -a "$bdir/loops.txt"
else
  loops=${LOOPS:-false} mode=default cgraph=$([ "$dev" = cuda ] && echo true || echo false)
fi

# 2. Reward relabelling throughput, paper_dmc sizes (random weights), 64 and 256 windows per prior forward.
for wpb in 64 256; do
  skip reward && break
  t=$(left_s); [ "$t" -gt 50 ] && t=50
  if [ "$t" -lt 10 ]; then echo "bench reward skipped: the budget is spent" | tee -a "$out/env.txt"; break; fi
  timeout "$t" $py benchmarks/bench_reward.py --device $dev "${reward_steps[@]}" --windows-per-batch $wpb \
    --repeats 2 --output '' 2>&1 | tee -a "$bdir/reward.txt"
  [ "${PIPESTATUS[0]}" = 124 ] && echo "(bench reward, $wpb windows per batch: timed out after $t s)" \
    | tee -a "$bdir/reward.txt"
done
for name in agent loops graphs cuda_graph fused_graph reward; do
  [ -s "$bdir/$name.txt" ] && { echo "## $name"; cat "$bdir/$name.txt"; } >>"$out/bench.txt"
done
rm -rf "$bdir"

# 3. Concurrent learning runs on TASK (the demo reward model knows both cartpoles), size S, 100k frames: task reward
#    (oracle) x TASK_SEEDS and the VIPER reward (demo reward model under data/) x VIPER_SEEDS. Each stops at run_s
#    seconds if not done.
# SIGTERM at run_s (the run saves its checkpoint, replay included, after any evaluation under way), SIGKILL 25 s
# later: 5 s before the budget, which leaves the table and the tarball inside it.
run_s=$((budget_s - ($(date +%s) - t0) - 30))
echo "learning runs: ${run_s} s of the ${budget_s} s budget left" | tee -a "$out/env.txt"
if [ "$run_s" -lt 60 ]; then echo "too little time left: no learning runs" | tee -a "$out/env.txt"; ls -la "$out"; exit 0; fi
common=(--preset demo --task "${TASK:-dmc/cartpole_balance}" -S agent.size=S -S agent.batch_size=16
  -S agent.envs="${ENVS:-4}"
  -S agent.train_ratio=64 -S agent.env_steps=$agent_steps -S agent.eval_every_env_steps=5000
  -S agent.eval_episodes=2 -S agent.log_every_env_steps=1000 -S agent.checkpoint_every_env_steps=1000000
  -S agent.device=$dev -S reward.device=$dev -S agent.bf16=$bf16 -S agent.compile_loops=${loops:-false}
  -S agent.compile_mode=${mode:-default} -S agent.cuda_graph=${cgraph:-false})
if [ "${SMOKE:-0}" = 1 ]; then
  common+=(-S agent.size=tiny -S agent.batch_size=4 -S agent.batch_length=16 -S agent.eval_every_env_steps=100
    -S agent.log_every_env_steps=50)
fi
tests_pid=
if [ -n "${TESTS:-}" ]; then
  # shellcheck disable=SC2086  # TESTS is a list of paths
  timeout -k 10 "$(( ${TESTS_S:-240} < run_s ? ${TESTS_S:-240} : run_s ))" $py -m pytest -q -p no:cacheprovider \
    --noconftest $TESTS >"$out/tests.txt" 2>&1 &
  tests_pid=$!
fi
# The agents' logs go to $out/logs while they run (they come back even if the call is cut short: at most 8 files
# come back, and 5 runs + env.txt + tests.txt + bench.txt are 8; a sixth run's log may then stay behind), then
# into agents.tgz.
mkdir -p "$out/logs"
pids=()
for seed in ${TASK_SEEDS-0 1 2}; do
  timeout -k 25 "$run_s" $py -m viper.cli train-agent "${common[@]}" --reward task --seed $seed \
    >"$out/logs/agent_task_$seed.log" 2>&1 &
  pids+=($!)
done
for seed in ${VIPER_SEEDS-0}; do
  timeout -k 25 "$run_s" $py -m viper.cli train-agent "${common[@]}" --reward viper --seed $seed \
    >"$out/logs/agent_viper_$seed.log" 2>&1 &
  pids+=($!)
done
# GPU memory and utilisation while the runs share the card, once a minute.
( while sleep 60; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader 2>/dev/null \
    | sed "s/^/gpu at $(($(date +%s) - t0)) s: /"; done >>"$out/env.txt" ) &
sampler=$!
for p in "${pids[@]}"; do  # no pipe around the loop: `wait` only waits for this shell's own children
  wait "$p"; echo "pid $p exit $? (124: stopped by SIGTERM at the budget, 137: killed)" | tee -a "$out/env.txt"
done
kill "$sampler" 2>/dev/null
if [ -n "$tests_pid" ]; then wait "$tests_pid"; echo "tests ($TESTS) exit $?" | tee -a "$out/env.txt"; tail -3 "$out/tests.txt"; fi
grep -H "capturing the update failed\|Traceback" "$out"/logs/*.log 2>/dev/null | head -20 | tee -a "$out/env.txt"
# The results-table rows of every run on this machine (eval returns by env frames, VIPER reward per step).
$py benchmarks/run_table.py data/agents/*/*/seed* 2>&1 | tee "$out/table.md"
# Logs, plots and each run's newest evaluation GIF (16 MiB per file come back: the fifth session's tarball with every
# GIF and episode file was 16.4 MB); without the GIFs if it is still too big.
list=$(mktemp)
{ find data/agents -path '*/checkpoints' -prune -o -path '*/videos' -prune -o -type f -print
  for videos in data/agents/*/*/seed*/videos; do ls -t "$videos"/*.gif 2>/dev/null | head -1; done
  find "$out/logs" -type f; } >"$list" 2>/dev/null
pack() { tar czf "$out/agents.tgz" --transform 's|^.*/logs/agent_|logs/agent_|' -T "$1" 2>/dev/null; }
pack "$list"
if [ "$(stat -c %s "$out/agents.tgz")" -gt 16000000 ]; then
  grep -v '\.gif$' "$list" >"$list.small"; pack "$list.small"
  echo "agents.tgz without GIFs (over 16 MB with them)" | tee -a "$out/env.txt"
fi
rm -rf "$out/logs" "$list" "$list.small"
ls -la "$out"
