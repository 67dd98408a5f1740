/* fake_mig.c - TEST DOUBLE: MIG in the fake NVML (libnvidia-ml.so.1).
 *
 * What it models, like the real driver: MIG capability by model (fake_mig_profiles.c; other GPUs answer
 * NVML_ERROR_NOT_SUPPORTED), the current and pending MIG mode, GPU instances of the real profiles at their legal
 * placements (memory-slice overlap, per-profile instance counts and the card's compute slices are enforced), compute
 * instances inside them, MIG device handles with "MIG-" UUIDs, and the error codes nvml.h documents:
 *   - a MIG mode change returns NVML_SUCCESS with activationStatus NVML_ERROR_IN_USE while compute processes or GPU
 *     instances are on the GPU (the mode stays pending), NVML_ERROR_RESET_REQUIRED when the GPU is configured to need
 *     a reset (FAKE_NVML_MIG_NEEDS_RESET=1: the pending mode takes effect at a "reset <gpu>" events-file line), and
 *     otherwise takes effect at once (the driver resets the idle GPU itself, as on bare metal);
 *   - instance calls with MIG off: NVML_ERROR_NOT_SUPPORTED; unknown profile or illegal placement:
 *     NVML_ERROR_INVALID_ARGUMENT; overlap, instance count or compute slices exhausted:
 *     NVML_ERROR_INSUFFICIENT_RESOURCES; destroying a GPU instance with compute instances: NVML_ERROR_IN_USE;
 *     handles of destroyed instances: NVML_ERROR_INVALID_ARGUMENT.
 * The state lives in the shared state file (fake_state.h, FAKE_GPU_STATE_FILE), under a cross-process lock, so
 * every process sees the instances another created, and a restarted process sees those created before.
 * Deterministic choices (documented in hamicore/tests/README.md): GPU-instance IDs follow the placement as the
 * driver's do (gi_id_of), compute-instance IDs are the lowest free from 0, nvmlDeviceCreateGpuInstance takes the
 * lowest free legal placement, and a MIG device's UUID is its parent's with the second group replaced by the GPU- and compute-instance IDs
 * (GPU-aaaaaaaa-bbbb-cccc-... -> MIG-aaaaaaaa-GGCC-cccc-...). */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "fake_config.h"
#include "fake_mig_profiles.h"
#include "fake_nvml.h"
#include "fake_state.h"

/* Handles are addresses in these tables, never written: the position names the GPU and instance IDs. */
struct nvmlGpuInstance_st {
    char unused;
};
struct nvmlComputeInstance_st {
    char unused;
};
static struct nvmlGpuInstance_st g_gi_handles[FAKE_MAX_GPUS][FAKE_MIG_MAX_GI];
static struct nvmlComputeInstance_st g_ci_handles[FAKE_MAX_GPUS][FAKE_MIG_MAX_GI][FAKE_MIG_MAX_CI];
static struct nvmlDevice_st g_mig_handles[FAKE_MAX_GPUS][FAKE_MIG_MAX_GI][FAKE_MIG_MAX_CI];

