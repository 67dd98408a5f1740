/* hook_array.c - CUDA arrays and mipmapped arrays (textures, surfaces): device memory that no cuMemAlloc shows.
 *
 * Reserve an estimate before the driver is called (width x height x depth x element size, rows rounded to 512
 * bytes, each mip level half the one above), so a container at its cap is refused before the driver spends
 * anything; then settle on what the driver says the array occupies (cuArrayGetMemoryRequirements /
 * cuMipmappedArrayGetMemoryRequirements, CUDA 11.6+: tiling and page rounding make it larger than the estimate).
 * An array whose real size no longer fits is destroyed again and refused. Without those queries the estimate
 * stands. Destroying the array returns its charge. */
#define _GNU_SOURCE
#include "alloc_table.h"
#include "budget.h"
#include "devmap.h"
#include "hooks.h"
#include "log.h"
#include "real.h"
#include "region.h"

static uint64_t element_bytes(CUarray_format f, unsigned int channels) {
    unsigned int bytes;
    switch (f) {
    case CU_AD_FORMAT_UNSIGNED_INT8: case CU_AD_FORMAT_SIGNED_INT8: bytes = 1; break;
    case CU_AD_FORMAT_UNSIGNED_INT16: case CU_AD_FORMAT_SIGNED_INT16: case CU_AD_FORMAT_HALF: bytes = 2; break;
    default: bytes = 4; break; /* 32-bit formats; packed and compressed ones are settled by the driver */
    }
    return (uint64_t)bytes * (channels ? channels : 1);
}

/* Estimated bytes of `levels` levels of a w x h x d array, 0 when absurd (the driver then answers alone). */
static uint64_t estimate(uint64_t w, uint64_t h, uint64_t d, CUarray_format f, unsigned int channels,
                         unsigned int levels) {
    uint64_t total = 0, elem = element_bytes(f, channels);
    for (unsigned int l = 0; l < levels; l++) {
        if (w == 0 || w > (1ull << 32) || h > (1ull << 32) || d > (1ull << 32)) return 0;
        uint64_t row = (w * elem + 511) & ~511ull;
        uint64_t level = row * (h ? h : 1);
        if (level > (1ull << 62) / (d ? d : 1)) return 0;
        total += level * (d ? d : 1);
        if (total > (1ull << 62)) return 0;
        w = w > 1 ? w / 2 : 1;
        h = h > 1 ? h / 2 : h;
        d = d > 1 ? d / 2 : d;
    }
    return total;
}

typedef CUresult (*create_fn)(void *args, void **object);
typedef CUresult (*destroy_fn)(void *object);

/* Reserve, create, settle, remember. `requirements` may be NULL. */
static CUresult accounted_array(uint64_t bytes, void *args, create_fn create, destroy_fn destroy,
                                CUresult (*requirements)(CUDA_ARRAY_MEMORY_REQUIREMENTS *, void *, CUdevice),
                                void **object) {
    struct hami_region *r = hami_region_get();
    CUdevice dev = -1;
    typedef CUresult (*ctx_device_fn)(CUdevice *);
    ctx_device_fn ctx_device = REAL(cuCtxGetDevice, ctx_device_fn);
    int idx;
    if (!r || bytes == 0 || !ctx_device || ctx_device(&dev) != CUDA_SUCCESS ||
        (idx = hami_index_of_cuda_device(r, dev)) < 0)
        return create(args, object);
    if (hami_reserve(r, idx, bytes) == HAMI_OVER_LIMIT) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = create(args, object);
    if (rc != CUDA_SUCCESS) {
        hami_release(r, idx, bytes);
        return rc;
    }
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    if (requirements && requirements(&req, *object, dev) == CUDA_SUCCESS && req.size > 0 && req.size != bytes) {
        if (req.size > bytes && hami_reserve(r, idx, req.size - bytes) == HAMI_OVER_LIMIT) {
            destroy(*object);
            *object = NULL;
            hami_release(r, idx, bytes);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        if (req.size < bytes) hami_release(r, idx, bytes - req.size);
        bytes = req.size;
    }
    if (hami_table_insert(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)*object, bytes, idx) != 0)
        HAMI_WARN("allocation table full: %llu bytes on device %d stay counted", (unsigned long long)bytes, idx);
    return rc;
}

static CUresult destroyed(const void *object, CUresult rc) {
    struct hami_alloc_info info;
    if (rc == CUDA_SUCCESS && object && hami_table_take(HAMI_TABLE_OBJECTS, (uint64_t)(uintptr_t)object, &info))
        hami_release(hami_region_get(), info.dev, info.bytes);
    return rc;
}

static CUresult not_in_driver(const char *name) {
    HAMI_ERROR("the CUDA driver has no %s", name);
    return CUDA_ERROR_NOT_FOUND;
}

