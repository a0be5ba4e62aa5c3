// int8_gemm (kernels/triton/gemm.py) with packed signed INT4 weights, for few input rows, compiled at run
// time with NVRTC: int8 inputs a [M, K] times INT4 weights w packed two per byte [N, K/2]
// (numerics/packing.py: code 2i in the low nibble of byte i), on the int8 tensor cores (mma m16n8k32 s8,
// int32 accumulators: exact), then the float epilogue in the reference's order:
//   y = float32(acc) * (sa[m or 0] * sw[n]) + bias[n], activation, then the output cast or requantization.
// Few rows are bound by the weight bytes, so the weights are read once, straight from their canonical
// packed layout (no second copy), through a ring of STAGES chunks in shared memory (cp.async).
//
// Only A and B need the same assignment of K to the mma's k positions. A chunk is PIECES pieces of 64
// bytes (128 columns) of each of a warp's 16 weight rows; lane (g, t) copies bytes 16t..16t+15 of each
// piece of rows g and g + 8 (so the warp asks for 64 * PIECES contiguous bytes of every row at once):
// columns 32t..32t+31 of the piece. Each 32-bit word (8 codes) gives two mma operands,
// (w << 4) & 0xf0f0f0f0 the even columns and w & 0xf0f0f0f0 the odd ones, each code times 16 in a
// signed byte; the input bytes, read in plain row order (16-byte loads of rows 8j + g), are regrouped
// to match (byte_perm 0x6420 / 0x7531), and the accumulators, 16 times the sums, are shifted back
// (exact: every product is a multiple of 16).
//
// Compile-time constants (-D): NT (column tiles of 8 input rows), KWARPS (warps of a block: one 16-row
// weight tile, its chunks taken in turn), STAGES (chunks in flight per warp), PIECES. K is split over
// the block's warps and, where the tiles alone would leave multiprocessors idle, over gridDim.y blocks
// (common.cuh: sum_warps, sum_splits): a split over blocks costs a round trip through global memory
// (about 5 us at N = K = 8192 on the H100), one over warps a shared-memory sum.
// The launcher guarantees: rows of a and w start 16-byte aligned, K a multiple of 32.

#include "common.cuh"

#ifndef NT
#define NT 1
#endif
#ifndef KWARPS
#define KWARPS 4
#endif
#ifndef STAGES
#define STAGES 4
#endif
#ifndef PIECES
#define PIECES 2
#endif
#define CHUNK_BYTES (64 * PIECES)  // bytes of each weight row per chunk
#define PIECE_COLS 128             // input columns per 64-byte piece of a weight row
#define XV 2                       // 16-byte input loads (32 columns) per lane, piece and column tile

// One 64-byte piece of a chunk: the lane's 16 bytes of weight rows g (lo) and g + 8 (hi), its input bytes
// xv of rows 8j + g.
__device__ __forceinline__ void piece_step(int (&acc)[NT][4], const uint4& lo, const uint4& hi,
                                           const uint4 (&xv)[NT][PIECES * XV], int p) {
    const u32 wl[4] = {lo.x, lo.y, lo.z, lo.w}, wh[4] = {hi.x, hi.y, hi.z, hi.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const u32 even_lo = (wl[i] << 4) & 0xf0f0f0f0u, odd_lo = wl[i] & 0xf0f0f0f0u;
        const u32 even_hi = (wh[i] << 4) & 0xf0f0f0f0u, odd_hi = wh[i] & 0xf0f0f0f0u;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const uint4& xb = xv[j][p * XV + (i >> 1)];
            const u32 x0 = (i & 1) ? xb.z : xb.x, x1 = (i & 1) ? xb.w : xb.y;  // columns 8i..8i+7 of the lane's 32
            mma_s8(acc[j], even_lo, even_hi, odd_lo, odd_hi, __byte_perm(x0, x1, 0x6420), __byte_perm(x0, x1, 0x7531));
        }
    }
}

// Block (tile, split): weight rows 16 tile.., chunks [split * split_chunks, +split_chunks), of which warp
// w takes every KWARPS-th from the w-th. act: 0 none, 1 ReLU, 2 GELU (erf). out_kind: 0 int32
// accumulators, 1 int8 codes at out_scale clamped to [qmin, qmax], 2 float (float_kind 0 float32, 1 bf16,
// 2 fp16).
extern "C" __global__ void __launch_bounds__(32 * KWARPS)
int4_small_m_gemm(const unsigned char* __restrict__ w, const unsigned char* __restrict__ a,
                  const float* __restrict__ sa, const float* __restrict__ sw, const float* __restrict__ bias,
                  const float* __restrict__ out_scale, void* __restrict__ out, int* __restrict__ partial,
                  int* __restrict__ arrivals, int M, int N, int K, int ldw, int lda, int chunks, int split_chunks,
                  int per_token, int act, int out_kind, int float_kind, int qmin, int qmax) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int tile = blockIdx.x;
    const int row_bytes = K / 2;
    const int c_first = blockIdx.y * split_chunks + warp;
    const int c_end = min(blockIdx.y * split_chunks + split_chunks, chunks);
    const unsigned char* wrow[2];
    bool wrow_ok[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int n = tile * 16 + g + 8 * r;
        wrow_ok[r] = n < N;
        wrow[r] = w + (size_t)(wrow_ok[r] ? n : 0) * ldw + 16 * t;
    }
    const unsigned char* xrow[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) xrow[j] = 8 * j + g < M ? a + (size_t)(8 * j + g) * lda + XV * 16 * t : nullptr;

    // One accumulator set per piece: the mma steps of different pieces do not wait for each other.
    int acc[PIECES][NT][4];
