// INT4-group weights on the float tensor cores for few input rows (W4A16 and W4A8, design.md 2.3),
// compiled at run time with NVRTC. The arithmetic is nn/mixed_linear.py's:
//   MODE 0 (W4A16): w = bf16((c - z) * s)   y = bf16(x) @ w^T + bias                 (mma m16n8k16 bf16)
//   MODE 1 (W4A8):  w = e4m3((c - z) * s)   y = (e4m3(x / sx) @ w^T) * (sx * s8) + bias (mma m16n8k16 fp16)
// with float32 accumulation: the products are exact, so only the order of the float32 sums differs
// from the reference. The scales s have at most 7 significant bits (numerics/groupwise.py), so that two
// weights convert at once in packed 16-bit arithmetic, exactly: the code goes into the mantissa of a
// 16-bit float (128 + c in bf16, 1024 + c in fp16), one packed fma subtracts 128 + z (or 1024 + z)
// exactly, and one packed fma by s rounds (c - z) * s once (bf16), or leaves it exact (fp16, at most
// 4 + 7 significant bits) for the one rounding to E4M3. Every weight is rounded as the reference rounds it.
//
// W4A8 multiplies its E4M3 values as fp16, which holds every one of them exactly, so the products and
// sums are those of an E4M3 mma: Hopper's mma.sync has no E4M3 units (ptxas turns m16n8k32 e4m3 into
// conversions of both operands to fp16 and two fp16 steps). The inputs come as fp16 values
// (int4_group_prepare_input, or staged so by the GEMM itself), so that only the weights are converted.
//
// Compile-time constants (-D): MODE, NT (column tiles of 8 input rows), TB (16-row weight tiles of a
// block, 1 or 2: with 2 each input fragment serves both), KWARPS (warps of a block, taking the units of
// its tiles in turn), STAGES (units in flight per warp, through shared memory), U, SETS and GROUP (the
// units, below), XIN (MODE 1: the input's format).
//
// Layout (kernels/cuda/int4_group.py builds it): per 16-row weight tile a stream of units, each U
// consecutive 64-column chunks of codes followed by the constants of their groups, so that a warp takes
// the codes and their constants in one go (H100, N = K = 8192, one row: W4A16 21.4 -> 17.2 us against a
// separate array of constants fetched beside every chunk; RESULTS, session 22):
//   stream [N16 / 16, units, UW] uint4, UW = 32 U + 4 SETS
//   - uint4 32 u + lane (u < U): chunk U j + u of the tile, 16 bytes per lane. Lane (g, t) = (lane / 4,
//     lane % 4) holds columns 16t..16t+15 of the chunk: word 2r + h the 8 columns 8h..8h+7 of row g + 8r,
//     column 2i in bits 4i..4i+3 and column 2i + 1 in bits 16 + 4i.. (i < 4), so that
//     (word >> 4i) & 0x000f000f puts a column pair in the two halves of a register.
//   - then SETS sets of 64 bytes, one per group: u32 2g + r = s | (-(B + z)) << 16 of row g + 8r, each a
//     16-bit float (bf16 MODE 0, fp16 MODE 1), B = 128 (bf16) or 1024 (fp16).
//   U = 2 and one set for groups of a multiple of 128 columns or one group per row, U = 1 and one set for
//   other multiples of 64, U = 1 and two sets (the chunk's first group and the next; lane t's is
//   lane_set) for other multiples of 32 (GROUP columns): a unit never needs more. With U = 2 and an odd
//   count of chunks the last unit ends in a chunk of zero codes, which meets x = 0.
//   x [M, ldx] MODE 0 bf16; MODE 1 the fp16 values of E4M3 codes (XIN 0), or the layer's input itself in
//     bf16 (XIN 1) or float32 (XIN 2), of which each block first quantizes its columns into shared memory
//     as fp16 values (rows xs_stride bytes apart), as int4_group_prepare_input would (static scale; K ==
//     K64). Columns K..K64-1 are zero. A lane reads the same 16 columns of its input rows as of its weights.
// N16, K64: N and K rounded up to 16 and 64 (padded rows have scale 0; padded columns meet x = 0).
//
// K is split over the block's warps and, where the tiles alone would leave multiprocessors idle, over
// gridDim.y blocks (common.cuh: sum_warps, sum_splits; both add in a fixed order: deterministic).

#include "common.cuh"