static CUresult destroy_array(void *object) {
    pfn_cuArrayDestroy real = REAL(cuArrayDestroy, pfn_cuArrayDestroy);
    return real ? real((CUarray)object) : CUDA_ERROR_NOT_FOUND;
}

static CUresult destroy_mipmapped(void *object) {
    pfn_cuMipmappedArrayDestroy real = REAL(cuMipmappedArrayDestroy, pfn_cuMipmappedArrayDestroy);
    return real ? real((CUmipmappedArray)object) : CUDA_ERROR_NOT_FOUND;
}

static CUresult array_requirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, void *object, CUdevice dev) {
    pfn_cuArrayGetMemoryRequirements real = REAL(cuArrayGetMemoryRequirements, pfn_cuArrayGetMemoryRequirements);
    return real ? real(req, (CUarray)object, dev) : CUDA_ERROR_NOT_FOUND;
}

static CUresult mipmapped_requirements(CUDA_ARRAY_MEMORY_REQUIREMENTS *req, void *object, CUdevice dev) {
    pfn_cuMipmappedArrayGetMemoryRequirements real =
        REAL(cuMipmappedArrayGetMemoryRequirements, pfn_cuMipmappedArrayGetMemoryRequirements);
    return real ? real(req, (CUmipmappedArray)object, dev) : CUDA_ERROR_NOT_FOUND;
}

static CUresult create_2d(void *args, void **object) {
    const CUDA_ARRAY_DESCRIPTOR *desc = args;
    pfn_cuArrayCreate real = REAL(cuArrayCreate_v2, pfn_cuArrayCreate);
    return real((CUarray *)object, desc);
}

CUresult hami_cuArrayCreate_v2(CUarray *array, const CUDA_ARRAY_DESCRIPTOR *desc) {
    pfn_cuArrayCreate real = REAL(cuArrayCreate_v2, pfn_cuArrayCreate);
    if (!real) return not_in_driver("cuArrayCreate_v2");
    if (!array || !desc) return real(array, desc);
    uint64_t bytes = estimate(desc->Width, desc->Height, 1, desc->Format, desc->NumChannels, 1);
    return accounted_array(bytes, (void *)desc, create_2d, destroy_array, array_requirements, (void **)array);
}

static CUresult create_3d(void *args, void **object) {
    const CUDA_ARRAY3D_DESCRIPTOR *desc = args;
    pfn_cuArray3DCreate real = REAL(cuArray3DCreate_v2, pfn_cuArray3DCreate);
    return real((CUarray *)object, desc);
}

CUresult hami_cuArray3DCreate_v2(CUarray *array, const CUDA_ARRAY3D_DESCRIPTOR *desc) {
    pfn_cuArray3DCreate real = REAL(cuArray3DCreate_v2, pfn_cuArray3DCreate);
    if (!real) return not_in_driver("cuArray3DCreate_v2");
    if (!array || !desc) return real(array, desc);
    uint64_t bytes = estimate(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels, 1);
    return accounted_array(bytes, (void *)desc, create_3d, destroy_array, array_requirements, (void **)array);
}

CUresult hami_cuArrayDestroy(CUarray array) {
    pfn_cuArrayDestroy real = REAL(cuArrayDestroy, pfn_cuArrayDestroy);
    if (!real) return not_in_driver("cuArrayDestroy");
    return destroyed(array, real(array));
}

struct mipmap_args {
    const CUDA_ARRAY3D_DESCRIPTOR *desc;
    unsigned int levels;
};

static CUresult create_mipmapped(void *args, void **object) {
    const struct mipmap_args *a = args;
    pfn_cuMipmappedArrayCreate real = REAL(cuMipmappedArrayCreate, pfn_cuMipmappedArrayCreate);
    return real((CUmipmappedArray *)object, a->desc, a->levels);
}

CUresult hami_cuMipmappedArrayCreate(CUmipmappedArray *array, const CUDA_ARRAY3D_DESCRIPTOR *desc,
                                     unsigned int levels) {
    pfn_cuMipmappedArrayCreate real = REAL(cuMipmappedArrayCreate, pfn_cuMipmappedArrayCreate);
    if (!real) return not_in_driver("cuMipmappedArrayCreate");
    if (!array || !desc || levels == 0 || levels > 32) return real(array, desc, levels);
    struct mipmap_args a = {desc, levels};
    uint64_t bytes = estimate(desc->Width, desc->Height, desc->Depth, desc->Format, desc->NumChannels, levels);
    return accounted_array(bytes, &a, create_mipmapped, destroy_mipmapped, mipmapped_requirements,
                           (void **)array);
}

CUresult hami_cuMipmappedArrayDestroy(CUmipmappedArray array) {
    pfn_cuMipmappedArrayDestroy real = REAL(cuMipmappedArrayDestroy, pfn_cuMipmappedArrayDestroy);
    if (!real) return not_in_driver("cuMipmappedArrayDestroy");
    return destroyed(array, real(array));
}
