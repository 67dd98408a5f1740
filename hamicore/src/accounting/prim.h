/* prim.h - the OS boundary of the accounting core: glibc's own dlsym (never an
 * interposed one), process start times and liveness from /proc. */
#ifndef HAMI_PRIM_H
#define HAMI_PRIM_H

#include <stdint.h>
#include <sys/types.h>

/* glibc's dlsym, resolved with dlvsym so that an exported dlsym hook is bypassed. */
void *hami_real_dlsym(void *handle, const char *name);

/* Field 22 of /proc/<pid>/stat (clock ticks after boot); 0 when unreadable. */
uint64_t hami_proc_start_time(pid_t pid);

/* 1 when a process with this pid exists, is not a zombie and started at start_time. */
int hami_proc_is_alive(pid_t pid, uint64_t start_time);

#endif
