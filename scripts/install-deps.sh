#!/bin/sh
# Installs the Debian packages duet needs to build and test (gcc, make; clang for `make fuzz`).
# Does nothing when they are already there, so it is cheap to run before every build.
set -e
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc"
command -v make >/dev/null 2>&1 || need="$need make"
command -v clang >/dev/null 2>&1 || need="$need clang"
command -v jq >/dev/null 2>&1 || need="$need jq"           # make bench-hat reads its JSON lines
command -v gnuplot >/dev/null 2>&1 || need="$need gnuplot" # and plots them
[ -z "$need" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing:$need; run as root or: sudo apt-get install$need" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