#ifndef MODE
#define MODE 1
#endif
#ifndef NT
#define NT 1
#endif
#ifndef KWARPS
#define KWARPS 4
#endif
#ifndef STAGES
#define STAGES 3
#endif
#ifndef U
#define U 2
#endif
#ifndef SETS
#define SETS 1
#endif
#ifndef GROUP
#define GROUP 0
#endif
#ifndef XIN
#define XIN 0
#endif
#ifndef TB
#define TB 1
#endif
#define UW (32 * U + 4 * SETS)

__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// A column pair (c - z) * s from a word shifted so that its codes sit in bits 0..3 and 16..19; mask =
// 0x000f000f, a register (see int4_group_gemm).
__device__ __forceinline__ u32 dequant_pair(u32 shifted, u32 s2, u32 zb2, u32 mask) {
    u32 r;
#if MODE == 1
    const u32 v = (shifted & mask) | 0x64006400u;  // fp16 1024 + c
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(0x3c003c00u), "r"(zb2));  // c - z, exact
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(r), "r"(s2), "r"(0x80008000u));   // (c - z) s, exact
#else
    const u32 v = (shifted & mask) | 0x43004300u;  // bf16 128 + c
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(v), "r"(0x3f803f80u), "r"(zb2));  // c - z, exact
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(r), "r"(s2), "r"(0x80008000u));   // bf16((c - z) s)
#endif
    return r;
}

#if MODE == 1
// A pair of fp16 values -> their E4M3 codes (satfinite: beyond +-448 saturates, as the reference's clamp
// before the cast), and two E4M3 codes -> their fp16 values (exact).
__device__ __forceinline__ u16 e4m3x2_of_f16x2(u32 pair) {
    u16 q;
    asm("cvt.rn.satfinite.e4m3x2.f16x2 %0, %1;" : "=h"(q) : "r"(pair));
    return q;
}
__device__ __forceinline__ u32 f16x2_of_e4m3x2(u16 q) {
    u32 r;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(r) : "h"(q));
    return r;
}

// A pair of fp16 values rounded to E4M3 and back: their E4M3 values as fp16. (Rounding in packed fp16
// arithmetic instead, by Veltkamp's splitting of weights scaled into fp16's range, takes three packed
// ops and was slower on the H100: N = K = 8192, one row, 19.3 against 17.2 us; RESULTS, session 23.)
__device__ __forceinline__ u32 e4m3_grid(u32 v) { return f16x2_of_e4m3x2(e4m3x2_of_f16x2(v)); }

// Two float32 values -> their E4M3 codes, lo in the low byte (satfinite, as above).
__device__ __forceinline__ u16 e4m3x2(float lo, float hi) {
    u16 p;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(p) : "f"(hi), "f"(lo));
    return p;
}
#endif

#if MODE == 1 && XIN
#define X_BYTES (XIN == 1 ? 2 : 4)
// Eight consecutive input values, bf16 (XIN 1) or float32 (XIN 2) -> their E4M3 codes e4m3(x * inv),
// saturating: int4_group_prepare_input's arithmetic (its fp16 values are staged).
__device__ __forceinline__ uint2 quantize8(const unsigned char* __restrict__ src, float inv) {
    float v[8];
#if XIN == 1
    const uint4 r = __ldg((const uint4*)src);
    const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) v[2 * e] = __uint_as_float(w[e] << 16), v[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
#else
    const float4 a = __ldg((const float4*)src), b = __ldg((const float4*)src + 1);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
#endif
    u32 q[2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
        q[i] = (u32)e4m3x2(v[4 * i] * inv, v[4 * i + 1] * inv) | ((u32)e4m3x2(v[4 * i + 2] * inv, v[4 * i + 3] * inv) << 16);
    return make_uint2(q[0], q[1]);
}

// NaN codes (0x7f, 0xff: what NaN inputs become) among four E4M3 codes.
__device__ __forceinline__ int nan_codes(u32 q) { return __popc(__vcmpeq4(q & 0x7f7f7f7fu, 0x7f7f7f7fu)) >> 3; }
#endif

// The 8 columns of one word as the mma takes them: 16-bit pairs (columns 0-1, 2-3, 4-5, 6-7), bf16
// (MODE 0) or the fp16 values of E4M3 (MODE 1).
__device__ __forceinline__ void dequant_word(u32 w, u32 s2, u32 zb2, u32 mask, u32 (&v)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        v[i] = dequant_pair(w >> (4 * i), s2, zb2, mask);
#if MODE == 1
        v[i] = e4m3_grid(v[i]);
#endif
    }
}

