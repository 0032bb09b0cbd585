#!/bin/sh
# make bench-ee: CE-CoLLM's Tables 2 and 4 on stories260K (bench/bench_ee.c), written to docs/results/ee.md
# with two plots. Defaults: the 52 prompts of bench/prompts-stories.txt x 32 tokens, link wan, device slowdown 4,
# exits after layers 2 and 3, translators from models/stories260K-calib.gguf. About 20 minutes, nearly all of it
# the emulated link's round trips. Narrow it with PROMPTS=5 TOKENS=16 LINK=4g SLOWDOWN=8 EXITS=1,2.
set -eu
BUILD=${1:-build}
PROMPTS=${PROMPTS:-1000}
TOKENS=${TOKENS:-32}
LINK=${LINK:-wan}
SLOWDOWN=${SLOWDOWN:-4}
EXITS=${EXITS:-2,3}
OUT=docs/results/ee.md
mkdir -p docs/results
machine="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
tab=$BUILD/bench-ee-table.md
"$BUILD/bench/bench_ee" models/stories260K.gguf models/stories260K-calib.gguf bench/prompts-stories.txt -o "$tab" \
    --link "$LINK" --slowdown "$SLOWDOWN" -n "$TOKENS" --exits "$EXITS" --max-prompts "$PROMPTS" --machine "$machine"
gnuplot <<GP
set terminal pngcairo size 800,500
set output 'docs/results/ee-threshold.png'
set title "ee on stories260K: cloud requests and fidelity against the threshold ($LINK, slowdown $SLOWDOWN)"
set xlabel 'confidence threshold T'
set ylabel 'fraction'
set yrange [0:1.05]
set key bottom right
set grid
plot '$tab.dat' using 1:2 with linespoints lw 2 title 'cloud request rate, calibrated', \
     '$tab.dat' using 1:3 with linespoints lw 2 title 'ROUGE-L vs device, calibrated', \
     '$tab.dat' using 1:4 with linespoints dt 2 title 'cloud request rate, raw exits', \
     '$tab.dat' using 1:5 with linespoints dt 2 title 'ROUGE-L vs device, raw exits'
GP
# Time per configuration, split into its parts (the table's seconds columns).
sed -n 's/^| \([^|]*\) | \([^|]*\) | \([0-9.]*\) | \([0-9.]*\) | \([0-9.]*\) | \([0-9.]*\) |.*/"\1 \2" \4 \5 \6/p' "$tab" \
    | sed 's/ -"/"/' >"$tab.times"
gnuplot <<GP
set terminal pngcairo size 1000,550
set output 'docs/results/ee-time.png'
set title "Where the time goes, summed over the prompts ($LINK, slowdown $SLOWDOWN)"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.7
set ylabel 'seconds'
set xtics rotate by -40 scale 0 font ',8'
set key outside top center horizontal
set bmargin 11
set rmargin 9
plot '$tab.times' using 2:xtic(1) title 'device compute', '' using 3 title 'cloud compute', '' using 4 title 'waiting on the link'
GP
{
    cat <<'MD'
# ee (CE-CoLLM) on stories260K: the paper's Tables 2 and 4, our way

Regenerate everything on this page with `make bench-ee` (bench/run-ee.sh, bench/bench_ee.c): every prompt of
bench/prompts-stories.txt (written for this benchmark; none is a test prompt) runs greedy in every
configuration, configurations interleaved prompt by prompt, over the emulated link and device slowdown below.
Times are sums over the prompts. "comm" is the time the device was blocked on the network. ROUGE-L and exact
match are against a device-only run of the same prompt (the paper compares with the cloud's output, which is
the same model). Compute is tiny on stories260K (the emulated link dominates every remote configuration), so
read the times for their shape and the request rates and fidelity for the method.

MD
    cat "$tab"
    cat <<'MD'

![cloud request rate and ROUGE-L against the threshold](ee-threshold.png)

![time per configuration](ee-time.png)

## The paper's figures beside ours

CE-CoLLM (arXiv 2411.02829), EE-LLM 7B on two A100s, Alpaca prompts (Table 2) and ablations (Table 4):

| configuration | total s | edge s | cloud s | comm s | request rate | ROUGE-L |
| --- | --- | --- | --- | --- | --- | --- |
| cloud-based deployment | 370.2 | 0.0 | 369.8 | 0.4 | - | - |
| naive cloud-edge | 3371.8 | 241.4 | 253.4 | 2877.0 | 100% | 1.0000 |
| CE-CoLLM standalone | 201.6 | 201.6 | 0.0 | 0.0 | 0% | 0.3771 |
| CE-CoLLM T = 0.8 | 319.1 | 192.2 | 112.7 | 14.1 | 49.58% | 0.9499 |
| CE-CoLLM T = 0.9 | 345.4 | 198.6 | 130.7 | 16.1 | 58.00% | 0.9839 |
| CE-CoLLM T = 1.0 | 481.3 | 234.2 | 221.3 | 25.8 | 100% | 1.0000 |
| T = 0.8 without half precision | 337.2 | 209.4 | 112.2 | 15.6 | | |
| T = 0.8 without early exit | 482.5 | 234.2 | 222.0 | 26.4 | | |
| T = 0.8 without context manager and parallel upload | 1407.9 | 187.3 | 115.3 | 1105.4 | | |

On XSum (long prompts) the paper reports a request rate of 27.73% at T = 0.8 (ROUGE-L 0.9242) and cloud time
84.5% below the cloud-based deployment; that is the "-84.5% cloud compute at ROUGE-L 0.98" the issue quotes
(ROUGE-L 0.98 holds at T = 0.9, 36.13% of requests).

How to read the comparison:
- The paper's model was trained with early exits (EE-LLM); stories260K was not, so its exits are weak: a held-out
  exit after layer 3 agrees with the full model on 49% of tokens raw and 55% through its translator (after layer
  2: 20% and 35%; `duet calibrate --pairs exits`). The translators are what make low thresholds usable at all:
  without them, the raw exits are confidently wrong (see the dashed curves).
- The paper's naive cloud-edge deployment shipped its context with every request, so its communication time is
  huge; our split baseline already keeps the context in the cloud (DESIGN), so "no background upload" costs us
  little: a stories260K row is 128 bytes in fp16.
- The paper's T = 1.0 and "no early exit" rows are the same configuration; so are ours.
MD
} >"$OUT"
echo "wrote $OUT, docs/results/ee-threshold.png, docs/results/ee-time.png"
