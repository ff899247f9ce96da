#!/usr/bin/env bash
# Keep N commands of a queue file going (default 2: one a core on a 2-core machine), in the file's order. Each
# line is one shell command (blank lines and # comments are skipped); a worker takes the first line under a lock
# and removes it, so lines may be appended while the queue runs, and a stopped queue is restarted by running the
# same command again with the lines that were not taken (the real-table and directive scripts skip what is done,
# so putting a line back is harmless). Taken lines are appended to QUEUE.taken, their output to QUEUE.log.
#   scripts/run_queue.sh results/queue.txt 2 &
#   echo "scripts/real_table.sh one math grpo 3" >> results/queue.txt
set -uo pipefail
queue=${1:?usage: scripts/run_queue.sh QUEUE_FILE [WORKERS]}; workers=${2:-2}
touch "$queue"
worker() {
  local line
  while true; do
    line=$(flock "$queue.lock" python3 - "$queue" <<'PY'
import sys
path = sys.argv[1]
lines = open(path).read().splitlines()
while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
    lines.pop(0)
if lines:
    print(lines.pop(0))
open(path, "w").write("".join(l + "\n" for l in lines))
PY
)
    [[ -n $line ]] || return 0
    echo "$line" >> "$queue.taken"
    echo "[worker $1 $(date -u +%FT%TZ)] $line" >> "$queue.log"
    bash -c "$line" >> "$queue.log" 2>&1
    echo "[worker $1 $(date -u +%FT%TZ)] exit $? $line" >> "$queue.log"
  done
}
for i in $(seq 1 "$workers"); do worker "$i" & done
wait
