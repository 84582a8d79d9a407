#!/usr/bin/env bash
# The reproduction's long CPU jobs, one at a time, task after task. Every step resumes where
# it stopped (finished search trials, run stages and prunes are skipped), so after an
# interruption the same command carries on:
#
#   nohup bash experiments/queue.sh GLUE_DIR [TASK ...] > logs/queue.log 2>&1 &
#
# Per task: the search (teacher, then TA learning rate, on held-out training data), the main
# run with the chosen rates (student 2 heads / FFN 128 / rank 32), a second width
# (6 / 768 / 192), the ablations (last-exit importance, no TA, no exits), the naive-exits
# baseline, the linear probes and results/<task>.json. A step that fails stops the queue.
set -euo pipefail
cd "$(dirname "$0")/.."
glue="${1:?give the GLUE folder}"
shift
tasks=("${@:-mrpc rte stsb cola sst2}")
read -r -a tasks <<< "${tasks[*]}"
mkdir -p logs runs
# One heavy job at a time: wait for a search started by hand.
while pgrep -f "experiments/search.py" > /dev/null; do sleep 30; done

for task in "${tasks[@]}"; do
    log="logs/$task.log"
    echo "== $task $(date -u +%FT%TZ)"
    # NPCOSTEFF_QUEUE_RATES_FROM=TASK: skip this task's search and take the rates chosen by
    # TASK's (a run without the hours for both; results/<task>.json records it).
    rates_from="${NPCOSTEFF_QUEUE_RATES_FROM:-$task}"
    if [ "$rates_from" = "$task" ]; then
        python experiments/search.py --task "$task" --stage teacher --glue-dir "$glue" >> "$log" 2>&1
        python experiments/search.py --task "$task" --stage ta --glue-dir "$glue" >> "$log" 2>&1
        python experiments/search.py --table > /dev/null
    fi
    read -r -a best <<< "$(python experiments/search.py --task "$rates_from" --best)"
    echo "   chosen (by the search of $rates_from): ${best[*]}"
    # NPCOSTEFF_QUEUE_CUTS: extra --set options that shorten the stages after fine-tuning, for
    # a run that must finish within hours (the results record the recipe that ran).
    read -r -a cuts <<< "${NPCOSTEFF_QUEUE_CUTS:-}"
    run() { npcosteff run --preset "$task" "${best[@]}" "${cuts[@]}" --glue-dir "$glue" --no-progress "$@" >> "$log" 2>&1; }
    # The report is rewritten after every step, from the runs finished so far, so that a
    # queue that ends mid-task still leaves results/<task>.json for what is done.
    report() {
        local args=(--run "2 / 128 / 32=runs/$task")
        [ -f "runs/$task-w6/summary.json" ] && args+=(--run "6 / 768 / 192=runs/$task-w6")
        # A longer recovery of the main student, run by hand where there was the time
        # (its slenderize stage linked from runs/$task; see results/README.md#sst2).
        [ -f "runs/$task-long/summary.json" ] && args+=(--run "2 / 128 / 32, longer recovery=runs/$task-long")
        [ -f "runs/$task-last-exit/summary.json" ] && args+=(--ablation "last-exit importance=runs/$task-last-exit")
        [ -f "runs/$task-no-ta/summary.json" ] && args+=(--ablation "no TA=runs/$task-no-ta")
        [ -f "runs/$task-no-exits/summary.json" ] && args+=(--ablation "no exits=runs/$task-no-exits")
        [ -f "runs/$task/naive/ta_vs_naive.json" ] && args+=(--naive "runs/$task/naive/naive_exits/best")
        [ -f "runs/$task/naive-x$exit_x/ta_vs_naive.json" ] && \
            args+=(--naive "naive exits, exits x$exit_x=runs/$task/naive-x$exit_x/naive_exits/best")
        python experiments/report.py --task "$task" --glue-dir "$glue" "${args[@]}" --rates-from "$rates_from" \
            --markdown "results/$task.md" >> "$log" 2>&1
        echo "   report $(date -u +%FT%TZ): results/$task.json (${args[*]})"
    }
    run --output "runs/$task"
    ta_lr=$(python -c "import json,sys; r=json.load(open('runs/$task/recipe.json')); print(r['ta']['learning_rate'], r['ta']['epochs'], r['data']['max_length'], f\"{r['training']['exit_lr_multiplier']:g}\")")
    read -r lr epochs max_length exit_x <<< "$ta_lr"
    [ -f "results/probe/$task.json" ] || python experiments/linear_probe.py --task "$task" --glue-dir "$glue" \
        --max-length "$max_length" >> "$log" 2>&1
    report
    # In the order of what the targets need: the naive baseline, then the ablations. Where the
    # TA's exits learn at a multiple of its rate, the naive exits are trained at both rates
    # (like for like, and the authors' setting).
    naive() {
        [ -f "$1/ta_vs_naive.json" ] || python experiments/ta_vs_naive.py --task "$task" \
            --teacher "runs/$task/teacher" --ta "runs/$task/ta" --glue-dir "$glue" --epochs "$epochs" \
            --learning-rate "$lr" --exit-lr-multiplier "$2" --max-length "$max_length" --output "$1" >> "$log" 2>&1
    }
    naive "runs/$task/naive" 1
    [ "$exit_x" = 1 ] || naive "runs/$task/naive-x$exit_x" "$exit_x"
    report
    run --reuse "runs/$task" --no-ta --output "runs/$task-no-ta"
    report
    run --reuse "runs/$task" --last-exit-only --output "runs/$task-last-exit"
    report
    run --reuse "runs/$task" --set slenderize.heads=6 --set slenderize.ffn=768 --set slenderize.rank=192 --output "runs/$task-w6"
    report
    run --reuse "runs/$task" --no-exits --output "runs/$task-no-exits"
    report
    echo "   done $(date -u +%FT%TZ): results/$task.json"
done
