/* fake_mig_profiles.c - TEST DOUBLE: the GPU-instance profiles of each MIG-capable model, with the real profile
 * IDs, instance counts, SM and engine counts, memory sizes and legal placements.
 *
 * Sources (memory in MiB = the GiB nvidia-smi prints x 1024, or NVML's memorySizeMB where quoted as such):
 * - A100-SXM4-40GB / A100-PCIE-40GB: `nvidia-smi mig -lgip` in the HAMi v2.5 MIG article
 *   (shared/seeds/004_*: 1g.5gb 19 x7 4.75 GiB 14 SMs, 1g.5gb+me 20, 2g.10gb 14 x3 9.75 GiB, 3g.20gb 9 x2 19.62 GiB,
 *   4g.20gb 5 x1, 7g.40gb 0 x1 39.50 GiB 98 SMs); 1g.10gb (ID 15, x4) from the NVIDIA MIG user guide's A100 table
 *   (docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html), sized like 2g.10gb.
 * - H100 80GB HBM3 (SXM): `nvidia-smi mig -lgip` quoted at jbarrow.ai/field_notes/nvidia-mig (1g.10gb 19 x7 9.75 GiB
 *   16 SMs, 1g.10gb+me 20, 1g.20gb 15 x4 19.62 GiB 26 SMs, 2g.20gb 14 x3 32 SMs, 3g.40gb 9 x2 39.50 GiB 60 SMs,
 *   4g.40gb 5 64 SMs, 7g.80gb 0 79.25 GiB 132 SMs).
 * - A100 80GB, A30 24GB and H200 141GB memory sizes (memorySizeMB) and engine counts: NVIDIA's own NVML mock
 *   (github.com/NVIDIA/go-nvml pkg/nvml/mock/shared/gpus/{a100,a30,h200}.go); the profile IDs follow the real
 *   driver's numbering (that mock numbers them by NVML_GPU_INSTANCE_PROFILE_* index instead); H200 SM counts are
 *   the H100 SXM ones (same GH100 die, 132 SMs).
 * - H100 PCIe (114 SMs), H100 NVL 94GB and H100 96GB (GH200): profile names, counts and placements from the MIG user
 *   guide's H100 tables; memory sizes are the card's usable memory split in eighths and SM counts scaled from the
 *   SXM part: DERIVED, not measured.
 * Placements (`nvidia-smi mig -lgipp`, in memory slices): 1g {0..6}:1, 1g with two memory slices {0,2,4,6}:2,
 * 2g {0,2,4}:2, 3g {0,4}:4, 4g {0}:4, 7g {0}:8; A30: 1g {0..3}:1, 2g {0,2}:2, 4g {0}:4. */
#define _GNU_SOURCE
#include "fake_mig_profiles.h"

#include <string.h>

#include <nvml.h>

#define P1 7, {0, 1, 2, 3, 4, 5, 6}
#define P1W 4, {0, 2, 4, 6}
#define P2 3, {0, 2, 4}
#define P3 2, {0, 4}
#define P4 1, {0}
#define P7 1, {0}

/* index, id, name, slices, count, sm, ce, dec, enc, jpeg, ofa, memory MiB, size, placements */
#define GA100(m1, m1w, m2, m3, m7, n1, n1me, n1w, n2, n3, n4, n7, sm7)                                      \
    {                                                                                                       \
        {NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, n1, 1, 7, 14, 1, 0, 0, 0, 0, m1, 1, P1},                   \
        {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, n1me, 1, 1, 14, 1, 1, 0, 1, 1, m1, 1, P1},            \
        {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, n1w, 1, 4, 14, 1, 1, 0, 0, 0, m1w, 2, P1W},           \
        {NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, n2, 2, 3, 28, 2, 1, 0, 0, 0, m2, 2, P2},                   \
        {NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, n3, 3, 2, 42, 3, 2, 0, 0, 0, m3, 4, P3},                    \
        {NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, n4, 4, 1, 56, 4, 2, 0, 0, 0, m3, 4, P4},                    \
        {NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, n7, 7, 1, sm7, 7, 5, 0, 1, 1, m7, 8, P7},                   \
    }

