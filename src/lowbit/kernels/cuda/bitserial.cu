// Bit-serial (PrecisionBatching) kernels for binary tensor cores, compiled at run time with NVRTC.
// The arithmetic is kernels/reference.py:bitserial_acc and nn/bitserial.py, exactly.
//
// Compile-time constants (-D): NT (column tiles of 8 per warp), WARPS_K (warps of a block splitting K),
// A8 (activation planes per input row, padded to a multiple of 8), PG (weight planes loaded ahead).
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
#define M_PER_WARP (NT * 8 / A8)

// One block: 16 output rows x (NT * 8) input-plane columns, its WARPS_K warps splitting K.
// out[m, r] = float(acc) * scale[r] + bias[r] (then ReLU), acc as in reference.bitserial_acc.
extern "C" __global__ void __launch_bounds__(32 * WARPS_K)
bitserial_gemm(const uint4* __restrict__ wplanes, const uint4* __restrict__ xplanes, const int* __restrict__ xsum,
               const float* __restrict__ scale, const float* __restrict__ bias, float* __restrict__ out,
               int M, int N, int wpad, int n_stored, int active, int act_bits, int act_signed, int relu) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * 16;
    const int col0 = blockIdx.y * NT * 8;      // first input-plane column of this block
    const int chunks = wpad / 16;              // 512-bit chunks along K
    const int r_lo = row0 + g, r_hi = row0 + g + 8;
    const int cols = M * A8;

    i64 total[NT][4];
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) total[n][e] = 0;

    // Launched early behind the input kernel (programmatic dependent launch on Hopper): wait for it.
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
    const uint4 zero = make_uint4(0, 0, 0, 0);
    int rowsum[M_PER_WARP];  // this lane's share of sum_K xq for the block's input rows
#pragma unroll
    for (int mm = 0; mm < M_PER_WARP; ++mm) rowsum[mm] = 0;
    for (int c = warp; c < chunks; c += WARPS_K) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) {
            const int m = col0 / A8 + mm;
            if (lane < 16 && m < M) rowsum[mm] += xsum[(size_t)m * wpad + c * 16 + lane];
        }
        uint4 b[NT];
#pragma unroll
        for (int n = 0; n < NT; ++n) {
            const int col = col0 + n * 8 + g;
            b[n] = col < cols ? __ldg(xplanes + (size_t)col * (wpad / 4) + c * 4 + t) : zero;
        }
        for (int i0 = 0; i0 < active; i0 += PG) {  // PG planes' loads in flight before their mmas
            uint4 a_lo[PG], a_hi[PG];
#pragma unroll
            for (int p = 0; p < PG; ++p) {
                const int plane = n_stored - active + i0 + p;
                const bool ok = i0 + p < active;
                a_lo[p] = ok && r_lo < N ? __ldg(wplanes + ((size_t)plane * N + r_lo) * (wpad / 4) + c * 4 + t) : zero;
                a_hi[p] = ok && r_hi < N ? __ldg(wplanes + ((size_t)plane * N + r_hi) * (wpad / 4) + c * 4 + t) : zero;
            }
#pragma unroll
            for (int p = 0; p < PG; ++p) {
                if (i0 + p >= active) break;
                const int shift = n_stored - active + i0 + p;  // this plane's weight 2^shift
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    int acc[4] = {0, 0, 0, 0};
                    mma_b1_and_popc(acc, a_lo[p].x, a_hi[p].x, a_lo[p].y, a_hi[p].y, b[n].x, b[n].y);
                    mma_b1_and_popc(acc, a_lo[p].z, a_hi[p].z, a_lo[p].w, a_hi[p].w, b[n].z, b[n].w);
#pragma unroll
                    for (int e = 0; e < 4; ++e) total[n][e] += (i64)acc[e] << shift;
                }
            }
        }
    }

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
    __shared__ i64 shared[WARPS_K][M_PER_WARP][16];
    __shared__ int shared_sum[WARPS_K][M_PER_WARP];
    if (t == 0) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) {
            shared[warp][mm][g] = part[mm][0];
            shared[warp][mm][g + 8] = part[mm][1];
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) shared_sum[warp][mm] = rowsum[mm];
    }
    __syncthreads();
    const i64 planes_sum = ((1LL << active) - 1) << (n_stored - active);  // sum_i 2^(n - k + i)
    for (int idx = threadIdx.x; idx < M_PER_WARP * 16; idx += 32 * WARPS_K) {
        const int mm = idx / 16, rr = idx % 16;
        const int m = col0 / A8 + mm, r = row0 + rr;
        if (m >= M || r >= N) continue;
        i64 s = 0, row_sum = 0;
#pragma unroll
        for (int w = 0; w < WARPS_K; ++w) {
            s += shared[w][mm][rr];
            row_sum += shared_sum[w][mm];
        }
        const i64 acc = 2 * s - planes_sum * row_sum;
        float y = __fmul_rn(__ll2float_rn(acc), scale[r]);
        if (bias) y = __fadd_rn(y, bias[r]);
        if (relu) y = fmaxf(y, 0.0f);
        out[(size_t)m * N + r] = y;
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
