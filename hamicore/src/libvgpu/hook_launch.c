/* hook_launch.c - every kernel launch path (plain, Ex, cooperative, graph; legacy and
 * per-thread default stream). The hot path: no syscall, no getenv, no lock. */
#define _GNU_SOURCE
#include "hooks.h"
#include "launch_gate.h"
#include "real.h"

_Atomic(hami_launch_gate_fn) hami_launch_gate;

static inline void gate(CUstream s, unsigned long long grid, unsigned long long block) {
    /* acquire: what the limiter set up before installing its gate is visible to it (a plain load on x86-64) */
    hami_launch_gate_fn g = atomic_load_explicit(&hami_launch_gate, memory_order_acquire);
    if (HAMI_UNLIKELY(g != NULL)) g(s, grid, block);
}

#define LAUNCH_HOOK(name)                                                                              \
    CUresult hami_##name(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, \
                         unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream,         \
                         void **params, void **extra) {                                                 \
        pfn_cuLaunchKernel real = REAL(name, pfn_cuLaunchKernel);                                       \
        if (HAMI_UNLIKELY(!real)) return CUDA_ERROR_NOT_FOUND;                                          \
        gate(stream, (unsigned long long)gx * gy * gz, (unsigned long long)bx * by * bz);               \
        return real(f, gx, gy, gz, bx, by, bz, shmem, stream, params, extra);                           \
    }
LAUNCH_HOOK(cuLaunchKernel)
LAUNCH_HOOK(cuLaunchKernel_ptsz)

#define COOPERATIVE_HOOK(name)                                                                         \
    CUresult hami_##name(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, \
                         unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream,         \
                         void **params) {                                                               \
        pfn_cuLaunchCooperativeKernel real = REAL(name, pfn_cuLaunchCooperativeKernel);                 \
        if (HAMI_UNLIKELY(!real)) return CUDA_ERROR_NOT_FOUND;                                          \
        gate(stream, (unsigned long long)gx * gy * gz, (unsigned long long)bx * by * bz);               \
        return real(f, gx, gy, gz, bx, by, bz, shmem, stream, params);                                  \
    }
COOPERATIVE_HOOK(cuLaunchCooperativeKernel)
COOPERATIVE_HOOK(cuLaunchCooperativeKernel_ptsz)

#define EX_HOOK(name)                                                                                  \
    CUresult hami_##name(const CUlaunchConfig *config, CUfunction f, void **params, void **extra) {      \
        pfn_cuLaunchKernelEx real = REAL(name, pfn_cuLaunchKernelEx);                                   \
        if (HAMI_UNLIKELY(!real)) return CUDA_ERROR_NOT_FOUND;                                          \
        if (config)                                                                                     \
            gate(config->hStream, (unsigned long long)config->gridDimX * config->gridDimY * config->gridDimZ, \
                 (unsigned long long)config->blockDimX * config->blockDimY * config->blockDimZ);        \
        return real(config, f, params, extra);                                                          \
    }
EX_HOOK(cuLaunchKernelEx)
EX_HOOK(cuLaunchKernelEx_ptsz)

#define GRAPH_HOOK(name)                                                                               \
    CUresult hami_##name(CUgraphExec exec, CUstream stream) {                                           \
        pfn_cuGraphLaunch real = REAL(name, pfn_cuGraphLaunch);                                         \
        if (HAMI_UNLIKELY(!real)) return CUDA_ERROR_NOT_FOUND;                                          \
        gate(stream, 0, 0);                                                                             \
        return real(exec, stream);                                                                      \
    }
GRAPH_HOOK(cuGraphLaunch)
GRAPH_HOOK(cuGraphLaunch_ptsz)
