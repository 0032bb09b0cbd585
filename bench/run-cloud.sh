#!/bin/sh
# make bench-cloud: cloud throughput (tokens/s over all sessions) and per-token latency p50/p99 for 1, 2, 4, 8, 16
# and 32 devices at once, split mode against one in-process cloud on loopback, on the mid synthetic shape (q8_0).
# Narrow or widen it with DEVICES="1,4,16" TOKENS=32 PROMPT=32 SPLIT=1 CLOUD_THREADS=1 LAYERS=8 (a smaller copy
# of the shape, generated once). About a minute on 2 cores with the defaults. JSON lines go to
# $BUILD/bench-cloud.jsonl.
set -eu
BUILD=${1:-build}
DEVICES=${DEVICES:-"1,2,4,8,16,32"}
TOKENS=${TOKENS:-32}
PROMPT=${PROMPT:-32}
SPLIT=${SPLIT:-1}
CLOUD_THREADS=${CLOUD_THREADS:-1}
LAYERS=${LAYERS:-}
DIR=${DUET_BENCH_DIR:-bench/models}
OUT=$BUILD/bench-cloud.jsonl
mkdir -p "$DIR"
f="$DIR/mid-q8_0${LAYERS:+-l$LAYERS}.gguf"
[ -f "$f" ] || "$BUILD/duet" synth --shape mid --type q8_0 ${LAYERS:+--layers "$LAYERS"} -o "$f"
echo "duet cloud benchmark: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores (devices and cloud share them)"
"$BUILD/bench/bench_cloud" "$f" -d "$DEVICES" -n "$TOKENS" -p "$PROMPT" --split "$SPLIT" -t "$CLOUD_THREADS" > "$OUT"
echo "results: $OUT"
