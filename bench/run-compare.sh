#!/bin/sh
# make bench-compare: duet on every row of llama.cpp's reference table (bench/llamacpp-reference.md: llama-bench
# with its weights in memory, -lm none), ROUNDS rounds (default 3) with the rows interleaved so that a slow spell
# of this noisy VM hits every row alike, then one markdown table: the median over rounds of each figure, llama.cpp's,
# and duet's over llama.cpp's. Every round is a bench_engine run (median of REPS repetitions after a warm-up).
# LLAMA_BENCH=path/to/llama-bench runs llama.cpp live too (-lm none, same file, threads, prompt and generated
# tokens, REPS repetitions) right after duet in every round, and its medians replace the reference figures.
# ROWS=Q4 keeps the rows whose label contains Q4. JSON lines of every round go to $BUILD/bench-compare.jsonl, the
# ratios to $BUILD/bench-compare.dat and, with gnuplot, as bars to $BUILD/bench-compare.png (bench/compare.gp).
# BASE=dir runs a second duet build's bench_engine (dir/bench/bench_engine, e.g. a build of main) in every round too,
# so a kernel change shows as before/after beside llama.cpp in one interleaved run (columns "base pp", "base tg").
# Without LLAMA_BENCH the llama.cpp figures are the stored table's, measured on ANOTHER machine (an AVX-512 EPYC):
# a ratio between two machines is not a ratio between two engines, and the output says so.
set -eu
BUILD=${1:-build}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
DIR=${DUET_BENCH_DIR:-bench/models}
REF=${REF:-bench/llamacpp-reference.md}
OUT=$BUILD/bench-compare.jsonl
DAT=$BUILD/bench-compare.dat # row, prefill ratio, decode ratio: the plot's data
LB=${LLAMA_BENCH:-}
BASE=${BASE:-}
mkdir -p "$DIR"
: > "$OUT"
: > "$DAT"
if [ -n "$LB" ] && [ ! -x "$LB" ]; then
    echo "bench-compare: LLAMA_BENCH=$LB is not an executable (the path of llama.cpp's llama-bench)" >&2
    exit 2
fi
if [ -n "$BASE" ] && [ ! -x "$BASE/bench/bench_engine" ]; then
    echo "bench-compare: BASE=$BASE has no bench/bench_engine (BASE is another duet build directory)" >&2
    exit 2
fi

# label|model|pp|tg|threads|llama pp|llama tg, one line per table row of $REF (labels with '+' for spaces)
ROWS_ALL=$(awk -F'|' 'NF >= 9 && $3 ~ /gguf|-/ && $4 ~ /^ *[0-9]+ *$/ {
    for (i = 2; i <= 8; i++) gsub(/^ +| +$/, "", $i)
    gsub(/ /, "+", $2)
    print $2 "|" $3 "|" $4 "|" $5 "|" $6 "|" $7 "|" $8 }' "$REF")
FILTER=${ROWS:-}
ROWS=$(echo "$ROWS_ALL" | grep -F -- "$(echo "$FILTER" | tr ' ' '+')" || true)
[ -n "$ROWS" ] || { echo "bench-compare: no row of $REF matches ROWS='$FILTER'" >&2; exit 2; }

path_of() {
    case "$1" in
    *.gguf) echo "$1" ;;
    *) echo "$DIR/$1.gguf" ;;
    esac
}

