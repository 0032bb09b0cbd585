#!/bin/sh
# The table and plot of make bench-cloud from $BUILD/bench-cloud.jsonl (bench/run-cloud.sh calls it; run it alone to
# redo them): per model, mode and device count, batching on and off; speedup over one device (batching on); the
# p99 over one device's; llama.cpp's llama-batched-bench S_TG at the same B, its own speedup over B=1, and duet's
# tokens/s over it (full shapes only: LAYERS empty). Writes $BUILD/bench-cloud.md and, with gnuplot, .png.
set -eu
BUILD=${1:-build}
LAYERS=${2:-}
SHAPES=${3:-"mid:f32 tinyllama:q8_0"}
OUT=$BUILD/bench-cloud.jsonl
MD=$BUILD/bench-cloud.md
awk -v layers="$LAYERS" '
FNR == 1 { file++ }
file == 1 && /^\| .*S_TG t\/s \| / {   # llama-batched-bench rows: | label | model | B=1 | 2 | ... |
    n = split($0, c, "|"); key = c[3]; gsub(/ /, "", key)
    for (i = 4; i < n; i++) { v = c[i]; gsub(/ /, "", v); ref[key, 2 ^ (i - 4)] = v }
    next
}
file == 2 {
    if (!match($0, /"model":"[^"]*"/)) next
    m = substr($0, RSTART + 9, RLENGTH - 10); sub(/.*\//, "", m); sub(/\.gguf$/, "", m)
    mode = $0; sub(/.*"mode":"/, "", mode); sub(/".*/, "", mode)
    b = ($0 ~ /"batching":true/) ? "on" : "off"
    d = $0; sub(/.*"devices":/, "", d); sub(/,.*/, "", d)
    t = $0; sub(/.*"tokens_per_s":/, "", t); sub(/,.*/, "", t)
    p50 = $0; sub(/.*"token_ms":\{"p50":/, "", p50); sub(/,.*/, "", p50)
    p99 = $0; sub(/.*"token_ms":\{"p50":[0-9.]*,"p99":/, "", p99); sub(/,.*/, "", p99)
    k = m SUBSEP mode SUBSEP d
    if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
    tps[k, b] = t; q50[k, b] = p50; q99[k, b] = p99
    if (d == 1) { one_t[m, mode, b] = t; one_p99[m, mode, b] = p99 }
}
END {
    print "| model | mode | devices | tok/s batching | tok/s off | x one device (batching) | p50 / p99 ms per token, batching | p50 / p99 ms, off | p99 / one device (batching) | llama-batched-bench S_TG | its x B=1 | duet / llama.cpp |"
    print "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    for (i = 1; i <= nk; i++) {
        split(order[i], f, SUBSEP); m = f[1]; mode = f[2]; d = f[3]; k = order[i]
        r = (layers == "" && (m, d) in ref) ? ref[m, d] : "-"
        on = tps[k, "on"]; off = tps[k, "off"]
        printf "| %s | %s | %d | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s |\n", m, mode, d,
            on == "" ? "-" : sprintf("%.1f", on), off == "" ? "-" : sprintf("%.1f", off),
            (on != "" && one_t[m, mode, "on"] > 0) ? sprintf("%.2f", on / one_t[m, mode, "on"]) : "-",
            q50[k, "on"] == "" ? "-" : sprintf("%.1f", q50[k, "on"]), q99[k, "on"] == "" ? "-" : sprintf("%.1f", q99[k, "on"]),
            q50[k, "off"] == "" ? "-" : sprintf("%.1f", q50[k, "off"]), q99[k, "off"] == "" ? "-" : sprintf("%.1f", q99[k, "off"]),
            (q99[k, "on"] != "" && one_p99[m, mode, "on"] > 0) ? sprintf("%.2f", q99[k, "on"] / one_p99[m, mode, "on"]) : "-",
            r, (r != "-" && ref[m, 1] > 0) ? sprintf("%.2f", r / ref[m, 1]) : "-", (r != "-" && on != "") ? sprintf("%.2f", on / r) : "-"
        # data for the plot: one block per model and mode
        dat = dat sprintf("%s %s %d %s %s %s\n", m, mode, d, on == "" ? "NaN" : on, off == "" ? "NaN" : off, r == "-" ? "NaN" : r)
    }
    printf "%s", dat > "'"$BUILD"'/bench-cloud.dat"
}' bench/llamacpp-reference.md "$OUT" > "$MD"
cat "$MD"
if command -v gnuplot > /dev/null; then
    ms=$(for st in $SHAPES; do printf '%s-%s%s ' "${st%%:*}" "${st#*:}" "${LAYERS:+-l$LAYERS}"; done)
    gnuplot -e "d='$BUILD/bench-cloud.dat'; o='$BUILD/bench-cloud.png'; ms='$ms'" bench/cloud.gp && echo "plot: $BUILD/bench-cloud.png"
fi
