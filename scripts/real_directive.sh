#!/usr/bin/env bash
# Directive feedback on SmolLM2 (conf/preset/real_directive.yaml; README "Evaluative and directive feedback"),
# in resumable per-(task, seed) sweeps under results/real_directive/: a stopped lane reruns with the same command
# (finished jobs are skipped via manifest.jsonl, an interrupted one resumes from its last checkpoint).
#   scripts/real_directive.sh [first_seed last_seed]   # dvao: directive off / token_advantage / forward_ce (0 2)
#   scripts/real_directive.sh vpo LOSS [first last]    # vpo: directive off and LOSS (the better of the two)
#   scripts/real_directive.sh eval                     # mo-rl eval of every run, with the untrained base
#   mo-rl compare results/real_directive --by task,method,directive.loss,directive.coef
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${MO_RL_REAL_OUT:-results}
if [[ "${1:-}" == "eval" ]]; then
  exec mo-rl eval "$OUT/real_directive" --k 1,4,16 --prompts 16 --base
fi
arms=(); tag=dvao
if [[ "${1:-}" == "vpo" ]]; then
  loss=${2:?usage: scripts/real_directive.sh vpo token_advantage|forward_ce [first last]}
  arms=(method=vpo "directive=default,$loss"); tag="vpo-$loss"; shift 2
fi
first=${1:-0}; last=${2:-2}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
lane() {
  for s in $(seq "$first" "$last"); do
    mo-rl train -m preset=real_directive task="$1" "${arms[@]}" trainer.seed="$s" output_dir="$OUT" \
      hydra.sweep.dir="$OUT/real_directive/sweep-$1-$tag-s$s"
  done
}
lane math > "$OUT/real_directive-lane-math-$tag.log" 2>&1 &
lane toolcall > "$OUT/real_directive-lane-toolcall-$tag.log" 2>&1 &
wait
