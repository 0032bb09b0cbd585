#!/bin/sh
# make report: every mode (device, cloud, split, ee, hat, pd, and auto when the build has it) under the link profiles
# LINKS, device slowdowns SLOWDOWNS and prompt lengths LENGTHS, then docs/RESULTS.md with its gnuplot PNGs
# (bench/report-render.sh draws them from the JSON lines, so a render alone is `sh bench/report-render.sh`).
#
#   decisions  ee's exits and hat's rounds are recorded on stories260K (the one trained model: `duet run
#              --trace-out`, PROMPTS prompts of bench/prompts-stories.txt, 64 tokens each) and replayed
#              (`--replay`) on the timing model: real-size compute and traffic, a real decision pattern.
#   grid       the timing model (the mid synthetic shape, q8_0, cut to LAYERS layers so the grid fits the hour;
#              random weights), TOKENS generated tokens, one run per case. Device-only does not touch the link
#              and its emulated slowdown only sleeps (X-1) times each compute step, so it runs 3 times per prompt
#              length at full speed (the median is kept) and its times are multiplied by the slowdown (as make
#              bench-pd does).
#   auto       per case, before the case's runs, `--mode auto --predict-only --net nominal` gives its pick and a
#              prediction for every candidate; the pick is run too when no grid run has its settings; predicted vs
#              measured pairs every candidate with the grid run of the same settings. Every run is given auto's
#              state, so auto predicts from the rates and time corrections of the warm-up and the earlier cases.
#   fidelity   each mode on stories260K with --compare (exact match and ROUGE-L against device-only).
#   sharing    1..32 devices (DEVICES) at once against one `duet cloud` process, each mode.
#   real size  ee and hat replayed on the full TinyLlama shape (q8_0) beside device, cloud and split (TINY=1).
# REPORT_NOTE="..." adds a paragraph to the page (say what disturbed a run). QUICK=1 shrinks everything to test the script in a few minutes (its RESULTS.md says so). JSON lines go to
# $BUILD/report.jsonl. The full run takes about 45 minutes on 2 cores (the 2048-token prompts on slow devices
# are most of it).
set -eu
BUILD=${1:-build}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    LINKS=${LINKS:-"lan 4g"}; SLOWDOWNS=${SLOWDOWNS:-"1 8"}; LENGTHS=${LENGTHS:-"32 128"}; TOKENS=${TOKENS:-8}
    DEVICES=${DEVICES:-"1 4"}; LAYERS=${LAYERS:-4}; PROMPTS=${PROMPTS:-2}; TINY=${TINY:-0}
else
    LINKS=${LINKS:-"lan wifi wan 4g"}; SLOWDOWNS=${SLOWDOWNS:-"1 4 8"}; LENGTHS=${LENGTHS:-"32 512 2048"}
    TOKENS=${TOKENS:-16}; DEVICES=${DEVICES:-"1 2 4 8 16 32"}; LAYERS=${LAYERS:-4}; PROMPTS=${PROMPTS:-8}
    TINY=${TINY:-1}
fi
PARTS=${PARTS:-"traces fidelity grid sharing tiny"} # a subset appends to RAW instead of starting afresh
DIR=${DUET_BENCH_DIR:-bench/models}
RAW=${RAW:-$BUILD/report.jsonl}
TR=$BUILD/report-traces
DUET="$BUILD/duet"
S260=models/stories260K.gguf
CALIB=models/stories260K-calib.gguf
TM="$DIR/mid-q8_0-l$LAYERS.gguf"
TINYM="$DIR/tinyllama-q8_0.gguf"
mkdir -p "$DIR" "$TR"
command -v jq >/dev/null && command -v gnuplot >/dev/null ||
    { echo "report: needs jq and gnuplot (sh scripts/install-deps.sh bench)" >&2; exit 1; }
