/* region.c - creates/attaches the shared accounting file, registers process
 * slots with a CAS, reclaims slots of dead processes (SIGKILL included), and
 * fails closed: when a limit is configured and the region cannot be opened,
 * mapped, locked, or has another major layout, allocations are refused.
 * Nothing here runs on a hot path. */
#define _GNU_SOURCE
#include "region.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "prim.h"
#include "spec_layout.h"

/* What a slot says of the library that claimed it (0 = 1.1, as that version wrote). */
#if HAMI_REGION_VERSION_MINOR >= 2
#define HAMI_SLOT_LIB_VERSION ((HAMI_REGION_VERSION_MAJOR << 16) | HAMI_REGION_VERSION_MINOR)
#else
#define HAMI_SLOT_LIB_VERSION 0u
#endif

static struct hami_region *g_region;
static pthread_once_t g_region_once = PTHREAD_ONCE_INIT;
static _Atomic(struct hami_proc_slot *) g_self_slot;
static _Atomic int g_slot_failed;

static void on_fork_child(void) {
    atomic_store(&g_self_slot, NULL);
    atomic_store(&g_slot_failed, 0);
}

uint64_t hami_enforced_limits[HAMI_MAX_DEVICES];
int hami_enforced_first_foreign = HAMI_MAX_DEVICES;

/* Called in region_init, before the region is published. */
static void copy_enforced(const struct hami_config *c) {
    memcpy(hami_enforced_limits, c->limit_bytes, sizeof hami_enforced_limits);
#if HAMI_REGION_VERSION_MINOR >= 2
    if (c->from_spec) hami_enforced_first_foreign = c->explicit_devices;
#endif
}

#if HAMI_REGION_VERSION_MINOR >= 2
uint32_t hami_enforced_sm_limit(const struct hami_region *r, int dev) {
    (void)r;
    return hami_config_get()->sm_limit[dev];
}
uint32_t hami_enforced_core_policy(const struct hami_region *r) {
    (void)r;
    return hami_config_get()->core_policy;
}
int hami_enforced_task_priority(const struct hami_region *r) {
    (void)r;
    return hami_config_get()->task_priority;
}
#else
uint32_t hami_enforced_sm_limit(const struct hami_region *r, int dev) {
    return r->devices[dev].limiter.sm_limit_percent;
}
uint32_t hami_enforced_core_policy(const struct hami_region *r) { return r->header.core_policy; }
int hami_enforced_task_priority(const struct hami_region *r) { return r->header.task_priority; }
#endif

