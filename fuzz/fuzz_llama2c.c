/* libFuzzer target for the llama2.c importers: the first byte picks the parser (even: tokenizer.bin,
 * odd: checkpoint, converted with the real stories260K vocabulary), the rest is the file. The parsers take
 * paths, so the input is handed over as a memory file. Run from the repository root:
 *   build-fuzz/fuzz_llama2c -max_total_time=60 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/gguf.h"
#include "engine/llama2c.h"

static char out_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (!out_path[0]) {
        char dir[] = "/tmp/fuzz_llama2c.XXXXXX";
        if (!mkdtemp(dir)) abort();
        snprintf(out_path, sizeof out_path, "%s/out.gguf", dir);
    }
    int fd = memfd_create("input", 0);
    if (fd < 0) abort();
    if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) abort();
    char path[64], err[512];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    if (data[0] % 2 == 0) {
        gguf_writer *w = gguf_writer_init();
        llama2c_add_vocab(w, path, 0, NULL, err, sizeof err);
        gguf_writer_free(w);
    } else {
        llama2c_convert(path, "tests/data/tok512.bin", out_path, 0, NULL, NULL, NULL, err, sizeof err);
    }
    close(fd);
    return 0;
}
