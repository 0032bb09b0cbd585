#!/bin/sh
# make bench: tokenizer MB/s, prefill (pp128) and decode (tg32) tokens/s of every synthetic shape and type at 1 and 2
# threads, decode bandwidth next to the machine's copy bandwidth, and the real stories260K.
# Narrow it with SHAPES="mid" TYPES="f32 q8_0" THREADS="2" REPS=3. Synthetic models are generated once into
# $DUET_BENCH_DIR (default bench/models, ~25 GB for the full matrix). JSON lines go to $BUILD/bench-engine.jsonl.
set -eu
BUILD=${1:-build}
SHAPES=${SHAPES:-"mid tinyllama llama32-1b llama3.2-1b qwen2.5-0.5b qwen3-0.6b"}
TYPES=${TYPES:-"f32 f16 q8_0 q4_0 q4_k q6_k"}
THREADS=${THREADS:-"1 2"}
REPS=${REPS:-3}
DIR=${DUET_BENCH_DIR:-bench/models}
OUT=$BUILD/bench-engine.jsonl
mkdir -p "$DIR"
: > "$OUT"
# run ARGS...: one bench_engine measurement, kept as JSON and shown as a line
run() {
    "$BUILD/bench/bench_engine" "$@" --json > "$OUT.tmp"
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
echo "results: $OUT (llama.cpp on this machine: ../shared/reference/llamacpp-bench.md)"
