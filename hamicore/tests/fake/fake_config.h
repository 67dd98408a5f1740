/* fake_config.h - TEST DOUBLE: the simulated GPUs shared by the fake libcuda.so.1
 * and the fake libnvidia-ml.so.1. Configured by environment variables, or by
 * KEY=VALUE lines in the file named by FAKE_NVML_CONFIG (environment wins).
 * See hamicore/tests/README.md for every key. */
#ifndef FAKE_CONFIG_H
#define FAKE_CONFIG_H

#include <stdint.h>

#define FAKE_MAX_GPUS 16

/* FAKE_GPU_TOPOLOGY: how the GPUs are interconnected (fake_topology.c). */
enum fake_topology {
    FAKE_TOPOLOGY_NONE,     /* unset: no NVLink; PCIe common ancestor by NUMA node only */
    FAKE_TOPOLOGY_NVSWITCH, /* DGX-style: every NVLink of every GPU goes to an NVSwitch (all-to-all) */
    FAKE_TOPOLOGY_RING,     /* each GPU has FAKE_GPU_NVLINKS links to each of its two neighbours */
    FAKE_TOPOLOGY_PCIE,     /* no NVLink: pairs under PCIe switches, NUMA nodes under their own host bridge */
};

struct fake_gpu {
    char uuid[96];
    uint8_t uuid_bytes[16];
    char name[96];
    char serial[32];
    char pci_bus_id[32];     /* "00000000:81:00.0" */
    unsigned pci_domain, pci_bus, pci_device;
    unsigned pci_device_id;  /* (device << 16) | vendor */
    uint64_t memory_bytes;
    uint64_t context_bytes;  /* device memory a context costs (FAKE_GPU_CONTEXT_MIB) */
    unsigned sm_count;
    int numa_node;
    unsigned minor;
    int cc_major, cc_minor;
    unsigned architecture;
    int state_slot;          /* this GPU's device in the shared state (FAKE_GPU_STATE_SLOTS; default: its index) */
    int mig_mode;            /* FAKE_GPU_MIG_MODE: MIG mode at power-on (0 / 1) */
    int mig_needs_reset;     /* FAKE_NVML_MIG_NEEDS_RESET: a MIG mode change waits for a "reset <gpu>" event line */
};

struct fake_config {
    int count;
    struct fake_gpu gpus[FAKE_MAX_GPUS];
    char driver_version[32];
    int cuda_version;                 /* e.g. 13000 */
    char events_file[4096];           /* FAKE_NVML_EVENTS_FILE ("" = none) */
    char state_file[4096];            /* FAKE_GPU_STATE_FILE ("" = per-process state) */
    char host_proc[4096];             /* FAKE_GPU_HOST_PROC: the host's /proc as this process sees it ("" = /proc) */
    double ns_per_thread;             /* virtual device time per launched thread */
    double ns_per_wave;               /* > 0: a kernel costs its waves (full occupancies) x this instead */
    double graph_ns;                  /* device time of one cuGraphLaunch (0 = one wave of the device) */
    unsigned max_threads_per_sm;
    unsigned util_window_ms;
    unsigned sample_period_ms;        /* FAKE_NVML_SAMPLE_PERIOD_MS: NVML's utilisation sample period (0 = exact) */
    unsigned sample_lag_ms;           /* FAKE_NVML_SAMPLE_LAG_MS: a sample is published this long after its period */
    int util_noise_pct;               /* FAKE_NVML_UTIL_NOISE_PCT: +- points on every utilisation reading */
    int process_util_supported;       /* FAKE_NVML_PROCESS_UTILIZATION=not_supported: NVML_ERROR_NOT_SUPPORTED */
    int device_util_supported;        /* FAKE_NVML_DEVICE_UTILIZATION=not_supported: likewise */
    int procaddr_internal_percent;
    enum fake_topology topology;      /* FAKE_GPU_TOPOLOGY: none | nvswitch | ring | pcie */
    unsigned ring_nvlinks;            /* FAKE_GPU_NVLINKS: links to each ring neighbour (default 4) */
    unsigned pitch_alignment;
    uint64_t module_bytes;            /* FAKE_MODULE_KIB: device memory a loaded module costs */         /* FAKE_GPU_PITCH_ALIGNMENT: cuMemAllocPitch rounds rows up to this */    /* FAKE_PROCADDR_INTERNAL_PERCENT: entries cuGetProcAddress hands out internally */
};

const struct fake_config *fake_config_get(void);
/* Index of the GPU named by a decimal index, a full UUID or a UUID prefix; -1 if none. */
int fake_config_find(const char *text);

#endif
