#!/usr/bin/env bash
# Probe (eighth session): does the VIPER agent's NaN at ~5.9k agent steps on the GPU (gpu_session.sh with
# agent.compile_mode=reduce-overhead) follow CUDA graphs? Three VIPER runs at once, size S, seed 0, the demo reward
# model under data/: compiled loops with CUDA graphs, compiled loops without, eager. Each stops after RUN_S s.
#   bash benchmarks/gpu_nan_probe.sh OUT_DIR [RUN_S]
out=${1:?usage: gpu_nan_probe.sh OUT_DIR [RUN_S]}; run_s=${2:-185}
export PYTHONUNBUFFERED=1 MUJOCO_GL=egl VIPER_DVCLIVE=${VIPER_DVCLIVE:-1}
c="--preset demo --task dmc/cartpole_balance --reward viper --seed 0 -S agent.size=S -S agent.batch_size=16
 -S agent.envs=3 -S agent.train_ratio=64 -S agent.env_steps=50000 -S agent.eval_every_env_steps=100000
 -S agent.log_every_env_steps=500 -S agent.checkpoint_every_env_steps=1000000 -S agent.device=cuda
 -S reward.device=cuda -S agent.bf16=true -S agent.cuda_graph=false"
i=0
for v in "agent.compile_loops=true -S agent.compile_mode=reduce-overhead" "agent.compile_loops=true" \
  "agent.compile_loops=false"; do
  i=$((i + 1)); mkdir -p /tmp/d$i; ln -sfn "$PWD/data/tokenizer" /tmp/d$i/tokenizer; ln -sfn "$PWD/data/prior" /tmp/d$i/prior
  # shellcheck disable=SC2086
  timeout -k 10 "$run_s" python3 -m viper.cli train-agent $c -S data_dir=/tmp/d$i -S $v >"$out/v$i.log" 2>&1 &
done
wait
for i in 1 2 3; do
  echo "== v$i"; tr '\r' '\n' <"$out/v$i.log" | grep -v '^$' | tail -2 | cut -c1-500
  grep -h 'agent/loss/image' /tmp/d$i/agents/viper/*/seed0/logs/metrics.jsonl | tail -1 | cut -c1-400
done
