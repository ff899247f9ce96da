#!/usr/bin/env bash
# The real-model table (README "On a real model"; issues 21, 24, 25), trained in resumable batches, seed by seed.
# Two lanes (one core each): math (grpo, gdpo, vpo with Shapley credit, vpo with leave-one-out credit, dvao, gated)
# and personas (the same less gated). Each run is a one-job sweep in results/real/<task>-<method>-s<seed>/; a run
# already completed anywhere under results/real (same task, method, credit and seed) is skipped, and an interrupted
# one resumes from its last checkpoint, so a stopped batch continues with the same command on any machine. Each run
# is evaluated as soon as it completes (16 held-out prompts, k 1,4,16) and its weights dropped (KEEP_WEIGHTS=1 keeps
# them), so a finished run directory is the small record that is committed. Then:
#   scripts/real_table.sh 0 4                 # seeds 0..4 (default: 0 1)
#   scripts/real_table.sh eval                # mo-rl eval over every trained run, with the untrained base rows
#   scripts/real_table.sh one TASK LABEL SEED # one run (LABEL: grpo gdpo vpo vpo-loo dvao gated), e.g. from
#                                             # scripts/run_queue.sh, which keeps two of them going from a list
#   mo-rl compare results/real --by task,method,method.credit --baseline grpo
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${MO_RL_REAL_OUT:-results}
MORL=${MORL:-mo-rl}
if [[ "${1:-}" == "eval" ]]; then
  exec $MORL eval "$OUT/real" --k 1,4,16 --prompts 16 --base
fi
first=${1:-0}; last=${2:-1}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

source scripts/real_lib.sh
have() {  # task method credit seed: a completed run of it under $OUT/real?
  python scripts/completed_run.py "$OUT/real" --task "$1" --method "$2" --credit "$3" --seed "$4" > /dev/null
}

run() {  # task label seed overrides...
  local task=$1 label=$2 seed=$3; shift 3
  local method=${label%%-*} credit=-
  [[ $method == vpo ]] && credit=shapley
  [[ $label == vpo-loo ]] && credit=loo
  local sweep="$OUT/real/$task-$label-s$seed"
  if have "$task" "$method" "$credit" "$seed"; then
    echo "have $task $label s$seed"
  else
    $MORL train -m preset=real task="$task" method="$method" trainer.seed="$seed" output_dir="$OUT" \
      hydra.sweep.dir="$sweep" "$@"
  fi
  [[ -d $sweep ]] && finish "$sweep"
}

gated() {  # seed
  if have math gated - "$1"; then
    echo "have math gated s$1"
  else
    $MORL train -m preset=real_gated trainer.seed="$1" output_dir="$OUT" hydra.sweep.dir="$OUT/real/math-gated-s$1"
  fi
  [[ -d $OUT/real/math-gated-s$1 ]] && finish "$OUT/real/math-gated-s$1"
}

if [[ "${1:-}" == "one" ]]; then
  task=${2:?usage: real_table.sh one TASK LABEL SEED} label=${3:?LABEL} seed=${4:?SEED}
  case $label in
    gated) gated "$seed" ;;
    vpo-loo) run "$task" vpo-loo "$seed" method.credit=loo ;;
    grpo|gdpo|vpo|dvao) run "$task" "$label" "$seed" ;;
    *) echo "real_table.sh: unknown label '$label' (grpo gdpo vpo vpo-loo dvao gated)" >&2; exit 2 ;;
  esac
  exit
fi

lane_math() {
  for s in $(seq "$first" "$last"); do
    run math grpo "$s"; run math gdpo "$s"; run math vpo "$s"; run math vpo-loo "$s" method.credit=loo
    run math dvao "$s"; gated "$s"
  done
}
lane_personas() {
  for s in $(seq "$first" "$last"); do
    run personas grpo "$s"; run personas gdpo "$s"; run personas vpo "$s"
    run personas vpo-loo "$s" method.credit=loo; run personas dvao "$s"
  done
}
for lane in ${LANES:-math personas}; do  # LANES=math: one lane only
  "lane_$lane" >> "$OUT/real-lane-$lane.log" 2>&1 &
done
wait