#pragma unroll
    for (int p = 0; p < PIECES; ++p)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[p][j][e] = 0;

    // The warp's i-th chunk is c = c_first + i * KWARPS; its piece p: bytes c * CHUNK_BYTES + 64p + 16t.. of
    // the lane's rows, so that the warp asks for CHUNK_BYTES contiguous bytes of each of its 16 rows at once.
    __shared__ uint4 ring[KWARPS][STAGES][2][PIECES][32];
    auto fetch = [&](int i) {
        const int c = c_first + i * KWARPS;
        if (c < c_end) {
#pragma unroll
            for (int p = 0; p < PIECES; ++p)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int off = c * CHUNK_BYTES + 64 * p;  // zero-filled past a row's end and for rows past N
                    const bool ok = wrow_ok[r] && off + 16 * t < row_bytes;
                    cp_async16_zfill(&ring[warp][i % STAGES][r][p][lane], ok ? wrow[r] + off : w, ok ? 16 : 0);
                }
        }
        cp_async_commit();  // empty groups too: the count of groups stays uniform
    };
    uint4 xv[NT][PIECES * XV];  // the input columns of the chunk in hand, loaded one chunk ahead
    auto load_x = [&](int c) {
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int p = 0; p < PIECES; ++p)
#pragma unroll
                for (int v = 0; v < XV; ++v) {
                    const int col = (c * PIECES + p) * PIECE_COLS + XV * 16 * t + 16 * v;
                    xv[j][p * XV + v] = xrow[j] && c < c_end && col < K
                                            ? __ldg((const uint4*)(xrow[j] + (size_t)(c * PIECES + p) * PIECE_COLS) + v)
                                            : make_uint4(0, 0, 0, 0);
                }
    };
    for (int s = 0; s < STAGES - 1; ++s) fetch(s);
    // Launched early behind the kernel that writes a (programmatic dependent launch on Hopper).
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    load_x(c_first);
    for (int i = 0, c = c_first; c < c_end; ++i, c += KWARPS) {
        cp_async_wait<STAGES - 2>();  // chunk i has landed
        uint4 lo[PIECES], hi[PIECES];
#pragma unroll
        for (int p = 0; p < PIECES; ++p) {
            lo[p] = ring[warp][i % STAGES][0][p][lane];
            hi[p] = ring[warp][i % STAGES][1][p][lane];
        }
        fetch(i + STAGES - 1);  // into the slot chunk i - 1 left
#pragma unroll
        for (int p = 0; p < PIECES; ++p) piece_step(acc[p], lo[p], hi[p], xv, p);
        load_x(c + KWARPS);
    }
    cp_async_wait<0>();
#pragma unroll
    for (int p = 1; p < PIECES; ++p)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[0][j][e] += acc[p][j][e];
    if (!sum_warps<KWARPS>(acc[0]) || !sum_splits(acc[0], partial, arrivals)) return;

    // Accumulator (j, e) of lane (g, t): weight row g + 8 (e >= 2), input row 8j + 2t + (e & 1).
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int n = tile * 16 + g + (e >= 2 ? 8 : 0), m = 8 * j + 2 * t + (e & 1);
            if (n >= N || m >= M) continue;
            const int total = acc[0][j][e] >> 4;
            const size_t i = (size_t)m * N + n;
            if (out_kind == 0) {
                ((int*)out)[i] = total;
                continue;
            }
            // No fused multiply-adds: each operation rounds as the reference's does.
            float y = __fmul_rn(__int2float_rn(total), __fmul_rn(sa[per_token ? m : 0], sw[n]));
            if (bias) y = __fadd_rn(y, bias[n]);
            if (act == 1) {
                y = fmaxf(y, 0.0f);
            } else if (act == 2) {
                y = __fmul_rn(__fmul_rn(0.5f, y), __fadd_rn(1.0f, erff(__fmul_rn(y, 0.7071067811865476f))));
            }
            if (out_kind == 1) {
                const float q = rintf(__fmul_rn(y, __fdiv_rn(1.0f, *out_scale)));
                ((signed char*)out)[i] = (signed char)fminf(fmaxf(q, (float)qmin), (float)qmax);
            } else {
                store_float(out, i, y, float_kind);
            }
        }
}
