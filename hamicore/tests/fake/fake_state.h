/* fake_state.h - TEST DOUBLE: the simulated devices' state seen by every process.
 *
 * With FAKE_GPU_STATE_FILE set, the state is a shared file mapped by every
 * process using the fakes (so NVML in one process sees memory and kernels of
 * others, like a real driver); otherwise it is private to the process.
 * All-zero bytes are a valid empty state, so no initialisation protocol is needed.
 *
 * Virtual timeline: each device executes kernels one after another, whichever
 * process launched them. A launch costs grid*block*FAKE_KERNEL_NS_PER_THREAD
 * nanoseconds of device time (or, with FAKE_KERNEL_NS_PER_WAVE, its waves: how
 * many times the grid fills every SM, rounded up, times that) and is queued
 * after everything already queued on that device; synchronising waits (in real
 * time) until the launch's end. Utilisation is the busy share of a recent
 * window, per device and per process. The ring keeps the last FAKE_RING
 * intervals per device: windows longer than that many kernels under-count. */
#ifndef FAKE_STATE_H
#define FAKE_STATE_H

#include <stdatomic.h>
#include <stdint.h>

#include "fake_config.h"

#define FAKE_MAX_PROCS 256
#define FAKE_RING 8192

struct fake_interval {
    _Atomic uint64_t seq;      /* even = stable */
    _Atomic uint64_t start_ns, end_ns;
    _Atomic int32_t pid;
};

struct fake_device_state {
    _Atomic uint64_t busy_until_ns;
    _Atomic uint64_t ring_head;
    struct fake_interval ring[FAKE_RING];
};

struct fake_proc_state {
    _Atomic int32_t pid;
    _Atomic uint32_t has_context;            /* bit per device */
    _Atomic uint64_t used_bytes[FAKE_MAX_GPUS];
};

/* MIG (fake_mig.c): every field below the lock is read and written with the lock held. GPU-instance IDs index
 * gi[] (0..14, from the placement); compute-instance IDs index ci[] (0.., lowest free first). Modes: 0 = the
 * configured initial mode (FAKE_GPU_MIG_MODE), 1 = disabled, 2 = enabled, so all-zero bytes stay valid. */
#define FAKE_MIG_MAX_GI 16
#define FAKE_MIG_MAX_CI 8

struct fake_mig_ci {
    uint32_t used, profile, start, size; /* profile: NVML_COMPUTE_INSTANCE_PROFILE_* */
};

struct fake_mig_gi {
    uint32_t used, profile, start, size; /* profile: NVML_GPU_INSTANCE_PROFILE_* (not the profile ID) */
    struct fake_mig_ci ci[FAKE_MIG_MAX_CI];
};

struct fake_mig_device {
    uint32_t mode, pending;
    uint64_t reset_offset;               /* events-file offset past the last "reset" line applied */
    struct fake_mig_gi gi[FAKE_MIG_MAX_GI];
};

struct fake_mig_state {
    _Atomic int32_t lock;                /* 0 or the driver pid of the holder (a dead holder's lock is taken over) */
    struct fake_mig_device devices[FAKE_MAX_GPUS];
};

struct fake_state {
    struct fake_device_state devices[FAKE_MAX_GPUS];
    struct fake_proc_state procs[FAKE_MAX_PROCS];
    struct fake_mig_state mig;
};

struct fake_state *fake_state_get(void);
/* This process's entry (claimed on first use; a fork child claims its own). */
struct fake_proc_state *fake_state_self(void);
/* The shared-state device of fake GPU `gpu` (FAKE_GPU_STATE_SLOTS); every function below takes GPU indexes and
 * maps them itself; direct accesses to fake_proc_state arrays must go through this. */
int fake_state_slot(int gpu);
/* Sum of device memory held by live processes. */
uint64_t fake_state_used(int dev);
uint64_t fake_now_ns(void);
/* Queue a kernel of cost_ns on dev; returns its end time. */
uint64_t fake_timeline_launch(int dev, uint64_t cost_ns);
/* Busy nanoseconds of dev within [from_ns, to_ns), all processes (pid 0) or one. */
uint64_t fake_timeline_busy(int dev, uint64_t from_ns, uint64_t to_ns, int pid);
/* Busy nanoseconds of dev within [from_ns, to_ns) for each of n pids, in one pass over the ring. */
void fake_timeline_busy_pids(int dev, uint64_t from_ns, uint64_t to_ns, const int *pids, uint64_t *busy, int n);
/* Whether a process the driver knows (by host pid) is alive. */
int fake_pid_alive(int pid);
/* This process's pid as the driver knows it: the host pid (see FAKE_GPU_HOST_PROC), getpid() outside a PID
 * namespace. */
int fake_driver_pid(void);

#endif
