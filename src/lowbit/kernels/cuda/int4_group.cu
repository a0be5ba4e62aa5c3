// INT4-group weights on the float tensor cores for few input rows (W4A16 and W4A8, design.md 2.3),
// compiled at run time with NVRTC. The arithmetic is nn/mixed_linear.py's:
//   MODE 0 (W4A16): w = bf16((c - z) * s)   y = bf16(x) @ w^T + bias                 (mma m16n8k16 bf16)
//   MODE 1 (W4A8):  w = e4m3((c - z) * s)   y = (e4m3(x / sx) @ w^T) * (sx * s8) + bias (mma m16n8k32 e4m3)
// with float32 accumulation: the products are exact, so only the order of the float32 sums differs
// from the reference. (c - z) * s is exact in float32 too (4 + 1 bits times an 11-bit float16 scale),
// so every weight is rounded once, to bf16 or E4M3, exactly as the reference rounds it.
//
// Compile-time constants (-D): MODE, NT (column tiles of 8 input rows), WARPS (warps of a block
// splitting K), DEPTH (64-column chunks loaded at once: a lane's 16 weight bytes and its input
// fragments for each, all in flight together).
//
// Layouts (kernels/cuda/int4_group.py builds them):
//   qw  [N / 16, K / 64, 32 lanes, 4 words]  a warp's 16 x 64 tile, 16 bytes per lane. Word 2h + r holds
//       the 8 codes of row g + 8r (g = lane / 4) that the lane's mma fragments take from the 32 columns
//       of half h, code j in bits 4j..4j+3 (which column each j is depends on MODE; see KMAP there).
//   sz  [G, N16] uint32   per group and row: float16 scale bits | zero point << 16
//   x   [M, ldx]          MODE 0 bf16, MODE 1 e4m3 codes; columns K..K64-1 are zero
// N16, K64: N and K rounded up to 16 and 64 (padded rows have scale 0; padded columns meet x = 0).

typedef unsigned int u32;
typedef unsigned short u16;

#ifndef MODE
#define MODE 1
#endif
#ifndef NT
#define NT 1
#endif
#ifndef WARPS
#define WARPS 4
#endif
#ifndef DEPTH
#define DEPTH 4
#endif
// Input registers per lane and 32-column half: NT column tiles x 2 (one E4M3 k32 mma) or x 4 (two bf16
// k16 mmas).
#define XH (NT * (MODE == 1 ? 2 : 4))

__device__ __forceinline__ float half_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ u32 pack_e4m3x4(float e0, float e1, float e2, float e3) {
    u16 lo, hi;  // satfinite: beyond +-448 saturates, as the reference's clamp before the cast
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(e1), "f"(e0));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(e3), "f"(e2));
    return (u32)lo | ((u32)hi << 16);
}

// (c - z) * s for a group, as two fused multiply-adds with a code placed in a float's mantissa:
// with c in bits 12..15, f = 1 + c * 2^-11 and f * (2^11 s) - (2^11 + z) s = (c - z) s; in bits 16..19,
// f = 1 + c * 2^-7 with 2^7. Every term is exact (at most 12 + 11 significant bits), so the fma is.
struct GroupConst {
    float m12, c12, m16, c16;
};

__device__ __forceinline__ GroupConst group_const(u32 packed) {
    const float s = half_to_float((u16)(packed & 0xffff));
    const float z = (float)((packed >> 16) & 0xff);
    GroupConst q;
    q.m12 = s * 2048.0f;
    q.c12 = -(2048.0f + z) * s;
    q.m16 = s * 128.0f;
    q.c16 = -(128.0f + z) * s;
    return q;
}

__device__ __forceinline__ float code_at12(u32 w, const GroupConst& q) {
    return __fmaf_rn(__uint_as_float((w & 0x0000f000u) | 0x3f800000u), q.m12, q.c12);
}

__device__ __forceinline__ float code_at16(u32 w, const GroupConst& q) {
    return __fmaf_rn(__uint_as_float((w & 0x000f0000u) | 0x3f800000u), q.m16, q.c16);
}