/* ---------------------------------------------------------------- shared state */
static struct fake_mig_state *mig_lock(void) {
    struct fake_state *s = fake_state_get();
    if (!s) return NULL;
    int32_t me = (int32_t)fake_driver_pid();
    for (;;) {
        int32_t cur = 0;
        if (atomic_compare_exchange_strong(&s->mig.lock, &cur, me)) return &s->mig;
        /* A process that died holding the lock (killed mid-call) must not wedge every other one. */
        if (cur != me && !fake_pid_alive(cur) && atomic_compare_exchange_strong(&s->mig.lock, &cur, me))
            return &s->mig;
        struct timespec ts = {0, 20 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void mig_unlock(struct fake_mig_state *m) { atomic_store(&m->lock, 0); }

static struct fake_mig_device *dev_of(struct fake_mig_state *m, int gpu) {
    return &m->devices[fake_state_slot(gpu)];
}

static int mode_current(const struct fake_mig_device *dev, int gpu) {
    return dev->mode ? dev->mode == 2 : fake_config_get()->gpus[gpu].mig_mode;
}

static int mode_pending(const struct fake_mig_device *dev, int gpu) {
    return dev->pending ? dev->pending == 2 : mode_current(dev, gpu);
}

static void clear_instances(struct fake_mig_device *dev) { memset(dev->gi, 0, sizeof dev->gi); }

/* Whether a live process holds a context on the GPU (the driver cannot reset it then). */
static int gpu_has_processes(int gpu) {
    struct fake_state *s = fake_state_get();
    int slot = fake_state_slot(gpu);
    for (int i = 0; s && i < FAKE_MAX_PROCS; i++) {
        int pid = atomic_load(&s->procs[i].pid);
        if (pid > 0 && (atomic_load(&s->procs[i].has_context) & (1u << slot)) && fake_pid_alive(pid)) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- devices and profiles */
static int gpu_index(nvmlDevice_t d) {
    const struct fake_config *c = fake_config_get();
    for (int i = 0; d && i < c->count; i++)
        if (d == fake_nvml_device(i)) return i;
    return -1;
}

static const struct fake_mig_model *model_of(int gpu) { return fake_mig_model_of(fake_config_get()->gpus[gpu].name); }

static const struct fake_mig_profile *profile_by_index(const struct fake_mig_model *m, unsigned index) {
    for (unsigned i = 0; i < m->nprofiles; i++)
        if (m->profiles[i].index == index) return &m->profiles[i];
    return NULL;
}

static const struct fake_mig_profile *profile_by_id(const struct fake_mig_model *m, unsigned id) {
    for (unsigned i = 0; i < m->nprofiles; i++)
        if (m->profiles[i].id == id) return &m->profiles[i];
    return NULL;
}

#define MIG_GPU(d, gpu, model)                                                                              \
    if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;                                          \
    int gpu = gpu_index(d);                                                                                 \
    if (gpu < 0) return NVML_ERROR_INVALID_ARGUMENT;                                                        \
    const struct fake_mig_model *model = model_of(gpu);                                                     \
    if (!model) return NVML_ERROR_NOT_SUPPORTED

#define LOCK_OR_FAIL(m)                                                                                     \
    struct fake_mig_state *m = mig_lock();                                                                  \
    if (!m) return NVML_ERROR_UNKNOWN

/* Memory slices taken by the GPU instances, and their compute slices. */
static unsigned occupied(const struct fake_mig_device *dev, const struct fake_mig_model *model, unsigned *compute) {
    unsigned mask = 0;
    *compute = 0;
    for (int i = 0; i < FAKE_MIG_MAX_GI; i++) {
        const struct fake_mig_gi *gi = &dev->gi[i];
        if (!gi->used) continue;
        mask |= ((1u << gi->size) - 1u) << gi->start;
        const struct fake_mig_profile *p = profile_by_index(model, gi->profile);
        *compute += p ? p->slices : 0;
    }
    return mask;
}

static unsigned instances_of(const struct fake_mig_device *dev, unsigned index) {
    unsigned n = 0;
    for (int i = 0; i < FAKE_MIG_MAX_GI; i++) n += dev->gi[i].used && dev->gi[i].profile == index;
    return n;
}

static int legal_start(const struct fake_mig_profile *p, unsigned start) {
    for (unsigned i = 0; i < p->nstarts; i++)
        if (p->starts[i] == start) return 1;
    return 0;
}

/* The GPU-instance ID the driver gives a placement: its node in a binary tree over the memory slices (0: the whole
 * card; 1, 2: halves; 3..6: quarters; 7..14: eighths), as `nvidia-smi mig -lgi` shows on an A100 (4g.20gb at 0:4 is
 * ID 1, 2g.10gb at 4:2 ID 5, 1g.5gb at 6:1 ID 13). A 3g.20gb (four memory slices) at 4 is ID 2. */
static unsigned gi_id_of(const struct fake_mig_model *model, unsigned start, unsigned size) {
    unsigned parts = model->memory_slices / size; /* 1, 2, 4 or 8 instances of this size side by side */
    return parts - 1u + start / size;
}

/* Creates a GPU instance of p at `start` (-1: the lowest free legal placement); its ID in *id. */
static nvmlReturn_t create_gi(struct fake_mig_device *dev, const struct fake_mig_model *model,
                              const struct fake_mig_profile *p, long start, unsigned *id) {
    if (start >= 0 && !legal_start(p, (unsigned)start)) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned compute, mask = occupied(dev, model, &compute);
    if (instances_of(dev, p->index) >= p->count || compute + p->slices > model->compute_slices)
        return NVML_ERROR_INSUFFICIENT_RESOURCES;
    long chosen = -1;
    for (unsigned i = 0; i < p->nstarts && chosen < 0; i++) {
        unsigned s = p->starts[i];
        if (start >= 0 && s != (unsigned)start) continue;
        if (!(mask & (((1u << p->size) - 1u) << s))) chosen = s;
    }
    if (chosen < 0) return NVML_ERROR_INSUFFICIENT_RESOURCES;
    unsigned i = gi_id_of(model, (unsigned)chosen, p->size);
    if (i >= FAKE_MIG_MAX_GI || dev->gi[i].used) return NVML_ERROR_INSUFFICIENT_RESOURCES;
    dev->gi[i] = (struct fake_mig_gi){.used = 1, .profile = p->index, .start = (uint32_t)chosen, .size = p->size};
    *id = i;
    return NVML_SUCCESS;
}

/* How many more instances of p fit, placing them greedily at their lowest free legal placements. */
static unsigned remaining(const struct fake_mig_device *dev, const struct fake_mig_model *model,
                          const struct fake_mig_profile *p) {
    unsigned compute, mask = occupied(dev, model, &compute), have = instances_of(dev, p->index), n = 0;
    for (unsigned i = 0; i < p->nstarts; i++) {
        unsigned bits = ((1u << p->size) - 1u) << p->starts[i];
        if (have + n >= p->count || compute + p->slices > model->compute_slices) break;
        if (mask & bits) continue;
        mask |= bits;
        compute += p->slices;
        n++;
    }
    return n;
}

/* ---------------------------------------------------------------- MIG mode */
FAKE(nvmlDeviceGetMigMode, (nvmlDevice_t d, unsigned int *current, unsigned int *pending)) {
    MIG_GPU(d, gpu, model);
    (void)model;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    fake_nvml_refresh_health(); /* a "reset" line may have applied a pending mode */
    LOCK_OR_FAIL(m);
    struct fake_mig_device *dev = dev_of(m, gpu);
    *current = (unsigned)mode_current(dev, gpu);
    *pending = (unsigned)mode_pending(dev, gpu);
    mig_unlock(m);
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceSetMigMode, (nvmlDevice_t d, unsigned int mode, nvmlReturn_t *status)) {
    MIG_GPU(d, gpu, model);
    (void)model;
    if (mode > NVML_DEVICE_MIG_ENABLE || !status) return NVML_ERROR_INVALID_ARGUMENT;
    fake_nvml_refresh_health();
    int busy = gpu_has_processes(gpu);
    LOCK_OR_FAIL(m);
    struct fake_mig_device *dev = dev_of(m, gpu);
    int has_instances = 0;
    for (int i = 0; i < FAKE_MIG_MAX_GI; i++) has_instances |= (int)dev->gi[i].used;
    dev->pending = mode + 1u;
    if ((unsigned)mode_current(dev, gpu) == mode) {
        *status = NVML_SUCCESS;
    } else if (busy || has_instances) {
        *status = NVML_ERROR_IN_USE; /* the driver could not unbind or reset the GPU: the mode stays pending */
    } else if (fake_config_get()->gpus[gpu].mig_needs_reset) {
        *status = NVML_ERROR_RESET_REQUIRED;
    } else {
        dev->mode = mode + 1u;
        clear_instances(dev);
        *status = NVML_SUCCESS;
    }
    mig_unlock(m);
    return NVML_SUCCESS;
}

void fake_mig_reset(int gpu, long offset) {
    if (gpu < 0 || gpu >= fake_config_get()->count || !model_of(gpu)) return;
    struct fake_mig_state *m = mig_lock();
    if (!m) return;
    struct fake_mig_device *dev = dev_of(m, gpu);
    /* Every process reads the events file from its start: a reset takes effect once, in whichever reads it first. */
    if ((uint64_t)offset > dev->reset_offset) {
        dev->reset_offset = (uint64_t)offset;
        if (mode_pending(dev, gpu) != mode_current(dev, gpu)) {
            dev->mode = mode_pending(dev, gpu) ? 2u : 1u;
            clear_instances(dev);
        }
    }
    mig_unlock(m);
}

/* Runs `body` with the GPU's state locked when MIG mode is on; NOT_SUPPORTED otherwise. */
#define WITH_MIG_ON(gpu, dev, ...)                                                                         \
    do {                                                                                                    \
        LOCK_OR_FAIL(m_);                                                                                   \
        struct fake_mig_device *dev = dev_of(m_, gpu);                                                      \
        nvmlReturn_t rc_;                                                                                   \
        if (!mode_current(dev, gpu)) rc_ = NVML_ERROR_NOT_SUPPORTED;                                        \
        else {                                                                                              \
            __VA_ARGS__                                                                                     \
        }                                                                                                   \
        mig_unlock(m_);                                                                                     \
        return rc_;                                                                                         \
    } while (0)

/* ---------------------------------------------------------------- GPU-instance profiles */
static void fill_profile(const struct fake_mig_profile *p, nvmlGpuInstanceProfileInfo_t *out) {
    *out = (nvmlGpuInstanceProfileInfo_t){.id = p->id, .isP2pSupported = 0, .sliceCount = p->slices,
                                          .instanceCount = p->count, .multiprocessorCount = p->sm,
                                          .copyEngineCount = p->ce, .decoderCount = p->dec,
                                          .encoderCount = p->enc, .jpegCount = p->jpeg, .ofaCount = p->ofa,
                                          .memorySizeMB = p->memory_mib};
}

/* The versioned structures (v2: version + the v1 fields + name; v3: no isP2pSupported, capabilities at the end). */
static nvmlReturn_t fill_profile_v(const struct fake_mig_profile *p, nvmlGpuInstanceProfileInfo_v2_t *out) {
    nvmlGpuInstanceProfileInfo_t v1;
    fill_profile(p, &v1);
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    snprintf(name, sizeof name, "MIG %s", p->name);
    if (out->version == nvmlGpuInstanceProfileInfo_v2) {
        *out = (nvmlGpuInstanceProfileInfo_v2_t){
            .version = nvmlGpuInstanceProfileInfo_v2, .id = v1.id, .isP2pSupported = v1.isP2pSupported,
            .sliceCount = v1.sliceCount, .instanceCount = v1.instanceCount,
            .multiprocessorCount = v1.multiprocessorCount, .copyEngineCount = v1.copyEngineCount,
            .decoderCount = v1.decoderCount, .encoderCount = v1.encoderCount, .jpegCount = v1.jpegCount,
            .ofaCount = v1.ofaCount, .memorySizeMB = v1.memorySizeMB};
        memcpy(out->name, name, sizeof name);
        return NVML_SUCCESS;
    }
    if (out->version == nvmlGpuInstanceProfileInfo_v3) {
        nvmlGpuInstanceProfileInfo_v3_t *v3 = (nvmlGpuInstanceProfileInfo_v3_t *)out;
        *v3 = (nvmlGpuInstanceProfileInfo_v3_t){
            .version = nvmlGpuInstanceProfileInfo_v3, .id = v1.id, .sliceCount = v1.sliceCount,
            .instanceCount = v1.instanceCount, .multiprocessorCount = v1.multiprocessorCount,
            .copyEngineCount = v1.copyEngineCount, .decoderCount = v1.decoderCount,
            .encoderCount = v1.encoderCount, .jpegCount = v1.jpegCount, .ofaCount = v1.ofaCount,
            .memorySizeMB = v1.memorySizeMB, .capabilities = 0};
        memcpy(v3->name, name, sizeof name);
        return NVML_SUCCESS;
    }
    return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
}

FAKE(nvmlDeviceGetGpuInstanceProfileInfo, (nvmlDevice_t d, unsigned int profile, nvmlGpuInstanceProfileInfo_t *info)) {
    MIG_GPU(d, gpu, model);
    if (!info || profile >= NVML_GPU_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, profile);
        rc_ = p ? NVML_SUCCESS : NVML_ERROR_NOT_SUPPORTED;
        if (p) fill_profile(p, info);
    });
}

FAKE(nvmlDeviceGetGpuInstanceProfileInfoV,
     (nvmlDevice_t d, unsigned int profile, nvmlGpuInstanceProfileInfo_v2_t *info)) {
    MIG_GPU(d, gpu, model);
    if (!info || profile >= NVML_GPU_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, profile);
        rc_ = p ? fill_profile_v(p, info) : NVML_ERROR_NOT_SUPPORTED;
    });
}

FAKE(nvmlDeviceGetGpuInstanceProfileInfoByIdV,
     (nvmlDevice_t d, unsigned int profile_id, nvmlGpuInstanceProfileInfo_v2_t *info)) {
    MIG_GPU(d, gpu, model);
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        (void)dev;
        const struct fake_mig_profile *p = profile_by_id(model, profile_id);
        rc_ = p ? fill_profile_v(p, info) : NVML_ERROR_INVALID_ARGUMENT;
    });
}

