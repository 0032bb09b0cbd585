#include "base/mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/err.h"
#include "duet.h"

int mapfile_open(const char *path, mapfile *m, char *err, size_t errlen) {
    m->p = NULL;
    m->len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(err, errlen, DUET_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size == 0) {
        close(fd);
        return err_set(err, errlen, DUET_EFORMAT, "%s: empty or not a regular file", path);
    }
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return err_set(err, errlen, DUET_EIO, "%s: mmap failed: %s", path, strerror(errno));
    m->p = p;
    m->len = (size_t)st.st_size;
    return DUET_OK;
}

void mapfile_close(mapfile *m) {
    if (m->p) munmap((void *)m->p, m->len);
    m->p = NULL;
    m->len = 0;
}