[ -f "$TM" ] || "$DUET" synth --shape mid --type q8_0 --layers "$LAYERS" -o "$TM" 2>/dev/null
[ "$TINY" = 0 ] || [ -f "$TINYM" ] || "$DUET" synth --shape tinyllama --type q8_0 -o "$TINYM" 2>/dev/null
HAVE_AUTO=0
"$DUET" run --help | grep -q -- '--predict-only' && HAVE_AUTO=1
STATE=$TR/auto-state.json
AUTOST=""
[ "$HAVE_AUTO" = 0 ] || AUTOST="--state $STATE"
t0=$(date -u +%s)
[ "$PARTS" != "traces fidelity grid sharing tiny" ] || { : > "$RAW"; rm -f "$STATE"; }
{
    echo "{\"part\":\"meta\",\"machine\":\"$(lscpu | grep 'Model name' | sed 's/.*: *//')\",\"cores\":$(nproc),\"quick\":$QUICK,"
    echo "\"links\":\"$LINKS\",\"slowdowns\":\"$SLOWDOWNS\",\"lengths\":\"$LENGTHS\",\"tokens\":$TOKENS,\"layers\":$LAYERS,"
    echo "\"prompts\":$PROMPTS,\"devices\":\"$DEVICES\",\"have_auto\":$HAVE_AUTO,\"tiny\":$TINY,"
    echo "\"build\":\"${REPORT_BUILD:-$(git describe --always --dirty 2>/dev/null || echo unknown)}\","
    echo "\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"date\":\"$(date -u '+%Y-%m-%d %H:%M UTC')\"}"
} | tr -d '\n' >> "$RAW"
echo >> "$RAW"

# run TAG ARGS...: one request, its JSON lines tagged (auto prints a decision line before the metrics)
run() { # (sh has no local variables: the callers' own names must differ from _tag)
    _tag=$1
    shift
    if ! out=$("$DUET" run "$@" --json 2>"$BUILD/report.err"); then
        echo "{$_tag,\"failed\":\"$(tail -1 "$BUILD/report.err" | tr -d '"\\')\"}" >> "$RAW"
        echo "report: failed: $_tag: $(tail -1 "$BUILD/report.err")" >&2
        return 0
    fi
    echo "$out" | grep '^{' | sed "s|^{|{$_tag,|" >> "$RAW"
}
words() { awk -v n="$1" 'BEGIN { split("cat sat on the mat", w, " "); for (i = 0; i < n; i++) printf "%s%s", (i ? " " : ""), w[i % 5 + 1] }'; }
prompt_i() { sed -n "${1}p" bench/prompts-stories.txt; }

EE_REC="--exits 2,3 --threshold 0.9 --calib $CALIB"
HAT_REC="--draft 4 --calib $CALIB"
case " $PARTS " in *" traces "*)
    echo "report: recording decisions on stories260K ($PROMPTS prompts)" >&2
    echo "duet-trace 1 ee" > "$TR/ee.trace"
    echo "duet-trace 1 hat" > "$TR/hat.trace"
    i=1
    while [ "$i" -le "$PROMPTS" ]; do
        p=$(prompt_i "$i")
        "$DUET" run --mode ee -m "$S260" -p "$p" -n 64 $EE_REC --trace-out "$TR/one.trace" >/dev/null 2>&1
        tail -n +2 "$TR/one.trace" >> "$TR/ee.trace"
        "$DUET" run --mode hat -m "$S260" -p "$p" -n 64 $HAT_REC --trace-out "$TR/one.trace" >/dev/null 2>&1
        tail -n +2 "$TR/one.trace" >> "$TR/hat.trace"
        i=$((i + 1))
    done
    printf '{"part":"trace","ee_e1":%d,"ee_e2":%d,"ee_cloud":%d,"hat_rounds":%d,"hat_drafted":%d,"hat_accepted":%d}\n' \
        "$(grep -c '^e1$' "$TR/ee.trace")" "$(grep -c '^e2$' "$TR/ee.trace")" "$(grep -c '^cloud$' "$TR/ee.trace")" \
        "$(grep -c '^[0-9]' "$TR/hat.trace")" "$(awk '/^[0-9]/ { s += $1 } END { print s + 0 }' "$TR/hat.trace")" \
        "$(awk '/^[0-9]/ { s += $2 } END { print s + 0 }' "$TR/hat.trace")" >> "$RAW"