/* Every legal placement of the profile, whether or not MIG is on (nvml.h); NULL placements ask for the count. */
FAKE(nvmlDeviceGetGpuInstancePossiblePlacements_v2,
     (nvmlDevice_t d, unsigned int profile_id, nvmlGpuInstancePlacement_t *placements, unsigned int *count)) {
    MIG_GPU(d, gpu, model);
    (void)gpu;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_mig_profile *p = profile_by_id(model, profile_id);
    if (!p) return NVML_ERROR_NOT_SUPPORTED;
    for (unsigned i = 0; placements && i < p->nstarts; i++)
        placements[i] = (nvmlGpuInstancePlacement_t){.start = p->starts[i], .size = p->size};
    *count = p->nstarts;
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetGpuInstancePossiblePlacements,
     (nvmlDevice_t d, unsigned int profile_id, nvmlGpuInstancePlacement_t *placements, unsigned int *count)) {
    return fake_nvmlDeviceGetGpuInstancePossiblePlacements_v2(d, profile_id, placements, count);
}

FAKE(nvmlDeviceGetGpuInstanceRemainingCapacity, (nvmlDevice_t d, unsigned int profile_id, unsigned int *count)) {
    MIG_GPU(d, gpu, model);
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_mig_profile *p = profile_by_id(model, profile_id);
    if (!p) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        *count = remaining(dev, model, p);
        rc_ = NVML_SUCCESS;
    });
}

