// Bit-serial (PrecisionBatching) kernels for binary tensor cores, compiled at run time with NVRTC.
// The arithmetic is kernels/reference.py:bitserial_acc and nn/bitserial.py, exactly.
//
// Compile-time constants (-D): NT (column tiles of 8 per warp), WARPS_K (warps of a block splitting K),
// CW (groups of WARPS_K warps of a block, each taking NT column tiles of its own),
// A8 (activation planes per input row, padded to a multiple of 8), PG (weight planes per pipeline stage),
// WIDE (1: the sums of a warp's chunks may pass int32), RING (0: each warp keeps two stages of weight
// planes in registers; n > 0: a ring of n stages in shared memory, shared by the CW warps that take the
// same chunks), NEXT_A8 (0, or the planes an input row of the next layer, whose input the epilogue then
// also writes: see the end of bitserial_gemm) and NEXT_RING (the next layer's RING, 0 or not).
//
// Layouts (int32 words, bit i of word w = element 32w + i along K; K padded with zero bits to WPAD words,
// a multiple of 16, i.e. 512 bits: two mma k-steps per 16-byte load):
//   weight planes  [n_stored, N, WPAD]   plane i: bit i of the unsigned odd-grid code (a +-1 layer)
//   input planes   [M * A8, WPAD]        row m * A8 + j: bit j of input row m's fixed-point codes
//                                        (two's complement; planes j >= act_bits are zero); with a ring,
//                                        word 4i + j of each chunk at 4j + i (i, j < 4)
//   input sums     [M, 2 WPAD] int32     sum of input row m's codes in each half-word (16 elements: a
//                                        GEMM block's 16 output rows, so that its epilogue can write the
//                                        next layer's input without atomics)
//   (written by bitserial_quantize_input below, by the epilogue of the layer before with NEXT_A8, and for
//   an LSTM's next step by kernels/triton/lstm.py's cell kernel, which repeats this layout and the ring's
//   word order: keep them alike)
//
// Only A and B need the same assignment of K bits to mma k-positions (AND + popcount sums over K). Each
// thread loads 16 bytes of input planes and feeds words {0, 1} to one mma and {2, 3} to the next. Without
// a ring, its weight fragments are the same 16 bytes of rows g and g + 8 (lane = 4g + t: chunk words
// 4t..4t + 3); with one, ldmatrix gives it words t, 4 + t, 8 + t, 12 + t of both rows, which is why the
// input planes are then stored in that order.

#include "common.cuh"
#include "bitserial.cuh"

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
#ifndef NEXT_A8
#define NEXT_A8 0
#endif
#ifndef NEXT_RING
#define NEXT_RING 0
#endif
#define M_PER_WARP (NT * 8 / A8)

// Where word w of an input row's planes is stored with a ring: a chunk's words in ldmatrix order.
__device__ __forceinline__ int ring_word(int w) { return (w & ~15) | (w & 3) << 2 | (w >> 2 & 3); }

// The fixed-point code of an input v: clamp(rint(v / scale), qmin, qmax) as torch.round (ties to even),
// NaN coded 0; over / nans are set to 1 where v saturated / is NaN.
__device__ __forceinline__ int input_code(float v, float scale, int qmin, int qmax, int& over, int& nans) {
    return clamped_code(rintf(__fdiv_rn(v, scale)), v != v, qmin, qmax, over, nans);
}

// One block: 16 output rows x (CW * NT * 8) input-plane columns; CW groups of WARPS_K warps, a group
// taking NT column tiles and its warps splitting K. The groups need the same weights at about the same
// time: through the ring they share one copy (without it, all but one would find them in L1).
// out[m, r] = float(acc) * scale[r] + bias[r] (then ReLU), acc as in reference.bitserial_acc.
// The loads of a warp's next group of planes (RING - 1 groups with a ring) are in flight while the
// current one's mmas run, across chunk boundaries too.
struct Group {
    int c, q0;  // a chunk, and the position of the group's first plane among the active ones
};

