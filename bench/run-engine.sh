#!/bin/sh
# make bench: tokenizer MB/s, prefill (pp128) and decode (tg32) tokens/s of every synthetic shape and type at 1 and 2
# threads, decode bandwidth next to the machine's copy bandwidth (copy_fraction: decode GB/s over the copy GB/s
# at the same thread count; a summary of TinyLlama's at 2 threads ends the run), and the real stories260K.
# Narrow it with SHAPES="mid" TYPES="f32 q8_0" THREADS="2" REPS=3. Synthetic models are generated once into
# $DUET_BENCH_DIR (default bench/models, ~25 GB for the full matrix). JSON lines go to $BUILD/bench-engine.jsonl.
set -eu
BUILD=${1:-build}
SHAPES=${SHAPES:-"mid tinyllama llama32-1b llama3.2-1b qwen2.5-0.5b qwen3-0.6b"}
TYPES=${TYPES:-"f32 f16 q8_0 q4_0 q4_k q6_k q4_k_m"}
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
DIR=${DUET_BENCH_DIR:-bench/models}
OUT=$BUILD/bench-engine.jsonl
mkdir -p "$DIR"
: > "$OUT"
# run ARGS...: one bench_engine measurement, kept as JSON and shown as a line. A decode figure also gets
# copy_fraction: its GB/s over the copy bandwidth measured at the same thread count (the memory limit).
run() {
    "$BUILD/bench/bench_engine" "$@" --json > "$OUT.tmp"
    t=$(sed -n 's/.*"threads":\([0-9]*\).*/\1/p' "$OUT.tmp")
    copy=$(grep "\"bench\":\"memcpy\",\"threads\":$t," "$OUT" 2>/dev/null | sed 's/.*"gb_per_s":\([0-9.]*\).*/\1/' | tail -1)
    if [ -n "$copy" ] && grep -q '"decode_gb_per_s"' "$OUT.tmp"; then
        awk -v c="$copy" '{ d = $0; sub(/.*"decode_gb_per_s":/, "", d); sub(/[,}].*/, "", d)
                           sub(/}$/, sprintf(",\"copy_gb_per_s\":%s,\"copy_fraction\":%.2f}", c, d / c)); print }' "$OUT.tmp" > "$OUT.tmp2"
        mv "$OUT.tmp2" "$OUT.tmp"
    fi
    cat "$OUT.tmp" >> "$OUT"
    sed 's/[{}"]//g; s/,/  /g' "$OUT.tmp"
}
echo "duet engine benchmark: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, kernels: ${DUET_ISA:-best}"
for t in $THREADS; do run --memcpy -t "$t" -r 3; done
# tokenizer encoding speed on one core: MB/s of the repository's English docs, and of one 1 MB piece
for v in llama-spm gpt-2 llama3 qwen2; do
    "$BUILD/bench/bench_tokenizer" "tests/data/vocab/ggml-vocab-$v.gguf" --long --json > "$OUT.tmp"
    cat "$OUT.tmp" >> "$OUT"
    sed 's/[{}"]//g; s/,/  /g' "$OUT.tmp"
done
for t in $THREADS; do run models/stories260K.gguf -t "$t" -p 64 -n 64 -r "$REPS"; done
for shape in $SHAPES; do
    for type in $TYPES; do
        f="$DIR/$shape-$type.gguf"
        [ -f "$f" ] || "$BUILD/duet" synth --shape "$shape" --type "$type" -o "$f"
        for t in $THREADS; do run "$f" -t "$t" -p 128 -n 32 -r "$REPS"; done
    done
done
rm -f "$OUT.tmp"
# decode's share of the memory limit at 2 threads on the TinyLlama shape, per type (issue 14's figure)
grep '"threads":2,' "$OUT" | grep '"model":"tinyllama-' | grep copy_fraction |
    sed 's/.*"model":"tinyllama-\([a-z0-9_]*\).gguf".*"decode_gb_per_s":\([0-9.]*\).*"copy_gb_per_s":\([0-9.]*\),"copy_fraction":\([0-9.]*\).*/\1 \2 \3 \4/' |
    awk 'NR == 1 { print "TinyLlama decode at 2 threads, share of copy bandwidth:" }
         { printf "  %-7s %6.1f GB/s of %5.1f GB/s = %3.0f%%\n", $1, $2, $3, 100 * $4 }'
echo "results: $OUT (llama.cpp on this machine: bench/llamacpp-reference.md)"
