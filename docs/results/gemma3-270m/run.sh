#!/usr/bin/env bash
# The exact commands behind docs/eval.md's Gemma 3 270M tables.
#   bash docs/results/gemma3-270m/run.sh WORKER TASK[,TASK...] CONFIG[,CONFIG...] LIMIT
# runs every (task, config) pair, tasks outermost, one `mulfree eval` per pair, each writing
# docs/results/gemma3-270m/<config>/<task>.json (a pair whose JSON exists is skipped, so an
# interrupted run resumes: an existing <json>.partial is continued with `--resume`, keeping the
# items it scored). Several workers can share the list: a worker takes a pair by
# creating <json>.lock (a directory) and skips pairs another worker holds; after killing a
# worker, remove its stale *.lock directories. One thread per process: on a shared 2-core
# machine OpenMP/BLAS threads that wait on each other cost more than they bring.
set -euo pipefail
cd "$(dirname "$0")/../../.."
worker=$1; IFS=, read -ra tasks <<< "$2"; IFS=, read -ra configs <<< "$3"; limit=$4
out=docs/results/gemma3-270m
mkdir -p runs/eval-gemma3

flags() {  # configuration name -> mulfree eval flags
    case $1 in
        fp32)        echo "--attention model --label fp32" ;;
        bf16)        echo "--attention exact --attn-dtype bfloat16 --label bf16" ;;
        fp8_e4m3)    echo "--attention fp8_e4m3 --label fp8_e4m3" ;;
        fp8_e5m2)    echo "--attention fp8_e5m2 --label fp8_e5m2" ;;
        lmul_k4)     echo "--attention lmul --mantissa-bits 4 --label lmul_k4" ;;
        lmul_k3)     echo "--attention lmul --mantissa-bits 3 --label lmul_k3" ;;
        lmul_k2)     echo "--attention lmul --mantissa-bits 2 --label lmul_k2" ;;
        lmul_full)   echo "--attention lmul --mantissa-bits full --label lmul_full" ;;
        linear_k4)   echo "--attention lmul --mantissa-bits 4 --linear --label linear_k4" ;;
        linear_k3)   echo "--attention lmul --mantissa-bits 3 --linear --label linear_k3" ;;
        linear_k2)   echo "--attention lmul --mantissa-bits 2 --linear --label linear_k2" ;;
        linear_full) echo "--attention lmul --mantissa-bits full --linear --label linear_full" ;;
        *) echo "unknown configuration $1" >&2; exit 2 ;;
    esac
}

for task in "${tasks[@]}"; do
    for cfg in "${configs[@]}"; do
        json=$out/$cfg/$task.json
        [ -f "$json" ] && continue
        mkdir -p "$out/$cfg"
        mkdir "$json.lock" 2> /dev/null || continue  # another worker has this pair
        # shellcheck disable=SC2046
        mulfree eval --model gemma3-270m --tasks "$task" --limit "$limit" --threads 1 \
            --no-progress $(flags "$cfg") --out "$json.partial" --resume \
            >> "runs/eval-gemma3/$worker.log" 2>&1 && mv "$json.partial" "$json" \
            || echo "$(date -u +%FT%TZ) $cfg $task failed" >> "runs/eval-gemma3/$worker.log"
        rmdir "$json.lock"
    done
done
