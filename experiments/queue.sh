#!/usr/bin/env bash
# The reproduction's long CPU jobs, one at a time, in order. Every step resumes where it
# stopped (finished search trials and finished run stages are skipped), so after an
# interruption the same command carries on:
#
#   nohup bash experiments/queue.sh GLUE_DIR > logs/queue.log 2>&1 &
#
# A step that fails stops the queue (set -e); its log says why.
set -euo pipefail
cd "$(dirname "$0")/.."
glue="${1:?give the GLUE folder}"
mkdir -p logs
# Wait for a search already running (started by hand) to finish first: one heavy job at a time.
while pgrep -f "experiments/search.py" > /dev/null; do sleep 30; done
for task in mrpc rte stsb cola; do
    python experiments/search.py --task "$task" --stage teacher --glue-dir "$glue" >> "logs/search-$task.log" 2>&1
done
for task in mrpc rte stsb cola; do
    python experiments/search.py --task "$task" --stage ta --glue-dir "$glue" >> "logs/search-$task.log" 2>&1
done
python experiments/search.py --table > /dev/null