// One 64-column chunk of a warp's tile: the lane's weight words q, its rows' constants sc = (s, zb) of
// row g then of row g + 8, and its input fragments xv (16 columns of each input row 8j + g).
__device__ __forceinline__ void chunk_step(float (&acc)[NT][4], const uint4& q, const uint4& sc,
                                           const uint4 (&xv)[NT][2], u32 mask) {
    const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        u32 lo[4], hi[4];  // columns 8h.. of rows g and g + 8
        dequant_word(words[h], sc.x, sc.y, mask, lo);
        dequant_word(words[2 + h], sc.z, sc.w, mask, hi);
        // two m16n8k16 steps: a0/a1 at k 2t, 2t+1 = columns 8h + 4s, +1; a2/a3 at k 2t+8.. = 8h + 4s + 2, +3
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const uint4& xb = xv[j][h];
                const u32 b0 = s ? xb.z : xb.x, b1 = s ? xb.w : xb.y;
#if MODE == 1
                mma_f16(acc[j], lo[2 * s], hi[2 * s], lo[2 * s + 1], hi[2 * s + 1], b0, b1);
#else
                mma_bf16(acc[j], lo[2 * s], hi[2 * s], lo[2 * s + 1], hi[2 * s + 1], b0, b1);
#endif
            }
    }
}

// The set of constants of lane t's 16 columns of chunk c in its unit.
__device__ __forceinline__ int lane_set(int c, int t) {
#if SETS == 2
    return (c * 64 + 16 * t) / GROUP - c * 64 / GROUP;
#else
    return 0;
#endif
}

// A lane's constants (s, zb) of row g then of row g + 8 from a unit's sets, each 16-bit value put in both
// halves of a register as the packed arithmetic takes it.
__device__ __forceinline__ uint4 lane_constants(const uint4* unit, int c, int g, int t) {
    const uint2 p = *((const uint2*)(unit + 32 * U) + lane_set(c, t) * 8 + g);
    return make_uint4(__byte_perm(p.x, 0, 0x1010), __byte_perm(p.x, 0, 0x3232), __byte_perm(p.y, 0, 0x1010),
                      __byte_perm(p.y, 0, 0x3232));
}

// Block (tiles TB b.. TB b + TB - 1, split): units [split * split_units, +split_units) of those weight
// tiles, of which warp w takes every KWARPS-th from the w-th. With XIN, NaN inputs add to nan_count
// (counted by the first tiles' blocks).
extern "C" __global__ void __launch_bounds__(32 * KWARPS)
int4_group_gemm(const uint4* __restrict__ stream, const unsigned char* __restrict__ x, const float* __restrict__ sx,
                const float* __restrict__ s8, const float* __restrict__ bias, void* __restrict__ out,
                float* __restrict__ partial, int* __restrict__ arrivals, int* __restrict__ nan_count, int M, int N,
                int units, int chunks, int split_units, int ldx, int xs_stride, int per_token, int out_bf16) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    // The ring of weight units (below), then with XIN the staged input: dynamic, so that the static 48 KiB
    // hold the warps' sums alone (ring_bytes in int4_group.py)
    extern __shared__ uint4 dynamic_shared[];
    // 0x000f000f, which ptxas would otherwise put in a register anew before each of its uses, an
    // instruction per column pair (H100, N = K = 8192, W4A8 one row 18.4 -> 17.2 us, 16 rows 23.8 -> 22.8;
    // W4A16 one row 15.2 -> 14.8, but 16 rows 20.8 -> 22.1, so not there): M >= 0
    const u32 mask = MODE == 1 || NT == 1 ? 0x000f000fu | ((u32)M & 0x80000000u) : 0x000f000fu;
    const int tile = blockIdx.x * TB, tiles = (N + 15) / 16;
    const int j_first = blockIdx.y * split_units + warp;
    const int j_end = min(blockIdx.y * split_units + split_units, units);
    const int chunk_end = min(j_end * U, chunks);  // a last unit's zero chunk meets x = 0
    const uint4* tile_stream = stream + (size_t)tile * units * UW;  // the block's tile b at + b units UW
    // the lane's 16 columns of each of its input rows, 16-bit values
