/* prim.c - see prim.h. Called only on slow paths (attach, reclaim). */
#define _GNU_SOURCE
#include "prim.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void *(*dlsym_fn)(void *, const char *);
static dlsym_fn g_real_dlsym;
static pthread_once_t g_dlsym_once = PTHREAD_ONCE_INIT;

static void resolve_dlsym(void) {
    /* glibc >= 2.34 carries dlsym in libc (GLIBC_2.34); older ones in libdl. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !g_real_dlsym; i++)
        g_real_dlsym = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!g_real_dlsym) g_real_dlsym = dlsym; /* no versioned dlsym found: the plain one */
}

void *hami_real_dlsym(void *handle, const char *name) {
    pthread_once(&g_dlsym_once, resolve_dlsym);
    return g_real_dlsym(handle, name);
}

/* Reads /proc/<pid>/stat; returns the state letter (0 if unreadable) and the start time. */
static char read_stat(pid_t pid, uint64_t *start_time) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    /* comm (field 2) may contain spaces and ')': fields restart after the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return 0;
    p += 2;
    char state = *p;
    /* p is at field 3; field 22 is 19 fields further. */
    for (int field = 3; field < 22 && *p; field++) {
        p = strchr(p, ' ');
        if (!p) return 0;
        p++;
    }
    *start_time = strtoull(p, NULL, 10);
    return state;
}

uint64_t hami_proc_start_time(pid_t pid) {
    uint64_t t = 0;
    return read_stat(pid, &t) ? t : 0;
}

int hami_proc_is_alive(pid_t pid, uint64_t start_time) {
    if (pid <= 0) return 0;
    if (kill(pid, 0) != 0 && errno == ESRCH) return 0;
    uint64_t t = 0;
    char state = read_stat(pid, &t);
    if (state == 0) {
        /* /proc unreadable (hidepid, foreign namespace): trust kill(2). */
        return kill(pid, 0) == 0 || errno == EPERM;
    }
    if (state == 'Z' || state == 'X' || state == 'x') return 0;
    if (start_time != 0 && t != start_time) return 0; /* the pid was reused */
    return 1;
}