/* ---------------------------------------------------------------- GPU instances */
static nvmlGpuInstance_t gi_handle(int gpu, unsigned id) { return &g_gi_handles[gpu][id]; }

/* GPU and instance ID of a GPU-instance handle; 0 when it is none of ours. */
static int gi_decode(nvmlGpuInstance_t h, int *gpu, unsigned *id) {
    const struct nvmlGpuInstance_st *base = &g_gi_handles[0][0];
    if (!h || h < base || h >= base + FAKE_MAX_GPUS * FAKE_MIG_MAX_GI) return 0;
    long off = h - base;
    *gpu = (int)(off / FAKE_MIG_MAX_GI);
    *id = (unsigned)(off % FAKE_MIG_MAX_GI);
    return *gpu < fake_config_get()->count && model_of(*gpu);
}

static nvmlReturn_t create(nvmlDevice_t d, unsigned int profile_id, long start, unsigned size,
                           nvmlGpuInstance_t *out) {
    MIG_GPU(d, gpu, model);
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_mig_profile *p = profile_by_id(model, profile_id);
    WITH_MIG_ON(gpu, dev, {
        unsigned id = 0;
        if (!p || (start >= 0 && size != p->size)) rc_ = NVML_ERROR_INVALID_ARGUMENT;
        else rc_ = create_gi(dev, model, p, start, &id);
        if (rc_ == NVML_SUCCESS) *out = gi_handle(gpu, id);
    });
}

FAKE(nvmlDeviceCreateGpuInstance, (nvmlDevice_t d, unsigned int profile_id, nvmlGpuInstance_t *gi)) {
    return create(d, profile_id, -1, 0, gi);
}

FAKE(nvmlDeviceCreateGpuInstanceWithPlacement,
     (nvmlDevice_t d, unsigned int profile_id, const nvmlGpuInstancePlacement_t *placement, nvmlGpuInstance_t *gi)) {
    if (!placement) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    return create(d, profile_id, (long)placement->start, placement->size, gi);
}

FAKE(nvmlDeviceGetGpuInstances,
     (nvmlDevice_t d, unsigned int profile_id, nvmlGpuInstance_t *gis, unsigned int *count)) {
    MIG_GPU(d, gpu, model);
    if (!count || !gis) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_mig_profile *p = profile_by_id(model, profile_id);
    if (!p) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        unsigned n = 0;
        for (unsigned i = 0; i < FAKE_MIG_MAX_GI; i++)
            if (dev->gi[i].used && dev->gi[i].profile == p->index) gis[n++] = gi_handle(gpu, i);
        *count = n;
        rc_ = NVML_SUCCESS;
    });
}

FAKE(nvmlDeviceGetGpuInstanceById, (nvmlDevice_t d, unsigned int id, nvmlGpuInstance_t *gi)) {
    MIG_GPU(d, gpu, model);
    (void)model;
    if (!gi || id >= FAKE_MIG_MAX_GI) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        rc_ = dev->gi[id].used ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND;
        if (rc_ == NVML_SUCCESS) *gi = gi_handle(gpu, id);
    });
}

