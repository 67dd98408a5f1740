/* fake_topology.c - TEST DOUBLE of NVML's interconnect queries: PCIe common ancestors, P2P status, NVLink
 * (state, version, remote PCI info and device type per link) and CPU affinity.
 *
 * FAKE_GPU_TOPOLOGY selects the machine (hamicore/tests/README.md, "Topology"):
 *   nvswitch  DGX/HGX-style: every NVLink port of every GPU goes to one of the NVSwitch chips, so every pair
 *             talks over all its links (H100: NVLink 4 x18 over 4 switches; A100: NVLink 3 x12 over 6);
 *             PCIe: the GPUs of a NUMA node meet at the CPU (NODE), the two halves across it (SYSTEM).
 *   ring      each GPU has FAKE_GPU_NVLINKS links (default 4) to each of its two neighbours (i-1, i+1 mod n; one
 *             neighbour with 2x the links when there are two GPUs); PCIe: pairs under a switch (SINGLE), a NUMA
 *             node's switches under one upper switch (MULTIPLE), across NUMA nodes SYSTEM.
 *   pcie      no NVLink (NOT_SUPPORTED, like PCIe cards): pairs under a PCIe switch (SINGLE), a NUMA node's switches
 *             under its host bridge (HOSTBRIDGE), across NUMA nodes SYSTEM.
 *   unset     no NVLink; common ancestor HOSTBRIDGE within a NUMA node, SYSTEM across (the double's old answer).
 * With a topology the first half of the GPUs is on NUMA node 0 and the second on node 1 (FAKE_GPU_NUMA_NODES
 * overrides); "pairs" are GPUs 2k and 2k+1 on the same NUMA node.
 *
 * The NVLink port count and version follow the model's generation (compute capability 9.x: NVLink 4, 18 ports;
 * 8.x: NVLink 3, 12 ports; older: NVLink 2, 6 ports). Like the real driver: a link index past the card's ports is
 * NOT_SUPPORTED below NVML_NVLINK_MAX_LINKS and INVALID_ARGUMENT from there; an unconnected port reads
 * NVML_FEATURE_DISABLED and its remote queries NOT_SUPPORTED. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include "fake_config.h"
#include "fake_nvml.h"

#define CPUS_PER_NUMA_NODE 32u /* the CPUs of NUMA node k are k*32 .. k*32+31 */

/* What one NVLink port of a GPU reaches. */
struct port {
    int active;
    int peer;   /* GPU index, or -1: an NVSwitch */
    int nvswitch;
};

static unsigned port_count(const struct fake_gpu *g) { return g->cc_major >= 9 ? 18u : g->cc_major == 8 ? 12u : 6u; }

static unsigned nvlink_version(const struct fake_gpu *g) {
    return g->cc_major >= 9 ? NVML_NVLINK_VERSION_4_0 : g->cc_major == 8 ? NVML_NVLINK_VERSION_3_0 : NVML_NVLINK_VERSION_2_0;
}

static int has_nvlink(const struct fake_config *c) {
    return c->topology == FAKE_TOPOLOGY_NVSWITCH || c->topology == FAKE_TOPOLOGY_RING;
}

static int index_of(const struct fake_gpu *g) { return (int)(g - fake_config_get()->gpus); }

static struct port port_of(const struct fake_gpu *g, unsigned link) {
    const struct fake_config *c = fake_config_get();
    struct port p = {0, -1, -1};
    unsigned ports = port_count(g);
    if (c->topology == FAKE_TOPOLOGY_NVSWITCH) {
        unsigned switches = g->cc_major >= 9 ? 4u : 6u;
        p.active = 1;
        p.nvswitch = (int)(link * switches / ports);
        return p;
    }
    if (c->topology != FAKE_TOPOLOGY_RING || c->count < 2) return p;
    unsigned per = c->ring_nvlinks * 2 > ports ? ports / 2 : c->ring_nvlinks;
    int i = index_of(g), n = c->count;
    if (link < per) p.peer = (i + 1) % n;
    else if (link < 2 * per) p.peer = (i + n - 1) % n;
    p.active = p.peer >= 0;
    return p;
}

