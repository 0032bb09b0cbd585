#!/bin/sh
# Installs the Debian packages duet needs to build and test (gcc, make; clang for `make fuzz`;
# libpcre2-dev for the byte-level BPE pre-tokenizer regexes, which need Unicode classes and lookahead;
# libssl-dev for the cloud's TLS 1.3, and the openssl tool with which the tests make their certificates).
# `install-deps.sh bench` adds gnuplot-nox, which draws the benchmarks' plots, and jq (make bench-hat reads its JSON lines).
# Does nothing when they are already there, so it is cheap to run before every build.
set -e
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
command -v clang >/dev/null 2>&1 || need="$need clang"
[ -f /usr/include/pcre2.h ] || need="$need libpcre2-dev"
[ -f /usr/include/openssl/ssl.h ] || need="$need libssl-dev"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
[ "${1:-}" = bench ] && ! command -v gnuplot >/dev/null 2>&1 && need="$need gnuplot-nox"
[ "${1:-}" = bench ] && ! command -v jq >/dev/null 2>&1 && need="$need jq" # make bench-hat reads its JSON lines
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing:$need; run as root or: sudo apt-get install$need" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
