// Bit-serial (PrecisionBatching) kernels for binary tensor cores, compiled at run time with NVRTC.
// The arithmetic is kernels/reference.py:bitserial_acc and nn/bitserial.py, exactly.
//
// Compile-time constants (-D): NT (column tiles of 8 per warp), WARPS_K (warps of a block splitting K),
// CW (groups of WARPS_K warps of a block, each taking NT column tiles of its own),
// A8 (activation planes per input row, padded to a multiple of 8), PG (weight planes per pipeline stage),
// WIDE (1: the sums of a warp's chunks may pass int32), RING (0: each warp keeps two stages of weight
// planes in registers; n > 0: a ring of n stages in shared memory, shared by the CW warps that take the
// same chunks).
//
// Layouts (int32 words, bit i of word w = element 32w + i along K; K padded with zero bits to WPAD words,
// a multiple of 16, i.e. 512 bits: two mma k-steps per 16-byte load):
//   weight planes  [n_stored, N, WPAD]   plane i: bit i of the unsigned odd-grid code (a +-1 layer)
//   input planes   [M * A8, WPAD]        row m * A8 + j: bit j of input row m's fixed-point codes
//                                        (two's complement; planes j >= act_bits are zero)
//   input sums     [M, WPAD] int32       sum of input row m's codes in each word
//
// Only A and B need the same assignment of K bits to mma k-positions (AND + popcount sums over K), so
// each thread loads 16 consecutive bytes and feeds words {0, 1} to one mma and {2, 3} to the next.

#include "common.cuh"

typedef long long i64;

#ifndef NT
#define NT 1
#endif
#ifndef WARPS_K
#define WARPS_K 4
#endif
#ifndef A8
#define A8 8
#endif
#ifndef PG
#define PG 4
#endif
#ifndef WIDE
#define WIDE 0
#endif
#ifndef CW
#define CW 1
#endif
#ifndef RING
#define RING 0
#endif
#define M_PER_WARP (NT * 8 / A8)

// One block: 16 output rows x (CW * NT * 8) input-plane columns; CW groups of WARPS_K warps, a group
// taking NT column tiles and its warps splitting K. The groups need the same weights at about the same
// time: through the ring they share one copy (without it, all but one would find them in L1).
// out[m, r] = float(acc) * scale[r] + bias[r] (then ReLU), acc as in reference.bitserial_acc.
// A warp's work is a sequence of groups (PG weight planes of one of its chunks); the loads of the next
// group (RING - 1 groups with a ring) are in flight while the current one's mmas run, across chunk
// boundaries too.
extern "C" __global__ void __launch_bounds__(32 * WARPS_K * CW)
bitserial_gemm(const uint4* __restrict__ wplanes, const uint4* __restrict__ xplanes, const int* __restrict__ xsum,
               const float* __restrict__ scale, const float* __restrict__ bias, float* __restrict__ out,
               int M, int N, int wpad, int n_stored, int active, int act_bits, int act_signed, int relu,
               int flush_chunks) {
    const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) % WARPS_K, cg = (threadIdx.x >> 5) / WARPS_K;
    const int g = lane >> 2, t = lane & 3;
    // The blocks of one 16-row weight tile (one per CW * NT * 8 input-plane columns) are consecutive, so
    // they run together and all but the first read the tile from L2.
    const int col_blocks = (M * A8 + CW * NT * 8 - 1) / (CW * NT * 8);
    const int row0 = blockIdx.x / col_blocks * 16;
    const int block_col0 = blockIdx.x % col_blocks * CW * NT * 8;  // first input-plane column of the block
    const int col0 = block_col0 + cg * NT * 8;                      // ... and of this warp's column group
    const int chunks = wpad / 16;              // 512-bit chunks along K
    const int r_lo = row0 + g, r_hi = row0 + g + 8;
    const int cols = M * A8;
    const uint4 zero = make_uint4(0, 0, 0, 0);
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");  // the next layer's input kernel may be launched
#endif

    const int per_chunk = (active + PG - 1) / PG;  // groups of each chunk
    const int groups = chunks > warp ? (chunks - warp + WARPS_K - 1) / WARPS_K * per_chunk : 0;
    auto chunk_of = [&](int gi) { return warp + gi / per_chunk * WARPS_K; };
    auto load_weights = [&](uint4 (&lo)[PG], uint4 (&hi)[PG], int gi) {
        const int c = chunk_of(gi), i0 = gi % per_chunk * PG;
#pragma unroll
        for (int p = 0; p < PG; ++p) {
            const int plane = n_stored - active + i0 + p;
            const bool ok = i0 + p < active;
            lo[p] = ok && r_lo < N ? __ldg(wplanes + ((size_t)plane * N + r_lo) * (wpad / 4) + c * 4 + t) : zero;
            hi[p] = ok && r_hi < N ? __ldg(wplanes + ((size_t)plane * N + r_hi) * (wpad / 4) + c * 4 + t) : zero;
        }
    };
