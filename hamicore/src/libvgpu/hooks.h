/* hooks.h - prototypes of libvgpu's exported hooks. Each C name hami_<x> is
 * exported as the driver symbol <x> (asm label); libvgpu.map lists them. */
#ifndef HAMI_HOOKS_H
#define HAMI_HOOKS_H

#include "driver_api.h"

#define HAMI_HOOK_DECL(ret, name, params) HAMI_EXPORT ret hami_##name params __asm__(#name)

HAMI_HOOK_DECL(CUresult, cuInit, (unsigned int flags));
HAMI_HOOK_DECL(CUresult, cuMemAlloc_v2, (CUdeviceptr * dptr, size_t bytesize));
HAMI_HOOK_DECL(CUresult, cuMemAllocPitch_v2,
               (CUdeviceptr * dptr, size_t *pitch, size_t width, size_t height, unsigned int elem));
HAMI_HOOK_DECL(CUresult, cuMemAllocManaged, (CUdeviceptr * dptr, size_t bytesize, unsigned int flags));
HAMI_HOOK_DECL(CUresult, cuMemFree_v2, (CUdeviceptr dptr));
HAMI_HOOK_DECL(CUresult, cuMemAllocAsync, (CUdeviceptr * dptr, size_t bytesize, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuMemAllocAsync_ptsz, (CUdeviceptr * dptr, size_t bytesize, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuMemAllocFromPoolAsync,
               (CUdeviceptr * dptr, size_t bytesize, CUmemoryPool pool, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuMemAllocFromPoolAsync_ptsz,
               (CUdeviceptr * dptr, size_t bytesize, CUmemoryPool pool, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuMemFreeAsync, (CUdeviceptr dptr, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuMemFreeAsync_ptsz, (CUdeviceptr dptr, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuMemCreate,
               (CUmemGenericAllocationHandle * handle, size_t size, const CUmemAllocationProp *prop,
                unsigned long long flags));
HAMI_HOOK_DECL(CUresult, cuMemRelease, (CUmemGenericAllocationHandle handle));
HAMI_HOOK_DECL(CUresult, cuMemPoolCreate, (CUmemoryPool * pool, const CUmemPoolProps *props));
HAMI_HOOK_DECL(CUresult, cuMemPoolDestroy, (CUmemoryPool pool));
HAMI_HOOK_DECL(CUresult, cuDeviceGetDefaultMemPool, (CUmemoryPool * pool, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuDeviceGetMemPool, (CUmemoryPool * pool, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuDevicePrimaryCtxRetain, (CUcontext * pctx, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuDevicePrimaryCtxRelease_v2, (CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuDevicePrimaryCtxReset_v2, (CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuCtxCreate_v2, (CUcontext * pctx, unsigned int flags, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuCtxCreate_v3, (CUcontext * pctx, CUexecAffinityParam *params, int n, unsigned int flags, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuCtxCreate_v4, (CUcontext * pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuCtxDestroy_v2, (CUcontext ctx));
HAMI_HOOK_DECL(CUresult, cuModuleLoad, (CUmodule * mod, const char *fname));
HAMI_HOOK_DECL(CUresult, cuModuleLoadData, (CUmodule * mod, const void *image));
HAMI_HOOK_DECL(CUresult, cuModuleLoadFatBinary, (CUmodule * mod, const void *fatbin));
HAMI_HOOK_DECL(CUresult, cuModuleLoadDataEx, (CUmodule * mod, const void *image, unsigned int n, CUjit_option *options, void **values));
HAMI_HOOK_DECL(CUresult, cuModuleUnload, (CUmodule mod));
HAMI_HOOK_DECL(CUresult, cuLibraryLoadData, (CUlibrary * library, const void *code, CUjit_option *jit_options, void **jit_values, unsigned int n_jit, CUlibraryOption *library_options, void **library_values, unsigned int n_library));
HAMI_HOOK_DECL(CUresult, cuLibraryLoadFromFile, (CUlibrary * library, const char *file, CUjit_option *jit_options, void **jit_values, unsigned int n_jit, CUlibraryOption *library_options, void **library_values, unsigned int n_library));
HAMI_HOOK_DECL(CUresult, cuLibraryUnload, (CUlibrary library));
HAMI_HOOK_DECL(CUresult, cuArrayCreate_v2, (CUarray * array, const CUDA_ARRAY_DESCRIPTOR *desc));
HAMI_HOOK_DECL(CUresult, cuArray3DCreate_v2, (CUarray * array, const CUDA_ARRAY3D_DESCRIPTOR *desc));
HAMI_HOOK_DECL(CUresult, cuArrayDestroy, (CUarray array));
HAMI_HOOK_DECL(CUresult, cuMipmappedArrayCreate, (CUmipmappedArray * array, const CUDA_ARRAY3D_DESCRIPTOR *desc, unsigned int levels));
HAMI_HOOK_DECL(CUresult, cuMipmappedArrayDestroy, (CUmipmappedArray array));
HAMI_HOOK_DECL(CUresult, cuMemPoolTrimTo, (CUmemoryPool pool, size_t keep));
HAMI_HOOK_DECL(CUresult, cuMemPoolSetAttribute, (CUmemoryPool pool, CUmemPool_attribute attr, void *value));
HAMI_HOOK_DECL(CUresult, cuGraphAddMemAllocNode, (CUgraphNode * node, CUgraph graph, const CUgraphNode *deps, size_t ndeps, CUDA_MEM_ALLOC_NODE_PARAMS *params));
HAMI_HOOK_DECL(CUresult, cuGraphDestroy, (CUgraph graph));
HAMI_HOOK_DECL(CUresult, cuGraphInstantiateWithFlags, (CUgraphExec * exec, CUgraph graph, unsigned long long flags));
HAMI_HOOK_DECL(CUresult, cuGraphInstantiateWithParams, (CUgraphExec * exec, CUgraph graph, CUDA_GRAPH_INSTANTIATE_PARAMS *params));
HAMI_HOOK_DECL(CUresult, cuGraphExecDestroy, (CUgraphExec exec));
HAMI_HOOK_DECL(CUresult, cuMemAlloc, (hami_deviceptr_v1 * dptr, unsigned int bytesize));
HAMI_HOOK_DECL(CUresult, cuMemAllocPitch, (hami_deviceptr_v1 * dptr, unsigned int *pitch, unsigned int width, unsigned int height, unsigned int elem));
HAMI_HOOK_DECL(CUresult, cuMemFree, (hami_deviceptr_v1 dptr));
HAMI_HOOK_DECL(CUresult, cuMemGetInfo, (unsigned int *free_bytes, unsigned int *total_bytes));
HAMI_HOOK_DECL(CUresult, cuDeviceTotalMem, (unsigned int *bytes, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuDeviceGraphMemTrim, (CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuMemGetInfo_v2, (size_t *free_bytes, size_t *total_bytes));
HAMI_HOOK_DECL(CUresult, cuDeviceTotalMem_v2, (size_t *bytes, CUdevice dev));
HAMI_HOOK_DECL(CUresult, cuLaunchKernel,
               (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params,
                void **extra));
HAMI_HOOK_DECL(CUresult, cuLaunchKernel_ptsz,
               (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params,
                void **extra));
HAMI_HOOK_DECL(CUresult, cuLaunchKernelEx,
               (const CUlaunchConfig *config, CUfunction f, void **params, void **extra));
HAMI_HOOK_DECL(CUresult, cuLaunchKernelEx_ptsz,
               (const CUlaunchConfig *config, CUfunction f, void **params, void **extra));
HAMI_HOOK_DECL(CUresult, cuLaunchCooperativeKernel,
               (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params));
HAMI_HOOK_DECL(CUresult, cuLaunchCooperativeKernel_ptsz,
               (CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                unsigned int by, unsigned int bz, unsigned int shmem, CUstream stream, void **params));
HAMI_HOOK_DECL(CUresult, cuGraphLaunch, (CUgraphExec exec, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuGraphLaunch_ptsz, (CUgraphExec exec, CUstream stream));
HAMI_HOOK_DECL(CUresult, cuGetProcAddress,
               (const char *symbol, void **pfn, int cuda_version, cuuint64_t flags));
HAMI_HOOK_DECL(CUresult, cuGetProcAddress_v2,
               (const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                CUdriverProcAddressQueryResult *status));
HAMI_HOOK_DECL(nvmlReturn_t, nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t *memory));
HAMI_HOOK_DECL(nvmlReturn_t, nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t device, nvmlMemory_v2_t *memory));

#endif
