# duet build. Sources are discovered by folder, so adding a module needs no edit here.
#   make            library + `duet` CLI in $(BUILD)/
#   make test       build and run every test (last line: "N passed, N failed")
#   make asan|ubsan|tsan   the tests under a sanitizer, in build-<name>/
#   make fuzz       libFuzzer targets in build-fuzz/ (run: build-fuzz/fuzz_gguf -max_total_time=60)
#   make bench      engine speed (prefill/decode tok/s, bandwidth) on synthetic shapes
#   make bench-compare   the rows of llama.cpp's reference table, medians of ROUNDS interleaved rounds
#                        (LLAMA_BENCH=path/to/llama-bench runs llama.cpp live beside duet; ROWS=Q4 picks rows)
#   make bench-cloud     one cloud serving 1..32 devices (TLS=1 or TLS=both: over TLS 1.3)
#   make soak       SOAK_MIN minutes (10) of legitimate and hostile devices against one duet cloud process
#   make bench-ee        CE-CoLLM's tables on stories260K -> docs/results/ee.md (+ PNG plots)
#   make bench-pd        pd against device-only and cloud-only: docs/results/pd.md and its plots
CC      ?= gcc
BUILD   ?= build
OPT     ?= -O2 -march=x86-64-v2 -mtune=native
CFLAGS  ?= $(OPT) -g
WARN    := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CPPFLAGS := -Iinclude -Isrc
LDLIBS  := -lssl -lcrypto -lpcre2-8 -lm -lpthread
SAN     ?=

LIB_SRC   := $(sort $(wildcard src/base/*.c src/engine/*.c src/net/*.c src/cloud/*.c src/modes/*.c))
CLI_SRC   := $(sort $(wildcard src/cli/*.c))
TEST_SRC  := $(sort $(wildcard tests/*.c))
BENCH_SRC := $(sort $(wildcard bench/*.c))

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/%.o)
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/%.o)
TEST_OBJ  := $(TEST_SRC:%.c=$(BUILD)/%.o)

.PHONY: all test asan ubsan tsan fuzz bench bench-cloud bench-compare bench-ee bench-hat bench-pd clean demo
all: $(BUILD)/duet $(BUILD)/duet-tests

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(WARN) $(CFLAGS) $(SAN) -MMD -MP -c $< -o $@

$(BUILD)/libduet.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/duet: $(CLI_OBJ) $(BUILD)/libduet.a
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS)

$(BUILD)/duet-tests: $(TEST_OBJ) $(BUILD)/libduet.a
	$(CC) $(CFLAGS) $(SAN) -o $@ $^ $(LDLIBS)

# Tests run from the repository root; they find the CLI through DUET_BIN.
test: $(BUILD)/duet $(BUILD)/duet-tests
	DUET_BIN=$(BUILD)/duet $(BUILD)/duet-tests $(T)

asan:
	$(MAKE) test BUILD=build-asan OPT="-O1 -march=x86-64-v2" SAN="-fsanitize=address -fno-omit-frame-pointer"
ubsan:
	$(MAKE) test BUILD=build-ubsan OPT="-O1 -march=x86-64-v2" SAN="-fsanitize=undefined -fno-sanitize-recover=undefined"
tsan:
	$(MAKE) test BUILD=build-tsan OPT="-O1 -march=x86-64-v2" SAN="-fsanitize=thread" T="$(or $(T),transport frame link server modes pool forward)"

# libFuzzer targets: one per parser of untrusted bytes (fuzz/fuzz_*.c). The library is compiled once for
# all of them; fuzz/halt_on_ub.c makes undefined behaviour stop a run like a crash would.
FUZZ_SRC   := $(sort $(wildcard fuzz/fuzz_*.c))
FUZZ_BIN   := $(FUZZ_SRC:fuzz/%.c=build-fuzz/%)
FUZZ_OBJ   := $(LIB_SRC:%.c=build-fuzz/obj/%.o)
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -O1 -g -march=x86-64-v2 -fsanitize=address,undefined
fuzz: $(FUZZ_BIN)
build-fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@
build-fuzz/libduet.a: $(FUZZ_OBJ)
	@rm -f $@
	ar rcs $@ $^
build-fuzz/%: fuzz/%.c fuzz/halt_on_ub.c build-fuzz/libduet.a
	clang $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer $^ -o $@ -lssl -lcrypto -lpcre2-8 -lm -lpthread

# Benchmarks: each bench/*.c is a standalone program.
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
$(BUILD)/bench/%: bench/%.c $(BUILD)/libduet.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(WARN) $(CFLAGS) -o $@ $^ $(LDLIBS)
bench: $(BUILD)/duet $(BENCH_BIN)
	sh bench/run-engine.sh $(BUILD)
bench-cloud: $(BUILD)/duet $(BENCH_BIN)
	sh bench/run-cloud.sh $(BUILD)
bench-ee: $(BUILD)/duet $(BENCH_BIN)
	sh scripts/install-deps.sh bench
	sh bench/run-ee.sh $(BUILD)
bench-compare: $(BUILD)/duet $(BENCH_BIN)
	sh bench/run-compare.sh $(BUILD)
bench-pd: $(BUILD)/duet $(BENCH_BIN)
	sh bench/run-pd.sh $(BUILD)

# The README's demo: a story from the shipped model, then the three baselines under the wan profile.
demo: $(BUILD)/duet
	$(BUILD)/duet generate -m models/stories260K.gguf -p "Once upon a time" -n 120
	@for m in device cloud split; do \
	    echo; echo "== duet run --mode $$m --link wan (50/20 Mbit/s, 40 ms RTT), in-process cloud on loopback"; \
	    $(BUILD)/duet run --mode $$m -m models/stories260K.gguf -p "Once upon a time" -n 64 --link wan --compare || exit 1; \
	done

clean:
	rm -rf build build-asan build-ubsan build-tsan build-fuzz

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(FUZZ_OBJ:.o=.d)

# HAT against the baselines (decode on stories260K, prefill chunking on the mid shape): docs/results/hat.md + PNGs.
bench-hat: $(BUILD)/duet
	sh bench/run-hat.sh $(BUILD)

# make soak: SOAK_MIN minutes (default 10) of legitimate and hostile devices against one `duet cloud` process
# on loopback (bench/soak.c): exact outputs, refusals by reason, RSS/threads/fds back to idle, SIGTERM <= 2 s.
SOAK_MIN ?= 10
.PHONY: soak
soak: $(BUILD)/duet $(BUILD)/bench/soak
	$(BUILD)/bench/soak $(BUILD)/duet models/stories260K.gguf -t $(SOAK_MIN)

# make report: every mode and auto across links, device slowdowns and prompt lengths, decisions replayed from
# stories260K traces: docs/RESULTS.md and docs/results/report-*.png (about 45 min on 2 cores; QUICK=1: minutes).
.PHONY: report
report: $(BUILD)/duet
	sh scripts/install-deps.sh bench
	sh bench/run-report.sh $(BUILD)