// Registers for two blocks of 8 warps a multiprocessor (four with one plane a stage and one column tile:
// the launcher's one-wave rule counts on it); the rare WIDE variant would spill under that cap.
#define MIN_BLOCKS (WIDE ? 1 : PG == 1 && NT == 1 ? 4 : 2)

extern "C" __global__ void __launch_bounds__(32 * WARPS_K * CW, MIN_BLOCKS)
bitserial_gemm(const uint4* __restrict__ wplanes, const uint4* __restrict__ xplanes, const int* __restrict__ xsum,
               const float* __restrict__ scale, const float* __restrict__ bias, float* __restrict__ out,
               int M, int N, int wpad, int n_stored, int active, int act_bits, int act_signed, int relu,
               int flush_chunks, u32* __restrict__ next_planes, int* __restrict__ next_sums,
               const float* __restrict__ next_scale, unsigned long long* __restrict__ next_flags, int next_wpad,
               int next_bits, int next_qmin, int next_qmax) {
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

    // A warp's work is a sequence of groups: PG weight planes of one of its chunks, the chunk's active planes
    // taken from the most significant one down (position q = 0 is plane n_stored - 1), so that each plane's
    // popcounts join the chunk's sums by Horner's rule (double, then add: the mma adds). Positions advance
    // without divisions.
    const int groups = chunks > warp ? (chunks - warp + WARPS_K - 1) / WARPS_K * ((active + PG - 1) / PG) : 0;
    auto after = [&](Group gp) {
        gp.q0 += PG;
        if (gp.q0 >= active) gp.q0 = 0, gp.c += WARPS_K;
        return gp;
    };
    auto load_weights = [&](uint4 (&lo)[PG], uint4 (&hi)[PG], Group gp) {
#pragma unroll
        for (int p = 0; p < PG; ++p) {
            const int q = gp.q0 + p, plane = n_stored - 1 - q;
            const bool ok = q < active;
            lo[p] = ok && r_lo < N ? __ldg(wplanes + ((size_t)plane * N + r_lo) * (wpad / 4) + gp.c * 4 + t) : zero;
            hi[p] = ok && r_hi < N ? __ldg(wplanes + ((size_t)plane * N + r_hi) * (wpad / 4) + gp.c * 4 + t) : zero;
        }
    };
#if RING
    // The ring of the CW warps with this warp index: each group's PG planes x 16 rows x 64 bytes, copied by
    // all of them, read by each with ldmatrix straight into mma fragments. The 16-byte quarters of a row
    // are swizzled (quarter ^ (row / 2) % 4) so that the 8 rows of one ldmatrix phase hit distinct banks.
    __shared__ uint4 ring[WARPS_K][RING][PG][16][4];
    // A thread's 16-byte copies of a group (the same plane slot, row and quarter in every group): where
    // they go in a slot, and their row's first word (the plane and chunk are added per group).
    constexpr int COPIES = (PG * 64 + CW * 32 - 1) / (CW * 32);
    int copy_p[COPIES], copy_at[COPIES];
    const uint4* copy_src[COPIES];
#pragma unroll
    for (int i = 0; i < COPIES; ++i) {
        const int u = cg * 32 + lane + i * CW * 32, row = u >> 2 & 15, quarter = u & 3;
        const bool live = u < PG * 64 && row0 + row < N;
        copy_p[i] = live ? u >> 6 : active;  // a dead copy zero-fills (its plane never counts as active)
        copy_at[i] = u < PG * 64 ? ((u >> 6) * 16 + row) * 4 + (quarter ^ (row >> 1 & 3)) : -1;
        copy_src[i] = wplanes + (size_t)(live ? row0 + row : 0) * (wpad / 4) + quarter;
    }
    const size_t plane_stride = (size_t)N * (wpad / 4);
    Group fetched = {warp, 0};
    auto fetch = [&](int gi) {
        if (gi < groups) {
#pragma unroll
            for (int i = 0; i < COPIES; ++i) {
                if (copy_at[i] < 0) continue;
                const int q = fetched.q0 + copy_p[i];
                const bool ok = q < active;
                cp_async16_zfill(&ring[warp][gi % RING][0][0][0] + copy_at[i],
                                 ok ? copy_src[i] + (n_stored - 1 - q) * plane_stride + fetched.c * 4 : wplanes, ok ? 16 : 0);
            }
            fetched = after(fetched);
        }
        cp_async_commit();  // empty groups too: the count of groups stays uniform
    };
    auto ring_barrier = [&]() { asm volatile("bar.sync %0, %1;" ::"r"(1 + warp), "r"(CW * 32) : "memory"); };
#endif
    // Weights and epilogue constants do not depend on the previous kernel: they are in flight before
    // waiting for it (this kernel is launched early behind it on Hopper: programmatic dependent launch).
    Group cur = {warp, 0};
#if RING
    for (int s = 0; s < RING - 1; ++s) fetch(s);
#else
    uint4 w0_lo[PG], w0_hi[PG], w1_lo[PG], w1_hi[PG];
    if (groups > 0) load_weights(w0_lo, w0_hi, cur);
#endif
    const int rr = threadIdx.x % 16;  // the output row of this thread's epilogue (blockDim is a multiple of 16)
    const bool epilogue_row = row0 + rr < N && threadIdx.x < CW * M_PER_WARP * 16;
    const float scale_r = epilogue_row ? scale[row0 + rr] : 0.0f;
    const float bias_r = epilogue_row && bias ? bias[row0 + rr] : 0.0f;
    const float next_scale_v = NEXT_A8 ? *next_scale : 1.0f;  // (a load after the wait would add its latency)
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif

    // A chunk's Horner sums (acc, at most 512 (2^active - 1)) go into int32 sums; where a warp's chunks
    // could pass 2^31 (WIDE, from the host) those flush into int64 totals every flush_chunks chunks. The
    // totals count in units of the least significant active plane (the epilogue shifts them).
    i64 total[NT][4];
    int part32[NT][4], acc[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) total[n][e] = 0, part32[n][e] = 0, acc[n][e] = 0;
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
            xs_next[mm] = m < M ? xsum[(size_t)m * 2 * wpad + c * 32 + lane] : 0;
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const int col = col0 + n * 8 + g;
            b_next[n] = col < cols ? __ldg(xplanes + (size_t)col * (wpad / 4) + c * 4 + t) : zero;
        }
    };
    if (groups > 0) load_input(warp);

    // One group's mmas on its A fragments a[p][k-step]; nxt is the group after it.
    auto step = [&](const u32 (&a)[PG][2][4], Group nxt) {
        if (cur.q0 == 0) {  // a new chunk: its input is the one loaded ahead
#pragma unroll
            for (int n = 0; n < NT; ++n) b[n] = b_next[n];
#pragma unroll
            for (int mm = 0; mm < M_PER_WARP; ++mm) rowsum[mm] += xs_next[mm];
        }
        if (nxt.q0 == 0 && nxt.c < chunks) load_input(nxt.c);
#pragma unroll
        for (int p = 0; p < PG; ++p) {
            if (cur.q0 + p >= active) break;
#pragma unroll
            for (int n = 0; n < NT; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[n][e] += acc[n][e];
                mma_b1_and_popc(acc[n], a[p][0][0], a[p][0][1], a[p][0][2], a[p][0][3], b[n].x, b[n].y);
                mma_b1_and_popc(acc[n], a[p][1][0], a[p][1][1], a[p][1][2], a[p][1][3], b[n].z, b[n].w);
            }
        }
        if (nxt.q0 == 0) {  // the chunk's last group
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) part32[n][e] += acc[n][e], acc[n][e] = 0;
            if (WIDE && ++unflushed == flush_chunks) flush();
        }
        cur = nxt;
    };
