/* driver_api.h - the official CUDA driver and NVML headers, plus function pointer
 * types for every driver function libvgpu calls. Hooks are defined under their
 * exported driver names with asm labels, so the header's name macros
 * (cuMemAlloc -> cuMemAlloc_v2, ...) never decide what we export. */
#ifndef HAMI_DRIVER_API_H
#define HAMI_DRIVER_API_H

#define NVML_NO_UNVERSIONED_FUNC_DEFS 1
#include <cuda.h>
#include <nvml.h>

#define HAMI_EXPORT __attribute__((visibility("default")))
#define HAMI_LIKELY(x) __builtin_expect(!!(x), 1)
#define HAMI_UNLIKELY(x) __builtin_expect(!!(x), 0)

typedef CUresult (*pfn_cuInit)(unsigned int);
typedef CUresult (*pfn_cuMemAlloc)(CUdeviceptr *, size_t);
typedef CUresult (*pfn_cuMemAllocPitch)(CUdeviceptr *, size_t *, size_t, size_t, unsigned int);
typedef CUresult (*pfn_cuMemAllocManaged)(CUdeviceptr *, size_t, unsigned int);
typedef CUresult (*pfn_cuMemFree)(CUdeviceptr);
typedef CUresult (*pfn_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
typedef CUresult (*pfn_cuDevicePrimaryCtxRelease)(CUdevice);
typedef CUresult (*pfn_cuCtxCreate_v2)(CUcontext *, unsigned int, CUdevice);
typedef CUresult (*pfn_cuDevicePrimaryCtxReset)(CUdevice);
typedef CUresult (*pfn_cuCtxCreate_v3)(CUcontext *, CUexecAffinityParam *, int, unsigned int, CUdevice);
typedef CUresult (*pfn_cuCtxCreate_v4)(CUcontext *, CUctxCreateParams *, unsigned int, CUdevice);
typedef CUresult (*pfn_cuCtxDestroy)(CUcontext);
/* The pre-3.2 entry points (cuda.h declares them only for the driver's own build). */
typedef unsigned int hami_deviceptr_v1;
typedef CUresult (*pfn_cuMemAlloc_v1)(hami_deviceptr_v1 *, unsigned int);
typedef CUresult (*pfn_cuMemAllocPitch_v1)(hami_deviceptr_v1 *, unsigned int *, unsigned int, unsigned int,
                                           unsigned int);
typedef CUresult (*pfn_cuMemFree_v1)(hami_deviceptr_v1);
typedef CUresult (*pfn_cuGraphAddMemAllocNode)(CUgraphNode *, CUgraph, const CUgraphNode *, size_t,
                                               CUDA_MEM_ALLOC_NODE_PARAMS *);
typedef CUresult (*pfn_cuGraphDestroy)(CUgraph);
typedef CUresult (*pfn_cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph, unsigned long long);
typedef CUresult (*pfn_cuGraphInstantiateWithParams)(CUgraphExec *, CUgraph, CUDA_GRAPH_INSTANTIATE_PARAMS *);
typedef CUresult (*pfn_cuGraphExecDestroy)(CUgraphExec);
typedef CUresult (*pfn_cuDeviceGraphMemTrim)(CUdevice);
typedef CUresult (*pfn_cuDeviceGetGraphMemAttribute)(CUdevice, CUgraphMem_attribute, void *);
typedef CUresult (*pfn_cuMemPoolTrimTo)(CUmemoryPool, size_t);
typedef CUresult (*pfn_cuMemPoolSetAttribute)(CUmemoryPool, CUmemPool_attribute, void *);
typedef CUresult (*pfn_cuMemPoolGetAttribute)(CUmemoryPool, CUmemPool_attribute, void *);
typedef CUresult (*pfn_cuModuleLoadData)(CUmodule *, const void *);
typedef CUresult (*pfn_cuModuleLoad)(CUmodule *, const char *);
typedef CUresult (*pfn_cuModuleLoadDataEx)(CUmodule *, const void *, unsigned int, CUjit_option *, void **);
typedef CUresult (*pfn_cuModuleUnload)(CUmodule);
typedef CUresult (*pfn_cuLibraryLoadData)(CUlibrary *, const void *, CUjit_option *, void **, unsigned int,
                                          CUlibraryOption *, void **, unsigned int);
typedef CUresult (*pfn_cuLibraryLoadFromFile)(CUlibrary *, const char *, CUjit_option *, void **, unsigned int,
                                              CUlibraryOption *, void **, unsigned int);
typedef CUresult (*pfn_cuLibraryUnload)(CUlibrary);
typedef CUresult (*pfn_cuArrayCreate)(CUarray *, const CUDA_ARRAY_DESCRIPTOR *);
typedef CUresult (*pfn_cuArray3DCreate)(CUarray *, const CUDA_ARRAY3D_DESCRIPTOR *);
typedef CUresult (*pfn_cuArrayDestroy)(CUarray);
typedef CUresult (*pfn_cuMipmappedArrayCreate)(CUmipmappedArray *, const CUDA_ARRAY3D_DESCRIPTOR *, unsigned int);
typedef CUresult (*pfn_cuMipmappedArrayDestroy)(CUmipmappedArray);
typedef CUresult (*pfn_cuArrayGetMemoryRequirements)(CUDA_ARRAY_MEMORY_REQUIREMENTS *, CUarray, CUdevice);
typedef CUresult (*pfn_cuMipmappedArrayGetMemoryRequirements)(CUDA_ARRAY_MEMORY_REQUIREMENTS *, CUmipmappedArray,
                                                              CUdevice);
typedef CUresult (*pfn_cuMemAllocAsync)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*pfn_cuMemAllocFromPoolAsync)(CUdeviceptr *, size_t, CUmemoryPool, CUstream);
typedef CUresult (*pfn_cuMemFreeAsync)(CUdeviceptr, CUstream);
typedef CUresult (*pfn_cuMemCreate)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                                    unsigned long long);
typedef CUresult (*pfn_cuMemPoolCreate)(CUmemoryPool *, const CUmemPoolProps *);
typedef CUresult (*pfn_cuMemPoolDestroy)(CUmemoryPool);
typedef CUresult (*pfn_cuDeviceGetMemPool)(CUmemoryPool *, CUdevice);
typedef CUresult (*pfn_cuMemRelease)(CUmemGenericAllocationHandle);
typedef CUresult (*pfn_cuMemGetInfo)(size_t *, size_t *);
typedef CUresult (*pfn_cuDeviceTotalMem)(size_t *, CUdevice);
typedef CUresult (*pfn_cuLaunchKernel)(CUfunction, unsigned int, unsigned int, unsigned int, unsigned int,
                                       unsigned int, unsigned int, unsigned int, CUstream, void **, void **);
