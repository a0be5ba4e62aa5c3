// Device helpers shared by the NVRTC kernels of this folder (load_module passes every .cuh here to NVRTC
// as an includable header).
#pragma once

typedef unsigned int u32;
typedef unsigned short u16;

// Warp-wide tensor-core steps, d += a b: A is 16 x k (row g in a0/a2, g + 8 in a1/a3 of lane (g, t)),
// B is k x 8 (column g in b0/b1); d holds rows g (d0, d1) and g + 8 (d2, d3) at columns 2t, 2t + 1.
__device__ __forceinline__ void mma_bf16(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_f16(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_s8(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_b1_and_popc(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Four 8 x 16-byte matrices from shared memory, lane l giving the address of row l % 8 of matrix l / 8:
// d[i] = 4-byte word l % 4 of row l / 4 of matrix i (the mma A-fragment order when the matrices are
// rows 0-7 / 8-15 of a tile, then the same rows' next 16 bytes).
__device__ __forceinline__ void ldmatrix_x4(u32 (&d)[4], const void* smem) {
    const u32 src = (u32)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(src));
}

// 16 bytes global -> shared without registers.
__device__ __forceinline__ void cp_async16(void* smem, const void* src) {
    const u32 dst = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(src));
}

// The same, with only the first `bytes` (0 or 16) copied and the rest zeroed (an operand more per copy).
__device__ __forceinline__ void cp_async16_zfill(void* smem, const void* src, int bytes) {
    const u32 dst = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int PENDING>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory"); }

// The few-rows kernels split K twice. A block's BLOCK_WARPS warps share one 16-row weight tile and take its
// chunks in turn (so the block asks for BLOCK_WARPS consecutive chunks of every row at once); their sums meet
// in warp 0 through shared memory, in warp order (deterministic for floats). Called by every thread of
// the block; returns whether this thread's warp (warp 0) holds the block's sums.
template <int BLOCK_WARPS, int TILES, typename T>
__device__ __forceinline__ bool sum_warps(T (&acc)[TILES][4]) {
    if constexpr (BLOCK_WARPS > 1) {
        __shared__ T parts[BLOCK_WARPS - 1][TILES * 4][32];
        const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        if (warp) {
#pragma unroll
            for (int j = 0; j < TILES; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) parts[warp - 1][j * 4 + e][lane] = acc[j][e];
        }
        __syncthreads();
        if (warp) return false;
#pragma unroll
        for (int w = 0; w < BLOCK_WARPS - 1; ++w)
#pragma unroll
            for (int j = 0; j < TILES; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[j][e] += parts[w][j * 4 + e][lane];
    }
    return true;
}

// Then K split over gridDim.y blocks (when the tiles alone would leave multiprocessors idle): the warp
// holding a block's sums leaves them in `partial` (TILES * 4 * 32 values per block and split), and the
// block that arrives last at its arrivals[blockIdx.x] counter adds every split's sums in split order
// (deterministic for floats) and resets the counter for the next launch. Called by that one warp;
// returns whether it goes on to the epilogue.
template <int TILES, typename T>
__device__ __forceinline__ bool sum_splits(T (&acc)[TILES][4], T* __restrict__ partial, int* __restrict__ arrivals) {
    const int splits = gridDim.y, lane = threadIdx.x & 31;
    if (splits == 1) return true;
    T* mine = partial + (((size_t)blockIdx.y * gridDim.x + blockIdx.x) * TILES * 4) * 32 + lane;
#pragma unroll
    for (int j = 0; j < TILES; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) mine[(j * 4 + e) * 32] = acc[j][e];
    __threadfence();
    __syncwarp();
    int last = 0;
    if (lane == 0) last = atomicAdd(arrivals + blockIdx.x, 1) == splits - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return false;
    __threadfence();
    const T* all = partial + ((size_t)blockIdx.x * TILES * 4) * 32 + lane;
    const size_t split_stride = (size_t)gridDim.x * TILES * 4 * 32;
#pragma unroll
    for (int j = 0; j < TILES; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            T y = 0;
            for (int s = 0; s < splits; ++s) y += __ldcg(all + s * split_stride + (j * 4 + e) * 32);
            acc[j][e] = y;
        }
    if (lane == 0) arrivals[blockIdx.x] = 0;
    return true;
}

// A float32 result stored as float32 (kind 0), bf16 (1) or fp16 (2), rounded to nearest even.
__device__ __forceinline__ void store_float(void* out, size_t i, float y, int kind) {
    if (kind == 0) {
        ((float*)out)[i] = y;
    } else {
        u16 h;
        if (kind == 1)
            asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(y));
        else
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(y));
        ((u16*)out)[i] = h;
    }
}