// The 8 weights of one word: e[j] = (code j - z) * s.
__device__ __forceinline__ void dequant_word(u32 w, const GroupConst& q, float (&e)[8]) {
    const u32 up8 = w << 8, down8 = w >> 8;
    e[0] = code_at12(w << 12, q);
    e[1] = code_at12(up8, q);
    e[2] = code_at16(up8, q);
    e[3] = code_at12(w, q);
    e[4] = code_at16(w, q);
    e[5] = code_at12(down8, q);
    e[6] = code_at16(down8, q);
    e[7] = code_at16(w >> 12, q);
}

__device__ __forceinline__ void mma_e4m3(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// This lane's input fragments for the 32-column half at k0: 4 bytes of input row m = 8j + g per
// register (rows past M are zero), in the order tile_step takes them.
__device__ __forceinline__ void load_x(u32 (&xr)[XH], const unsigned char* x, int M, int ldx, int k0, int g, int t) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const int m = j * 8 + g;
#if MODE == 1
        const u32* row = (const u32*)(x + (size_t)m * ldx + k0);  // E4M3: columns 4t.. and 16 + 4t..
        xr[2 * j] = m < M ? __ldg(row + t) : 0u;
        xr[2 * j + 1] = m < M ? __ldg(row + 4 + t) : 0u;
#else
        const u32* row = (const u32*)(x + ((size_t)m * ldx + k0) * 2);  // bf16 pairs: 2t, 8 + 2t, 16 + 2t, 24 + 2t
#pragma unroll
        for (int q = 0; q < 4; ++q) xr[4 * j + q] = m < M ? __ldg(row + 4 * q + t) : 0u;
#endif
    }
}

// 32 columns of the 16-row tile: words lo (row g) and hi (row g + 8) with their groups, the inputs xr.
__device__ __forceinline__ void tile_step(float (&acc)[NT][4], u32 lo, u32 hi, const GroupConst& qlo,
                                          const GroupConst& qhi, const u32 (&xr)[XH]) {
    float el[8], eh[8];
    dequant_word(lo, qlo, el);
    dequant_word(hi, qhi, eh);
#if MODE == 1
    // A fragment: a0/a1 rows g/g+8 at columns 4t..4t+3, a2/a3 the same at 16 + 4t (KMAP_E4M3)
    const u32 a0 = pack_e4m3x4(el[0], el[1], el[2], el[3]), a1 = pack_e4m3x4(eh[0], eh[1], eh[2], eh[3]);
    const u32 a2 = pack_e4m3x4(el[4], el[5], el[6], el[7]), a3 = pack_e4m3x4(eh[4], eh[5], eh[6], eh[7]);
#pragma unroll
    for (int j = 0; j < NT; ++j) mma_e4m3(acc[j], a0, a1, a2, a3, xr[2 * j], xr[2 * j + 1]);
#else
    // two k16 steps: columns 2t, 2t+1 and 8 + 2t, 9 + 2t of each (KMAP_BF16)
#pragma unroll
    for (int s = 0; s < 2; ++s) {
        const u32 a0 = pack_bf16x2(el[4 * s], el[4 * s + 1]), a1 = pack_bf16x2(eh[4 * s], eh[4 * s + 1]);
        const u32 a2 = pack_bf16x2(el[4 * s + 2], el[4 * s + 3]), a3 = pack_bf16x2(eh[4 * s + 2], eh[4 * s + 3]);
#pragma unroll
        for (int j = 0; j < NT; ++j) mma_bf16(acc[j], a0, a1, a2, a3, xr[4 * j + 2 * s], xr[4 * j + 2 * s + 1]);
    }
#endif
}

