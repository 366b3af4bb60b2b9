#!/usr/bin/env bash
# Run the benchmarks and keep their output as docs/results/benchmarks/<name>.md (read by
# `mulfree report`, section 5).
#   bash docs/results/benchmarks/run.sh [NAME[:ARGS] ...]   (default: every benchmark below)
# e.g.  bash docs/results/benchmarks/run.sh bench_lmatmul "bench_decode:--shapes 370M"
# Each file starts with the command, the commit and the machine, then what the benchmark printed
# (its method, its tables, the load average where it prints one). Run on an otherwise idle
# machine: the numbers are wall-clock times on shared cores. A benchmark that fails leaves the
# previous file in place.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=docs/results/benchmarks
all=(bench_startup bench_ternary_linear bench_decode bench_lmatmul bench_lmul_elementwise bench_attention
     bench_serve bench_train bench_mmfree_torch)
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=("${all[@]}")
for spec in "${specs[@]}"; do
    name=${spec%%:*}; args=""; [ "$spec" != "$name" ] && args=${spec#*:}
    [ -f "benchmarks/$name.py" ] || { echo "unknown benchmark $name" >&2; exit 2; }
    tmp=$(mktemp "$out/.$name.XXXXXX")
    {
        echo "Command: \`python benchmarks/$name.py${args:+ $args}\`  "
        echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)  "
        echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
        echo
        echo '```text'
        # shellcheck disable=SC2086
        python "benchmarks/$name.py" $args 2>&1
        echo '```'
    } > "$tmp" || { echo "$name failed; see $tmp" >&2; continue; }
    mv "$tmp" "$out/$name.md"
    echo "wrote $out/$name.md"
done