#if MODE == 1 && XIN
    // x staged in shared memory as fp16 values, from column 64 c0 (below); rows past M read row M - 1,
    // which only feeds accumulator columns never stored
    uint4* const staged = dynamic_shared + KWARPS * STAGES * TB * UW;
    const int c0 = blockIdx.y * split_units * U;
    const unsigned char* xrow[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) xrow[j] = (const unsigned char*)staged + min(8 * j + g, M - 1) * xs_stride + 32 * t;
#else
    const unsigned char* xrow[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) xrow[j] = 8 * j + g < M ? x + ((size_t)(8 * j + g) * ldx + 16 * t) * 2 : nullptr;
#endif

    float acc[TB * NT][4];  // tile b's column tile j at b NT + j
#pragma unroll
    for (int j = 0; j < TB * NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;

    // The units stream through a ring of STAGES in shared memory (cp.async), so the bytes in flight need
    // no registers: each lane copies 16 bytes of every chunk, lanes 0..4 SETS - 1 the constants, which
    // every lane then reads (hence the __syncwarp after the wait). The warp's i-th unit is j_first + i KWARPS.
    uint4 (*const ring)[STAGES][TB][UW] = reinterpret_cast<uint4 (*)[STAGES][TB][UW]>(dynamic_shared);
    auto fetch = [&](int i) {
        const int j = j_first + i * KWARPS;
        if (j < j_end) {
#pragma unroll
            for (int b = 0; b < TB; ++b) {
                if (tile + b >= tiles) break;  // an odd count of tiles: the last block's second is never stored
                const uint4* unit = tile_stream + ((size_t)b * units + j) * UW;
#pragma unroll
                for (int u = 0; u < U; ++u) cp_async16(&ring[warp][i % STAGES][b][32 * u + lane], unit + 32 * u + lane);
                if (lane < 4 * SETS) cp_async16(&ring[warp][i % STAGES][b][32 * U + lane], unit + 32 * U + lane);
            }
        }
        cp_async_commit();  // empty groups too: the count of groups stays uniform
    };
    // The input fragments (from L2 or L1, or staged) come through registers, two of the warp's chunks
    // ahead: the chunk two after c is c + 2 KWARPS for U = 1 and 2 alike.
    uint4 xv[2][NT][2];
    auto load_x = [&](int d, int c) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int v = 0; v < 2; ++v)
#if MODE == 1 && XIN
                xv[d][j][v] = c < chunk_end ? *((const uint4*)(xrow[j] + (c - c0) * 128) + v) : make_uint4(0, 0, 0, 0);
#else
                xv[d][j][v] = xrow[j] && c < chunk_end ? __ldg((const uint4*)(xrow[j] + (size_t)c * 128) + v)
                                                       : make_uint4(0, 0, 0, 0);
#endif
    };
    for (int s = 0; s < STAGES - 1; ++s) fetch(s);
#if MODE == 1
    // A static input scale and the weight scale are the layer's own, which no kernel before this one writes
    // (as its weights): read them with the first weights, not after the wait for x (H100, one row: 576 x 576
    // 2.53 -> 2.28 us, 4096 x 4096 8.60 -> 7.95; RESULTS, session 31). A per-token scale comes with x.
    const float static_out_scale = per_token ? 0.0f : sx[0] * s8[0];
#if XIN
    const float inv = __fdiv_rn(1.0f, sx[0]);