typedef CUresult (*pfn_cuLaunchKernelEx)(const CUlaunchConfig *, CUfunction, void **, void **);
typedef CUresult (*pfn_cuLaunchCooperativeKernel)(CUfunction, unsigned int, unsigned int, unsigned int,
                                                  unsigned int, unsigned int, unsigned int, unsigned int,
                                                  CUstream, void **);
typedef CUresult (*pfn_cuGraphLaunch)(CUgraphExec, CUstream);
typedef CUresult (*pfn_cuGetProcAddress)(const char *, void **, int, cuuint64_t);
typedef CUresult (*pfn_cuGetProcAddress_v2)(const char *, void **, int, cuuint64_t,
                                            CUdriverProcAddressQueryResult *);
typedef CUresult (*pfn_cuCtxGetDevice)(CUdevice *);
typedef CUresult (*pfn_cuDeviceGetCount)(int *);
typedef CUresult (*pfn_cuDeviceGet)(CUdevice *, int);
typedef CUresult (*pfn_cuDeviceGetUuid)(CUuuid *, CUdevice);
typedef CUresult (*pfn_cuStreamGetDevice)(CUstream, CUdevice *);
typedef CUresult (*pfn_cuDeviceGetAttribute)(int *, CUdevice_attribute, CUdevice);
typedef nvmlReturn_t (*pfn_nvmlDeviceGetMemoryInfo)(nvmlDevice_t, nvmlMemory_t *);
typedef nvmlReturn_t (*pfn_nvmlDeviceGetMemoryInfo_v2)(nvmlDevice_t, nvmlMemory_v2_t *);
typedef nvmlReturn_t (*pfn_nvmlDeviceGetUUID)(nvmlDevice_t, char *, unsigned int);

#endif
