#!/usr/bin/env bash
# The real-model table (README "On a real model"; issues 21, 24, 25), trained in resumable batches, seed by seed.
# Two lanes (one core each): math (grpo, gdpo, dvao, vpo with Shapley credit, vpo with leave-one-out credit, gated)
# and personas (the same less gated). Each (lane, seed) is its own sweep directory under results/real/, so a
# stopped lane reruns with the same command: finished jobs are skipped (manifest.jsonl), an interrupted one resumes
# from its last checkpoint. Then evaluate (with the untrained base) and compare:
#   scripts/real_table.sh 0 4                 # seeds 0..4 (default 0 1)
#   scripts/real_table.sh eval                # mo-rl eval over every trained run + the base rows
#   mo-rl compare results/real --by task,method --baseline grpo
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${MO_RL_REAL_OUT:-results}
if [[ "${1:-}" == "eval" ]]; then
  exec mo-rl eval "$OUT/real" --k 1,4,16 --prompts 16 --base
fi
first=${1:-0}; last=${2:-1}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
lane_math() {
  for s in $(seq "$first" "$last"); do
    mo-rl train -m preset=real task=math trainer.seed="$s" output_dir="$OUT" hydra.sweep.dir="$OUT/real/sweep-math-s$s"
    mo-rl train -m preset=real task=math method=vpo method.credit=loo trainer.seed="$s" output_dir="$OUT" \
      hydra.sweep.dir="$OUT/real/sweep-math-loo-s$s"
    mo-rl train -m preset=real_gated trainer.seed="$s" output_dir="$OUT" hydra.sweep.dir="$OUT/real/sweep-gated-s$s"
  done
}
lane_personas() {
  for s in $(seq "$first" "$last"); do
    mo-rl train -m preset=real task=personas trainer.seed="$s" output_dir="$OUT" \
      hydra.sweep.dir="$OUT/real/sweep-personas-s$s"
    mo-rl train -m preset=real task=personas method=vpo method.credit=loo trainer.seed="$s" output_dir="$OUT" \
      hydra.sweep.dir="$OUT/real/sweep-personas-loo-s$s"
  done
}
lane_math > "$OUT/real-lane-math.log" 2>&1 &
lane_personas > "$OUT/real-lane-personas.log" 2>&1 &
wait
