/* bench.c - micro-benchmark driver for `make bench-hamicore` (not a test).
 *
 *   hami-bench launch|alloc|meminfo <iterations>   ns per call of the measured loop
 *   hami-bench attach [-|go-file]                  wall and CPU microseconds of cuInit + first allocation
 *
 * Run it once against the fake driver directly and once with LD_PRELOAD=libvgpu.so;
 * the difference is the interposer's cost. The loops live in functions named
 * bench_loop_* so callgrind can count their instructions alone (--toggle-collect). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cuda.h>

static CUfunction g_kernel;

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int setup(void) {
    CUdevice dev;
    CUcontext ctx;
    CUmodule mod;
    static const char image[] = "fake-cubin";
    if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx) ||
        cuModuleLoadData(&mod, image) || cuModuleGetFunction(&g_kernel, mod, "k"))
        return -1;
    return 0;
}

__attribute__((noinline)) void bench_loop_launch(long n);
__attribute__((noinline)) void bench_loop_alloc(long n);
__attribute__((noinline)) void bench_loop_meminfo(long n);

void bench_loop_launch(long n) {
    for (long i = 0; i < n; i++) cuLaunchKernel(g_kernel, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
}

void bench_loop_alloc(long n) {
    for (long i = 0; i < n; i++) {
        CUdeviceptr p;
        if (cuMemAlloc_v2(&p, 1 << 20) == CUDA_SUCCESS) cuMemFree_v2(p);
    }
}

void bench_loop_meminfo(long n) {
    for (long i = 0; i < n; i++) {
        size_t f, t;
        cuMemGetInfo_v2(&f, &t);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: hami-bench launch|alloc|meminfo <n> | attach\n");
        return 2;
    }
    if (!strcmp(argv[1], "attach")) {
        /* Optional barrier so that all starters attach at the same moment: "-" blocks reading standard
         * input until the harness closes the pipe's write end (every starter wakes at once, and none
         * loads the CPU while it waits); a path polls for that file every 200 us. */
        if (argc > 2 && !strcmp(argv[2], "-")) {
            char byte;
            while (read(0, &byte, 1) > 0) {
            }
        } else if (argc > 2) {
            while (access(argv[2], F_OK) != 0) usleep(200);
        }
        struct timespec c0, c1;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
        double t0 = now_ns();
        CUdevice dev;
        CUcontext ctx;
        CUdeviceptr p;
        if (cuInit(0) || cuDeviceGet(&dev, 0) || cuDevicePrimaryCtxRetain(&ctx, dev) || cuCtxSetCurrent(ctx) ||
            cuMemAlloc_v2(&p, 1 << 20))
            return 1;
        double wall = (now_ns() - t0) / 1e3;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
        double cpu = ((double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec)) / 1e3;
        printf("%.1f %.1f\n", wall, cpu);
        return 0;
    }
    long n = argc > 2 ? atol(argv[2]) : 100000;
    if (setup() != 0) return 1;
    void (*loop)(long) = !strcmp(argv[1], "launch") ? bench_loop_launch
                         : !strcmp(argv[1], "alloc") ? bench_loop_alloc
                         : !strcmp(argv[1], "meminfo") ? bench_loop_meminfo
                                                       : NULL;
    if (!loop) return 2;
    /* The compute limiter's thread starts at the first launch and decides (installs its launch gate or
     * none) at its first tick: measure what a launch costs once that has happened, in both run lengths
     * alike. */
    loop(1);
    usleep(200 * 1000);
    loop(n / 10 + 1); /* warm up: resolve pointers, attach, fill caches */
    double t0 = now_ns();
    loop(n);
    printf("%.1f\n", (now_ns() - t0) / (double)n);
    return 0;
}