#endif
#endif
    // Launched early behind the kernel that writes x (programmatic dependent launch on Hopper): the first
    // weights are on their way; the next layer's kernel may be launched now, to do the same while this one
    // runs (H100, N = K = 8192, one row: 16.4 -> 15.2 us; RESULTS, session 22); wait for x before reading it.
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#if MODE == 1 && XIN
    {
        // The block's columns of the input rows, 8 a thread at a time, into shared memory.
        const int per_row = (chunk_end - c0) * 8;
        unsigned char* const dst = (unsigned char*)staged;
        int nans = 0;
        auto stage = [&](int m, int item) {
            const uint2 q = quantize8(x + ((size_t)m * ldx + c0 * 64 + item * 8) * X_BYTES, inv);
            if (tile == 0) nans += nan_codes(q.x) + nan_codes(q.y);
            *(uint4*)(dst + m * xs_stride + item * 16) =
                make_uint4(f16x2_of_e4m3x2((u16)q.x), f16x2_of_e4m3x2((u16)(q.x >> 16)), f16x2_of_e4m3x2((u16)q.y),
                           f16x2_of_e4m3x2((u16)(q.y >> 16)));
        };
        if (per_row >= 32 * KWARPS) {  // rows that keep every thread busy: one after the other
            for (int m = 0; m < M; ++m)
#pragma unroll 4
                for (int item = threadIdx.x; item < per_row; item += 32 * KWARPS) stage(m, item);
        } else {
            // Short rows: all rows' items i in one loop (row i / per_row), so that their loads overlap
            // (H100, 16 rows of 576 columns: 8.7 -> 4.8 us; long rows lose 3-9% this way). The row comes
            // from a float product: (i + 0.5) / per_row lies 0.5 / per_row or more from an integer, its
            // rounding error (under 33 * 2^-23) far less, as the host keeps the staged bytes, M * per_row *
            // 16, within MAX_STAGED_BYTES (64 KiB).
            const float per_row_inv = 1.0f / (float)per_row;
#pragma unroll 4
            for (int i = threadIdx.x; i < M * per_row; i += 32 * KWARPS) {
                const int m = (int)(((float)i + 0.5f) * per_row_inv);
                stage(m, i - m * per_row);
            }
        }
        if (nans) atomicAdd(nan_count, nans);
        __syncthreads();
    }
#endif
#pragma unroll
    for (int d = 0; d < 2; ++d) load_x(d, (j_first + d / U * KWARPS) * U + d % U);
    // Units in pairs when U = 1, so that the input fragments' slot (the warp's chunk count mod 2) is known
    // at compile time.
    for (int i0 = 0; j_first + i0 * KWARPS < j_end; i0 += 2 / U) {
#pragma unroll
        for (int d = 0; d < 2 / U; ++d) {
            const int i = i0 + d, j = j_first + i * KWARPS;
            if (j < j_end) {
                cp_async_wait<STAGES - 2>();  // unit i has landed
                __syncwarp();
                uint4 sc[TB], q[TB][U];
#pragma unroll
                for (int b = 0; b < TB; ++b) {
                    const uint4* unit = ring[warp][i % STAGES][b];
                    sc[b] = lane_constants(unit, j, g, t);
#pragma unroll
                    for (int u = 0; u < U; ++u) q[b][u] = unit[32 * u + lane];
                }
                fetch(i + STAGES - 1);  // into the slot unit i - 1 left
#pragma unroll
                for (int u = 0; u < U; ++u) {
#pragma unroll
                    for (int b = 0; b < TB; ++b)
                        chunk_step(*reinterpret_cast<float(*)[NT][4]>(&acc[b * NT]), q[b][u], sc[b], xv[d + u], mask);
                    load_x(d + u, j * U + u + 2 * KWARPS);
                }
            }
        }
    }
    cp_async_wait<0>();
    if (!sum_warps<KWARPS>(acc) || !sum_splits(acc, partial, arrivals)) return;

    // Accumulator (b NT + j, e) of lane (g, t): row g + 8 (e >= 2) of tile b, input row 8j + 2t + (e & 1).
#pragma unroll
    for (int bj = 0; bj < TB * NT; ++bj)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int j = bj % NT;
            const int n = (tile + bj / NT) * 16 + g + (e >= 2 ? 8 : 0), m = 8 * j + 2 * t + (e & 1);
            if (n >= N || m >= M) continue;
            float y = acc[bj][e];
#if MODE == 1
            y = y * (per_token ? sx[m] * s8[0] : static_out_scale);
#endif
            if (bias) y = y + bias[n];
            store_float(out, (size_t)m * N + n, y, out_bf16);
        }
}

