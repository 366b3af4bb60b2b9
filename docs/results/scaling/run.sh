#!/usr/bin/env bash
# The exact commands behind the report's "MatMul-free vs Transformer++" and "fully
# multiplication-free" sections.
#   bash docs/results/scaling/run.sh [RUN ...]     (default: every run below)
# Each run trains into runs/scaling/<run>/ (resumable: rerunning continues a killed run) and copies
# its metrics.jsonl and training_info.json here, to docs/results/scaling/<run>/. A run whose
# training_info.json is already here is skipped.
# Recipe = the bundled model's (src/mulfree/assets/mmfree-shakespeare-tiny/training_info.json):
# Shakespeare corpus, its BPE tokenizer (vocab 4096), 600 steps x 16 x 256 tokens, AdamW 1.5e-3,
# warm-up 30, weight decay 0.1, seed 0, 1 thread. Only the shape (or elementwise_mul) changes.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=docs/results/scaling
tok=src/mulfree/assets/mmfree-shakespeare-tiny/tokenizer.json

shape() {  # run name -> --model and --model-arg flags
    case $1 in
        mmfree-d64) echo "--model mmfree-tiny --model-arg hidden_size=64 --model-arg num_hidden_layers=2" ;;
        transformerpp-d64) echo "--model transformerpp-tiny --model-arg hidden_size=64 --model-arg num_hidden_layers=2" ;;
        mmfree-d96) echo "--model mmfree-tiny --model-arg hidden_size=96 --model-arg num_hidden_layers=3" ;;
        transformerpp-d96) echo "--model transformerpp-tiny --model-arg hidden_size=96 --model-arg num_hidden_layers=3" ;;
        mmfree-d128) echo "--model mmfree-tiny" ;;  # = the bundled model
        transformerpp-d128) echo "--model transformerpp-tiny" ;;
        mmfree-d128-lmul) echo "--model mmfree-tiny --model-arg elementwise_mul=\"lmul\"" ;;
        *) echo "unknown run $1" >&2; exit 2 ;;
    esac
}

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(mmfree-d64 transformerpp-d64 mmfree-d96 transformerpp-d96
                               mmfree-d128 transformerpp-d128 mmfree-d128-lmul)
for run in "${runs[@]}"; do
    [ -f "$out/$run/training_info.json" ] && continue
    resume=(); [ -d "runs/scaling/$run/checkpoints" ] && resume=(--resume)
    # shellcheck disable=SC2046
    OMP_NUM_THREADS=1 mulfree train --data corpus:shakespeare --out "runs/scaling/$run" \
        $(shape "$run") --tokenizer "$tok" --seq-len 256 --batch-size 16 --max-steps 600 \
        --lr 1.5e-3 --warmup-steps 30 --weight-decay 0.1 --num-threads 1 --no-progress "${resume[@]}"
    mkdir -p "$out/$run"
    cp "runs/scaling/$run/metrics.jsonl" "runs/scaling/$run/model/training_info.json" "$out/$run/"
done
