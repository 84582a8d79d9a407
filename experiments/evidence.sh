#!/usr/bin/env bash
# The seeded evidence set (results/evidence/protocol.json, written before its first run): per
# task one teacher, then for every seed the TA, the naive exits (the TA's pooler and steps), the
# student, the last-exit-importance student and the static slender student (no exits), and
# results/evidence/<task>/seed-<seed>.json. Checkpoints are chosen on the held-out tenth of the
# training set, thresholds cross-fitted on dev. Every step resumes where it stopped, so after
# an interruption the same command carries on; run it from a worktree pinned at one commit
# (each results file records it), one heavy job at a time:
#
#   git worktree add ../npc-runs <commit> && cd ../npc-runs
#   nohup bash experiments/evidence.sh GLUE_DIR [TASK ...] > logs/evidence.log 2>&1 &
#
# Pause it while timing something else: kill -STOP -<pgid>, and kill -CONT -<pgid> after.
# NPCOSTEFF_SEEDS overrides the protocol's seeds (e.g. "4 5" to add two).
set -euo pipefail
cd "$(dirname "$0")/.."
# This checkout's code, whatever npcosteff is installed (an editable install of another checkout).
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
python -c "import npcosteff, os, sys; sys.exit(not npcosteff.__file__.startswith(os.getcwd() + os.sep))" || \
    { echo "npcosteff is not imported from $(pwd)" >&2; exit 1; }
glue="${1:?give the GLUE folder}"
shift
protocol=results/evidence/protocol.json
if [ "$#" -gt 0 ]; then tasks=("$@"); else
    read -r -a tasks <<< "$(python -c "import json; print(' '.join(json.load(open('$protocol'))['tasks']))")"
fi
read -r -a seeds <<< "${NPCOSTEFF_SEEDS:-$(python -c "import json; print(' '.join(map(str, json.load(open('$protocol'))['seeds'])))")}"
mkdir -p logs runs/evidence

for task in "${tasks[@]}"; do
    log="logs/evidence-$task.log"
    root="runs/evidence/$task"
    out="results/evidence/$task"
    mkdir -p "$out"
    echo "== $task $(date -u +%FT%TZ), seeds ${seeds[*]}"
    # The rates: the task's own search (STS-B's searched the TA's and its exits' rates; its
    # preset holds MRPC's for the rest), or MRPC's where the task has none (SST-2); the cuts:
    # the protocol's.
    rates_from=$task
    [ -f "results/search/$task.jsonl" ] || rates_from=mrpc
    read -r -a best <<< "$(python experiments/search.py --task "$rates_from" --best)"
    rates_label=$rates_from
    [ "$task" != stsb ] || rates_label="mrpc (the TA's and exits' rates searched on stsb)"
    read -r -a cuts <<< "$(python - "$protocol" "$task" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["recipes"]
task = sys.argv[2]
cuts = ["slenderize.period=0.2", "slenderize.importance_examples=600", "recover.hidden_epochs=1.5",
        "recover.pred_epochs=1.5", f"ta.epochs={p['ta_epochs'][task]}"]
if task == "sst2":
    cuts += ["finetune.epochs=1", "slenderize.period=0.05", "recover.hidden_epochs=0.5", "recover.pred_epochs=0.5"]
print(" ".join(f"--set {c}" for c in cuts))
PY
)"
    echo "   rates (search of $rates_from): ${best[*]}; cuts: ${cuts[*]}"
    # NPCOSTEFF_EVIDENCE_EXTRA: more --set options, for a smoke run of the script on small data.
    read -r -a extra <<< "${NPCOSTEFF_EVIDENCE_EXTRA:-}"
    run() { npcosteff run --preset "$task" "${best[@]}" "${cuts[@]}" "${extra[@]}" --glue-dir "$glue" --no-progress "$@" >> "$log" 2>&1; }
    for seed in "${seeds[@]}"; do
        main="$root/s$seed"
        first="$root/s${seeds[0]}"
        echo "   seed $seed $(date -u +%FT%TZ)"
        if [ "$seed" = "${seeds[0]}" ]; then
            run --set training.seed="$seed" --output "$main"
        else
            run --set training.seed="$seed" --reuse "$first" --output "$main"     # the first seed's teacher, a new TA
        fi
        read -r -a naive_args <<< "$(python - "$main/recipe.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ta, data, training = r["ta"], r["data"], r["training"]
args = dict(epochs=ta["epochs"], hidden_fraction=ta["hidden_fraction"], learning_rate=ta["learning_rate"],
            exit_lr_multiplier=training["exit_lr_multiplier"], max_length=data["max_length"], seed=training["seed"],
            selection=data["selection"], max_train=data["max_train"], max_eval=data["max_eval"],
            batch_size=ta["batch_size"])
print(" ".join(f"--{k.replace('_', '-')} {v}" for k, v in args.items() if v is not None))
PY
)"
        [ -f "$main-naive/ta_vs_naive.json" ] || python experiments/ta_vs_naive.py --task "$task" \
            --teacher "$main/teacher" --ta "$main/ta" --glue-dir "$glue" "${naive_args[@]}" \
            --output "$main-naive" >> "$log" 2>&1
        run --set training.seed="$seed" --reuse "$main" --last-exit-only --output "$main-last-exit"
        run --set training.seed="$seed" --reuse "$main" --no-exits --output "$main-no-exits"
        [ -f "$out/seed-$seed.json" ] || python experiments/report.py --task "$task" --glue-dir "$glue" \
            --run "2 / 128 / 32=$main" --ablation "last-exit importance=$main-last-exit" \
            --ablation "no exits=$main-no-exits" --naive "naive exits=$main-naive/naive_exits/best" \
            --rates-from "$rates_label" --output "$out/seed-$seed.json" --markdown "$out/seed-$seed.md" >> "$log" 2>&1
        echo "   seed $seed done $(date -u +%FT%TZ): $out/seed-$seed.json"
    done
done
echo "== all done $(date -u +%FT%TZ)"
