/* Test reader: keeps loading and reading a library while the installer replaces it.
 *
 * usage: reader [--hold|--once] LIBRARY SYMBOL STOP_FILE EXPECTED_FILE...
 *
 * Each iteration reads LIBRARY (following the stable symlink) whole and requires it to be
 * byte-identical to one of the EXPECTED_FILEs (a partial or mixed file fails), then dlopen()s
 * it, calls SYMBOL (int (*)(void)) and dlclose()s it. With --hold the library is dlopen()ed
 * once and kept mapped (a long-running container process). Prints "ready" after the first
 * iteration. Once STOP_FILE exists it runs one last iteration (which therefore starts after
 * whatever the test did before creating it) and prints "iterations=N final=V seen=V:COUNT,...".
 * Exit 0 = never failed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    unsigned char *data;
    size_t size;
} blob;

static int read_whole(const char *path, blob *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0) {
            free(buf);
            close(fd);
            return -1;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    out->data = buf;
    out->size = len;
    return 0;
}

int main(int argc, char **argv) {
    int hold = 0, once = 0, argi = 1;
    if (argi < argc && strcmp(argv[argi], "--hold") == 0) hold = 1, argi++;
    if (argi < argc && strcmp(argv[argi], "--once") == 0) once = 1, argi++;
    if (argc - argi < 4) {
        fprintf(stderr, "usage: reader [--hold|--once] LIBRARY SYMBOL STOP_FILE EXPECTED_FILE...\n");
        return 64;
    }
    const char *lib = argv[argi], *symbol = argv[argi + 1], *stop = argv[argi + 2];
    int nexpected = argc - argi - 3;
    blob *expected = calloc((size_t)nexpected, sizeof(blob));
    for (int i = 0; i < nexpected; i++) {
        if (read_whole(argv[argi + 3 + i], &expected[i]) != 0) {
            fprintf(stderr, "cannot read expected file %s\n", argv[argi + 3 + i]);
            return 64;
        }
    }
    long seen[256] = {0};
    long iterations = 0;
    int last_round = 0, version = -1;
    void *held = NULL;
    int (*held_fn)(void) = NULL;
    if (hold) {
        held = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
        if (!held) {
            printf("FAIL dlopen: %s\n", dlerror());
            return 3;
        }
        held_fn = (int (*)(void))dlsym(held, symbol);
        if (!held_fn) {
            printf("FAIL dlsym: %s\n", dlerror());
            return 4;
        }
    }
    for (;;) {
        blob now;
        if (read_whole(lib, &now) != 0) {
            printf("FAIL open/read %s: %m\n", lib);
            return 2;
        }
        int match = 0;
        for (int i = 0; i < nexpected && !match; i++)
            match = now.size == expected[i].size && memcmp(now.data, expected[i].data, now.size) == 0;
        free(now.data);
        if (!match) {
            printf("FAIL content of %s matches no expected file (size %zu)\n", lib, now.size);
            return 2;
        }
        if (hold) {
            version = held_fn();
        } else {
            void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                printf("FAIL dlopen: %s\n", dlerror());
                return 3;
            }
            int (*fn)(void) = (int (*)(void))dlsym(h, symbol);
            if (!fn) {
                printf("FAIL dlsym: %s\n", dlerror());
                return 4;
            }
            version = fn();
            dlclose(h);
        }
        seen[version & 255]++;
        if (++iterations == 1) {
            printf("ready\n");
            fflush(stdout);
        }
        if (once || last_round) break;
        last_round = access(stop, F_OK) == 0;
    }
    printf("iterations=%ld final=%d seen=", iterations, version);
    for (int v = 0; v < 256; v++)
        if (seen[v]) printf("%d:%ld,", v, seen[v]);
    printf("\n");
    return 0;
}