;; esac

case " $PARTS " in *" fidelity "*)
    echo "report: fidelity on stories260K" >&2
    i=1
    while [ "$i" -le "$PROMPTS" ]; do
        p=$(prompt_i "$i")
        t="\"part\":\"fidelity\",\"prompt\":$i"
        run "$t,\"label\":\"device\"" --mode device -m "$S260" -p "$p" -n 64 --compare
        run "$t,\"label\":\"cloud\"" --mode cloud -m "$S260" -p "$p" -n 64 --compare
        run "$t,\"label\":\"split\"" --mode split -m "$S260" -p "$p" -n 64 --compare
        run "$t,\"label\":\"ee\"" --mode ee -m "$S260" -p "$p" -n 64 --compare $EE_REC
        run "$t,\"label\":\"ee-lossless\"" --mode ee -m "$S260" -p "$p" -n 64 --compare --exits 2,3 --threshold 1
        run "$t,\"label\":\"hat\"" --mode hat -m "$S260" -p "$p" -n 64 --compare $HAT_REC
        run "$t,\"label\":\"pd\"" --mode pd -m "$S260" -p "$p" -n 64 --compare
        [ "$HAVE_AUTO" = 0 ] || run "$t,\"label\":\"auto\"" --mode auto -m "$S260" -p "$p" -n 64 --compare --state none
        i=$((i + 1))
    done
;; esac

# the grid's settings of each mode on the timing model (L = LAYERS): duet run's defaults, spelled out
EE_GRID="--exits $((LAYERS / 2 - 1)),$((3 * LAYERS / 4 - 1)) --threshold 0.8"
HAT_GRID="--input-layers $([ "$LAYERS" -ge 8 ] && echo $((LAYERS / 4)) || echo 1) --output-layers $([ "$LAYERS" -ge 8 ] && echo $((LAYERS / 4)) || echo 1)"
grid_mode() { # TAG LINKARGS PROMPT MODE
    tag=$1; la=$2; p=$3; m=$4
    case $m in
    cloud) run "$tag,\"label\":\"cloud\",\"args\":\"--mode cloud\"" --mode cloud -m "$TM" -p "$p" -n "$TOKENS" $la ;;
    split) run "$tag,\"label\":\"split\",\"args\":\"--mode split --split 1\"" --mode split --split 1 -m "$TM" -p "$p" -n "$TOKENS" $la ;;
    ee) run "$tag,\"label\":\"ee\",\"args\":\"--mode ee $EE_GRID\",\"replayed\":true" --mode ee $EE_GRID -m "$TM" -p "$p" -n "$TOKENS" $la \
            --replay "$TR/ee.trace" ;;
    hat) run "$tag,\"label\":\"hat\",\"args\":\"--mode hat $HAT_GRID\",\"replayed\":true" --mode hat $HAT_GRID -m "$TM" -p "$p" -n "$TOKENS" $la \
            --replay "$TR/hat.trace" ;;
    pd) run "$tag,\"label\":\"pd\",\"args\":\"--mode pd\"" --mode pd -m "$TM" -p "$p" -n "$TOKENS" $la ;;
    esac
}

