#!/usr/bin/env bash
# Runs two builds of the packet_path criterion bench alternately (base, new, base,
# new, ...) in one session, so that machine noise falls on both alike, and prints
# one table: the median time per benchmark and run, and the new/base ratio of the
# best runs.
#
#   scripts/bench-compare.sh BASE_BIN NEW_BIN [ROUNDS] [FILTER]
#
# BASE_BIN and NEW_BIN are bench executables, e.g. the path printed by
#   cargo bench --bench packet_path --no-run
# in a checkout of each commit (use a separate CARGO_TARGET_DIR for the base).
# ROUNDS defaults to 2; FILTER to the encap, decap, TSO and GRO groups.
set -euo pipefail

base=${1:?usage: $0 BASE_BIN NEW_BIN [ROUNDS] [FILTER]}
new=${2:?usage: $0 BASE_BIN NEW_BIN [ROUNDS] [FILTER]}
rounds=${3:-2}
filter=${4:-'^(encap|decap|tso_segment|gro_coalesce)'}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

run() { # label bin round
    # --noplot: no gnuplot; a throwaway target dir keeps the two builds' saved
    # baselines apart.
    CRITERION_HOME="$out/criterion-$1" "$2" --bench --noplot \
        --warm-up-time 1 --measurement-time 3 "$filter" 2>/dev/null |
        awk -v label="$1" -v round="$3" '
            /^[a-z_0-9]+\/[^ ]+/ && !/^Benchmarking/ { name = $1 }
            /time:/ && name != "" {
                # time:   [low unit mid unit high unit]
                for (i = 1; i <= NF; i++) if ($i ~ /^\[/) { mid = $(i + 2); unit = $(i + 3); break }
                f = unit == "ns" ? 1 : unit == "µs" || unit == "us" ? 1000 : unit == "ms" ? 1e6 : unit == "ps" ? 1e-3 : 1e9
                printf "%s\t%s\t%d\t%.3f\n", name, label, round, mid * f
                name = ""
            }' >>"$out/results.tsv"
}

for r in $(seq 1 "$rounds"); do
    echo "round $r/$rounds: base" >&2
    run base "$base" "$r"
    echo "round $r/$rounds: new" >&2
    run new "$new" "$r"
done

awk -F'\t' -v rounds="$rounds" '
    { t[$1, $2, $3] = $4; if (!($1 in seen)) { seen[$1] = 1; order[n++] = $1 } }
    END {
        printf "%-28s", "benchmark (median ns)"
        for (r = 1; r <= rounds; r++) printf " %10s %10s", "base#" r, "new#" r
        printf " %8s\n", "new/base"
        for (i = 0; i < n; i++) {
            b = order[i]; bb = 1e30; nb = 1e30
            printf "%-28s", b
            for (r = 1; r <= rounds; r++) {
                printf " %10.1f %10.1f", t[b, "base", r], t[b, "new", r]
                if ((b, "base", r) in t && t[b, "base", r] < bb) bb = t[b, "base", r]
                if ((b, "new", r) in t && t[b, "new", r] < nb) nb = t[b, "new", r]
            }
            printf " %8.3f\n", nb / bb
        }
    }' "$out/results.tsv"
