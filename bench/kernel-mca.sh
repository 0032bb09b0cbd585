#!/bin/sh
# bench/kernel-mca.sh [quant.o]: cycles per inner-loop pass of the AVX2 batch and decode kernels of the 4-bit types,
# as llvm-mca's model of AMD Zen 3 (znver3) computes them from the compiled code (default build/src/engine/quant.o).
# A figure that does not move with the load of a shared machine: timings on the 2-core dev VM swing 2-4x from one
# minute to the next, and it has no hardware counters (perf: "cycles <not supported>"). It is a model, not a
# measurement (it knows the ports and latencies, not the caches): use it to compare two builds of a kernel, and time
# the winner with bench_quant / bench-compare. Needs objdump (binutils) and llvm-mca (Debian package llvm).
# Each row: the function, the tile (columns x 8 rows), the loop pass (one block of 32 elements for Q4_0, one
# 256-element super-block for Q4_K / Q6_K, over 8 weight rows), its instructions, how many touch the stack (spills),
# the cycles per pass, and multiply-adds per cycle (8 rows x elements x columns / cycles).
set -eu
OBJ=${1:-build/src/engine/quant.o}
MCA=$(command -v llvm-mca || command -v llvm-mca-14 || true)
[ -n "$MCA" ] || { echo "kernel-mca: llvm-mca not found (Debian package llvm)" >&2; exit 2; }
[ -f "$OBJ" ] || { echo "kernel-mca: $OBJ not found (make build/src/engine/quant.o)" >&2; exit 2; }
TMP=${TMPDIR:-/tmp}/kernel-mca.$$
trap 'rm -f "$TMP".*' EXIT
objdump -d --no-show-raw-insn "$OBJ" > "$TMP.dis"
printf '%-20s %-6s %6s %5s %7s %8s\n' kernel tile insns spill cycles MAC/cyc
# function | vpmaddubsw per pass for C = 1 and 4 columns | elements per pass
for spec in gemm_q4_0x8_avx2:8:32:32 gemm_q4_Kx8_avx2:64:256:256 gemm_q6_Kx8_avx2:64:256:256; do
    fn=${spec%%:*}; rest=${spec#*:}; m1=${rest%%:*}; rest=${rest#*:}; m4=${rest%%:*}; el=${rest#*:}
    for c in 1 4; do
        want=$m1; [ "$c" = 4 ] && want=$m4
        # the first loop of the function (a backward jump with no jump inside) holding `want` vpmaddubsw
        awk -v fn="<$fn>:" -v want="$want" '
            $0 ~ fn { on = 1; next }
            on && /^$/ { exit }
            on { n++; line[n] = $0; a = $1; sub(/:$/, "", a); addr[n] = a; at[a] = n
                 if (match($0, /\tj[a-z]+ +[0-9a-f]+ </)) {
                     split(substr($0, RSTART + 1, RLENGTH), f, / +/)
                     t = f[2]
                     if ((t in at) && at[t] < n) {
                         s = at[t]; k = 0; inner = 0
                         for (i = s; i < n; i++) { if (line[i] ~ /vpmaddubsw/) k++; if (line[i] ~ /\tj[a-z]+ /) inner = 1 }
                         if (k == want && !inner) {
                             for (i = s; i < n; i++) { l = line[i]; sub(/^[^\t]*\t/, "", l); sub(/#.*/, "", l); print l }
                             exit
                         }
                     }
                 } }' "$TMP.dis" > "$TMP.s"
        if [ ! -s "$TMP.s" ]; then printf '%-20s %-6s (loop not found)\n' "$fn" "${c}x8"; continue; fi
        cyc=$("$MCA" -mcpu=znver3 -iterations=200 "$TMP.s" 2>/dev/null | awk '/^Total Cycles:/ { printf "%.1f", $3 / 200 }')
        awk -v fn="$fn" -v c="$c" -v cyc="$cyc" -v el="$el" '
            { n++ } /rsp|rbp\)/ { sp++ }
            END { printf "%-20s %-6s %6d %5d %7.1f %8.1f\n", fn, c "x8", n, sp, cyc, 8 * el * c / cyc }' "$TMP.s"
    done
done
