#!/bin/sh
# make bench-cloud: cloud throughput (tokens/s over all sessions) and per-token latency p50/p99 for 1, 2, 4, 8, 16
# and 32 devices at once, split mode against one in-process cloud on loopback, on the mid synthetic shape (q8_0).
# Narrow or widen it with DEVICES="1,4,16" TOKENS=32 PROMPT=32 SPLIT=1 CLOUD_THREADS=1 LAYERS=8 (a smaller copy
# of the shape, generated once). About a minute on 2 cores with the defaults. JSON lines go to
# $BUILD/bench-cloud.jsonl. TLS=1 serves TLS 1.3 with a certificate made here by the openssl CLI (TLS=both runs
# every device count plain and TLS alternately, for the comparison: wire bytes and time per token).
set -eu
BUILD=${1:-build}
DEVICES=${DEVICES:-"1,2,4,8,16,32"}
TOKENS=${TOKENS:-32}
PROMPT=${PROMPT:-32}
SPLIT=${SPLIT:-1}
CLOUD_THREADS=${CLOUD_THREADS:-1}
LAYERS=${LAYERS:-}
DIR=${DUET_BENCH_DIR:-bench/models}
TLS=${TLS:-0}
OUT=$BUILD/bench-cloud.jsonl
mkdir -p "$DIR"
f="$DIR/mid-q8_0${LAYERS:+-l$LAYERS}.gguf"
[ -f "$f" ] || "$BUILD/duet" synth --shape mid --type q8_0 ${LAYERS:+--layers "$LAYERS"} -o "$f"
echo "duet cloud benchmark: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores (devices and cloud share them)"
tlsdir=$BUILD/bench-tls
if [ "$TLS" != 0 ] && [ ! -f "$tlsdir/srv.crt" ]; then
    mkdir -p "$tlsdir"
    k="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
    openssl req -x509 $k -keyout "$tlsdir/ca.key" -out "$tlsdir/ca.crt" -days 30 -subj /CN=duet-bench-ca 2>/dev/null
    openssl req $k -keyout "$tlsdir/srv.key" -out "$tlsdir/srv.csr" -subj /CN=duet-bench 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' > "$tlsdir/ext"
    openssl x509 -req -in "$tlsdir/srv.csr" -CA "$tlsdir/ca.crt" -CAkey "$tlsdir/ca.key" -CAcreateserial \
        -out "$tlsdir/srv.crt" -days 30 -extfile "$tlsdir/ext" 2>/dev/null
fi
: > "$OUT"
run() { "$BUILD/bench/bench_cloud" "$f" -d "$1" -n "$TOKENS" -p "$PROMPT" --split "$SPLIT" -t "$CLOUD_THREADS" $2 >> "$OUT"; }
case $TLS in
0) run "$DEVICES" "" ;;
both) for d in $(echo "$DEVICES" | tr , ' '); do run "$d" ""; run "$d" "--tls $tlsdir"; done ;;
*) run "$DEVICES" "--tls $tlsdir" ;;
esac
echo "results: $OUT"