#if RING
    // The ring of the CW warps with this warp index: each group's PG planes x 2 rows x 32 lanes of 16
    // bytes, copied by all of them, read by each as its mma fragments (lane l: rows g and g + 8).
    __shared__ uint4 ring[WARPS_K][RING][PG][2][32];
    auto fetch = [&](int gi) {
        if (gi < groups) {
            const int c = chunk_of(gi), i0 = gi % per_chunk * PG;
            for (int q = cg * 32 + lane; q < PG * 64; q += CW * 32) {
                const int p = q >> 6, h = q >> 5 & 1, l = q & 31;
                const int row = row0 + (l >> 2) + 8 * h, plane = n_stored - active + i0 + p;
                const bool ok = i0 + p < active && row < N;
                cp_async16_zfill(&ring[warp][gi % RING][p][h][l],
                                 wplanes + (ok ? ((size_t)plane * N + row) * (wpad / 4) + c * 4 + (l & 3) : 0), ok ? 16 : 0);
            }
        }
        cp_async_commit();  // empty groups too: the count of groups stays uniform
    };
    auto ring_barrier = [&]() { asm volatile("bar.sync %0, %1;" ::"r"(1 + warp), "r"(CW * 32) : "memory"); };
#endif
    // Weights and epilogue constants do not depend on the previous kernel: they are in flight before
    // waiting for it (this kernel is launched early behind it on Hopper: programmatic dependent launch).
#if RING
    for (int s = 0; s < RING - 1; ++s) fetch(s);
#else
    uint4 w0_lo[PG], w0_hi[PG], w1_lo[PG], w1_hi[PG];
    if (groups > 0) load_weights(w0_lo, w0_hi, 0);
#endif
    const int rr = threadIdx.x % 16;  // the output row of this thread's epilogue (blockDim is a multiple of 16)
    const bool epilogue_row = row0 + rr < N && threadIdx.x < CW * M_PER_WARP * 16;
    const float scale_r = epilogue_row ? scale[row0 + rr] : 0.0f;
    const float bias_r = epilogue_row && bias ? bias[row0 + rr] : 0.0f;
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif

    // Each plane's popcounts, times its weight 2^shift, go into int32 sums (one multiply-add each). A chunk
    // adds at most 512 (2^n_stored - 1) to one; where a warp's chunks could pass 2^31 (WIDE, from the
    // host), they flush into int64 totals every flush_chunks chunks.
    i64 total[NT][4];
    int part32[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) total[n][e] = 0, part32[n][e] = 0;
    int unflushed = 0;  // chunks in part32
    auto flush = [&]() {
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) total[n][e] += part32[n][e], part32[n][e] = 0;
        unflushed = 0;
    };
    int rowsum[M_PER_WARP];  // this lane's share of sum_K xq for the block's input rows
