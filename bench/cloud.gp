# Plot of make bench-cloud (bench/run-cloud.sh sets d, the data file, o, the PNG, and ms, the models): tokens/s over all devices
# against the device count, one panel per model, batching on and off, split and cloud modes, and llama.cpp's
# llama-batched-bench on the same shape.
set terminal pngcairo size 1000,420 font ",10"
set output o
set multiplot layout 1,words(ms)
set logscale x 2
set grid
set key top left
set xlabel 'devices at once'
set ylabel 'tokens/s, all devices'
do for [m in ms] {
    set title m
    plot d using (strcol(1) eq m && strcol(2) eq "split" ? $3 : NaN):4 with linespoints lw 2 title 'split, batching', \
         d using (strcol(1) eq m && strcol(2) eq "split" ? $3 : NaN):5 with linespoints dt 2 title 'split, --no-batching', \
         d using (strcol(1) eq m && strcol(2) eq "cloud" ? $3 : NaN):4 with linespoints lw 2 title 'cloud, batching', \
         d using (strcol(1) eq m && strcol(2) eq "cloud" ? $3 : NaN):5 with linespoints dt 2 title 'cloud, --no-batching', \
         d using (strcol(1) eq m && strcol(2) eq "cloud" ? $3 : NaN):6 with linespoints dt 3 lw 2 title 'llama-batched-bench S\_TG'
}
unset multiplot
