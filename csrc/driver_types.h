/* What our NVDEC session library needs of cuda.h, for NVIDIA's NVDEC headers (csrc/nvcuvid) and
 * for cuMemcpy2DAsync_v2, so that it builds without a CUDA toolkit; tests/fake_nvdec.c, which
 * stands in for the driver, includes it too. */
#ifndef DALI_GOP_DRIVER_TYPES_H
#define DALI_GOP_DRIVER_TYPES_H

#include <stddef.h>

#define CUDA_VERSION 12000
#define CUDAAPI
typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
#define __cuda_cuda_h__
#include "nvcuvid.h"

/* cuda.h's CUDA_MEMCPY2D (CUDA_MEMCPY2D_v2), for cuMemcpy2DAsync_v2 */
typedef struct {
    size_t srcXInBytes, srcY;
    int srcMemoryType;
    const void *srcHost;
    CUdeviceptr srcDevice;
    void *srcArray;
    size_t srcPitch;
    size_t dstXInBytes, dstY;
    int dstMemoryType;
    void *dstHost;
    CUdeviceptr dstDevice;
    void *dstArray;
    size_t dstPitch;
    size_t WidthInBytes, Height;
} Copy2D;
#define MEMORYTYPE_DEVICE 2
#define MEMORYTYPE_UNIFIED 4

#endif
