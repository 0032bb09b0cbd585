#!/bin/sh
# make bench-cloud: one cloud serving 1, 2, 4, 8, 16 and 32 devices at once, each generating TOKENS tokens after a
# PROMPT-token prompt: the cloud's throughput (tokens/s over all sessions) and the per-token latency p50/p99 the
# devices see, with the cloud's scheduler batching the sessions and without (--no-batching), measured alternately
# at each device count; split mode (split at layer 1) and cloud mode; on the synthetic shapes of SHAPES (default
# mid F32 and TinyLlama Q8_0, generated into bench/models once). Next to llama.cpp's llama-batched-bench on the same
# shapes (bench/llamacpp-reference.md) as a ratio, in $BUILD/bench-cloud.md, with a plot
# ($BUILD/bench-cloud.png). JSON lines go to $BUILD/bench-cloud.jsonl.
# Knobs: DEVICES="1,4,16" TOKENS=16 PROMPT=16 MODES=split,cloud BATCHING=both|on|off SPLIT=1 CLOUD_THREADS=2
# SHAPES="mid:f32 tinyllama:q8_0" LAYERS=N (a smaller copy of each shape: no llama.cpp ratio then).
# TLS=1 serves TLS 1.3 with a certificate made here by the openssl CLI (TLS=both runs every device count plain and
# TLS alternately, for the comparison: wire bytes and time per token).
set -eu
BUILD=${1:-build}
DEVICES=${DEVICES:-"1,2,4,8,16,32"}
TOKENS=${TOKENS:-16}
PROMPT=${PROMPT:-16}
SPLIT=${SPLIT:-1}
CLOUD_THREADS=${CLOUD_THREADS:-2}
MODES=${MODES:-split,cloud}
BATCHING=${BATCHING:-both}
SHAPES=${SHAPES:-"mid:f32 tinyllama:q8_0"}
LAYERS=${LAYERS:-}
DIR=${DUET_BENCH_DIR:-bench/models}
TLS=${TLS:-0}
OUT=$BUILD/bench-cloud.jsonl
mkdir -p "$DIR"
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
for st in $SHAPES; do
    shape=${st%%:*} type=${st#*:}
    f="$DIR/$shape-$type${LAYERS:+-l$LAYERS}.gguf"
    [ -f "$f" ] || "$BUILD/duet" synth --shape "$shape" --type "$type" ${LAYERS:+--layers "$LAYERS"} -o "$f"
    run() { "$BUILD/bench/bench_cloud" "$f" -d "$1" -n "$TOKENS" -p "$PROMPT" --split "$SPLIT" -t "$CLOUD_THREADS" \
                --modes "$MODES" --batching "$BATCHING" $2 >> "$OUT"; }
    case $TLS in
    0) run "$DEVICES" "" ;;
    both) for d in $(echo "$DEVICES" | tr , ' '); do run "$d" ""; run "$d" "--tls $tlsdir"; done ;;
    *) run "$DEVICES" "--tls $tlsdir" ;;
    esac
done
echo "results: $OUT"
[ "$TLS" = 0 ] || exit 0

sh bench/cloud-table.sh "$BUILD" "$LAYERS" "$SHAPES"
