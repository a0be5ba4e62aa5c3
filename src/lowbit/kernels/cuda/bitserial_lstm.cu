// A whole LSTM layer's recurrence in one kernel, for a bit-serial hidden product (design.md 2.4),
// compiled at run time with NVRTC. The numbers are those of the two kernels a step it replaces
// (bitserial.cu's bitserial_gemm for the hidden product, kernels/triton/lstm.py's cell kernel), bit for bit:
//   gates_h = float(acc) * scale (+ bias)           acc as in reference.bitserial_acc (exact integers)
//   i, f, g, o = gates_in[t] + gates_h              c' = sigmoid(f) c + sigmoid(i) tanh(g)
//   h = sigmoid(o) tanh(c')                         h's codes = clamp(rint(h / sx)) -> the next step's planes
// with the cell's float operations written as the PTX that Triton 3.6 emits for the cell kernel
// (sigmoid: ex2.approx and div.full; tanh: libdevice's __nv_tanhf; the fma of c'), so that both paths
// round alike.
//
// Why one kernel: at batch 1 a step's binary mmas are a small part of its time (H100, 2048 hidden units:
// 8 bitlayers instead of 1 add 0.8 us a step), and two kernels a step cost their launches, the edges
// between them and the weights' trip from L2 (RESULTS.md, bit-serial LSTM: 663 -> 369 us for 100 steps).
// Here each block keeps its weight planes in shared memory for the whole sequence, and the blocks pass
// h's planes to each other through global memory once a step, each 32 bits of them stored together
// with the step's number in one 8-byte store (as NCCL's low-latency protocol does): a block polls the
// words it needs until they carry the step it waits for, with no fence or barrier counter between. The
// launch is cooperative, so all blocks are resident at once and none waits for a block not yet started.
//
// Block b owns hidden units u0 = 16 b .. u0 + 15: the 16-row tiles q H + u0.. of gates i, f, g, o
// (q = 0..3). Its 4 * KS warps: warp w takes tile q = w / KS and every KS-th 512-bit chunk of K from
// w % KS, as bitserial_gemm's register path does (lane (g, t) reads rows g and g + 8, words 4t..4t + 3 of
// a chunk, and the same words of its input column g). After the step's epilogue and cell, the block
// publishes its 16 units' bits of each plane of h to the exchange (below).
//
// Compile-time constants (-D): A8 (activation planes per input row, 8 or 16), NT (column tiles of 8 input
// planes: the batch rows B = NT * 8 / A8), KS (warps per tile along K).
//
// exchange (zeroed before the launch): two buffers [B][blocks][A8 / 2] of (data, step + 1) pairs, data =
// a block's 16 bits of planes 2i and 2i + 1 of a row. The planes of h_{s-1} (h0 for s = 0), which step s
// reads, go to buffer s % 2 marked s + 1. A block overwrites a buffer only after every block has written
// the data of the step after it, so after every block has read it.

#include "common.cuh"
#include "bitserial.cuh"

#ifndef A8
#define A8 8
#endif
#ifndef NT
#define NT 1
#endif
#ifndef KS
#define KS 4
#endif
#define B_ROWS (NT * 8 / A8)
#define UNITS 16
#define THREADS (128 * KS)
#define CELL_WARPS ((B_ROWS * UNITS + 31) / 32)

