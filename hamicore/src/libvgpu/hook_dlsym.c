/* hook_dlsym.c - the exported dlsym.
 *
 * Applications (and cffi, ctypes, cuda-bindings) that dlopen libcuda.so.1 or
 * libnvidia-ml.so.1 and look symbols up by name get our hooks for the hooked
 * names, provided the library they asked actually has the symbol. Everything
 * else is glibc's answer. On x86-64 the export is a small trampoline that
 * tail-jumps into glibc's dlsym, so glibc sees the original caller's return
 * address and RTLD_NEXT keeps its meaning for every caller. */
#define _GNU_SOURCE
#include <dlfcn.h>

#include "prim.h"
#include "real.h"

__attribute__((visibility("hidden"))) void *(*hami_glibc_dlsym)(void *, const char *);
__attribute__((visibility("hidden"))) void *hami_dlsym_lookup(void *handle, const char *name);

/* Sanitizer runtimes resolve their interceptors with dlsym before they (and our constructors) are
 * initialised, so this path must not be instrumented and calls nothing they intercept until the
 * name is one of ours (cu* / nvml*, which runtimes never ask for). */
#define HAMI_NO_SANITIZE __attribute__((no_sanitize("address", "thread", "undefined")))

HAMI_NO_SANITIZE static void *(*resolve_glibc_dlsym(void))(void *, const char *) {
    void *(*fn)(void *, const char *) = __atomic_load_n(&hami_glibc_dlsym, __ATOMIC_ACQUIRE);
    if (fn) return fn;
    /* Idempotent: racing threads store the same pointer. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"};
    for (size_t i = 0; i < sizeof versions / sizeof versions[0] && !fn; i++)
        fn = (void *(*)(void *, const char *))dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    if (!fn) fn = hami_real_dlsym;
    __atomic_store_n(&hami_glibc_dlsym, fn, __ATOMIC_RELEASE);
    return fn;
}

/* Our hook for (handle, name), or NULL to let glibc answer. */
HAMI_NO_SANITIZE void *hami_dlsym_lookup(void *handle, const char *name) {
    void *(*glibc_dlsym)(void *, const char *) = resolve_glibc_dlsym();
    if (!name) return NULL;
    int ours = (name[0] == 'c' && name[1] == 'u') ||
               (name[0] == 'n' && name[1] == 'v' && name[2] == 'm' && name[3] == 'l');
    if (!ours || hami_resolving) return NULL;
    const struct hami_hook_entry *h = hami_hook_find(name);
    if (!h) return NULL;
    if (handle == RTLD_NEXT || handle == RTLD_DEFAULT) return hami_real((int)(h - hami_hook_table)) ? h->hook : NULL;
    /* Only where the library asked for defines the symbol (keeps dlsym's NULL answers). */
    return glibc_dlsym(handle, name) ? h->hook : NULL;
}

#if defined(__x86_64__)
__asm__(".text\n"
        ".globl dlsym\n"
        ".type dlsym, @function\n"
        "dlsym:\n"
        "    .cfi_startproc\n"
        "    endbr64\n"
        "    pushq %rdi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    pushq %rsi\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    subq $8, %rsp\n"
        "    .cfi_adjust_cfa_offset 8\n"
        "    call hami_dlsym_lookup\n"
        "    addq $8, %rsp\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    popq %rsi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    popq %rdi\n"
        "    .cfi_adjust_cfa_offset -8\n"
        "    testq %rax, %rax\n"
        "    jnz 1f\n"
        "    jmp *hami_glibc_dlsym(%rip)\n"
        "1:  ret\n"
        "    .cfi_endproc\n"
        ".size dlsym, .-dlsym\n");
#else
/* Portable fallback: RTLD_NEXT lookups are resolved relative to libvgpu.so here. */
__attribute__((visibility("default"))) void *dlsym(void *handle, const char *name) {
    void *hook = hami_dlsym_lookup(handle, name);
    return hook ? hook : hami_glibc_dlsym(handle, name);
}
#endif