case " $PARTS " in *" grid "*)
    echo "report: grid on $TM (links $LINKS, slowdowns $SLOWDOWNS, prompts $LENGTHS, $TOKENS tokens)" >&2
    LEARN="" # every run given the state teaches auto how far its mode's times were from their prediction
    if [ "$HAVE_AUTO" = 1 ]; then
        LEARN="$AUTOST --net nominal"
        # earlier requests: the replayed rates, then one short request of each mode at each slowdown, go into auto's
        # state before it predicts anything; within the grid, auto predicts a case before that case's runs
        run "\"part\":\"warmup\",\"label\":\"ee\"" --mode ee $EE_GRID -m "$TM" -p "$(words 31)" -n "$TOKENS" --replay "$TR/ee.trace" $AUTOST
        run "\"part\":\"warmup\",\"label\":\"hat\"" --mode hat $HAT_GRID -m "$TM" -p "$(words 31)" -n "$TOKENS" --replay "$TR/hat.trace" $AUTOST
        run "\"part\":\"warmup\",\"label\":\"device\"" --mode device -m "$TM" -p "$(words 31)" -n "$TOKENS" $LEARN
        for sd in $SLOWDOWNS; do
            for m in cloud split ee hat pd; do
                grid_mode "\"part\":\"warmup\",\"slowdown\":$sd" "--link lan --device-slowdown $sd $LEARN" "$(words 31)" "$m"
            done
        done
    fi
    for n in $LENGTHS; do
        # BOS + n - 1 words, less what the generated tokens need of the shape's 2048 positions
        w=$((n - 1))
        [ $((n + TOKENS)) -le 2048 ] || w=$((2048 - TOKENS - 1))
        p=$(words "$w")
        # device-only stands for every case of this length (times the slowdown): the median of 3 runs, so that one
        # unlucky run does not decide a third of the grid
        : > "$TR/device.jsonl"
        for _ in 1 2 3; do
            "$DUET" run --mode device -m "$TM" -p "$p" -n "$TOKENS" $LEARN --json 2>"$BUILD/report.err" | grep '^{' >> "$TR/device.jsonl" ||
                echo "report: failed: device, $n tokens: $(tail -1 "$BUILD/report.err")" >&2
        done
        jq -s -c --argjson n "$n" 'sort_by(.total_ms) | select(length > 0) | .[length / 2 | floor] |
            {part: "grid", len: $n, link: "none", slowdown: 1, label: "device", args: "--mode device", runs: 3} + .' \
            "$TR/device.jsonl" >> "$RAW"
        for link in $LINKS; do
            for sd in $SLOWDOWNS; do
                tag="\"part\":\"grid\",\"len\":$n,\"link\":\"$link\",\"slowdown\":$sd"
                la="--link $link --device-slowdown $sd"
                chosen=""
                if [ "$HAVE_AUTO" = 1 ]; then
                    run "$tag,\"label\":\"auto-predict\"" --mode auto --predict-only --net nominal --allow-lossy -m "$TM" -p "$p" \
                        -n "$TOKENS" $la $AUTOST
                    chosen=$(tail -1 "$RAW" | jq -r '.auto.chosen_args // empty' 2>/dev/null || true)
                fi
                for m in cloud split ee hat pd; do grid_mode "$tag" "$la $LEARN" "$p" "$m"; done
                # a pick the grid has no run of (another split point, other exits or hat layers): run it too
                case "$chosen" in
                "" | "--mode device" | "--mode cloud" | "--mode split --split 1" | "--mode pd"* | "--mode ee $EE_GRID" | \
                    "--mode hat $HAT_GRID"*) ;;
                --mode\ ee*) run "$tag,\"label\":\"auto-pick\",\"args\":\"$chosen\",\"replayed\":true" $chosen -m "$TM" -p "$p" \
                                 -n "$TOKENS" $la --replay "$TR/ee.trace" $LEARN ;;
                --mode\ hat*) run "$tag,\"label\":\"auto-pick\",\"args\":\"$chosen\",\"replayed\":true" $chosen -m "$TM" -p "$p" \
                                  -n "$TOKENS" $la --replay "$TR/hat.trace" $LEARN ;;
                *) run "$tag,\"label\":\"auto-pick\",\"args\":\"$chosen\"" $chosen -m "$TM" -p "$p" -n "$TOKENS" $la $LEARN ;;
                esac
            done
        done
    done