// One block: 16 output rows, all M (<= NT * 8) input rows; its WARPS warps split K, and their partial
// sums meet in shared memory in warp order (deterministic).
extern "C" __global__ void __launch_bounds__(32 * WARPS, 16 / WARPS)
int4_group_gemm(const uint4* __restrict__ qw, const u32* __restrict__ sz, const unsigned char* __restrict__ x,
                const float* __restrict__ sx, const float* __restrict__ s8, const float* __restrict__ bias,
                void* __restrict__ out, int M, int N, int N16, int chunks, int ldx, int group, int G,
                int per_token, int out_bf16) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tile = blockIdx.x;
    const int row_lo = tile * 16 + g;
    const int c_begin = warp * chunks / WARPS, c_end = (warp + 1) * chunks / WARPS;
    const uint4* tile_w = qw + ((size_t)tile * chunks) * 32 + lane;

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;

    int cur_group = -1;
    GroupConst qlo, qhi;
    bool waited = false;
    for (int c0 = c_begin; c0 < c_end; c0 += DEPTH) {
        uint4 w[DEPTH];
        u32 xr[DEPTH][2][XH];
#pragma unroll
        for (int d = 0; d < DEPTH; ++d)
            if (c0 + d < c_end) w[d] = __ldcs(tile_w + (size_t)(c0 + d) * 32);
        if (!waited) {
            // Launched early behind the kernel that writes x (programmatic dependent launch on Hopper):
            // the first weights are on their way; wait for x before reading it.
#if __CUDA_ARCH__ >= 900
            asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
            waited = true;
        }
#pragma unroll
        for (int d = 0; d < DEPTH; ++d)
            if (c0 + d < c_end)
#pragma unroll
                for (int h = 0; h < 2; ++h) load_x(xr[d][h], x, M, ldx, (c0 + d) * 64 + 32 * h, g, t);
#pragma unroll
        for (int d = 0; d < DEPTH; ++d) {
            if (c0 + d >= c_end) break;
            const u32 words[4] = {w[d].x, w[d].y, w[d].z, w[d].w};
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int grp = min(((c0 + d) * 64 + 32 * h) / group, G - 1);  // groups: multiples of 32, or K
                if (grp != cur_group) {
                    cur_group = grp;
                    qlo = group_const(__ldg(sz + (size_t)grp * N16 + row_lo));
                    qhi = group_const(__ldg(sz + (size_t)grp * N16 + row_lo + 8));
                }
                tile_step(acc, words[2 * h], words[2 * h + 1], qlo, qhi, xr[d][h]);
            }
        }
    }
#if __CUDA_ARCH__ >= 900
    if (!waited) asm volatile("griddepcontrol.wait;" ::: "memory");  // a warp with no chunks
#endif

    __shared__ float partial[WARPS][NT * 4][32];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) partial[warp][j * 4 + e][lane] = acc[j][e];
    __syncthreads();
    // The epilogue of each accumulator (j, e) of lane l: row g + 8 (e >= 2), input row 8j + 2t + (e & 1).
    for (int i = threadIdx.x; i < NT * 4 * 32; i += 32 * WARPS) {
        const int je = i / 32, l = i % 32, j = je / 4, e = je % 4;
        const int n = tile * 16 + (l >> 2) + (e >= 2 ? 8 : 0);
        const int m = j * 8 + 2 * (l & 3) + (e & 1);
        if (n >= N || m >= M) continue;
        float y = 0.0f;
#pragma unroll
        for (int v = 0; v < WARPS; ++v) y += partial[v][je][l];
#if MODE == 1
        y = y * (sx[per_token ? m : 0] * s8[0]);
#endif
        if (bias) y = y + bias[n];
        if (out_bf16) {
            u16 b;
            asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(y));
            ((u16*)out)[(size_t)m * N + n] = b;
        } else {
            ((float*)out)[(size_t)m * N + n] = y;
        }
    }
}

