#!/bin/sh
# make bench-pd: P/D-Device against device-only and cloud-only on the mid synthetic shape (q8_0, timing only),
# devices SLOWDOWNS times slower than this machine, under the LINK profile; writes docs/results/pd.md and its
# PNG plots (gnuplot). Narrow or widen it with SLOWDOWNS=4,8 PROMPTS=32,128,512,2016 TOKENS=32
# DEVICES=1,4,16 TP_PROMPT=128 LONG=128 LINK=wan (the longest prompt plus TOKENS must fit the shape's 2048
# positions; LONG: the answer length of the long-answer rows and of
# the devices-sharing-a-cloud part). JSON lines go to $BUILD/bench-pd.jsonl.
set -eu
BUILD=${1:-build}
SLOWDOWNS=${SLOWDOWNS:-4,8}
PROMPTS=${PROMPTS:-32,128,512,2016}
TOKENS=${TOKENS:-32}
DEVICES=${DEVICES:-1,4,16}
TP_PROMPT=${TP_PROMPT:-128}
LONG=${LONG:-128}
LINK=${LINK:-wan}
DIR=${DUET_BENCH_DIR:-bench/models}
OUT=docs/results
mkdir -p "$DIR" "$OUT"
f="$DIR/mid-q8_0.gguf"
[ -f "$f" ] || "$BUILD/duet" synth --shape mid --type q8_0 -o "$f"
command -v gnuplot >/dev/null || { echo "bench-pd: gnuplot is missing (sh scripts/install-deps.sh bench)" >&2; exit 1; }
cpu=$(lscpu | grep 'Model name' | sed 's/.*: *//')
t0=$(date -u +%s)
echo "bench-pd: $cpu, $(nproc) cores; mid q8_0, slowdowns $SLOWDOWNS, link $LINK, prompts $PROMPTS, $TOKENS tokens"
"$BUILD/bench/bench_pd" "$f" -s "$SLOWDOWNS" -l "$LINK" -p "$PROMPTS" -n "$TOKENS" -d "$DEVICES" \
    --tp-prompt "$TP_PROMPT" --long "$LONG" -o "$BUILD" > "$BUILD/bench-pd.jsonl"
secs=$(( $(date -u +%s) - t0 ))
n=$(echo "$SLOWDOWNS" | tr ',' '\n' | wc -l)

gnuplot -e "n=$n; d='$BUILD'; o='$OUT'; slows='$(echo "$SLOWDOWNS" | tr ',' ' ')'" bench/pd.gp

cmd="SLOWDOWNS=$SLOWDOWNS PROMPTS=$PROMPTS TOKENS=$TOKENS DEVICES=$DEVICES TP_PROMPT=$TP_PROMPT LONG=$LONG LINK=$LINK make bench-pd"
{
    echo "# pd (P/D-Device) results"
    echo
    echo "Machine: $cpu, $(nproc) cores, shared with other engineers' builds and tests while this ran (load average"
    echo "at the start: $(cut -d' ' -f1-3 /proc/loadavg)); $(date -u +%Y-%m-%d), ${secs} s. Regenerate with:"
    echo
    echo "    $cmd"
    echo
    echo "Deployment emulated on this one machine (DESIGN section 7): the cloud is this machine, one compute thread,"
    echo "in-process on loopback (the real server, transport and protocol); the device is the same engine slowed"
    echo "SLOWDOWN times (--device-slowdown); the link is '$LINK' at both ends. Model: the mid synthetic shape (16"
    echo "layers, dim 1024, q8_0, random weights: timing only). pd runs --pd-plan auto (device probe, a PING padded to"
    echo "the prompt, the cost model of docs/PD.md); TPOT is the gap between tokens as the user gets them. Device-only"
    echo "is measured at full speed and multiplied by the slowdown (exactly what the slowdown's sleeping would give)."
    echo "Cloud busy time is the compute time the cloud's answers report (its prefill, every token it streamed,"
    echo "including those on their way when the device's CLOSE arrived). Everything shares 2 cores with the other"
    echo "sessions on the machine, so absolute times are noisy; read the ratios. Two effects of the emulation go"
    echo "against pd: its device computes on the same cores as the cloud while the cloud prefills and streams, which"
    echo "slows the cloud (pd's TTFT and cloud busy time come out above cloud-only's for the same work); and with"
    echo "several devices the cloud's one compute thread is shared, so the busy time its answers report includes"
    echo "waiting for it: only the 1-device row of the last table measures the cloud's own time per request."
    echo
    cat "$BUILD/pd-tables.md"
    echo
    echo "![TTFT](pd-ttft.png) ![TPOT](pd-tpot.png)"
    echo
    echo "![cloud busy time and hand-over](pd-cloud.png) ![devices sharing a cloud](pd-throughput.png)"
} > "$OUT/pd.md"
echo "bench-pd: wrote $OUT/pd.md and $OUT/pd-*.png (${secs} s)"