;; esac

case " $PARTS " in *" sharing "*)
    echo "report: devices sharing one cloud ($DEVICES)" >&2
    "$DUET" cloud -m "$TM" --port 0 --max-per-address 64 --quiet > "$BUILD/report-cloud.log" 2>&1 &
    cpid=$!
    port=""
    for _ in $(seq 1 100); do
        port=$(sed -n 's/.*:\([0-9][0-9]*\) (fingerprint.*/\1/p' "$BUILD/report-cloud.log")
        [ -n "$port" ] && break
        sleep 0.1
    done
    [ -n "$port" ] || { echo "report: duet cloud did not start: $(cat "$BUILD/report-cloud.log")" >&2; kill "$cpid"; exit 1; }
    p=$(words 31)
    for m in cloud split ee hat pd; do
        case $m in
        ee) extra="--replay $TR/ee.trace" ;;
        hat) extra="--replay $TR/hat.trace" ;;
        split) extra="--split 1" ;;
        *) extra="" ;;
        esac
        for d in $DEVICES; do
            rm -f "$TR"/share-*.json
            s0=$(date +%s.%N)
            j=1
            pids=""
            while [ "$j" -le "$d" ]; do
                "$DUET" run --mode "$m" -m "$TM" --mmap -p "$p" -n "$TOKENS" --cloud "127.0.0.1:$port" $extra --json \
                    > "$TR/share-$j.json" 2>/dev/null &
                pids="$pids $!"
                j=$((j + 1))
            done
            for q in $pids; do wait "$q" || true; done
            s1=$(date +%s.%N)
            cat "$TR"/share-*.json | grep '^{' | jq -s -c --arg m "$m" --argjson d "$d" --argjson w "$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.3f", b - a }')" '
                { part: "sharing", label: $m, devices: $d, wall_s: $w, ok: length,
                  tokens: (map(.tokens) | add // 0),
                  totals: (map(.total_ms) | sort), tbt_p90s: (map(.tbt_ms.p90) | sort),
                  cloud_ms: (map(.cloud_compute_ms) | add // 0) }' >> "$RAW"
        done
    done
    kill "$cpid" 2>/dev/null || true
    wait "$cpid" 2>/dev/null || true
;; esac

case " $PARTS " in *" tiny "*)
    if [ "$TINY" = 1 ]; then
        echo "report: ee and hat replayed on the TinyLlama shape" >&2
        p=$(words 31)
        t="\"part\":\"tiny\",\"len\":32,\"link\":\"wan\",\"slowdown\":1"
        run "$t,\"label\":\"device\"" --mode device -m "$TINYM" -p "$p" -n "$TOKENS"
        run "$t,\"label\":\"cloud\"" --mode cloud -m "$TINYM" -p "$p" -n "$TOKENS" --link wan
        run "$t,\"label\":\"split\"" --mode split --split 1 -m "$TINYM" -p "$p" -n "$TOKENS" --link wan
        run "$t,\"label\":\"ee\",\"replayed\":true" --mode ee -m "$TINYM" -p "$p" -n "$TOKENS" --link wan --replay "$TR/ee.trace"
        run "$t,\"label\":\"hat\",\"replayed\":true" --mode hat -m "$TINYM" -p "$p" -n "$TOKENS" --link wan --replay "$TR/hat.trace"
    fi
;; esac

secs=$(( $(date -u +%s) - t0 ))
echo "{\"part\":\"end\",\"seconds\":$secs}" >> "$RAW"
cp "$RAW" docs/results/report.jsonl # kept beside the page: bench/report-render.sh redraws it from this alone
sh bench/report-render.sh docs/results/report.jsonl docs
echo "report: wrote docs/RESULTS.md and docs/results/report-*.png in $secs s; JSON lines: $RAW" >&2