#pragma unroll
    for (int mm = 0; mm < M_PER_WARP; ++mm) rowsum[mm] = 0;
    // The input planes and code sums of a chunk, one chunk ahead like the weights.
    uint4 b[NT], b_next[NT];
    int xs_next[M_PER_WARP];
    auto load_input = [&](int c) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) {
            const int m = col0 / A8 + mm;
            xs_next[mm] = lane < 16 && m < M ? xsum[(size_t)m * wpad + c * 16 + lane] : 0;
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const int col = col0 + n * 8 + g;
            b_next[n] = col < cols ? __ldg(xplanes + (size_t)col * (wpad / 4) + c * 4 + t) : zero;
        }
    };
    if (groups > 0) load_input(warp);

    // One group's mmas on its weights lo / hi; without a ring, the next group's weight loads into
    // next_lo / next_hi go out before them.
    auto step = [&](const uint4 (&lo)[PG], const uint4 (&hi)[PG], uint4 (&next_lo)[PG], uint4 (&next_hi)[PG],
                    int gi) {
        const int i0 = gi % per_chunk * PG;
        if (i0 == 0) {  // a new chunk: its input is the one loaded ahead
#pragma unroll
            for (int n = 0; n < NT; ++n) b[n] = b_next[n];
#pragma unroll
            for (int mm = 0; mm < M_PER_WARP; ++mm) rowsum[mm] += xs_next[mm];
        }
        if (gi + 1 < groups) {
            if (!RING) load_weights(next_lo, next_hi, gi + 1);
            if ((gi + 1) % per_chunk == 0) load_input(chunk_of(gi + 1));
        }
#pragma unroll
        for (int p = 0; p < PG; ++p) {
            if (i0 + p >= active) break;
            const int weight = 1 << (n_stored - active + i0 + p);  // this plane's weight
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                int acc[4] = {0, 0, 0, 0};
                mma_b1_and_popc(acc, lo[p].x, hi[p].x, lo[p].y, hi[p].y, b[n].x, b[n].y);
                mma_b1_and_popc(acc, lo[p].z, hi[p].z, lo[p].w, hi[p].w, b[n].z, b[n].w);
#pragma unroll
                for (int e = 0; e < 4; ++e) part32[n][e] += acc[e] * weight;
            }
        }
        if (WIDE && (gi + 1) % per_chunk == 0 && ++unflushed == flush_chunks) flush();
    };
#if RING
    for (int gi = 0; gi < groups; ++gi) {
        cp_async_wait<RING - 2>();  // this thread's copies of group gi have landed
        ring_barrier();             // ... and everyone's; everyone is done with group gi - 1's slot
        fetch(gi + RING - 1);       // into that slot
        uint4 lo[PG], hi[PG];
#pragma unroll
        for (int p = 0; p < PG; ++p) lo[p] = ring[warp][gi % RING][p][0][lane], hi[p] = ring[warp][gi % RING][p][1][lane];
        step(lo, hi, lo, hi, gi);
    }
    cp_async_wait<0>();
#else
    for (int gi = 0; gi < groups; gi += 2) {  // two register stages, named at compile time
        step(w0_lo, w0_hi, w1_lo, w1_hi, gi);
        if (gi + 1 < groups) step(w1_lo, w1_hi, w0_lo, w0_hi, gi + 1);
    }
#endif
    flush();

    // Columns -> input rows: column (m, j) carries c_j 2^j, c_j = -1 for the top plane when signed.
    // This thread holds columns 2t and 2t + 1 of each tile, for rows g (e = 0, 1) and g + 8 (e = 2, 3).
    i64 part[M_PER_WARP][2];
#pragma unroll
    for (int mm = 0; mm < M_PER_WARP; ++mm) part[mm][0] = part[mm][1] = 0;
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int local = n * 8 + 2 * t + (e & 1);
            const int j = local % A8;
            if (j < act_bits) {
                const i64 v = total[n][e] << j;
                part[local / A8][e >> 1] += (act_signed && j == act_bits - 1) ? -v : v;
            }
        }
