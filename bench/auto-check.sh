#!/bin/sh
# auto's predictions against measurements for one case: runs `duet run --mode auto --predict-only`, then every
# candidate as a fixed mode with the same request, link and slowdown, and prints predicted / measured TTFT, TBT
# (mean), cloud compute and total, in ms. Needs jq (scripts/install-deps.sh bench).
#   bench/auto-check.sh MODEL LINK SLOWDOWN TOKENS      e.g. bench/auto-check.sh /tmp/mid-q8.gguf wifi 4 16
# The splits other than 1 and L/2 are skipped (they only interpolate). The machine is shared: run it twice.
set -eu
model=$1 link=$2 slow=$3 n=$4
duet=${DUET:-build/duet}
prompt="Once upon a time there was a little girl who lived in a village near the forest. She liked to"
dec=$("$duet" run --mode auto --predict-only --json --state none -m "$model" -p "$prompt" -n "$n" --link "$link" \
      --device-slowdown "$slow" 2>/dev/null | head -1)
L=$(echo "$dec" | jq '[.auto.candidates[] | select(.mode == "split")] | length + 1')
echo "$dec" | jq -r '"chosen: \(.auto.chosen_args); probe: \(.auto.probe | del(.source) | tostring)"'
printf '%-72s %17s %15s %17s %17s\n' candidate "ttft pred/meas" "tbt pred/meas" "cloud pred/meas" "total pred/meas"
echo "$dec" | jq -c '.auto.candidates[]' | while read -r c; do
    args=$(echo "$c" | jq -r .args)
    case "$args" in "--mode split --split 1" | "--mode split --split $((L / 2))") ;; "--mode split"*) continue ;; esac
    # shellcheck disable=SC2086 # args is a list of flags
    m=$("$duet" run $args --json -m "$model" -p "$prompt" -n "$n" --link "$link" --device-slowdown "$slow" 2>/dev/null | tail -1)
    printf '%-72s %s\n' "$args" "$(jq -rn --argjson c "$c" --argjson m "$m" \
        '"\($c.ttft_ms|round)/\($m.ttft_ms|round)  \($c.tbt_ms*10|round/10)/\($m.tbt_ms.mean*10|round/10)  \($c.cloud_compute_ms|round)/\($m.cloud_compute_ms|round)  \($c.total_ms|round)/\($m.total_ms|round)"')"
done