echo "$ROWS" | while IFS='|' read -r _ model _ _ _ _ _; do
    f=$(path_of "$model")
    if [ ! -f "$f" ]; then
        shape=${model%-*}
        type=${model##*-}
        "$BUILD/duet" synth --shape "$shape" --type "$type" -o "$f"
    fi
done

# llama-bench's jsonl: one line per test, n_prompt > 0 for pp, n_gen > 0 for tg; avg_ts is its mean tokens/s
llama_row() { # label round file threads pp tg
    "$LB" -m "$3" -t "$4" -p "$5" -n "$6" -r "$REPS" -lm none -o jsonl 2>/dev/null | awk -v row="$1" -v r="$2" -v t="$4" '
        { p = $0; sub(/.*"n_prompt": */, "", p); sub(/[^0-9].*/, "", p)
          a = $0; sub(/.*"avg_ts": */, "", a); sub(/[^0-9.].*/, "", a)
          if (p + 0 > 0) pp = a; else tg = a }
        END { printf "{\"row\":\"%s\",\"round\":%s,\"bench\":\"llama.cpp\",\"threads\":%s,\"pp_tokens_per_s\":%s,\"tg_tokens_per_s\":%s}\n", row, r, t, pp + 0, tg + 0 }'
}

r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "round $r of $ROUNDS" >&2
    echo "$ROWS" | while IFS='|' read -r label model pp tg t _ _; do
        f=$(path_of "$model")
        "$BUILD/bench/bench_engine" "$f" -t "$t" -p "$pp" -n "$tg" -r "$REPS" --json |
            sed "s|^{|{\"row\":\"$label\",\"round\":$r,|" >> "$OUT"
        if [ -n "$BASE" ]; then
            "$BASE/bench/bench_engine" "$f" -t "$t" -p "$pp" -n "$tg" -r "$REPS" --json |
                sed "s|^{|{\"row\":\"$label\",\"round\":$r,|; s|\"bench\":\"engine\"|\"bench\":\"base\"|" >> "$OUT"
        fi
        if [ -n "$LB" ]; then llama_row "$label" "$r" "$f" "$t" "$pp" "$tg" >> "$OUT"; fi
    done
    r=$((r + 1))
done

# median of the rounds for each (row, threads), next to llama.cpp's figures
if [ -n "$LB" ]; then
    echo "llama.cpp columns: measured live in this run ($LB -lm none), interleaved with duet's rounds."
else
    echo "NOTE: llama.cpp columns: stored rows from another run on another machine (bench/llamacpp-reference.md: a"
    echo "2-core AMD EPYC VM with AVX-512, llama.cpp 3f545becc), NOT measured here: the ratios compare two machines,"
    echo "not two engines. LLAMA_BENCH=path/to/llama-bench runs it live."
fi
echo
src="llama.cpp (bench/llamacpp-reference.md, -lm none)"
[ -n "$LB" ] && src="llama.cpp (live on this machine, $LB -lm none)"
bh=""; bs=""
[ -n "$BASE" ] && bh=" base pp | base tg |" && bs=" --- | --- |"
echo "| model | threads | duet pp | llama.cpp pp | ratio | duet tg | llama.cpp tg | ratio |$bh"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |$bs"
echo "$ROWS" | while IFS='|' read -r label _ _ _ t lpp ltg; do
    vals() { grep "\"row\":\"$label\"" "$OUT" | grep "\"threads\":$t," | grep $2 "\"bench\":\"${3:-llama.cpp}\"" |
             grep -v "\"bench\":\"${4:-base}\"" |
             sed "s/.*\"$1\":\([0-9.]*\).*/\1/" | sort -n; }
    med() { vals "$@" | awk '{ v[NR] = $1 } END { if (!NR) print "-"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    pp=$(med pp_tokens_per_s -v)
    tg=$(med tg_tokens_per_s -v)
    if [ -n "$LB" ]; then
        lpp=$(med pp_tokens_per_s "")
        ltg=$(med tg_tokens_per_s "")
    fi
    bpp=""; btg=""
    if [ -n "$BASE" ]; then
        bpp=$(med pp_tokens_per_s "" base none)
        btg=$(med tg_tokens_per_s "" base none)
    fi
    echo "$label $t $pp $lpp $tg $ltg $bpp $btg" | awk '
        function ratio(a, b) { return (b == "-" || b + 0 == 0) ? "-" : sprintf("%.2f", a / b) }
        { gsub(/\+/, " ", $1)
          printf "| %s | %s | %.1f | %s | %s | %.1f | %s | %s |", $1, $2, $3, $4, ratio($3, $4), $5, $6, ratio($5, $6)
          if (NF >= 8) printf " %s | %s |", $7, $8
          printf "\n"
          printf "\"%s, %s thr\" %s %s\n", $1, $2, ratio($3, $4), ratio($5, $6) >> dat }' dat="$DAT"
done
# The ratios as bars (PNG) when gnuplot is there, titled with this machine's CPU: a ratio means nothing without it.
if command -v gnuplot >/dev/null && grep -qv ' - -$' "$DAT"; then
    CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
    gnuplot -e "d='$DAT'; o='$BUILD/bench-compare.png'; cpu='${CPU:-unknown CPU}, $(nproc) cores'; \
                src='$([ -n "$LB" ] && echo "llama.cpp live on this machine" || echo "llama.cpp from another machine")'" bench/compare.gp
    echo "plot: $BUILD/bench-compare.png" >&2
fi
echo "rounds: $ROUNDS, each the median of $REPS repetitions; llama.cpp: $src; JSON lines: $OUT" >&2
