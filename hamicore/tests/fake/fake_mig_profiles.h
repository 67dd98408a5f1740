/* fake_mig_profiles.h - TEST DOUBLE: the MIG profile tables of the MIG-capable GPU models (fake_mig_profiles.c). */
#ifndef FAKE_MIG_PROFILES_H
#define FAKE_MIG_PROFILES_H

#define FAKE_MIG_MAX_PLACEMENTS 8

/* One GPU-instance profile as `nvidia-smi mig -lgip` / `-lgipp` print it. */
struct fake_mig_profile {
    unsigned index;          /* NVML_GPU_INSTANCE_PROFILE_* (what nvmlDeviceGetGpuInstanceProfileInfo takes) */
    unsigned id;             /* the profile ID (what nvidia-smi shows and nvmlDeviceCreateGpuInstance takes) */
    const char *name;        /* "1g.5gb" (NVML reports "MIG 1g.5gb") */
    unsigned slices;         /* compute slices */
    unsigned count;          /* instances the card holds at most */
    unsigned sm, ce, dec, enc, jpeg, ofa;
    unsigned long long memory_mib;
    unsigned size;           /* memory slices one instance occupies */
    unsigned nstarts;
    unsigned starts[FAKE_MIG_MAX_PLACEMENTS];
};

struct fake_mig_model {
    const char *label;
    unsigned memory_slices;  /* 8 (A100, H100, H200) or 4 (A30) */
    unsigned compute_slices; /* 7 or 4 */
    unsigned nprofiles;
    const struct fake_mig_profile *profiles;
};

/* The model of a GPU named `name` (nvmlDeviceGetName), or NULL when it has no MIG. */
const struct fake_mig_model *fake_mig_model_of(const char *name);

#endif
