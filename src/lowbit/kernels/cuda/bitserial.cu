// Bit-serial (PrecisionBatching) kernels for binary tensor cores, compiled at run time with NVRTC.
// The arithmetic is kernels/reference.py:bitserial_acc and nn/bitserial.py, exactly.
//
// Compile-time constants (-D): NT (column tiles of 8 per warp), WARPS_K (warps of a block splitting K),
// A8 (activation planes per input row, padded to a multiple of 8).
//
// Layouts (int32 words, bit i of word w = element 32w + i along K; K padded with zero bits to WPAD words,
// a multiple of 16, i.e. 512 bits: two mma k-steps per 16-byte load):
//   weight planes  [n_stored, N, WPAD]   plane i: bit i of the unsigned odd-grid code (a +-1 layer)
//   input planes   [M * A8, WPAD]        row m * A8 + j: bit j of input row m's fixed-point codes
//                                        (two's complement; planes j >= act_bits are zero)
//   input sums     [M] int32             sum over K of input row m's codes
//
// Only A and B need the same assignment of K bits to mma k-positions (AND + popcount sums over K), so
// each thread loads 16 consecutive bytes and feeds words {0, 1} to one mma and {2, 3} to the next.

typedef unsigned int u32;
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
#define M_PER_WARP (NT * 8 / A8)

__device__ __forceinline__ void bmma_and_popc(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

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

    for (int i = 0; i < active; ++i) {
        const int plane = n_stored - active + i;
        const uint4* w_lo = wplanes + ((size_t)plane * N + r_lo) * (wpad / 4);
        const uint4* w_hi = wplanes + ((size_t)plane * N + r_hi) * (wpad / 4);
        int acc[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[n][e] = 0;
#pragma unroll 4
        for (int c = warp; c < chunks; c += WARPS_K) {
            const uint4 zero = make_uint4(0, 0, 0, 0);
            const uint4 a_lo = r_lo < N ? __ldg(w_lo + c * 4 + t) : zero;
            const uint4 a_hi = r_hi < N ? __ldg(w_hi + c * 4 + t) : zero;
#pragma unroll
            for (int n = 0; n < NT; ++n) {
                const int col = col0 + n * 8 + g;
                const uint4 b = col < cols ? __ldg(xplanes + (size_t)col * (wpad / 4) + c * 4 + t) : zero;
                bmma_and_popc(acc[n], a_lo.x, a_hi.x, a_lo.y, a_hi.y, b.x, b.y);
                bmma_and_popc(acc[n], a_lo.z, a_hi.z, a_lo.w, a_hi.w, b.z, b.w);
            }
        }
        const int shift = n_stored - active + i;  // this plane's weight 2^shift
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) total[n][e] += (i64)acc[n][e] << shift;
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
    for (int mm = 0; mm < M_PER_WARP; ++mm)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            part[mm][h] += __shfl_xor_sync(0xffffffffu, part[mm][h], 1);
            part[mm][h] += __shfl_xor_sync(0xffffffffu, part[mm][h], 2);
        }

    // Sum the warps' shares of K, then the epilogue.
    __shared__ i64 shared[WARPS_K][M_PER_WARP][16];
    if (t == 0) {
#pragma unroll
        for (int mm = 0; mm < M_PER_WARP; ++mm) {
            shared[warp][mm][g] = part[mm][0];
            shared[warp][mm][g + 8] = part[mm][1];
        }
    }
    __syncthreads();
    const i64 planes_sum = ((1LL << active) - 1) << (n_stored - active);  // sum_i 2^(n - k + i)
    for (int idx = threadIdx.x; idx < M_PER_WARP * 16; idx += 32 * WARPS_K) {
        const int mm = idx / 16, rr = idx % 16;
        const int m = col0 / A8 + mm, r = row0 + rr;
        if (m >= M || r >= N) continue;
        i64 s = 0;
#pragma unroll
        for (int w = 0; w < WARPS_K; ++w) s += shared[w][mm][rr];
        const i64 acc = 2 * s - planes_sum * (i64)xsum[m];
        float y = __fmul_rn(__ll2float_rn(acc), scale[r]);
        if (bias) y = __fadd_rn(y, bias[r]);
        if (relu) y = fmaxf(y, 0.0f);
        out[(size_t)m * N + r] = y;
    }
}

// Fixed-point input codes and their bitplanes: one block per input row (blockDim a multiple of 32,
// at most 1024), one thread per 32-bit word. q = clamp(rint(x / scale), qmin, qmax) as
// torch.round(x / scale) (ties to even); values beyond the range are counted in flags[0], NaNs
// (coded 0) in flags[1]. xsum[m] = the sum of the row's codes (|sum| < 2^31 for K < 2^16).
extern "C" __global__ void bitserial_quantize_input(const float* __restrict__ x, const float* __restrict__ xscale,
                                                    int K, int wpad, int act_bits, int qmin, int qmax,
                                                    u32* __restrict__ xplanes, int* __restrict__ xsum,
                                                    unsigned long long* __restrict__ flags) {
    const int m = blockIdx.x;
    const float* row = x + (size_t)m * K;
    const float scale = *xscale;
    int sum = 0, over = 0, nans = 0;
    for (int w = threadIdx.x; w < wpad; w += blockDim.x) {
        u32 planes[A8];
#pragma unroll
        for (int j = 0; j < A8; ++j) planes[j] = 0;
        for (int b = 0; b < 32; ++b) {
            const int k = w * 32 + b;
            if (k >= K) break;
            const float v = row[k];
            float q = rintf(__fdiv_rn(v, scale));
            if (v != v) {
                ++nans;
                q = 0.0f;
            } else if (q < (float)qmin || q > (float)qmax) {
                ++over;
                q = fminf(fmaxf(q, (float)qmin), (float)qmax);
            }
            const int code = (int)q;
            sum += code;
            const u32 bits = (u32)code;  // two's complement; planes j >= act_bits stay 0
#pragma unroll
            for (int j = 0; j < A8; ++j)
                if (j < act_bits) planes[j] |= ((bits >> j) & 1u) << b;
        }
#pragma unroll
        for (int j = 0; j < A8; ++j) xplanes[((size_t)m * A8 + j) * wpad + w] = planes[j];
    }
    __shared__ int partial[3][32];
    for (int o = 16; o > 0; o >>= 1) {
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
        over += __shfl_xor_sync(0xffffffffu, over, o);
        nans += __shfl_xor_sync(0xffffffffu, nans, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        partial[0][warp] = sum;
        partial[1][warp] = over;
        partial[2][warp] = nans;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0, o = 0, n = 0;
        for (int w = 0; w < warps; ++w) {
            s += partial[0][w];
            o += partial[1][w];
            n += partial[2][w];
        }
        xsum[m] = s;
        if (o) atomicAdd(flags, (unsigned long long)o);
        if (n) atomicAdd(flags + 1, (unsigned long long)n);
    }
}
