/* fake_state.c - TEST DOUBLE shared device state (see fake_state.h). */
#define _GNU_SOURCE
#include "fake_state.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct fake_state *g_state;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Atomic(struct fake_proc_state *) g_self;
static _Atomic int g_driver_pid;

static void child_after_fork(void) {
    atomic_store(&g_self, NULL);
    atomic_store(&g_driver_pid, 0);
}

static void map_state(void) {
    const struct fake_config *c = fake_config_get();
    void *m = MAP_FAILED;
    if (c->state_file[0]) {
        int fd = open(c->state_file, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        struct stat st;
        if (fd >= 0 && fstat(fd, &st) == 0) {
            if ((size_t)st.st_size < sizeof(struct fake_state)) {
                if (ftruncate(fd, sizeof(struct fake_state)) != 0) perror("fake-gpu: ftruncate");
            }
            m = mmap(NULL, sizeof(struct fake_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        }
        if (fd >= 0) close(fd);
        if (m == MAP_FAILED)
            fprintf(stderr, "fake-gpu (test double): cannot map FAKE_GPU_STATE_FILE=%s: %s\n", c->state_file,
                    strerror(errno));
    }
    if (m == MAP_FAILED)
        m = mmap(NULL, sizeof(struct fake_state), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    g_state = m == MAP_FAILED ? NULL : m;
    pthread_atfork(NULL, NULL, child_after_fork);
}

struct fake_state *fake_state_get(void) {
    pthread_once(&g_once, map_state);
    return g_state;
}

/* A real driver lives in the kernel and names processes by their host pid, whatever PID namespace they run
 * in. The fake lives in the process: inside a PID namespace it learns its host pid from the host's /proc
 * mounted somewhere in its mount namespace (FAKE_GPU_HOST_PROC; "self" there resolves in the host's PID
 * namespace). */
int fake_driver_pid(void) {
    int pid = atomic_load(&g_driver_pid);
    if (pid) return pid;
    pid = (int)getpid();
    const char *host = fake_config_get()->host_proc;
    if (host[0]) {
        char path[4200], link[32];
        snprintf(path, sizeof path, "%s/self", host);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n > 0) {
            link[n] = '\0';
            pid = atoi(link);
        } else {
            fprintf(stderr, "fake-gpu (test double): cannot read FAKE_GPU_HOST_PROC=%s/self: %s\n", host,
                    strerror(errno));
        }
    }
    atomic_store(&g_driver_pid, pid);
    return pid;
}

int fake_pid_alive(int pid) {
    if (pid <= 0) return 0;
    const char *host = fake_config_get()->host_proc;
    /* Host pids cannot be signalled from inside a PID namespace: the host's /proc alone decides there. */
    if (!host[0] && kill(pid, 0) != 0 && errno == ESRCH) return 0;
    char path[4200], buf[512];
    snprintf(path, sizeof path, "%s/%d/stat", host[0] ? host : "/proc", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return !host[0];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return 1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    return !(p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'));
}

struct fake_proc_state *fake_state_self(void) {
    struct fake_proc_state *self = atomic_load(&g_self);
    if (self) return self;
    struct fake_state *s = fake_state_get();
    if (!s) return NULL;
    int pid = fake_driver_pid();
    for (int pass = 0; pass < 2 && !self; pass++) {
        for (int i = 0; i < FAKE_MAX_PROCS; i++) {
            struct fake_proc_state *p = &s->procs[i];
            int32_t cur = atomic_load(&p->pid);
            /* pass 0: free entries; pass 1: entries of dead processes (the driver frees their memory) */
            if (pass == 0 ? cur != 0 : (cur == 0 || fake_pid_alive(cur))) continue;
            if (!atomic_compare_exchange_strong(&p->pid, &cur, -1)) continue;
            for (int d = 0; d < FAKE_MAX_GPUS; d++) atomic_store(&p->used_bytes[d], 0);
            atomic_store(&p->has_context, 0);
            atomic_store(&p->pid, pid);
            self = p;
            break;
        }
    }
    atomic_store(&g_self, self);
    return self;
}

int fake_state_slot(int gpu) {
    const struct fake_config *c = fake_config_get();
    return gpu >= 0 && gpu < c->count ? c->gpus[gpu].state_slot : gpu;
}

uint64_t fake_state_used(int dev) {
    dev = fake_state_slot(dev);
    struct fake_state *s = fake_state_get();
    if (!s || dev < 0 || dev >= FAKE_MAX_GPUS) return 0;
    uint64_t sum = 0;
    for (int i = 0; i < FAKE_MAX_PROCS; i++) {
        int32_t pid = atomic_load(&s->procs[i].pid);
        if (pid <= 0) continue;
        uint64_t u = atomic_load(&s->procs[i].used_bytes[dev]);
        if (u && fake_pid_alive(pid)) sum += u;
    }
    return sum;
}

uint64_t fake_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t fake_timeline_launch(int dev, uint64_t cost_ns) {
    dev = fake_state_slot(dev);
    struct fake_state *s = fake_state_get();
    if (!s || dev < 0 || dev >= FAKE_MAX_GPUS) return 0;
    struct fake_device_state *d = &s->devices[dev];
    uint64_t now = fake_now_ns();
    uint64_t until = atomic_load(&d->busy_until_ns), start, end;
    do {
        start = until > now ? until : now;
        end = start + cost_ns;
    } while (!atomic_compare_exchange_weak(&d->busy_until_ns, &until, end));
    uint64_t slot = atomic_fetch_add(&d->ring_head, 1) % FAKE_RING;
    struct fake_interval *iv = &d->ring[slot];
    atomic_fetch_add(&iv->seq, 1); /* odd: being written */
    atomic_store(&iv->start_ns, start);
    atomic_store(&iv->end_ns, end);
    atomic_store(&iv->pid, (int32_t)fake_driver_pid());
    atomic_fetch_add(&iv->seq, 1);
    return end;
}

/* Reads interval i stably; 0 when it is empty or being written. */
static int read_interval(struct fake_interval *iv, uint64_t *a, uint64_t *b, int32_t *pid) {
    uint64_t seq = atomic_load(&iv->seq);
    if (seq == 0 || (seq & 1)) return 0;
    *a = atomic_load(&iv->start_ns);
    *b = atomic_load(&iv->end_ns);
    *pid = atomic_load(&iv->pid);
    return atomic_load(&iv->seq) == seq;
}

static uint64_t overlap(uint64_t a, uint64_t b, uint64_t from, uint64_t to) {
    if (a < from) a = from;
    if (b > to) b = to;
    return b > a ? b - a : 0;
}

uint64_t fake_timeline_busy(int dev, uint64_t from, uint64_t to, int pid) {
    dev = fake_state_slot(dev);
    struct fake_state *s = fake_state_get();
    if (!s || dev < 0 || dev >= FAKE_MAX_GPUS || to <= from) return 0;
    struct fake_device_state *d = &s->devices[dev];
    uint64_t busy = 0;
    for (int i = 0; i < FAKE_RING; i++) {
        uint64_t a, b;
        int32_t p;
        if (!read_interval(&d->ring[i], &a, &b, &p) || (pid && p != pid)) continue;
        busy += overlap(a, b, from, to);
    }
    return busy;
}

void fake_timeline_busy_pids(int dev, uint64_t from, uint64_t to, const int *pids, uint64_t *busy, int n) {
    for (int k = 0; k < n; k++) busy[k] = 0;
    dev = fake_state_slot(dev);
    struct fake_state *s = fake_state_get();
    if (!s || dev < 0 || dev >= FAKE_MAX_GPUS || to <= from) return;
    struct fake_device_state *d = &s->devices[dev];
    for (int i = 0; i < FAKE_RING; i++) {
        uint64_t a, b;
        int32_t p;
        if (!read_interval(&d->ring[i], &a, &b, &p)) continue;
        uint64_t o = overlap(a, b, from, to);
        if (!o) continue;
        for (int k = 0; k < n; k++) {
            if (pids[k] == p) {
                busy[k] += o;
                break;
            }
        }
    }
}
