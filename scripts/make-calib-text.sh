#!/bin/sh
# Regenerates models/stories260K-calib.txt, the calibration text behind models/stories260K-calib.gguf:
# 240 stories sampled from stories260K itself (temperature 1, seeds 1001..1240, 256 tokens each, from BOS).
# Why the model's own samples: no training data ships with the project, and the maps must fit the hidden
# states the model produces on the text it generates, which is exactly what its exits and adapters see at
# run time. The seeds lie outside those of the tests and benchmarks (which use their own prompts, greedy).
# Usage: sh scripts/make-calib-text.sh [BUILD]   (then: duet calibrate, see README "ee")
set -eu
build=${1:-build}
out=models/stories260K-calib.txt
: >"$out"
seed=1001
while [ "$seed" -le 1240 ]; do
    "$build/duet" generate -m models/stories260K.gguf --temp 1 --seed "$seed" -n 256 2>/dev/null >>"$out"
    printf '\n' >>"$out"
    seed=$((seed + 1))
done
echo "wrote $out ($(wc -c <"$out") bytes)"