#if RING
    const int lrow = (lane & 7) + (lane >> 3 & 1) * 8;  // this lane's ldmatrix row: matrices rows 0-7, 8-15, 0-7, 8-15
    for (int gi = 0; gi < groups; ++gi) {
        cp_async_wait<RING - 2>();  // this thread's copies of group gi have landed
        ring_barrier();             // ... and everyone's; everyone is done with group gi - 1's slot
        fetch(gi + RING - 1);       // into that slot
        u32 a[PG][2][4];
#pragma unroll
        for (int p = 0; p < PG; ++p)
#pragma unroll
            for (int k = 0; k < 2; ++k)
                ldmatrix_x4(a[p][k], &ring[warp][gi % RING][p][lrow][(2 * k + (lane >> 4)) ^ (lrow >> 1 & 3)]);
        step(a, after(cur));
    }
    cp_async_wait<0>();
#else
    // Two register stages, named at compile time; the next group's loads go out before this one's mmas.
    auto fragments = [&](const uint4 (&lo)[PG], const uint4 (&hi)[PG], u32 (&a)[PG][2][4]) {
#pragma unroll
        for (int p = 0; p < PG; ++p) {
            a[p][0][0] = lo[p].x, a[p][0][1] = hi[p].x, a[p][0][2] = lo[p].y, a[p][0][3] = hi[p].y;
            a[p][1][0] = lo[p].z, a[p][1][1] = hi[p].z, a[p][1][2] = lo[p].w, a[p][1][3] = hi[p].w;
        }
    };
    for (int gi = 0; gi < groups; gi += 2) {
        u32 a[PG][2][4];
        Group nxt = after(cur);
        if (gi + 1 < groups) load_weights(w1_lo, w1_hi, nxt);
        fragments(w0_lo, w0_hi, a);
        step(a, nxt);
        if (gi + 1 < groups) {
            nxt = after(cur);
            if (gi + 2 < groups) load_weights(w0_lo, w0_hi, nxt);
            fragments(w1_lo, w1_hi, a);
            step(a, nxt);
        }
    }
