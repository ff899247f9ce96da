#!/usr/bin/env bash
# Train and evaluate the regime map (conf/preset/regime_map.yaml): 12 cells (rho x noise) x grpo, gdpo, dvao, vpo x
# SEEDS, one sweep directory per cell under results/regime_map/, each cell evaluated (k = 1, 4, 16) right after it
# trains. Resumable: a rerun skips completed runs and runs that already have eval.json.
#   SEEDS=0,1,2 bash scripts/regime_map.sh      # the committed map; SEEDS=3,4 TAG=-s34 adds two seeds beside it
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-0,1,2}
TAG=${TAG:-}
MO_RL=${MO_RL:-python -m mo_rl}
for noise in 0 0.3; do
  for rho in -1 -0.5 -0.25 0 0.5 1; do
    dir="results/regime_map/rho${rho}_noise${noise}${TAG}"
    $MO_RL train -m preset=regime_map "task.options.rho=${rho}" "task.options.noise=${noise}" \
      method=grpo,gdpo,dvao,vpo "trainer.seed=${SEEDS}" "hydra.sweep.dir=${dir}"
    todo=()
    for run in "$dir"/*/; do [ -f "$run/eval.json" ] || todo+=("$run"); done
    [ ${#todo[@]} -eq 0 ] || $MO_RL eval "${todo[@]}" --k 1,4,16
  done
done