uint64_t hami_atomic_sub_clamped(_Atomic uint64_t *v, uint64_t amount) {
    uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
    for (;;) {
        uint64_t take = amount < cur ? amount : cur;
        if (atomic_compare_exchange_weak_explicit(v, &cur, cur - take, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return take;
    }
}

static int lock_file(int fd, short type) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    while (fcntl(fd, F_OFD_SETLKW, &fl) != 0) {
        if (errno != EINTR) return -1;
    }
    return 0;
}

static void fill_new_region(struct hami_region *r, const struct hami_config *c) {
    struct hami_region_header *h = &r->header;
    h->version_major = HAMI_REGION_VERSION_MAJOR;
    h->version_minor = HAMI_REGION_VERSION_MINOR;
    h->region_size = sizeof *r;
    h->header_size = sizeof r->header;
    h->device_record_size = sizeof r->devices[0];
    h->slot_size = sizeof r->slots[0];
    h->max_devices = HAMI_MAX_DEVICES;
    h->max_procs = HAMI_MAX_PROCS;
    h->devices_offset = offsetof(struct hami_region, devices);
    h->slots_offset = offsetof(struct hami_region, slots);
    h->task_priority = c->task_priority;
    h->core_policy = c->core_policy;
    atomic_store(&h->utilization_switch, 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    atomic_store(&h->created_unix_ns, (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        r->devices[i].limit_bytes = c->limit_bytes[i];
        r->devices[i].limiter.sm_limit_percent = c->sm_limit[i];
        if (c->uuid_valid[i]) {
            memcpy(r->devices[i].uuid, c->uuid[i], HAMI_UUID_BYTES);
            atomic_store(&r->devices[i].uuid_state, HAMI_UUID_VALID);
        }
    }
    /* Grows as GPUs are discovered (devices.c); per-index limits name devices too. */
    atomic_store(&h->device_count, (uint32_t)c->explicit_devices);
    atomic_store_explicit(&h->magic, HAMI_REGION_MAGIC, memory_order_release);
}

static int header_matches(const struct hami_region *r, char *err, unsigned long errlen) {
    const struct hami_region_header *h = &r->header;
    if (atomic_load_explicit(&h->magic, memory_order_acquire) != HAMI_REGION_MAGIC) {
        snprintf(err, errlen, "bad magic (not a hamicore region, or an old HAMi-core cache file)");
        return 0;
    }
    /* Any minor of our major: minors only give meaning to reserved (zero) bytes, sizes never change. */
    if (h->version_major != HAMI_REGION_VERSION_MAJOR || h->region_size != sizeof *r ||
        h->header_size != sizeof r->header || h->slot_size != sizeof r->slots[0] ||
        h->device_record_size != sizeof r->devices[0] || h->devices_offset != offsetof(struct hami_region, devices) ||
        h->slots_offset != offsetof(struct hami_region, slots)) {
        snprintf(err, errlen, "layout version %u.%u size %llu, this library reads %u.x size %zu",
                 h->version_major, h->version_minor, (unsigned long long)h->region_size,
                 HAMI_REGION_VERSION_MAJOR, sizeof *r);
        return 0;
    }
    return 1;
}

/* The limits written in the region are informational (older libraries read them): a difference is reported
 * once; this process enforces its own configuration. */
static void check_limits(const struct hami_region *r, const struct hami_config *c) {
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        if (r->devices[i].limit_bytes == c->limit_bytes[i]) continue;
        HAMI_WARN("Limit inconsistency detected for device %d: %s says %llu bytes, the shared region %s says "
                  "%llu; enforcing %llu (the region's copy is informational)",
                  i, c->from_spec ? "the device plugin's spec" : "the environment",
                  (unsigned long long)c->limit_bytes[i], c->region_path,
                  (unsigned long long)r->devices[i].limit_bytes, (unsigned long long)c->limit_bytes[i]);
        return;
    }
}

static struct hami_region *attach(const struct hami_config *c, char *why, size_t whylen) {
    const size_t size = sizeof(struct hami_region);
    int created = 0;
    /* Usually the file exists: open it first, create it (exclusively) only when missing. */
    int fd = open(c->region_path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open(c->region_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) {
            created = 1;
            (void)fchmod(fd, 0666); /* all users of the container share it, whatever the umask */
        } else if (errno == EEXIST) {
            fd = open(c->region_path, O_RDWR | O_CLOEXEC);
        }
    }
    if (fd < 0) {
        snprintf(why, whylen, "cannot open it: %s (check that the directory exists and is writable)",
                 strerror(errno));
        return NULL;
    }
    struct stat st;
    struct hami_region *r = NULL;
    char err[256] = "";
    /* Fast path: an initialised file of the right size needs no lock. */
    if (!created && fstat(fd, &st) == 0 && (size_t)st.st_size == size) {
        void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            r = m;
            if (atomic_load_explicit(&r->header.magic, memory_order_acquire) == HAMI_REGION_MAGIC) {
                if (header_matches(r, err, sizeof err)) {
                    close(fd);
                    check_limits(r, c);
                    return r;
                }
            }
            munmap(m, size);
            r = NULL;
        }
    }
    /* Slow path: create or finish creating under an OFD lock (dropped by the kernel if we die). */
    if (lock_file(fd, F_WRLCK) != 0) {
        snprintf(why, whylen, "cannot lock it: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    if (fstat(fd, &st) != 0) goto fail;
    if (st.st_size == 0) {
        if (ftruncate(fd, (off_t)size) != 0) {
            snprintf(err, sizeof err, "ftruncate: %s", strerror(errno));
            goto fail;
        }
    } else if ((size_t)st.st_size != size) {
        snprintf(err, sizeof err, "file size %lld, expected %zu (another version of the library?)",
                 (long long)st.st_size, size);
        goto fail;
    }
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        snprintf(err, sizeof err, "mmap: %s", strerror(errno));
        goto fail;
    }
    r = m;
    if (atomic_load_explicit(&r->header.magic, memory_order_acquire) == 0) {
        fill_new_region(r, c);
    } else if (!header_matches(r, err, sizeof err)) {
        munmap(m, size);
        r = NULL;
        goto fail;
    } else {
        check_limits(r, c);
    }
    lock_file(fd, F_UNLCK);
    close(fd);
    return r;
fail:
    snprintf(why, whylen, "%s", err);
    lock_file(fd, F_UNLCK);
    close(fd);
    return NULL;
}

/* Fail closed: a process-private stand-in region (never shared, so nobody else can change it) keeps every
 * hook working while hami_region_denied makes each reservation fail. */
static struct hami_region g_denied_region;
int hami_region_denied;

static struct hami_region *deny(const struct hami_config *c, const char *why) {
    HAMI_ERROR("memory limits are configured but %s; every device memory allocation of this process is "
               "refused (CUDA_ERROR_OUT_OF_MEMORY) rather than passed through unlimited", why);
    fill_new_region(&g_denied_region, c);
    hami_region_denied = 1;
    return &g_denied_region;
}

static void region_init(void) {
    const struct hami_config *c = hami_config_get();
    if (!c->active) return;
    copy_enforced(c);
    char why[HAMI_PATH_MAX + 640] = "", err[320] = "";
    struct hami_region *r = NULL;
    if (c->spec_refused) {
        snprintf(why, sizeof why, "the device plugin's spec %s is unusable: %s", HAMI_SPEC_PATH, c->spec_error);
    } else if (!c->region_path[0]) {
        snprintf(why, sizeof why, "no accounting region path is usable");
    } else if ((r = attach(c, err, sizeof err)) == NULL) {
        snprintf(why, sizeof why, "the shared region %s is unusable: %s", c->region_path, err);
    }
    if (r) {
        atomic_fetch_add(&r->header.attach_count, 1);
        pthread_atfork(NULL, NULL, on_fork_child);
    } else if (c->enforce) {
        r = deny(c, why);
        pthread_atfork(NULL, NULL, on_fork_child);
    } else {
        HAMI_ERROR("%s; memory usage is not accounted (no limit is configured)", why);
    }
    __atomic_store_n(&g_region, r, __ATOMIC_RELEASE);
}

struct hami_region *hami_region_get(void) {
    struct hami_region *r = __atomic_load_n(&g_region, __ATOMIC_ACQUIRE);
    if (__builtin_expect(r != NULL, 1)) return r;
    pthread_once(&g_region_once, region_init);
    return __atomic_load_n(&g_region, __ATOMIC_ACQUIRE);
}

static struct hami_proc_slot *claim_slot(struct hami_region *r, pid_t pid, uint64_t start) {
    unsigned first = (unsigned)pid % HAMI_MAX_PROCS;
    for (unsigned k = 0; k < HAMI_MAX_PROCS; k++) {
        struct hami_proc_slot *s = &r->slots[(first + k) % HAMI_MAX_PROCS];
        uint32_t expected = HAMI_SLOT_FREE;
        if (atomic_load_explicit(&s->state, memory_order_relaxed) != HAMI_SLOT_FREE) continue;
        if (!atomic_compare_exchange_strong(&s->state, &expected, HAMI_SLOT_CLAIMING)) continue;
        atomic_store(&s->pid, pid);
        atomic_store(&s->start_time, start);
        atomic_store(&s->host_pid, 0);
        atomic_store(&s->lib_version, HAMI_SLOT_LIB_VERSION);
        for (int d = 0; d < HAMI_MAX_DEVICES; d++) atomic_store(&s->used_bytes[d], 0);
#if HAMI_REGION_VERSION_MINOR >= 3
        /* An older library freeing or claiming this slot before left its entries as they were. */
        for (int e = 0; e < HAMI_KIND_ENTRIES; e++) atomic_store(&s->kind_bytes[e], 0);
#endif
        atomic_store_explicit(&s->state, HAMI_SLOT_LIVE, memory_order_release);
        return s;
    }
    return NULL;
}

struct hami_proc_slot *hami_region_self_slot(struct hami_region *r) {
    struct hami_proc_slot *s = atomic_load_explicit(&g_self_slot, memory_order_acquire);
    if (__builtin_expect(s != NULL, 1)) return s;
    if (!r || atomic_load(&g_slot_failed)) return NULL;
    /* Two threads may race here; the loser returns its freshly claimed slot. */
    pid_t pid = getpid();
    uint64_t start = hami_proc_start_time(pid);
    s = claim_slot(r, pid, start);
    if (!s && hami_region_reclaim_dead(r) > 0) s = claim_slot(r, pid, start);
    if (!s) {
        atomic_store(&g_slot_failed, 1);
        HAMI_ERROR("all %d process slots of the shared region are in use; this process's usage is counted "
                   "but cannot be reclaimed if it is killed", HAMI_MAX_PROCS);
        return NULL;
    }
    struct hami_proc_slot *expected = NULL;
    if (!atomic_compare_exchange_strong(&g_self_slot, &expected, s)) {
        atomic_store(&s->pid, 0);
        atomic_store_explicit(&s->state, HAMI_SLOT_FREE, memory_order_release);
        return expected;
    }
    return s;
}

static int reclaim_slot(struct hami_region *r, struct hami_proc_slot *s, int dead) {
    uint32_t expected = HAMI_SLOT_LIVE;
    if (!atomic_compare_exchange_strong(&s->state, &expected, HAMI_SLOT_RECLAIMING)) return 0;
#if HAMI_REGION_VERSION_MINOR >= 3
    /* The split goes first, so it never exceeds what the slot still holds. */
    for (int k = 0; k < HAMI_KIND_ENTRIES; k++) atomic_store(&s->kind_bytes[k], 0);
#endif
    for (int d = 0; d < HAMI_MAX_DEVICES; d++) {
        uint64_t held = atomic_exchange(&s->used_bytes[d], 0);
        if (held) hami_atomic_sub_clamped(&r->devices[d].used_bytes, held);
    }
    atomic_store(&s->pid, 0);
    atomic_store_explicit(&s->state, HAMI_SLOT_FREE, memory_order_release);
    if (dead) atomic_fetch_add(&r->header.reclaim_count, 1);
    return 1;
}

/* A process that exits normally gives its slot back at once (the driver frees its memory too);
 * one killed by a signal is reclaimed by the next process that needs memory. */
__attribute__((destructor)) static void release_own_slot(void) {
    struct hami_proc_slot *s = atomic_load(&g_self_slot);
    struct hami_region *r = __atomic_load_n(&g_region, __ATOMIC_ACQUIRE);
    if (s && r && atomic_load(&s->pid) == (int32_t)getpid()) reclaim_slot(r, s, 0);
}

int hami_region_reclaim_dead(struct hami_region *r) {
    if (!r) return 0;
    int reclaimed = 0;
    pid_t self = getpid();
    for (int i = 0; i < HAMI_MAX_PROCS; i++) {
        struct hami_proc_slot *s = &r->slots[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != HAMI_SLOT_LIVE) continue;
        pid_t pid = atomic_load(&s->pid);
        uint64_t start = atomic_load(&s->start_time);
        if (pid == self && start == hami_proc_start_time(self)) continue;
        if (hami_proc_is_alive(pid, start)) continue;
        if (reclaim_slot(r, s, 1)) {
            reclaimed++;
            HAMI_INFO("reclaimed the slot of dead process %d", (int)pid);
        }
    }
    return reclaimed;
}

#if HAMI_REGION_VERSION_MINOR >= 3
static uint64_t kind_tag(int dev, int kind) {
    return HAMI_KIND_IN_USE | ((uint64_t)(kind & 1) << HAMI_KIND_KIND_SHIFT) |
           ((uint64_t)(dev & 15) << HAMI_KIND_DEVICE_SHIFT);
}

/* Only this process writes its slot's entries (a reclaimer only once it is dead), and the callers serialise
 * their measurements; the CAS loops keep each entry whole all the same. */
int hami_kind_charge(struct hami_region *r, int dev, int kind, uint64_t bytes) {
    if (!r || dev < 0 || dev >= HAMI_MAX_DEVICES || bytes == 0 || hami_region_denied) return 0;
    struct hami_proc_slot *s = hami_region_self_slot(r);
    if (!s) return 0;
    const uint64_t tag = kind_tag(dev, kind);
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < HAMI_KIND_ENTRIES; k++) {
            uint64_t cur = atomic_load_explicit(&s->kind_bytes[k], memory_order_relaxed);
            for (;;) {
                int mine = cur && (cur & ~HAMI_KIND_BYTES_MASK) == tag;
                if (!(pass == 0 ? mine : cur == 0)) break;
                uint64_t held = mine ? cur & HAMI_KIND_BYTES_MASK : 0;
                if (bytes > HAMI_KIND_BYTES_MASK - held) return 0;
                if (atomic_compare_exchange_weak_explicit(&s->kind_bytes[k], &cur, tag | (held + bytes),
                                                          memory_order_release, memory_order_relaxed))
                    return 1;
            }
        }
    }
    static _Atomic int said;
    if (!atomic_exchange(&said, 1))
        HAMI_INFO("this process holds context or module memory on more than %d (device, kind) pairs: the rest is "
                  "reported as buffer memory (it stays charged)", HAMI_KIND_ENTRIES);
    return 0;
}