/* NVLink ports of a that reach b directly (a ring; an NVSwitch port reaches no GPU directly). */
static unsigned direct_links(const struct fake_gpu *a, const struct fake_gpu *b) {
    unsigned n = 0;
    for (unsigned l = 0; l < port_count(a); l++) {
        struct port p = port_of(a, l);
        n += p.active && p.peer == index_of(b);
    }
    return n;
}

static int nvlinked(const struct fake_gpu *a, const struct fake_gpu *b) {
    const struct fake_config *c = fake_config_get();
    return c->topology == FAKE_TOPOLOGY_NVSWITCH || (c->topology == FAKE_TOPOLOGY_RING && direct_links(a, b) > 0);
}

static nvmlGpuTopologyLevel_t common_ancestor(const struct fake_gpu *a, const struct fake_gpu *b) {
    const struct fake_config *c = fake_config_get();
    if (a == b) return NVML_TOPOLOGY_INTERNAL;
    int same_node = a->numa_node == b->numa_node;
    int pair = same_node && index_of(a) / 2 == index_of(b) / 2;
    switch (c->topology) {
    case FAKE_TOPOLOGY_NVSWITCH: return same_node ? NVML_TOPOLOGY_NODE : NVML_TOPOLOGY_SYSTEM;
    case FAKE_TOPOLOGY_RING:
        return pair ? NVML_TOPOLOGY_SINGLE : same_node ? NVML_TOPOLOGY_MULTIPLE : NVML_TOPOLOGY_SYSTEM;
    case FAKE_TOPOLOGY_PCIE:
        return pair ? NVML_TOPOLOGY_SINGLE : same_node ? NVML_TOPOLOGY_HOSTBRIDGE : NVML_TOPOLOGY_SYSTEM;
    case FAKE_TOPOLOGY_NONE: break;
    }
    return same_node ? NVML_TOPOLOGY_HOSTBRIDGE : NVML_TOPOLOGY_SYSTEM;
}

#define REQUIRE_GPU(d, g)                                                                                     \
    if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;                                           \
    const struct fake_gpu *g = fake_nvml_gpu(d);                                                             \
    if (!g) return NVML_ERROR_INVALID_ARGUMENT

FAKE(nvmlDeviceGetTopologyCommonAncestor, (nvmlDevice_t a, nvmlDevice_t b, nvmlGpuTopologyLevel_t *level)) {
    REQUIRE_GPU(a, ga);
    const struct fake_gpu *gb = fake_nvml_gpu(b);
    if (!gb || !level) return NVML_ERROR_INVALID_ARGUMENT;
    *level = common_ancestor(ga, gb);
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetP2PStatus, (nvmlDevice_t a, nvmlDevice_t b, nvmlGpuP2PCapsIndex_t index, nvmlGpuP2PStatus_t *status)) {
    REQUIRE_GPU(a, ga);
    const struct fake_gpu *gb = fake_nvml_gpu(b);
    if (!gb || ga == gb || !status || (unsigned)index >= NVML_P2P_CAPS_INDEX_UNKNOWN) return NVML_ERROR_INVALID_ARGUMENT;
    int nvlink = nvlinked(ga, gb), same_node = ga->numa_node == gb->numa_node;
    switch (index) {
    case NVML_P2P_CAPS_INDEX_NVLINK: *status = nvlink ? NVML_P2P_STATUS_OK : NVML_P2P_STATUS_NOT_SUPPORTED; break;
    case NVML_P2P_CAPS_INDEX_ATOMICS: *status = nvlink ? NVML_P2P_STATUS_OK : NVML_P2P_STATUS_NOT_SUPPORTED; break;
    case NVML_P2P_CAPS_INDEX_PCI: *status = same_node ? NVML_P2P_STATUS_OK : NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED; break;
    default: /* read / write: over NVLink, else PCIe P2P within a NUMA node only (the CPU interconnect refuses it) */
        *status = nvlink || same_node ? NVML_P2P_STATUS_OK : NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED;
    }
    return NVML_SUCCESS;
}