/* Decodes a GPU-instance handle and locks; INVALID_ARGUMENT when it names no live instance. */
#define WITH_GI(h, gpu, id, model, dev, gi, ...)                                                           \
    do {                                                                                                    \
        if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;                                      \
        int gpu;                                                                                            \
        unsigned id;                                                                                        \
        if (!gi_decode(h, &gpu, &id)) return NVML_ERROR_INVALID_ARGUMENT;                                   \
        const struct fake_mig_model *model = model_of(gpu);                                                 \
        LOCK_OR_FAIL(m_);                                                                                   \
        struct fake_mig_device *dev = dev_of(m_, gpu);                                                      \
        struct fake_mig_gi *gi = &dev->gi[id];                                                              \
        nvmlReturn_t rc_ = NVML_ERROR_INVALID_ARGUMENT;                                                     \
        if (gi->used && mode_current(dev, gpu)) {                                                           \
            __VA_ARGS__                                                                                     \
        }                                                                                                   \
        mig_unlock(m_);                                                                                     \
        return rc_;                                                                                         \
    } while (0)

FAKE(nvmlGpuInstanceGetInfo, (nvmlGpuInstance_t h, nvmlGpuInstanceInfo_t *info)) {
    if (!info) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, gi->profile);
        *info = (nvmlGpuInstanceInfo_t){.device = fake_nvml_device(gpu), .id = id, .profileId = p ? p->id : 0,
                                        .placement = {.start = gi->start, .size = gi->size}};
        rc_ = NVML_SUCCESS;
    });
}

FAKE(nvmlGpuInstanceDestroy, (nvmlGpuInstance_t h)) {
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)gpu;
        (void)id;
        (void)model;
        (void)dev;
        int cis = 0;
        for (int i = 0; i < FAKE_MIG_MAX_CI; i++) cis |= (int)gi->ci[i].used;
        rc_ = cis ? NVML_ERROR_IN_USE : NVML_SUCCESS;
        if (!cis) memset(gi, 0, sizeof *gi);
    });
}

/* ---------------------------------------------------------------- compute instances */
/* Compute slices of NVML_COMPUTE_INSTANCE_PROFILE_<index> (1, 2, 3, 4, 7 slices); 0 when this double has none. */
static unsigned ci_slices(unsigned index) {
    static const unsigned slices[] = {1, 2, 3, 4, 7};
    return index < sizeof slices / sizeof slices[0] ? slices[index] : 0;
}

/* Whether a GPU instance of g compute slices offers compute instances of c slices (`nvidia-smi mig -lcip`:
 * 1c and 2c in any 2g or larger, 3c in 3g and 7g, 4c in 4g, 7c in 7g). */
static int ci_supported(unsigned g, unsigned c) {
    return c && c <= g && (c <= 2 || c == g || (c == 3 && g == 7));
}

static unsigned ci_starts(unsigned g, unsigned c, unsigned *starts) {
    if (g == 7 && c == 3) {
        starts[0] = 0;
        starts[1] = 4;
        return 2;
    }
    unsigned n = 0;
    for (unsigned s = 0; s + c <= g; s += c) starts[n++] = s;
    return n;
}

static nvmlReturn_t fill_ci_profile(const struct fake_mig_profile *p, unsigned index, unsigned version,
                                    void *out) {
    unsigned c = ci_slices(index);
    if (!ci_supported(p->slices, c)) return NVML_ERROR_NOT_SUPPORTED;
    nvmlComputeInstanceProfileInfo_t v1 = {.id = index, .sliceCount = c, .instanceCount = p->slices / c,
                                           .multiprocessorCount = c == p->slices ? p->sm : p->sm * c / p->slices,
                                           .sharedCopyEngineCount = p->ce, .sharedDecoderCount = p->dec,
                                           .sharedEncoderCount = p->enc, .sharedJpegCount = p->jpeg,
                                           .sharedOfaCount = p->ofa};
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    if (c == p->slices) snprintf(name, sizeof name, "MIG %s", p->name);
    else snprintf(name, sizeof name, "MIG %uc.%s", c, p->name);
    if (version == 1) {
        *(nvmlComputeInstanceProfileInfo_t *)out = v1;
        return NVML_SUCCESS;
    }
    nvmlComputeInstanceProfileInfo_v2_t *v2 = out;
    if (v2->version != nvmlComputeInstanceProfileInfo_v2 && v2->version != nvmlComputeInstanceProfileInfo_v3)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    int is_v3 = v2->version == nvmlComputeInstanceProfileInfo_v3;
    nvmlComputeInstanceProfileInfo_v3_t v3 = {
        .version = is_v3 ? nvmlComputeInstanceProfileInfo_v3 : nvmlComputeInstanceProfileInfo_v2, .id = v1.id,
        .sliceCount = v1.sliceCount, .instanceCount = v1.instanceCount, .multiprocessorCount = v1.multiprocessorCount,
        .sharedCopyEngineCount = v1.sharedCopyEngineCount, .sharedDecoderCount = v1.sharedDecoderCount,
        .sharedEncoderCount = v1.sharedEncoderCount, .sharedJpegCount = v1.sharedJpegCount,
        .sharedOfaCount = v1.sharedOfaCount, .capabilities = 0};
    memcpy(v3.name, name, sizeof name);
    /* v2 is v3 without the trailing capabilities */
    memcpy(out, &v3, is_v3 ? sizeof v3 : sizeof(nvmlComputeInstanceProfileInfo_v2_t));
    return NVML_SUCCESS;
}

static nvmlReturn_t ci_profile_info(nvmlGpuInstance_t h, unsigned profile, unsigned eng, unsigned version,
                                    void *info) {
    if (!info || profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT || eng != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)gpu;
        (void)id;
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, gi->profile);
        rc_ = p ? fill_ci_profile(p, profile, version, info) : NVML_ERROR_UNKNOWN;
    });
}