void hami_kind_release(struct hami_region *r, int dev, int kind, uint64_t bytes) {
    if (!r || dev < 0 || dev >= HAMI_MAX_DEVICES || bytes == 0) return;
    struct hami_proc_slot *s = hami_region_self_slot(r);
    if (!s) return;
    const uint64_t tag = kind_tag(dev, kind);
    for (int k = 0; k < HAMI_KIND_ENTRIES; k++) {
        uint64_t cur = atomic_load_explicit(&s->kind_bytes[k], memory_order_relaxed);
        while (cur && (cur & ~HAMI_KIND_BYTES_MASK) == tag) {
            uint64_t held = cur & HAMI_KIND_BYTES_MASK;
            uint64_t left = held > bytes ? held - bytes : 0;
            if (atomic_compare_exchange_weak_explicit(&s->kind_bytes[k], &cur, left ? tag | left : 0,
                                                      memory_order_release, memory_order_relaxed))
                return;
        }
    }
}
#else
int hami_kind_charge(struct hami_region *r, int dev, int kind, uint64_t bytes) {
    (void)r, (void)dev, (void)kind, (void)bytes;
    return 0;
}
void hami_kind_release(struct hami_region *r, int dev, int kind, uint64_t bytes) {
    (void)r, (void)dev, (void)kind, (void)bytes;
}
#endif

struct hami_region *hami_region_map_file(const char *path, int writable, char *err, unsigned long errlen) {
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size != sizeof(struct hami_region)) {
        snprintf(err, errlen, "%s has %lld bytes, a version %u region has %zu", path,
                 (long long)st.st_size, HAMI_REGION_VERSION_MAJOR, sizeof(struct hami_region));
        close(fd);
        return NULL;
    }
    void *m = mmap(NULL, sizeof(struct hami_region), PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED,
                   fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "mmap %s: %s", path, strerror(errno));
        return NULL;
    }
    if (!header_matches(m, err, errlen)) {
        munmap(m, sizeof(struct hami_region));
        return NULL;
    }
    return m;
}
