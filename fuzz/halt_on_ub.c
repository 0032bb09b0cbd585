/* Linked into every fuzz target: undefined behaviour ends the run with an artifact, like a crash. Compiling
 * with -fno-sanitize-recover=undefined would do the same, but makes clang take over ten minutes on quant.c. */
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void) { return "halt_on_error=1:print_stacktrace=1"; }