FAKE(nvmlGpuInstanceGetComputeInstanceProfileInfo,
     (nvmlGpuInstance_t h, unsigned int profile, unsigned int eng, nvmlComputeInstanceProfileInfo_t *info)) {
    return ci_profile_info(h, profile, eng, 1, info);
}

FAKE(nvmlGpuInstanceGetComputeInstanceProfileInfoV,
     (nvmlGpuInstance_t h, unsigned int profile, unsigned int eng, nvmlComputeInstanceProfileInfo_v2_t *info)) {
    return ci_profile_info(h, profile, eng, 2, info);
}

static unsigned ci_mask(const struct fake_mig_gi *gi) {
    unsigned mask = 0;
    for (int i = 0; i < FAKE_MIG_MAX_CI; i++)
        if (gi->ci[i].used) mask |= ((1u << gi->ci[i].size) - 1u) << gi->ci[i].start;
    return mask;
}

static unsigned cis_of(const struct fake_mig_gi *gi, unsigned index) {
    unsigned n = 0;
    for (int i = 0; i < FAKE_MIG_MAX_CI; i++) n += gi->ci[i].used && gi->ci[i].profile == index;
    return n;
}

static nvmlComputeInstance_t ci_handle(int gpu, unsigned gi, unsigned ci) { return &g_ci_handles[gpu][gi][ci]; }

static nvmlReturn_t create_ci(nvmlGpuInstance_t h, unsigned index, long start, unsigned size,
                              nvmlComputeInstance_t *out) {
    if (!out) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, gi->profile);
        unsigned c = ci_slices(index), starts[8], n;
        if (!p || !ci_supported(p->slices, c)) {
            rc_ = index >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT ? NVML_ERROR_INVALID_ARGUMENT
                                                              : NVML_ERROR_NOT_SUPPORTED;
        } else if (start >= 0 && size != c) {
            rc_ = NVML_ERROR_INVALID_ARGUMENT;
        } else {
            n = ci_starts(p->slices, c, starts);
            long chosen = -1;
            int legal = start < 0;
            unsigned mask = ci_mask(gi);
            for (unsigned i = 0; i < n && chosen < 0; i++) {
                if (start >= 0 && starts[i] != (unsigned)start) continue;
                legal = 1;
                if (!(mask & (((1u << c) - 1u) << starts[i]))) chosen = starts[i];
            }
            rc_ = !legal ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_INSUFFICIENT_RESOURCES;
            if (legal && chosen >= 0 && cis_of(gi, index) < p->slices / c) {
                for (unsigned i = 0; i < FAKE_MIG_MAX_CI; i++) {
                    if (gi->ci[i].used) continue;
                    gi->ci[i] = (struct fake_mig_ci){.used = 1, .profile = index, .start = (uint32_t)chosen, .size = c};
                    *out = ci_handle(gpu, id, i);
                    rc_ = NVML_SUCCESS;
                    break;
                }
            }
        }
    });
}

FAKE(nvmlGpuInstanceCreateComputeInstance, (nvmlGpuInstance_t h, unsigned int profile_id, nvmlComputeInstance_t *ci)) {
    return create_ci(h, profile_id, -1, 0, ci);
}

FAKE(nvmlGpuInstanceCreateComputeInstanceWithPlacement,
     (nvmlGpuInstance_t h, unsigned int profile_id, const nvmlComputeInstancePlacement_t *placement,
      nvmlComputeInstance_t *ci)) {
    if (!placement) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    return create_ci(h, profile_id, (long)placement->start, placement->size, ci);
}

FAKE(nvmlGpuInstanceGetComputeInstanceRemainingCapacity,
     (nvmlGpuInstance_t h, unsigned int profile_id, unsigned int *count)) {
    if (!count) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)gpu;
        (void)id;
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, gi->profile);
        unsigned c = ci_slices(profile_id), starts[8], n, left = 0;
        if (!p || !ci_supported(p->slices, c)) {
            rc_ = NVML_ERROR_NOT_SUPPORTED;
        } else {
            n = ci_starts(p->slices, c, starts);
            unsigned mask = ci_mask(gi), have = cis_of(gi, profile_id);
            for (unsigned i = 0; i < n && have + left < p->slices / c; i++) {
                unsigned bits = ((1u << c) - 1u) << starts[i];
                if (mask & bits) continue;
                mask |= bits;
                left++;
            }
            *count = left;
            rc_ = NVML_SUCCESS;
        }
    });
}

FAKE(nvmlGpuInstanceGetComputeInstancePossiblePlacements,
     (nvmlGpuInstance_t h, unsigned int profile_id, nvmlComputeInstancePlacement_t *placements, unsigned int *count)) {
    if (!count) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)gpu;
        (void)id;
        (void)dev;
        const struct fake_mig_profile *p = profile_by_index(model, gi->profile);
        unsigned c = ci_slices(profile_id), starts[8], n;
        if (!p || !ci_supported(p->slices, c)) {
            rc_ = NVML_ERROR_NOT_SUPPORTED;
        } else {
            n = ci_starts(p->slices, c, starts);
            for (unsigned i = 0; placements && i < n; i++)
                placements[i] = (nvmlComputeInstancePlacement_t){.start = starts[i], .size = c};
            *count = n;
            rc_ = NVML_SUCCESS;
        }
    });
}

FAKE(nvmlGpuInstanceGetComputeInstances,
     (nvmlGpuInstance_t h, unsigned int profile_id, nvmlComputeInstance_t *cis, unsigned int *count)) {
    if (!count || !cis) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)model;
        (void)dev;
        unsigned n = 0;
        if (profile_id >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT || !ci_slices(profile_id)) {
            rc_ = NVML_ERROR_NOT_SUPPORTED;
        } else {
            for (unsigned i = 0; i < FAKE_MIG_MAX_CI; i++)
                if (gi->ci[i].used && gi->ci[i].profile == profile_id) cis[n++] = ci_handle(gpu, id, i);
            *count = n;
            rc_ = NVML_SUCCESS;
        }
    });
}