/* The port `link` of a GPU with NVLink, or the error the driver answers for it. */
static nvmlReturn_t nvlink_port(nvmlDevice_t d, unsigned link, const struct fake_gpu **gpu, struct port *p) {
    if (!fake_nvml_initialised()) return NVML_ERROR_UNINITIALIZED;
    const struct fake_gpu *g = fake_nvml_gpu(d);
    if (!g || link >= NVML_NVLINK_MAX_LINKS) return NVML_ERROR_INVALID_ARGUMENT;
    if (!has_nvlink(fake_config_get()) || link >= port_count(g)) return NVML_ERROR_NOT_SUPPORTED;
    *gpu = g;
    *p = port_of(g, link);
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetNvLinkState, (nvmlDevice_t d, unsigned int link, nvmlEnableState_t *active)) {
    const struct fake_gpu *g;
    struct port p;
    nvmlReturn_t r = nvlink_port(d, link, &g, &p);
    if (r != NVML_SUCCESS) return r;
    if (!active) return NVML_ERROR_INVALID_ARGUMENT;
    *active = p.active ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetNvLinkVersion, (nvmlDevice_t d, unsigned int link, unsigned int *version)) {
    const struct fake_gpu *g;
    struct port p;
    nvmlReturn_t r = nvlink_port(d, link, &g, &p);
    if (r != NVML_SUCCESS) return r;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = nvlink_version(g);
    return NVML_SUCCESS;
}

static void nvswitch_pci(int nvswitch, nvmlPciInfo_t *pci) {
    memset(pci, 0, sizeof *pci);
    pci->bus = 0xA0u + (unsigned)nvswitch;
    snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", pci->bus);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", pci->bus);
    pci->pciDeviceId = (0x22A3u << 16) | 0x10DEu; /* an NVSwitch's device ID */
}

FAKE(nvmlDeviceGetNvLinkRemotePciInfo_v2, (nvmlDevice_t d, unsigned int link, nvmlPciInfo_t *pci)) {
    const struct fake_gpu *g;
    struct port p;
    nvmlReturn_t r = nvlink_port(d, link, &g, &p);
    if (r != NVML_SUCCESS) return r;
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    if (!p.active) return NVML_ERROR_NOT_SUPPORTED;
    if (p.peer >= 0) {
        fake_nvml_fill_pci(&fake_config_get()->gpus[p.peer], pci);
        pci->pciSubSystemId = 0; /* "not filled in this function" */
    } else {
        nvswitch_pci(p.nvswitch, pci);
    }
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetNvLinkRemoteDeviceType, (nvmlDevice_t d, unsigned int link, nvmlIntNvLinkDeviceType_t *type)) {
    const struct fake_gpu *g;
    struct port p;
    nvmlReturn_t r = nvlink_port(d, link, &g, &p);
    if (r != NVML_SUCCESS) return r;
    if (!type) return NVML_ERROR_INVALID_ARGUMENT;
    if (!p.active) return NVML_ERROR_NOT_SUPPORTED;
    *type = p.peer >= 0 ? NVML_NVLINK_DEVICE_TYPE_GPU : NVML_NVLINK_DEVICE_TYPE_SWITCH;
    return NVML_SUCCESS;
}

FAKE(nvmlDeviceGetCpuAffinity, (nvmlDevice_t d, unsigned int size, unsigned long *set)) {
    REQUIRE_GPU(d, g);
    if (size == 0 || !set) return NVML_ERROR_INVALID_ARGUMENT;
    if (g->numa_node < 0) return NVML_ERROR_NOT_SUPPORTED;
    memset(set, 0, size * sizeof *set);
    const unsigned bits = 8u * sizeof *set;
    for (unsigned cpu = (unsigned)g->numa_node * CPUS_PER_NUMA_NODE; cpu < ((unsigned)g->numa_node + 1) * CPUS_PER_NUMA_NODE;
         cpu++)
        if (cpu / bits < size) set[cpu / bits] |= 1ul << (cpu % bits);
    return NVML_SUCCESS;
}