// The cell's float operations as Triton emits them for kernels/triton/lstm.py (see the top).
__device__ __forceinline__ float triton_sigmoid(float x) {
    float r;
    asm("{\n\t.reg .f32 a, one;\n\t"
        "mov.b32 one, 0f3F800000;\n\t"
        "sub.f32 a, 0f00000000, %1;\n\t"
        "mul.f32 a, a, 0f3FB8AA3B;\n\t"
        "ex2.approx.f32 a, a;\n\t"
        "add.f32 a, a, 0f3F800000;\n\t"
        "div.full.f32 %0, one, a;\n\t}"
        : "=f"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ float triton_tanh(float x) {
    float r;
    asm("{\n\t.reg .f32 ax, x2, p, e, v, zero, one, m2;\n\t.reg .pred small, big;\n\t.reg .b32 sgn, bits;\n\t"
        "mov.b32 zero, 0f00000000;\n\tmov.b32 one, 0f3F800000;\n\tmov.b32 m2, 0fC0000000;\n\t"
        "abs.ftz.f32 ax, %1;\n\t"
        "setp.ltu.f32 small, ax, 0f3F19999A;\n\t"
        // |x| < 0.6 (or NaN): an odd polynomial
        "mul.f32 x2, %1, %1;\n\t"
        "fma.rn.ftz.f32 p, 0f3C80F082, x2, 0fBD563CAE;\n\t"
        "fma.rn.ftz.f32 p, p, x2, 0f3E085941;\n\t"
        "fma.rn.ftz.f32 p, p, x2, 0fBEAAA9ED;\n\t"
        "fma.rn.ftz.f32 p, p, x2, zero;\n\t"
        "fma.rn.ftz.f32 p, p, %1, %1;\n\t"
        // otherwise 1 - 2 / (exp(2|x|) + 1), with x's sign
        "mul.f32 e, ax, 0f4038AA3B;\n\t"
        "ex2.approx.ftz.f32 e, e;\n\t"
        "add.f32 e, e, 0f3F800000;\n\t"
        "rcp.approx.ftz.f32 e, e;\n\t"
        "fma.rn.ftz.f32 v, e, m2, one;\n\t"
        "setp.ge.f32 big, ax, 0f41102CB4;\n\t"
        "selp.f32 v, one, v, big;\n\t"
        "mov.b32 bits, %1;\n\t"
        "and.b32 sgn, bits, -2147483648;\n\t"
        "mov.b32 bits, v;\n\t"
        "or.b32 bits, sgn, bits;\n\t"
        "mov.b32 v, bits;\n\t"
        "selp.f32 %0, p, v, small;\n\t}"
        : "=f"(r) : "f"(x));
    return r;
}

__device__ __forceinline__ float triton_mul(float a, float b) {
    float r;
    asm("mul.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ float div_rn_ftz(float a, float b) {
    float r;
    asm("div.rn.ftz.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
}

__device__ __forceinline__ void store_marked(uint2* p, u32 data, u32 mark) {
    asm volatile("st.volatile.global.v2.u32 [%0], {%1, %2};" ::"l"(p), "r"(data), "r"(mark) : "memory");
}

__device__ __forceinline__ uint2 load_marked(const uint2* p) {
    uint2 v;
    asm volatile("ld.volatile.global.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p) : "memory");
    return v;
}

extern "C" __global__ void __launch_bounds__(THREADS, 1)
bitserial_lstm(const uint4* __restrict__ wplanes, const float* __restrict__ scale, const float* __restrict__ bias,
               const float* __restrict__ gates_in, const float* __restrict__ h0, const float* __restrict__ c0,
               float* __restrict__ hs, float* __restrict__ c_out, const float* __restrict__ xscale, uint2* exchange,
               unsigned long long* __restrict__ flags, int T, int H, int wpad, int n_stored, int active,
               int act_bits, int act_signed, int qmin, int qmax) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int q = warp / KS, kpart = warp % KS;
    const int u0 = blockIdx.x * UNITS;
    const int chunks = wpad / 16;
    const int pairs = B_ROWS * gridDim.x * (A8 / 2);  // (data, mark) pairs a buffer of the exchange
    const int xs_stride = wpad + 4;                    // words of a plane row in shared memory (padded: banks)

    // The block's active weight planes, [tile q][plane p, most significant first][chunk][row][16 bytes x 4].
    extern __shared__ uint4 wsm[];
    const int tile_words = active * chunks * 64;
    // The step's input planes, gathered from the exchange: [B * A8][xs_stride] words (after the weights).
    u32* const xs = (u32*)(wsm + 4 * tile_words);
    for (int i = threadIdx.x; i < B_ROWS * A8 * xs_stride; i += THREADS) xs[i] = 0;  // padding stays zero
    for (int i = threadIdx.x; i < 4 * tile_words; i += THREADS) {
        const int quarter = i & 3, row = i >> 2 & 15, rest = i >> 6;
        const int c = rest % chunks, p = rest / chunks % active, tile = rest / (chunks * active);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (u0 + row < H)
            v = __ldg(wplanes + ((size_t)(n_stored - 1 - p) * 4 * H + tile * H + u0 + row) * (wpad / 4) + c * 4 + quarter);
        wsm[i] = v;
    }
    __shared__ i64 partial[KS][4][B_ROWS][16];
    __shared__ int code_sums[KS][B_ROWS];
    __shared__ float gates[4][B_ROWS][UNITS];
    __shared__ float cell[B_ROWS][UNITS];

    // Epilogue thread e: gate q_e, row m_e, unit r_e; cell thread e: row e / 16, unit e % 16.
    const int e = threadIdx.x;
    const bool epilogue = e < 4 * B_ROWS * UNITS;
    const int q_e = e / (B_ROWS * UNITS), m_e = e / UNITS % B_ROWS, r_e = e % UNITS;
    const bool unit_ok = u0 + r_e < H;
    const int n_e = q_e * H + u0 + r_e;
    const float scale_e = epilogue && unit_ok ? scale[n_e] : 0.0f;
    const float bias_e = epilogue && unit_ok && bias ? bias[n_e] : 0.0f;
    const bool cell_thread = warp < CELL_WARPS, cell_row = e < B_ROWS * UNITS;
    const float sx = *xscale;

    // h's codes -> the exchange's buffer s % 2, marked s + 1, for step s; saturated values and NaNs counted.
    // Called by the cell warps together (ballots); ftz: the cell kernel's division (flushes denormals),
    // else the input kernel's (bitserial_quantize_input, for h0).
    auto publish = [&](float h, bool valid, int s, bool ftz) {
        const float v = valid ? h : 0.0f;
        const float qf = rintf(ftz ? div_rn_ftz(v, sx) : __fdiv_rn(v, sx));
        int over, nan;
        const int code = clamped_code(qf, qf != qf, qmin, qmax, over, nan);
        const int m = e / UNITS;
        uint2* const dst = exchange + (size_t)(s & 1) * pairs + ((size_t)m * gridDim.x + blockIdx.x) * (A8 / 2);
        u32 lower = 0;
#pragma unroll
        for (int j = 0; j < A8; ++j) {
            const u32 word = __ballot_sync(0xffffffffu, j < act_bits && ((u32)code >> j & 1u));
            const u32 half = lane < 16 ? word & 0xffffu : word >> 16;
            if (j % 2 == 0)
                lower = half;
            else if (cell_row && (e & 15) == 0)
                store_marked(dst + j / 2, lower | half << 16, (u32)s + 1);
        }
        const int n_over = __popc(__ballot_sync(0xffffffffu, over)), n_nan = __popc(__ballot_sync(0xffffffffu, nan));
        if (lane == 0 && n_over) atomicAdd(flags, (unsigned long long)n_over);
        if (lane == 0 && n_nan) atomicAdd(flags + 1, (unsigned long long)n_nan);
    };

    // Step -1: h0's planes into buffer 0, c0 into shared memory.
    if (cell_thread) {
        const int m = e / UNITS, r = e % UNITS;
        const bool valid = cell_row && u0 + r < H;
        if (valid) cell[m][r] = c0[(size_t)m * H + u0 + r];
        publish(valid ? h0[(size_t)m * H + u0 + r] : 0.0f, valid, 0, false);
    }
    __syncthreads();

    const i64 planes_sum = active_planes_sum(n_stored, active);
    for (int t = 0; t < T; ++t) {
        // This step's input gates do not depend on the recurrence: on their way before the wait.
        const float gin = epilogue && unit_ok ? gates_in[((size_t)t * B_ROWS + m_e) * 4 * H + n_e] : 0.0f;
        // h_{t-1}'s planes from every block, each pair once it carries mark t + 1.
        for (int i = threadIdx.x; i < pairs; i += THREADS) {
            const uint2* src = exchange + (size_t)(t & 1) * pairs + i;
            uint2 v = load_marked(src);
            while (v.y != (u32)t + 1) v = load_marked(src);
            const int pair = i % (A8 / 2), block = i / (A8 / 2) % gridDim.x, m = i / (A8 / 2 * gridDim.x);
            u16* const row = (u16*)(xs + (size_t)(m * A8 + 2 * pair) * xs_stride) + block;
            row[0] = (u16)v.x;
            row[xs_stride * 2] = (u16)(v.x >> 16);
        }
        __syncthreads();
        const uint4* xp = (const uint4*)xs;

        // Binary mmas over this warp's chunks, each chunk's planes by Horner's rule (bitserial_gemm's order).
        int part32[NT][4];
#pragma unroll
        for (int n = 0; n < NT; ++n)
#pragma unroll
            for (int i = 0; i < 4; ++i) part32[n][i] = 0;
        int code_sum[B_ROWS];
#pragma unroll
        for (int m = 0; m < B_ROWS; ++m) code_sum[m] = 0;
        for (int c = kpart; c < chunks; c += KS) {
            uint4 b[NT];
#pragma unroll
            for (int n = 0; n < NT; ++n) b[n] = xp[(n * 8 + g) * (xs_stride / 4) + c * 4 + t4];
            if (q == 0) {  // the sums of the input codes, from their planes: sum_j +-2^j popc(plane j)
#pragma unroll
                for (int n = 0; n < NT; ++n) {
                    const int col = n * 8 + g, j = col % A8;
                    const int pc = __popc(b[n].x) + __popc(b[n].y) + __popc(b[n].z) + __popc(b[n].w);
                    const int v = j < act_bits ? pc << j : 0;
                    code_sum[col / A8] += act_signed && j == act_bits - 1 ? -v : v;
                }
            }
            int acc[NT][4];
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[n][i] = 0;
            const uint4* tile = wsm + (size_t)q * tile_words + c * 64;
            for (int p = 0; p < active; ++p) {
                const uint4 lo = tile[(size_t)p * chunks * 64 + g * 4 + t4];
                const uint4 hi = tile[(size_t)p * chunks * 64 + (g + 8) * 4 + t4];
#pragma unroll
                for (int n = 0; n < NT; ++n) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) acc[n][i] += acc[n][i];
                    mma_b1_and_popc(acc[n], lo.x, hi.x, lo.y, hi.y, b[n].x, b[n].y);
                    mma_b1_and_popc(acc[n], lo.z, hi.z, lo.w, hi.w, b[n].z, b[n].w);
                }
            }
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) part32[n][i] += acc[n][i];
        }

        // Columns -> input rows, as bitserial_gemm's epilogue.
        i64 part[B_ROWS][2];
        columns_to_rows<NT, A8>(part32, part, t4, n_stored - active, act_bits, act_signed);
#pragma unroll
        for (int m = 0; m < B_ROWS; ++m)
            for (int o = 16; o > 0; o >>= 1) code_sum[m] += __shfl_xor_sync(0xffffffffu, code_sum[m], o);
        if (t4 == 0) {
#pragma unroll
            for (int m = 0; m < B_ROWS; ++m) partial[kpart][q][m][g] = part[m][0], partial[kpart][q][m][g + 8] = part[m][1];
        }
        if (q == 0 && lane == 0) {
#pragma unroll
            for (int m = 0; m < B_ROWS; ++m) code_sums[kpart][m] = code_sum[m];
        }
        __syncthreads();

        // Epilogue: the hidden part of gate q_e for row m_e and unit r_e, plus its input part.
        if (epilogue) {
            i64 s = 0, rows = 0;
#pragma unroll
            for (int k = 0; k < KS; ++k) s += partial[k][q_e][m_e][r_e], rows += code_sums[k][m_e];
            gates[q_e][m_e][r_e] = __fadd_rn(gin, bitserial_output(s, rows, planes_sum, scale_e, bias != nullptr, bias_e));
        }
        __syncthreads();

        // The cell, then h's planes for the next step (the last step's too: its saturation is counted).
        if (cell_thread) {
            const int m = e / UNITS, r = e % UNITS;
            const bool valid = cell_row && u0 + r < H;
            float h = 0.0f;
            if (valid) {
                const float si = triton_sigmoid(gates[0][m][r]), sf = triton_sigmoid(gates[1][m][r]);
                const float tg = triton_tanh(gates[2][m][r]), so = triton_sigmoid(gates[3][m][r]);
                const float c = __fmaf_rn(si, tg, triton_mul(sf, cell[m][r]));
                h = triton_mul(so, triton_tanh(c));
                cell[m][r] = c;
                hs[((size_t)t * B_ROWS + m) * H + u0 + r] = h;
            }
            publish(h, valid, t + 1, true);
        }
        __syncthreads();
    }
    if (cell_thread && cell_row && u0 + e % UNITS < H) c_out[(size_t)(e / UNITS) * H + u0 + e % UNITS] = cell[e / UNITS][e % UNITS];
}