#endif
    flush();

    // Columns -> input rows.
    i64 part[M_PER_WARP][2];
    columns_to_rows<NT, A8>(total, part, t, n_stored - active, act_bits, act_signed);
#pragma unroll
    for (int mm = 0; mm < M_PER_WARP; ++mm)
        for (int o = 16; o > 0; o >>= 1) rowsum[mm] += __shfl_xor_sync(0xffffffffu, rowsum[mm], o);

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
    const i64 planes_sum = active_planes_sum(n_stored, active);
#if NEXT_A8
    u16* const next_half_words = reinterpret_cast<u16*>(next_planes);
    const int next_w = row0 >> 5, next_half = row0 >> 4 & 1;  // this block's rows in the next layer's words
    const int next_at = NEXT_RING ? ring_word(next_w) : next_w;
#endif
    // Whole warps go round together (the bound is rounded up to warps, for the ballots below): lanes 0-15
    // take the 16 rows of one input row, lanes 16-31 those of another.
    for (int idx = threadIdx.x; idx < (CW * M_PER_WARP * 16 + 31) / 32 * 32; idx += 32 * WARPS_K * CW) {
        const int c = idx / (M_PER_WARP * 16), mm = idx / 16 % M_PER_WARP;
        const int m = block_col0 / A8 + c * M_PER_WARP + mm;
        const bool live = idx < CW * M_PER_WARP * 16 && m < M;
        float y = 0.0f;
        if (live && epilogue_row) {
            i64 s = 0, row_sum = 0;
#pragma unroll
            for (int w = 0; w < WARPS_K; ++w) {
                s += shared[c][w][mm][rr];
                row_sum += shared_sum[c][w][mm];
            }
            y = bitserial_output(s, row_sum, planes_sum, scale_r, bias != nullptr, bias_r);
            if (relu) y = fmaxf(y, 0.0f);
            out[(size_t)m * N + row0 + rr] = y;
        }
#if NEXT_A8
        // The next layer's input from y, as bitserial_quantize_input would make it: the codes (rows past N
        // coded 0: the padding), their planes' half-words and the half-words' code sums, the counts.
        int over = 0, nans = 0;
        int code = live && epilogue_row ? input_code(y, next_scale_v, next_qmin, next_qmax, over, nans) : 0;
#pragma unroll
        for (int j = 0; j < NEXT_A8; ++j) {
            const u32 bits = __ballot_sync(0xffffffffu, j < next_bits && (((u32)code >> j) & 1u));
            if (live && (lane & 15) == j % 16)
                next_half_words[(((size_t)m * NEXT_A8 + j) * next_wpad + next_at) * 2 + next_half] =
                    (u16)(lane < 16 ? bits : bits >> 16);
        }
        for (int o = 8; o > 0; o >>= 1) code += __shfl_xor_sync(0xffffffffu, code, o);
        if (live && (lane & 15) == 0) next_sums[(size_t)m * 2 * next_wpad + 2 * next_w + next_half] = code;
        const int n_over = __popc(__ballot_sync(0xffffffffu, over)), n_nans = __popc(__ballot_sync(0xffffffffu, nans));
        if (lane == 0 && n_over) atomicAdd(next_flags, (unsigned long long)n_over);
        if (lane == 0 && n_nans) atomicAdd(next_flags + 1, (unsigned long long)n_nans);
#endif
    }
