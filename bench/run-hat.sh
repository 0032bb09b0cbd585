#!/bin/sh
# make bench-hat: HAT against the baselines, written to docs/results/hat.md with gnuplot PNGs beside it.
#   decode:  stories260K (real weights, so real acceptance), "Once upon a time", TOKENS tokens, A = M = 1 (the cloud
#            holds 3 of 5 layers), under each link of LINKS and device slowdown of SLOWDOWNS: device, cloud,
#            split at A, U-shape (hat --draft 0), hat --draft auto with the identity adapter and with the
#            calibrated one (CALIB), hat with A = M = 2 (calibrated; it leaves the cloud one layer), and hat with k fixed
#            at 1..8 under slowdown SWEEP_SLOWDOWN.
#   prefill: TTFT for prompts of LENGTHS tokens on the mid synthetic shape cut to PREFILL_LAYERS layers (timing
#            only, random weights), A = M = 1, device slowdown 4, under each link: unchunked, CHUNKS, auto.
# Every run is `duet run ... --json` with an in-process cloud on loopback (one thread each); JSON lines go to
# $BUILD/bench-hat.jsonl. About 25 minutes of wall time on 2 shared cores with the defaults, much of it the
# emulated slow device sleeping (2048-token prompts take a minute a run; LENGTHS="32 128 512" ROUNDS=1 takes 5).
set -eu
BUILD=${1:-build}
LINKS=${LINKS:-"wan 4g"}
SLOWDOWNS=${SLOWDOWNS:-"1 4 8"}
SWEEP_SLOWDOWN=${SWEEP_SLOWDOWN:-4}
KS=${KS:-"1 2 3 4 5 6 7 8"}
TOKENS=${TOKENS:-64}
LENGTHS=${LENGTHS:-"32 128 512 2048"}
CHUNKS=${CHUNKS:-"16 64 256"}
PREFILL_LAYERS=${PREFILL_LAYERS:-4}
ROUNDS=${ROUNDS:-3}                 # decode: interleaved rounds, the median run reported
PREFILL_ROUNDS=${PREFILL_ROUNDS:-2} # prefill up to 512 tokens; longer prompts run once
DIR=${DUET_BENCH_DIR:-bench/models}
RES=docs/results
RAW=${RAW:-$BUILD/bench-hat.jsonl}
PARTS=${PARTS:-"decode prefill"} # either alone appends to RAW instead of starting it afresh
DUET="$BUILD/duet"
S260=models/stories260K.gguf
mkdir -p "$DIR" "$RES"
[ "$PARTS" != "decode prefill" ] || : > "$RAW"
MID="$DIR/mid-f32-l$PREFILL_LAYERS.gguf"
[ -f "$MID" ] || "$DUET" synth --shape mid --type f32 --layers "$PREFILL_LAYERS" -o "$MID" 2>/dev/null

# the shipped calibration (every map a:b of stories260K; `duet calibrate`, models/README.md); CALIB= skips it
CALIB=${CALIB-models/stories260K-calib.gguf}

# run TAG ARGS...: one request, its JSON line tagged
run() {
    tag=$1
    shift
    if ! out=$("$DUET" run "$@" --json 2>"$BUILD/bench-hat.err"); then
        # one failed run (a timeout on a loaded machine, say) is reported, not fatal to the other 100
        echo "{$tag,\"failed\":\"$(tail -1 "$BUILD/bench-hat.err" | tr -d '"\\')\"}" >> "$RAW"
        echo "bench-hat: failed: $tag: $(tail -1 "$BUILD/bench-hat.err")" >&2
        return 0
    fi
    echo "$out" | sed "s|^{|{$tag,|" >> "$RAW"
}

echo "bench-hat: decode on stories260K, $ROUNDS rounds" >&2
r=1
case " $PARTS " in *" decode "*) ;; *) r=$((ROUNDS + 1)) ;; esac
while [ "$r" -le "$ROUNDS" ]; do
for link in $LINKS; do
    for sd in $SLOWDOWNS; do
        c="-m $S260 -n $TOKENS --link $link --device-slowdown $sd"
        t="\"part\":\"decode\",\"round\":$r,\"link\":\"$link\",\"slowdown\":$sd"
        run "$t,\"label\":\"device\"" --mode device $c -p "Once upon a time"
        run "$t,\"label\":\"cloud\"" --mode cloud $c -p "Once upon a time"
        run "$t,\"label\":\"split\"" --mode split --split 1 $c -p "Once upon a time"
        run "$t,\"label\":\"ushape\"" --mode hat --draft 0 $c -p "Once upon a time"
        run "$t,\"label\":\"hat\"" --mode hat $c -p "Once upon a time"
        run "$t,\"label\":\"hat-a2m2\"" --mode hat --input-layers 2 --output-layers 2 ${CALIB:+--calib "$CALIB"} $c -p "Once upon a time"
        [ -z "$CALIB" ] || run "$t,\"label\":\"hat-calib\"" --mode hat --calib "$CALIB" $c -p "Once upon a time"
        if [ "$sd" = "$SWEEP_SLOWDOWN" ]; then
            for k in $KS; do
                run "$t,\"label\":\"k$k\",\"k\":$k" --mode hat --draft "$k" ${CALIB:+--calib "$CALIB"} $c -p "Once upon a time"
            done
        fi
    done
done

r=$((r + 1))
done

echo "bench-hat: prefill on $MID" >&2
words() { awk -v n="$1" 'BEGIN { split("cat sat on the mat", w, " "); for (i = 0; i < n; i++) printf "%s%s", (i ? " " : ""), w[i % 5 + 1] }'; }
r=1
case " $PARTS " in *" prefill "*) ;; *) r=$((PREFILL_ROUNDS + 1)) ;; esac
while [ "$r" -le "$PREFILL_ROUNDS" ]; do
for link in $LINKS; do
    for n in $LENGTHS; do
        [ "$r" -gt 1 ] && [ "$n" -gt 512 ] && continue # the long prompts take a minute a run: once
        p=$(words $((n - 1))) # + BOS
        t="\"part\":\"prefill\",\"round\":$r,\"link\":\"$link\",\"len\":$n"
        c="-m $MID -n 1 --link $link --device-slowdown 4 --draft 0"
        run "$t,\"label\":\"none\"" --mode hat --chunk 0 $c -p "$p"
        for ch in $CHUNKS; do
            if [ "$ch" -lt "$n" ]; then run "$t,\"label\":\"$ch\"" --mode hat --chunk "$ch" $c -p "$p"; fi
        done
        run "$t,\"label\":\"auto\"" --mode hat --chunk auto $c -p "$p"
    done
done

r=$((r + 1))
done

sh bench/hat-report.sh "$RAW" "$RES" "${CALIB:+yes}" "$PREFILL_LAYERS"
echo "bench-hat: wrote $RES/hat.md and its plots; JSON lines: $RAW" >&2