#pragma unroll
    for (int mm = 0; mm < M_PER_WARP; ++mm) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            part[mm][h] += __shfl_xor_sync(0xffffffffu, part[mm][h], 1);
            part[mm][h] += __shfl_xor_sync(0xffffffffu, part[mm][h], 2);
        }
        for (int o = 16; o > 0; o >>= 1) rowsum[mm] += __shfl_xor_sync(0xffffffffu, rowsum[mm], o);
    }

    // Sum the warps' shares of K, then the epilogue.
    __shared__ i64 shared[CW][WARPS_K][M_PER_WARP][16];
    __shared__ int shared_sum[CW][WARPS_K][M_PER_WARP];
    if (t == 0) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) {
            shared[cg][warp][mm][g] = part[mm][0];
            shared[cg][warp][mm][g + 8] = part[mm][1];
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) shared_sum[cg][warp][mm] = rowsum[mm];
    }
    __syncthreads();
    const i64 planes_sum = ((1LL << active) - 1) << (n_stored - active);  // sum_i 2^(n - k + i)
    for (int idx = threadIdx.x; idx < CW * M_PER_WARP * 16; idx += 32 * WARPS_K * CW) {
        const int c = idx / (M_PER_WARP * 16), mm = idx / 16 % M_PER_WARP;
        const int m = block_col0 / A8 + c * M_PER_WARP + mm;
        if (m >= M || !epilogue_row) continue;
        i64 s = 0, row_sum = 0;
#pragma unroll
        for (int w = 0; w < WARPS_K; ++w) {
            s += shared[c][w][mm][rr];
            row_sum += shared_sum[c][w][mm];
        }
        const i64 acc = 2 * s - planes_sum * row_sum;
        float y = __fmul_rn(__ll2float_rn(acc), scale_r);
        if (bias) y = __fadd_rn(y, bias_r);
        if (relu) y = fmaxf(y, 0.0f);
        out[(size_t)m * N + row0 + rr] = y;
    }
}

// Fixed-point input codes and their bitplanes, for bitserial_gemm: one warp per 32-bit word of one
// input row (grid.x over words, grid.y over rows), lane = element, one ballot per plane.
// q = clamp(rint(x / scale), qmin, qmax) as torch.round(x / scale) (ties to even); values beyond the
// range are counted in flags[0], NaNs (coded 0) in flags[1]; xsum[m, w] = the sum of the word's 32 codes
// (no atomics, so nothing to zero first: a memset would be one more launch).
extern "C" __global__ void bitserial_quantize_input(const float* __restrict__ x, const float* __restrict__ xscale,
                                                    int K, int wpad, int act_bits, int qmin, int qmax,
                                                    u32* __restrict__ xplanes, int* __restrict__ xsum,
                                                    unsigned long long* __restrict__ flags) {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");  // the GEMM may start loading its weights now
    asm volatile("griddepcontrol.wait;" ::: "memory");  // launched early too: x may be the last kernel's output
#endif
    const int lane = threadIdx.x & 31;
    const int w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int m = blockIdx.y;
    if (w >= wpad) return;  // whole warps leave together
    const int k = w * 32 + lane;
    const float v = k < K ? x[(size_t)m * K + k] : 0.0f;
    float q = rintf(__fdiv_rn(v, *xscale));
    int over = 0, nans = 0;
    if (v != v) {
        nans = 1;
        q = 0.0f;
    } else if (q < (float)qmin || q > (float)qmax) {
        over = 1;
        q = fminf(fmaxf(q, (float)qmin), (float)qmax);
    }
    int code = (int)q;
#pragma unroll
    for (int j = 0; j < A8; ++j) {
        const u32 word = __ballot_sync(0xffffffffu, j < act_bits && (((u32)code >> j) & 1u));
        if (lane == j) xplanes[((size_t)m * A8 + j) * wpad + w] = word;
    }
    for (int o = 16; o > 0; o >>= 1) {
        code += __shfl_xor_sync(0xffffffffu, code, o);
        over += __shfl_xor_sync(0xffffffffu, over, o);
        nans += __shfl_xor_sync(0xffffffffu, nans, o);
    }
    if (lane == 0) {
        xsum[(size_t)m * wpad + w] = code;
        if (over) atomicAdd(flags, (unsigned long long)over);
        if (nans) atomicAdd(flags + 1, (unsigned long long)nans);
    }
}
