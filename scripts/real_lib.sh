# Sourced by scripts/real_table.sh and scripts/real_directive.sh: the skip test and the after-training step they
# share. Needs OUT (the results root) and MORL (the mo-rl command).

finish() {  # sweep dir: evaluate each completed run in it (unless it has eval.json), then drop its weights
  local d
  for d in "$1"/*/; do
    [[ -f $d/summary.json ]] && grep -q '"completed"' "$d/summary.json" || continue
    if [[ ! -f $d/eval.json ]]; then
      $MORL eval "$d" --k 1,4,16 --prompts 16 || continue  # the same settings as `real_table.sh eval`
    fi
    [[ ${KEEP_WEIGHTS:-0} == 1 ]] || rm -rf "$d/checkpoints"  # 0.5-2 GB a run; eval.json is what the table reads
  done
}