#if NEXT_A8
    if (row0 + 16 >= N) {  // the last row tile also zeroes the next layer's half-words past N, which no block writes
        const int first = (row0 >> 4) + 1, span = 2 * next_wpad - first;
        for (int i = threadIdx.x; i < CW * M_PER_WARP * (NEXT_A8 + 1) * span; i += 32 * WARPS_K * CW) {
            const int m = block_col0 / A8 + i / ((NEXT_A8 + 1) * span), j = i / span % (NEXT_A8 + 1);
            const int hw = first + i % span, w = hw >> 1;
            if (m >= M) continue;
            if (j == NEXT_A8)
                next_sums[(size_t)m * 2 * next_wpad + hw] = 0;
            else
                next_half_words[(((size_t)m * NEXT_A8 + j) * next_wpad + (NEXT_RING ? ring_word(w) : w)) * 2 + (hw & 1)] = 0;
        }
    }
#endif
}

// Fixed-point input codes and their bitplanes, for bitserial_gemm: one warp per 32-bit word of one
// input row (grid.x over words, grid.y over rows), lane = element, one ballot per plane.
// q = clamp(rint(x / scale), qmin, qmax) as torch.round(x / scale) (ties to even); values beyond the
// range are counted in flags[0], NaNs (coded 0) in flags[1]; xsum[m, 2w + h] = the sum of half h of the
// word's codes (no atomics, so nothing to zero first: a memset would be one more launch).
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
    const int at = RING ? ring_word(w) : w;
    const int k = w * 32 + lane;
    const float v = k < K ? x[(size_t)m * K + k] : 0.0f;
    int over, nans;
    int code = input_code(v, *xscale, qmin, qmax, over, nans);
#pragma unroll
    for (int j = 0; j < A8; ++j) {
        const u32 word = __ballot_sync(0xffffffffu, j < act_bits && (((u32)code >> j) & 1u));
        if (lane == j) xplanes[((size_t)m * A8 + j) * wpad + at] = word;
    }
    for (int o = 8; o > 0; o >>= 1) code += __shfl_xor_sync(0xffffffffu, code, o);
    if ((lane & 15) == 0) xsum[(size_t)m * 2 * wpad + 2 * w + (lane >> 4)] = code;
    over = __popc(__ballot_sync(0xffffffffu, over));
    nans = __popc(__ballot_sync(0xffffffffu, nans));
    if (lane == 0 && over) atomicAdd(flags, (unsigned long long)over);
    if (lane == 0 && nans) atomicAdd(flags + 1, (unsigned long long)nans);
}