FAKE(nvmlGpuInstanceGetComputeInstanceById, (nvmlGpuInstance_t h, unsigned int ci_id, nvmlComputeInstance_t *ci)) {
    if (!ci || ci_id >= FAKE_MIG_MAX_CI)
        return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_GI(h, gpu, id, model, dev, gi, {
        (void)model;
        (void)dev;
        rc_ = gi->ci[ci_id].used ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND;
        if (rc_ == NVML_SUCCESS) *ci = ci_handle(gpu, id, ci_id);
    });
}

/* GPU, GPU-instance and compute-instance IDs of a compute-instance handle (or of a MIG device handle). */
static int ci_decode(const void *h, const void *base, size_t elem, int *gpu, unsigned *gi, unsigned *ci) {
    const char *p = h, *b = base;
    size_t total = (size_t)FAKE_MAX_GPUS * FAKE_MIG_MAX_GI * FAKE_MIG_MAX_CI;
    if (!p || p < b || p >= b + total * elem) return 0;
    size_t off = (size_t)(p - b) / elem;
    *ci = (unsigned)(off % FAKE_MIG_MAX_CI);
    *gi = (unsigned)(off / FAKE_MIG_MAX_CI % FAKE_MIG_MAX_GI);
    *gpu = (int)(off / FAKE_MIG_MAX_CI / FAKE_MIG_MAX_GI);
    return *gpu < fake_config_get()->count && model_of(*gpu);
}

#define WITH_CI(h, gpu, gid, cid, dev, ...)                                                                \
    do {                                                                                                    \
        if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;                                      \
        int gpu;                                                                                            \
        unsigned gid, cid;                                                                                  \
        if (!ci_decode(h, &g_ci_handles[0][0][0], sizeof(struct nvmlComputeInstance_st), &gpu, &gid, &cid)) \
            return NVML_ERROR_INVALID_ARGUMENT;                                                             \
        LOCK_OR_FAIL(m_);                                                                                   \
        struct fake_mig_device *dev = dev_of(m_, gpu);                                                      \
        nvmlReturn_t rc_ = NVML_ERROR_INVALID_ARGUMENT;                                                     \
        if (mode_current(dev, gpu) && dev->gi[gid].used && dev->gi[gid].ci[cid].used) {                     \
            __VA_ARGS__                                                                                     \
        }                                                                                                   \
        mig_unlock(m_);                                                                                     \
        return rc_;                                                                                         \
    } while (0)

FAKE(nvmlComputeInstanceGetInfo_v2, (nvmlComputeInstance_t h, nvmlComputeInstanceInfo_t *info)) {
    if (!info) return fake_nvml_initialised() ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    WITH_CI(h, gpu, gid, cid, dev, {
        const struct fake_mig_ci *ci = &dev->gi[gid].ci[cid];
        *info = (nvmlComputeInstanceInfo_t){.device = fake_nvml_device(gpu), .gpuInstance = gi_handle(gpu, gid),
                                            .id = cid, .profileId = ci->profile,
                                            .placement = {.start = ci->start, .size = ci->size}};
        rc_ = NVML_SUCCESS;
    });
}

FAKE(nvmlComputeInstanceGetInfo, (nvmlComputeInstance_t h, nvmlComputeInstanceInfo_t *info)) {
    return fake_nvmlComputeInstanceGetInfo_v2(h, info);
}

FAKE(nvmlComputeInstanceDestroy, (nvmlComputeInstance_t h)) {
    WITH_CI(h, gpu, gid, cid, dev, {
        (void)gpu;
        memset(&dev->gi[gid].ci[cid], 0, sizeof dev->gi[gid].ci[cid]);
        rc_ = NVML_SUCCESS;
    });
}

