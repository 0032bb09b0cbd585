/* mapfile.h: a whole file mapped read-only (the model, checkpoints, vocabularies). */
#ifndef DUET_BASE_MAPFILE_H
#define DUET_BASE_MAPFILE_H

#include <stddef.h>
#include <stdint.h>

typedef struct mapfile {
    const uint8_t *p;
    size_t len;
} mapfile;

/* Maps path; empty and non-regular files are refused with a message naming path. 0 ok, < 0 error. */
int mapfile_open(const char *path, mapfile *m, char *err, size_t errlen);
/* Unmaps (a zeroed mapfile is fine). */
void mapfile_close(mapfile *m);

#endif
