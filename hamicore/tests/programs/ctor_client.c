/* ctor_client.c - a library that uses CUDA from its constructor, before main() and before anything
 * else is initialised: libvgpu.so must already enforce the budget there. Prints one JSON line. */
#include <stdio.h>

#include <cuda.h>

__attribute__((constructor)) static void use_cuda_early(void) {
    CUdevice dev;
    CUcontext ctx;
    CUdeviceptr a = 0, b = 0;
    CUresult init = cuInit(0);
    if (init == CUDA_SUCCESS && cuDeviceGet(&dev, 0) == CUDA_SUCCESS &&
        cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS)
        cuCtxSetCurrent(ctx);
    CUresult first = cuMemAlloc_v2(&a, 60 << 20);
    CUresult second = cuMemAlloc_v2(&b, 60 << 20);
    printf("{\"cmd\":\"ctor\",\"init\":%d,\"first\":%d,\"second\":%d}\n", (int)init, (int)first, (int)second);
    fflush(stdout);
    if (a) cuMemFree_v2(a);
}
