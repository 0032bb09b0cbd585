#!/bin/sh
# make bench-compare: duet on every row of llama.cpp's reference table (../shared/reference/llamacpp-bench.md),
# ROUNDS rounds (default 3) with the rows interleaved so that a slow spell of this noisy VM hits every row
# alike, then one markdown table: the median over rounds of each figure, llama.cpp's two reference runs,
# and duet's median divided by the mean of those two. Every round is a bench_engine run (median of REPS
# repetitions after a warm-up). JSON lines of every round go to $BUILD/bench-compare.jsonl.
set -eu
BUILD=${1:-build}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
DIR=${DUET_BENCH_DIR:-bench/models}
OUT=$BUILD/bench-compare.jsonl
mkdir -p "$DIR"
: > "$OUT"

# The reference rows: label, model, prompt, generated, llama.cpp pp (run 1, run 2), tg (run 1, run 2), at 1 and
# 2 threads. Figures copied from ../shared/reference/llamacpp-bench.md (llama-bench, commit 3f545becc).
ROWS='stories260K+F32+(pp64/tg64)|models/stories260K.gguf|64|64|1|12100|11584|8841|8580
stories260K+F32+(pp64/tg64)|models/stories260K.gguf|64|64|2|21665|17039|3400|3050
mid+F32|mid-f32|128|32|1|250.8|249.7|30.1|30.0
mid+F32|mid-f32|128|32|2|504.7|461.4|52.4|47.2
TinyLlama+Q8_0|tinyllama-q8_0|128|32|1|57.6|53.6|16.6|13.4
TinyLlama+Q8_0|tinyllama-q8_0|128|32|2|112.6|89.9|27.1|27.7
TinyLlama+F16|tinyllama-f16|128|32|1|76.3|72.8|11.9|10.7
TinyLlama+F16|tinyllama-f16|128|32|2|138.5|148.9|17.9|23.4
Llama-3.2-1B+Q8_0|llama3.2-1b-q8_0|128|32|1|-|-|-|-
Llama-3.2-1B+Q8_0|llama3.2-1b-q8_0|128|32|2|-|-|-|-
Qwen2.5-0.5B+Q8_0|qwen2.5-0.5b-q8_0|128|32|1|-|-|-|-
Qwen2.5-0.5B+Q8_0|qwen2.5-0.5b-q8_0|128|32|2|-|-|-|-
Qwen3-0.6B+Q8_0|qwen3-0.6b-q8_0|128|32|1|-|-|-|-
Qwen3-0.6B+Q8_0|qwen3-0.6b-q8_0|128|32|2|-|-|-|-'
# The last six rows (duet synth's device shapes) have no llama.cpp figures in the reference table yet: "-".

path_of() {
    case "$1" in
    *.gguf) echo "$1" ;;
    *) echo "$DIR/$1.gguf" ;;
    esac
}

echo "$ROWS" | while IFS='|' read -r _ model _ _ _ _ _ _ _; do
    f=$(path_of "$model")
    if [ ! -f "$f" ]; then
        shape=${model%-*}
        type=${model##*-}
        "$BUILD/duet" synth --shape "$shape" --type "$type" -o "$f"
    fi
done

r=1
while [ "$r" -le "$ROUNDS" ]; do
    echo "round $r of $ROUNDS" >&2
    echo "$ROWS" | while IFS='|' read -r label model pp tg t _ _ _ _; do
        "$BUILD/bench/bench_engine" "$(path_of "$model")" -t "$t" -p "$pp" -n "$tg" -r "$REPS" --json |
            sed "s|^{|{\"row\":\"$label\",\"round\":$r,|" >> "$OUT"
    done
    r=$((r + 1))
done

# median of the rounds for each (row, threads), next to llama.cpp's figures
echo "| model | threads | duet pp | llama.cpp pp | ratio | duet tg | llama.cpp tg | ratio |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
echo "$ROWS" | while IFS='|' read -r label _ _ _ t pp1 pp2 tg1 tg2; do
    vals() { grep "\"row\":\"$label\"" "$OUT" | grep "\"threads\":$t," | sed "s/.*\"$1\":\([0-9.]*\).*/\1/" | sort -n; }
    med() { vals "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
    pp=$(med pp_tokens_per_s)
    tg=$(med tg_tokens_per_s)
    echo "$label $t $pp $pp1 $pp2 $tg $tg1 $tg2" | awk '{
        gsub(/\+/, " ", $1)
        if ($4 == "-") { printf "| %s | %s | %.1f | - | - | %.1f | - | - |\n", $1, $2, $3, $6; next }
        printf "| %s | %s | %.1f | %s / %s | %.2f | %.1f | %s / %s | %.2f |\n", $1, $2, $3, $4, $5, $3 / (($4 + $5) / 2), $6, $7, $8, $6 / (($7 + $8) / 2)
    }'
done
echo "rounds: $ROUNDS, each the median of $REPS repetitions; JSON lines: $OUT" >&2