/* ---------------------------------------------------------------- MIG device handles */
static void mig_uuid(int gpu, unsigned gi, unsigned ci, char *out, size_t len) {
    uint8_t b[16];
    memcpy(b, fake_config_get()->gpus[gpu].uuid_bytes, sizeof b);
    b[4] = (uint8_t)gi;
    b[5] = (uint8_t)ci;
    snprintf(out, len, "MIG-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static int mig_decode(nvmlDevice_t d, int *gpu, unsigned *gi, unsigned *ci) {
    return ci_decode(d, &g_mig_handles[0][0][0], sizeof(struct nvmlDevice_st), gpu, gi, ci);
}

static int is_mig_handle(nvmlDevice_t d) {
    const struct nvmlDevice_st *b = &g_mig_handles[0][0][0];
    return d && d >= b && d < b + (size_t)FAKE_MAX_GPUS * FAKE_MIG_MAX_GI * FAKE_MIG_MAX_CI;
}

int fake_mig_device_info(nvmlDevice_t d, int *gpu, unsigned long long *memory_bytes, char *uuid, size_t uuid_len,
                         char *name, size_t name_len) {
    if (!is_mig_handle(d)) return 0;
    unsigned gid, cid;
    if (!mig_decode(d, gpu, &gid, &cid)) return -1;
    struct fake_mig_state *m = mig_lock();
    if (!m) return -1;
    struct fake_mig_device *dev = dev_of(m, *gpu);
    const struct fake_mig_gi *gi = &dev->gi[gid];
    int live = mode_current(dev, *gpu) && gi->used && gi->ci[cid].used;
    const struct fake_mig_profile *p = live ? profile_by_index(model_of(*gpu), gi->profile) : NULL;
    unsigned c = live ? gi->ci[cid].size : 0;
    mig_unlock(m);
    if (!p) return -1;
    *memory_bytes = p->memory_mib << 20;
    mig_uuid(*gpu, gid, cid, uuid, uuid_len);
    const char *parent = fake_config_get()->gpus[*gpu].name;
    if (c == p->slices) snprintf(name, name_len, "%s MIG %s", parent, p->name);
    else snprintf(name, name_len, "%s MIG %uc.%s", parent, c, p->name);
    return 1;
}

nvmlDevice_t fake_mig_find_uuid(const char *uuid) {
    if (strncasecmp(uuid, "MIG-", 4) != 0) return NULL;
    const struct fake_config *c = fake_config_get();
    for (int gpu = 0; gpu < c->count; gpu++) {
        if (!model_of(gpu)) continue;
        struct fake_mig_state *m = mig_lock();
        if (!m) return NULL;
        struct fake_mig_device *dev = dev_of(m, gpu);
        nvmlDevice_t found = NULL;
        for (unsigned g = 0; g < FAKE_MIG_MAX_GI && !found && mode_current(dev, gpu); g++) {
            for (unsigned i = 0; i < FAKE_MIG_MAX_CI && !found; i++) {
                if (!dev->gi[g].used || !dev->gi[g].ci[i].used) continue;
                char text[64];
                mig_uuid(gpu, g, i, text, sizeof text);
                if (strcasecmp(text, uuid) == 0) found = &g_mig_handles[gpu][g][i];
            }
        }
        mig_unlock(m);
        if (found) return found;
    }
    return NULL;
}

FAKE(nvmlDeviceIsMigDeviceHandle, (nvmlDevice_t d, unsigned int *is_mig)) {
    if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;
    if (!is_mig) return NVML_ERROR_INVALID_ARGUMENT;
    if (gpu_index(d) >= 0) {
        *is_mig = 0;
        return NVML_SUCCESS;
    }
    int gpu;
    unsigned gi, ci;
    if (!mig_decode(d, &gpu, &gi, &ci)) return NVML_ERROR_INVALID_ARGUMENT;
    *is_mig = 1;
    return NVML_SUCCESS;
}

/* The IDs of a live MIG device; NOT_SUPPORTED for a whole GPU's handle. */
static nvmlReturn_t mig_ids(nvmlDevice_t d, unsigned *gi_id, unsigned *ci_id, int *parent) {
    if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;
    if (gpu_index(d) >= 0) return NVML_ERROR_NOT_SUPPORTED;
    int gpu;
    unsigned long long mem;
    char uuid[96], name[160];
    if (fake_mig_device_info(d, &gpu, &mem, uuid, sizeof uuid, name, sizeof name) <= 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    mig_decode(d, parent, gi_id, ci_id);
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetGpuInstanceId, (nvmlDevice_t d, unsigned int *id)) {
    unsigned gi, ci;
    int gpu;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = mig_ids(d, &gi, &ci, &gpu);
    if (rc == NVML_SUCCESS) *id = gi;
    return rc;
}

FAKE(nvmlDeviceGetComputeInstanceId, (nvmlDevice_t d, unsigned int *id)) {
    unsigned gi, ci;
    int gpu;
    if (!id) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = mig_ids(d, &gi, &ci, &gpu);
    if (rc == NVML_SUCCESS) *id = ci;
    return rc;
}

FAKE(nvmlDeviceGetDeviceHandleFromMigDeviceHandle, (nvmlDevice_t mig, nvmlDevice_t *d)) {
    unsigned gi, ci;
    int gpu;
    if (!d) return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = mig_ids(mig, &gi, &ci, &gpu);
    if (rc == NVML_ERROR_NOT_SUPPORTED) return NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) *d = fake_nvml_device(gpu);
    return rc;
}

/* The most MIG devices the card can hold (its 1-slice profile's instance count); 0 with MIG off or absent. */
FAKE(nvmlDeviceGetMaxMigDeviceCount, (nvmlDevice_t d, unsigned int *count)) {
    if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;
    int gpu = gpu_index(d);
    if (gpu < 0 || !count) return NVML_ERROR_INVALID_ARGUMENT;
    const struct fake_mig_model *model = model_of(gpu);
    *count = 0;
    if (!model) return NVML_SUCCESS;
    LOCK_OR_FAIL(m);
    if (mode_current(dev_of(m, gpu), gpu)) *count = model->profiles[0].count;
    mig_unlock(m);
    return NVML_SUCCESS;
}

/* MIG devices in order of GPU-instance ID, then compute-instance ID. */
FAKE(nvmlDeviceGetMigDeviceHandleByIndex, (nvmlDevice_t d, unsigned int index, nvmlDevice_t *mig)) {
    MIG_GPU(d, gpu, model);
    if (!mig || index >= model->profiles[0].count) return NVML_ERROR_INVALID_ARGUMENT;
    WITH_MIG_ON(gpu, dev, {
        unsigned n = 0;
        rc_ = NVML_ERROR_NOT_FOUND;
        for (unsigned g = 0; g < FAKE_MIG_MAX_GI && rc_ != NVML_SUCCESS; g++) {
            for (unsigned i = 0; i < FAKE_MIG_MAX_CI && rc_ != NVML_SUCCESS; i++) {
                if (!dev->gi[g].used || !dev->gi[g].ci[i].used) continue;
                if (n++ == index) {
                    *mig = &g_mig_handles[gpu][g][i];
                    rc_ = NVML_SUCCESS;
                }
            }
        }
    });
}