// The input as the GEMM reads it, one block per row m of x [M, K] (float32 or bf16, row stride ldin):
//   MODE 0: bf16(x)                                     -> xq [M, ldx] bf16
//   MODE 1: e4m3(x * (1 / sx)), saturating at +-448     -> xq [M, ldx] e4m3 codes
// with columns K..ldx-1 zero. With per_token, sx[m] = max|x[m]| / 448 (1 for a zero row) is computed and
// stored first; otherwise sx[0] is the calibrated scale. NaN inputs (MODE 1) are counted in nan_count.
extern "C" __global__ void __launch_bounds__(256)
int4_group_prepare_input(const void* __restrict__ xin, int in_bf16, int ldin, int K, int ldx,
                         float* __restrict__ sx, int per_token, unsigned char* __restrict__ xq,
                         int* __restrict__ nan_count) {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");  // the GEMM may start loading its weights now
#endif
    const int m = blockIdx.x;
    const float* xf = (const float*)xin + (size_t)m * ldin;
    const u16* xb = (const u16*)xin + (size_t)m * ldin;
    auto load = [&](int k) -> float { return in_bf16 ? __uint_as_float((u32)xb[k] << 16) : xf[k]; };
#if MODE == 1
    __shared__ float warp_max[8];
    float inv;
    if (per_token) {
        float amax = 0.0f;
        for (int k = threadIdx.x; k < K; k += 256) amax = fmaxf(amax, fabsf(load(k)));  // fmaxf drops NaN
        for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
        __syncthreads();
        amax = warp_max[0];
        for (int v = 1; v < 8; ++v) amax = fmaxf(amax, warp_max[v]);
        float scale = __fdiv_rn(amax, 448.0f);
        if (!(scale > 0.0f)) scale = 1.0f;
        if (threadIdx.x == 0) sx[m] = scale;
        inv = __fdiv_rn(1.0f, scale);
    } else {
        inv = __fdiv_rn(1.0f, sx[0]);
    }
    int nans = 0;
    for (int k = 2 * threadIdx.x; k < ldx; k += 512) {
        const float y0 = k < K ? load(k) * inv : 0.0f, y1 = k + 1 < K ? load(k + 1) * inv : 0.0f;
        nans += (y0 != y0) + (y1 != y1);
        u16 p;
        asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(p) : "f"(y1), "f"(y0));
        *(u16*)(xq + (size_t)m * ldx + k) = p;
    }
    if (nans) atomicAdd(nan_count, nans);
#else
    for (int k = 2 * threadIdx.x; k < ldx; k += 512) {
        const float y0 = k < K ? load(k) : 0.0f, y1 = k + 1 < K ? load(k + 1) : 0.0f;
        *(u32*)(xq + ((size_t)m * ldx + k) * 2) = pack_bf16x2(y0, y1);
    }
#endif
}

// The plain weight matrix w [N, ldw] (MODE 0 bf16, MODE 1 e4m3 codes) from qw and sz, for inputs with
// many rows, where a GEMM on the stored weights is bound by arithmetic rather than by their bytes:
// one warp per 16 x 64 tile, each lane writing its fragment's values where they belong.
extern "C" __global__ void __launch_bounds__(256)
int4_group_dequantize(const uint4* __restrict__ qw, const u32* __restrict__ sz, unsigned char* __restrict__ w,
                      int N, int N16, int chunks, int ldw, int group, int G) {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const size_t item = (size_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int tile = (int)(item / chunks), c = (int)(item % chunks);
    if (tile * 16 >= N16) return;
    const uint4 q = __ldg(qw + item * 32 + lane);
    const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int k0 = c * 64 + 32 * h;
        const int grp = min(k0 / group, G - 1);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int n = tile * 16 + g + 8 * r;
            if (n >= N) continue;
            float e[8];
            dequant_word(words[2 * h + r], group_const(__ldg(sz + (size_t)grp * N16 + n)), e);
#if MODE == 1
            u32* row = (u32*)(w + (size_t)n * ldw + k0);
            row[t] = pack_e4m3x4(e[0], e[1], e[2], e[3]);
            row[4 + t] = pack_e4m3x4(e[4], e[5], e[6], e[7]);
#else
            u32* row = (u32*)(w + ((size_t)n * ldw + k0) * 2);
#pragma unroll
            for (int s = 0; s < 4; ++s) row[8 * (s >> 1) + 4 * (s & 1) + t] = pack_bf16x2(e[2 * s], e[2 * s + 1]);
#endif
        }
    }
}
