#!/usr/bin/env bash
# Regenerate the comparison tables from whatever results JSON exist (rows in a fixed order).
set -euo pipefail
cd "$(dirname "$0")"
collect() { for c in "$@"; do for t in lambada piqa arc_easy hellaswag winogrande; do
    # A finished run's JSON, else the one still being written (its rows say "partial").
    if [ -f "$c/$t.json" ]; then echo "$c/$t.json";
    elif [ -f "$c/$t.json.partial" ]; then echo "$c/$t.json.partial"; fi; done; done; }
# shellcheck disable=SC2046
mulfree eval-table $(collect fp32 bf16 fp8_e4m3 fp8_e5m2 lmul_full lmul_k4 lmul_k3 lmul_k2) \
    --reference fp32 --out attention.md > /dev/null
linear=$(collect linear_full linear_k4 linear_k3 linear_k2)
if [ -n "$linear" ]; then
    # shellcheck disable=SC2046
    mulfree eval-table $(collect fp32) $linear --reference fp32 --out linear.md > /dev/null
fi