/* Hopper: sm = SMs of 1g, 1g with two memory slices, 2g, 3g, 4g, 7g. */
#define GH100(m1, m2, m3, m7, n1, n1me, n1w, n2, n3, n4, n7, s1, s1w, s2, s3, s4, s7)                       \
    {                                                                                                       \
        {NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, n1, 1, 7, s1, 1, 1, 0, 1, 0, m1, 1, P1},                   \
        {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, n1me, 1, 1, s1, 1, 1, 0, 1, 1, m1, 1, P1},            \
        {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, n1w, 1, 4, s1w, 1, 1, 0, 1, 0, m2, 2, P1W},           \
        {NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, n2, 2, 3, s2, 2, 2, 0, 2, 0, m2, 2, P2},                   \
        {NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, n3, 3, 2, s3, 3, 3, 0, 3, 0, m3, 4, P3},                    \
        {NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, n4, 4, 1, s4, 4, 4, 0, 4, 0, m3, 4, P4},                    \
        {NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, n7, 7, 1, s7, 8, 7, 0, 7, 1, m7, 8, P7},                    \
    }

static const struct fake_mig_profile A100_40GB[] = GA100(4864, 9984, 9984, 20096, 40448, "1g.5gb", "1g.5gb+me",
                                                         "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb", 98);
static const struct fake_mig_profile A100_80GB[] = GA100(9856, 19968, 19968, 40192, 80384, "1g.10gb", "1g.10gb+me",
                                                         "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", 98);
static const struct fake_mig_profile H100_80GB[] =
    GH100(9984, 20096, 40448, 81152, "1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
          16, 26, 32, 60, 64, 132);
static const struct fake_mig_profile H100_PCIE[] =
    GH100(9984, 20096, 40448, 81152, "1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
          14, 22, 28, 52, 56, 114);
static const struct fake_mig_profile H100_94GB[] =
    GH100(11776, 23808, 47872, 95744, "1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb",
          16, 26, 32, 60, 64, 132);
static const struct fake_mig_profile H100_96GB[] =
    GH100(12032, 24064, 48384, 97280, "1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.48gb", "4g.48gb", "7g.96gb",
          16, 26, 32, 60, 64, 132);
static const struct fake_mig_profile H200_141GB[] =
    GH100(18432, 35840, 72704, 144384, "1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb",
          "7g.141gb", 16, 26, 32, 60, 64, 132);
static const struct fake_mig_profile A30_24GB[] = {
    {NVML_GPU_INSTANCE_PROFILE_1_SLICE, 14, "1g.6gb", 1, 4, 14, 1, 0, 0, 0, 0, 5836, 1, 4, {0, 1, 2, 3}},
    {NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 21, "1g.6gb+me", 1, 1, 14, 1, 1, 0, 1, 1, 5836, 1, 4, {0, 1, 2, 3}},
    {NVML_GPU_INSTANCE_PROFILE_2_SLICE, 5, "2g.12gb", 2, 2, 28, 2, 2, 0, 0, 0, 11672, 2, 2, {0, 2}},
    {NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1, 6, "2g.12gb+me", 2, 1, 28, 2, 2, 0, 1, 1, 11672, 2, 2, {0, 2}},
    {NVML_GPU_INSTANCE_PROFILE_4_SLICE, 0, "4g.24gb", 4, 1, 56, 4, 4, 0, 1, 1, 23344, 4, 1, {0}},
};

#define MODEL(label, mem, comp, table) {label, mem, comp, sizeof table / sizeof table[0], table}
static const struct fake_mig_model MODELS[] = {
    MODEL("A30", 4, 4, A30_24GB),           MODEL("A100-40GB", 8, 7, A100_40GB),
    MODEL("A100-80GB", 8, 7, A100_80GB),    MODEL("H100-80GB", 8, 7, H100_80GB),
    MODEL("H100-PCIE", 8, 7, H100_PCIE),    MODEL("H100-94GB", 8, 7, H100_94GB),
    MODEL("H100-96GB", 8, 7, H100_96GB),    MODEL("H200", 8, 7, H200_141GB),
};

static int has(const char *name, const char *word) { return strcasestr(name, word) != NULL; }

/* Names as nvidia-smi prints them: "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3",
 * "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA GH200 96GB HBM3", "NVIDIA H200", "NVIDIA A30". */
const struct fake_mig_model *fake_mig_model_of(const char *name) {
    if (has(name, "GH200")) return &MODELS[6]; /* before "H200", which it contains */
    if (has(name, "H200")) return &MODELS[7];
    if (has(name, "H100")) {
        if (has(name, "96GB")) return &MODELS[6];
        if (has(name, "NVL") || has(name, "94GB")) return &MODELS[5];
        if (has(name, "PCIe")) return &MODELS[4];
        return &MODELS[3];
    }
    if (has(name, "A100")) return has(name, "80GB") ? &MODELS[2] : &MODELS[1];
    if (has(name, "A30")) return &MODELS[0];
    return NULL;
}
