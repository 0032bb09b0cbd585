# Plots of make bench-pd (bench/run-pd.sh sets n, d, o, slows).
set terminal pngcairo size 800,520 font ",10"
set key top left
set grid

set output o.'/pd-ttft.png'
set title 'TTFT against prompt length'
set logscale xy
set xlabel 'prompt tokens'
set ylabel 'TTFT (ms)'
plot for [i=0:n-1] d.'/pd-ttft.dat' index i using 2:3 with linespoints title 'device-only, slowdown '.word(slows, i+1), \
     d.'/pd-ttft.dat' index 0 using 2:4 with linespoints lw 2 title 'cloud-only', \
     for [i=0:n-1] d.'/pd-ttft.dat' index i using 2:5 with linespoints dt 2 lw 2 title 'pd, slowdown '.word(slows, i+1)

set output o.'/pd-tpot.png'
set title 'TPOT as the user sees it (pd): pace, mean and max'
set logscale x
unset logscale y
set ylabel 'ms per token'
plot for [i=0:n-1] d.'/pd-tpot.dat' index i using 2:3 with lines dt 3 title 'pace, slowdown '.word(slows, i+1), \
     for [i=0:n-1] d.'/pd-tpot.dat' index i using 2:4 with linespoints title 'mean, slowdown '.word(slows, i+1), \
     for [i=0:n-1] d.'/pd-tpot.dat' index i using 2:6 with linespoints dt 2 title 'max, slowdown '.word(slows, i+1)

set output o.'/pd-cloud.png'
set title "cloud busy time per request, and where the device takes over"
set logscale xy
set ylabel 'cloud busy ms per request'
set y2label 'hand-over at token (-1: never)'
set y2tics
plot d.'/pd-cloud.dat' index 0 using 2:3 with linespoints lw 2 title 'cloud-only', \
     for [i=0:n-1] d.'/pd-cloud.dat' index i using 2:4 with linespoints title 'pd, slowdown '.word(slows, i+1), \
     for [i=0:n-1] d.'/pd-cloud.dat' index i using 2:5 axes x1y2 with points pt 7 title 'hand-over, slowdown '.word(slows, i+1)
unset y2tics
unset y2label

set output o.'/pd-throughput.png'
set title 'devices sharing one cloud: requests per minute'
set logscale xy
set xlabel 'devices at once'
set ylabel 'requests per minute'
plot d.'/pd-throughput.dat' using 1:4 with linespoints lw 2 title 'cloud-only: capacity (60 s / cloud busy per request)', \
     d.'/pd-throughput.dat' using 1:5 with linespoints lw 2 title 'pd: capacity', \
     d.'/pd-throughput.dat' using 1:6 with linespoints dt 2 title 'cloud-only: completed', \
     d.'/pd-throughput.dat' using 1:7 with linespoints dt 2 title 'pd: completed'
