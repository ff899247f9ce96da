#!/usr/bin/env bash
# Directive feedback on SmolLM2 (conf/preset/real_directive.yaml; README "Evaluative and directive feedback"),
# one run per sweep directory, results/real_directive/<task>-<method>-<directive>-s<seed>/. A run already completed
# anywhere under results/real or results/real_directive (same task, method, directive loss and coef, seed) is
# skipped: on math the directive-off arms are the real table's dvao and vpo runs (preset=real has the same shape
# and config but the experiment name; coef 0 is training without directive, bit for bit). An interrupted run
# resumes from its last checkpoint; each run is evaluated as it completes (16 prompts, k 1,4,16, as the real
# table) and its weights dropped (KEEP_WEIGHTS=1 keeps them), so a finished run directory is the committed record.
#   scripts/real_directive.sh [first_seed last_seed]   # dvao: directive off / token_advantage / forward_ce (0 2)
#   scripts/real_directive.sh vpo LOSS [first last]    # vpo: directive off and LOSS (the better of the two)
#   scripts/real_directive.sh one TASK METHOD DIRECTIVE SEED   # one run (DIRECTIVE: default token_advantage
#                                                      # forward_ce), e.g. from scripts/run_queue.sh
#   scripts/real_directive.sh eval                     # mo-rl eval of the untrained base (the runs have theirs)
#   mo-rl compare results/real_directive results/real/math-{dvao,vpo}-s* \
#     --by task,method,directive.loss,directive.coef --status completed
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${MO_RL_REAL_OUT:-results}
MORL=${MORL:-mo-rl}
if [[ "${1:-}" == "eval" ]]; then
  exec $MORL eval "$OUT/real_directive" --k 1,4,16 --prompts 16 --base
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

source scripts/real_lib.sh
have() {  # task method directive seed: a completed run of it under $OUT/real or $OUT/real_directive?
  local credit=- label=$3
  [[ $2 == vpo ]] && credit=shapley
  [[ $label == default ]] && label=off  # conf/directive/default.yaml: coef 0
  python scripts/completed_run.py "$OUT/real" "$OUT/real_directive" --task "$1" --method "$2" --credit "$credit" \
    --directive "$label" --seed "$4"
}

one() {  # task method directive seed
  local task=$1 method=$2 directive=$3 seed=$4 found
  local sweep="$OUT/real_directive/$task-$method-$directive-s$seed"
  if found=$(have "$@"); then
    echo "have $task $method $directive s$seed: $found"
  else
    $MORL train -m preset=real_directive task="$task" method="$method" directive="$directive" \
      trainer.seed="$seed" output_dir="$OUT" hydra.sweep.dir="$sweep"
  fi
  [[ -d $sweep ]] && finish "$sweep"
}

case "${1:-}" in
  one)
    [[ $# == 5 ]] || { echo "usage: real_directive.sh one TASK METHOD DIRECTIVE SEED" >&2; exit 2; }
    one "$2" "$3" "$4" "$5"; exit ;;
  vpo)
    loss=${2:?usage: scripts/real_directive.sh vpo token_advantage|forward_ce [first last]}
    method=vpo directives=(default "$loss"); shift 2 ;;
  *) method=dvao directives=(default token_advantage forward_ce) ;;
esac
first=${1:-0}; last=${2:-2}
lane() {
  for s in $(seq "$first" "$last"); do
    for d in "${directives[@]}"; do one "$1" "$method" "$d" "$s"; done
  done
}
lane math >> "$OUT/real_directive-lane-math-$method.log" 2>&1 &
lane toolcall >> "$OUT/real_directive-lane-toolcall-$method.log" 2>&1 &
wait