// The input as the GEMM reads it, blocks (m, j) for the rows m of x [M, K] (float32 or bf16, row stride
// ldin), each taking every gridDim.y-th span of 512 columns (one block per row with per_token):
//   MODE 0: bf16(x)                                     -> xq [M, ldx] bf16
//   MODE 1: e4m3(x * (1 / sx)), saturating at +-448     -> xq [M, ldx] e4m3 codes, or with half_out their
//                                                          fp16 values (the few-rows GEMM's input)
// with columns K..ldx-1 zero. With per_token, sx[m] = max|x[m]| / 448 (1 for a zero row) is computed and
// stored first; otherwise sx[0] is the calibrated scale. NaN inputs (MODE 1) are counted in nan_count.
// With deinterleave (ldx a multiple of 128; MODE 1 codes, not half_out): each 128-column tile's even columns,
// then its odd ones (the order of the Triton INT4 GEMM's two dots, kernels/triton/int4_gemm.py).
extern "C" __global__ void __launch_bounds__(256)
int4_group_prepare_input(const void* __restrict__ xin, int in_bf16, int ldin, int K, int ldx,
                         float* __restrict__ sx, int per_token, unsigned char* __restrict__ xq,
                         int* __restrict__ nan_count, int half_out, int deinterleave) {
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
    for (int k = 2 * (blockIdx.y * 256 + threadIdx.x); k < ldx; k += 512 * gridDim.y) {
        const float y0 = k < K ? load(k) * inv : 0.0f, y1 = k + 1 < K ? load(k + 1) * inv : 0.0f;
        nans += (y0 != y0) + (y1 != y1);
        const u16 q = e4m3x2(y0, y1);
        if (half_out) {
            *(u32*)(xq + ((size_t)m * ldx + k) * 2) = f16x2_of_e4m3x2(q);
        } else if (deinterleave) {
            unsigned char* tile = xq + (size_t)m * ldx + (k & ~127);
            tile[(k & 127) >> 1] = (unsigned char)q;
            tile[64 + ((k & 127) >> 1)] = (unsigned char)(q >> 8);
        } else {
            *(u16*)(xq + (size_t)m * ldx + k) = q;
        }
    }
    if (nans) atomicAdd(nan_count, nans);
#else
    for (int k = 2 * (blockIdx.y * 256 + threadIdx.x); k < ldx; k += 512 * gridDim.y) {
        const float y0 = k < K ? load(k) : 0.0f, y1 = k + 1 < K ? load(k + 1) : 0.0f;
        const u32 pair = pack_bf16x2(y0, y1);
        if (deinterleave) {
            u16* tile = (u16*)xq + (size_t)m * ldx + (k & ~127);
            tile[(k & 127) >> 1] = (u16)pair;
            tile[64 + ((k & 127) >> 1)] = (u16)(pair >> 16);
        } else {
            *(u32*)(xq + ((size_t)m * ldx + k) * 2) = pair;
        }
    }
#endif
}

// The plain weight matrix w [N, ldw] (MODE 0 bf16, MODE 1 e4m3 codes) from the stream, for inputs with
// many rows, where a GEMM on the stored weights is bound by arithmetic rather than by their bytes:
// one warp per 16 x 64 tile, each lane writing its 16 columns of rows g and g + 8.
extern "C" __global__ void __launch_bounds__(256)
int4_group_dequantize(const uint4* __restrict__ stream, unsigned char* __restrict__ w, int N, int tiles, int units,
                      int chunks, int ldw) {
    const int lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const size_t item = (size_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    const int tile = (int)(item / chunks), c = (int)(item % chunks);
    if (tile >= tiles) return;
    const uint4* unit = stream + ((size_t)tile * units + c / U) * UW;
    const uint4 q = __ldg(unit + 32 * (c % U) + lane);
    const uint4 sc = lane_constants(unit, c, g, t);
    const u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int n = tile * 16 + g + 8 * r;
        if (n >= N) continue;
        const u32 s2 = r ? sc.z : sc.x, zb2 = r ? sc.w : sc.y;
#if MODE == 1
        u32 q8[4];  // E4M3 codes of columns 4i..4i+3: pairs 2i, 2i + 1 (at shifts 4 (2i % 4) of word i / 2)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 word = words[2 * r + i / 2] >> (8 * (i % 2));
            q8[i] = (u32)e4m3x2_of_f16x2(dequant_pair(word, s2, zb2, 0x000f000fu)) |
                    ((u32)e4m3x2_of_f16x2(dequant_pair(word >> 4, s2, zb2, 0x000f000fu)) << 16);
        }
        *(uint4*)(w + (size_t)n * ldw + c * 64 + 16 * t) = make_uint4(q8[0], q8[1], q8[2], q8[3]);
#else
        u32 v0[4], v1[4];
        dequant_word(words[2 * r], s2, zb2, 0x000f000fu, v0);
        dequant_word(words[2 * r + 1], s2, zb2, 0x000f000fu, v1);
        uint4* row = (uint4*)(w + ((size_t)n * ldw + c * 64 + 16 * t) * 2);
        row[0] = make_uint4(v0[0], v0[1], v0[2], v0[3]);
        row[1] = make_uint4(v1[0], v1[1], v1[2], v1[3]);
#endif
    }
}
