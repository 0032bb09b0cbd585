# Plot of make bench-compare (bench/run-compare.sh sets d, the data file, o, the PNG, cpu, the machine, and src,
# where llama.cpp's figures come from): duet's tokens/s over llama.cpp's for each row, prefill and decode side by side.
set terminal pngcairo size 1200,540 font ",10" noenhanced
set output o
set title sprintf("duet / llama.cpp, tokens/s (%s; %s)", cpu, src)
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set datafile missing '-'
set yrange [0:3] # a larger ratio (tiny models' decode) is cut at 3; its label gives the value
set grid ytics
set ylabel 'duet / llama.cpp'
set xtics rotate by -30 left
set rmargin 14
set key outside top center horizontal
set arrow from graph 0, first 1 to graph 1, first 1 nohead lw 2 dt 2 lc rgb 'black'
set arrow from graph 0, first 1.2 to graph 1, first 1.2 nohead lw 1 dt 3 lc rgb 'dark-red'
plot d using 2:xtic(1) title 'prefill', '' using 3 title 'decode', \
     NaN with lines lw 2 dt 2 lc rgb 'black' title 'level with llama.cpp', \
     NaN with lines lw 1 dt 3 lc rgb 'dark-red' title '1.2x (the 4-bit prefill bar)', \
     '' using ($0 - 1.0/6):($2 > 2.8 ? 2.7 : $2):(sprintf("%.2f", $2)) with labels offset 0,0.7 font ",8" notitle, \
     '' using ($0 + 1.0/6):($3 > 2.8 ? 2.7 : $3):(sprintf("%.2f", $3)) with labels offset 0,0.7 font ",8" notitle
