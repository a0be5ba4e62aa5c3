// The arithmetic that ends a bit-serial product, and the clamp that makes its input codes, shared by
// bitserial.cu (a layer) and bitserial_lstm.cu (an LSTM layer's recurrence), so that both give
// reference.bitserial_acc's numbers in one way.
#pragma once

typedef long long i64;

// Binary-mma sums by column -> by input row. The mma's columns are input planes: column (m, j) is plane j
// of input row m, and carries c_j 2^j (c_j = -1 for the top plane when signed, else 1); its sums count in
// units of 2^-shift (the least significant active weight plane). Lane (g, t) holds columns 2t and 2t + 1
// of each of its TILES tiles (ROW_PLANES planes an input row), for weight rows g (sums[n][0..1]) and g + 8 (sums[n][2..3]); on return every
// lane of a row group holds its rows' totals part[m][0] (row g) and part[m][1] (row g + 8).
template <int TILES, int ROW_PLANES, int ROWS, typename S>  // (not NT, A8: the kernels' macros)
__device__ __forceinline__ void columns_to_rows(const S (&sums)[TILES][4], i64 (&part)[ROWS][2], int t, int shift,
                                                int act_bits, int act_signed) {
#pragma unroll
    for (int m = 0; m < ROWS; ++m) part[m][0] = part[m][1] = 0;
#pragma unroll
    for (int n = 0; n < TILES; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int local = n * 8 + 2 * t + (e & 1);
            const int j = local % ROW_PLANES;
            if (j < act_bits) {
                const i64 v = (i64)sums[n][e] << (j + shift);
                part[local / ROW_PLANES][e >> 1] += (act_signed && j == act_bits - 1) ? -v : v;
            }
        }
#pragma unroll
    for (int m = 0; m < ROWS; ++m)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            part[m][h] += __shfl_xor_sync(0xffffffffu, part[m][h], 1);
            part[m][h] += __shfl_xor_sync(0xffffffffu, part[m][h], 2);
        }
}

// A fixed-point input code from its rounded quotient q = rint(v / scale): 0 where ``nan`` (counted in
// nans), else q clamped to [qmin, qmax] (a clamped value counted in over).
__device__ __forceinline__ int clamped_code(float q, bool nan, int qmin, int qmax, int& over, int& nans) {
    over = nans = 0;
    if (nan) {
        nans = 1;
        q = 0.0f;
    } else if (q < (float)qmin || q > (float)qmax) {
        over = 1;
        q = fminf(fmaxf(q, (float)qmin), (float)qmax);
    }
    return (int)q;
}

// sum_i 2^(n - k + i) over the k active of n stored planes: what the {0, 1} planes' products need to
// become the +-1 layers' (below).
__device__ __forceinline__ i64 active_planes_sum(int n_stored, int active) {
    return ((1LL << active) - 1) << (n_stored - active);
}

// One output: acc = 2 s - planes_sum * sum(codes) (s: the row's total from columns_to_rows), then
// float32(acc) * scale (+ bias), rounded as reference.rescale rounds.
__device__ __forceinline__ float bitserial_output(i64 s, i64 code_sum, i64 planes_sum, float scale, bool has_bias,
                                                  float bias) {
    const i64 acc = 2 * s - planes_sum * code_sum;
    float y = __fmul_rn(__ll2float_rn(acc), scale);
    if (has_bias) y = __fadd_rn(y, bias);
    return y;
}
