// spdnn CUDA engine, general networks (spdnn/engines/cuda/general.py runs them): one launch
// per layer, any widths (layer k maps rows of n_in values to rows of n_out), sparse layers
// with per-entry values or one value, dense layers, the bias rule, ReLU with any cap or none,
// identity. The challenge's networks never come here (stationary.cu, layer.cu).
//
// Per layer, rows are samples (spdnn/network.py):
//     z = sum over inputs i ascending of y[i] * w[i, j]          (T = double: no FMA)
//     z = z + b[j]  if dense_bias or z != 0                     (the bias rule)
//     z = clamp(z, 0, cap) if relu (cap = inf: none), else z    (identity)
// A row lives when any of its outputs is nonzero (negative ones too: identity layers).
//
// Activations are dense rows in two device buffers used in turn (row p = the p-th row held,
// n_in values in, n_out values out); each row carries a sample id and a multiplicity (always
// 1 here: nothing is merged) that travel with it when rows are compacted. Kernels read the
// row count from device memory (*count_in), so a whole run can be captured in one graph.
//
// Two ways a layer ends:
//   COMPACT (the layer may drop dead rows and one block owns whole output rows): the block
//   reserves output rows for its tile's live rows (spdnn::reserve_rows) and writes them there;
//   *count_out and *wcount_out count them.
//   in place (otherwise): row p of the output is written at row p, and flags[p] is set to 1
//   when it lives (benign race: every writer stores 1); the engine then compacts the flagged
//   rows (spdnn_compact, layer.cu) or only counts them (spdnn_general_count).

#include "common.cuh"
#include "chunked_tile.cuh"

namespace spdnn {

// The end of a layer: the bias rule, then ReLU with its cap, or nothing (identity).
template <typename T>
__device__ __forceinline__ T general_epilogue(T sum, T b, int dense_bias, int relu, T cap) {
    T z = sum;
    if (dense_bias || z != T(0)) z = Arith<T>::add(z, b);
    if (relu) z = z > T(0) ? (z < cap ? z : cap) : T(0);
    return z;
}

}  // namespace spdnn

// Sparse layers, layout of spdnn/engines/cuda/layout.py (warp-sliced ELLPACK per output slice
// and input chunk, 16-bit chunk-local indices, lane-interleaved; chunks cut the n_in inputs,
// slices the n_out outputs). Template parameters as spdnn_layer's (layer.cu): THREADS,
// ROWS_PER_TILE (KernelConfig.rows_per_tile), COLS_PER_THREAD (KernelConfig.cols_per_thread); COMPACT as its FUSED.
//
// Ownership. A block takes work items (tile of ROWS_PER_TILE rows) x (slice of
// THREADS*COLS_PER_THREAD outputs) in a grid-stride loop. Thread tid owns outputs
// j = slice*THREADS*COLS_PER_THREAD + t*THREADS + tid, t < COLS_PER_THREAD, for the tile's
// rows: a register tile that reuses every weight load ROWS_PER_TILE times; warp w sums warp
// slices t*(THREADS/32) + w, lane the output within one (chunked_tile.cuh). For each input
// chunk the block stages the tile's inputs in shared memory as inputs[i] (one Tile per input
// i, plus the zero slot inputs[chunk] that padding reads). COMPACT needs one slice (the block
// owns whole rows); thread 0 of the block reserves the output rows.
//
// PIPELINED (whole rows in one chunk, nchunks == 1): two input buffers, each chunk + 1 Tiles
// with its own zero slot; while the block sums item k from one buffer, the next item's inputs
// arrive in the other (cp.async, issued before item k's sum), so staging overlaps the sums
// within one block. The terms and their order are the same: the outputs equal the
// unpipelined kernel's bit for bit.
//
// Differences from spdnn_layer (the rest is the same code, chunked_tile.cuh): the general
// epilogue (bias rule, optional ReLU, any cap), and a row lives when any output is nonzero
// (identity layers give negative ones) and the row exists (p < count: a dense bias makes
// padding rows nonzero); no DEDUP, no row-count range.
template <typename T, typename V, int VMODE, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD, bool COMPACT,
          bool PIPELINED>
__global__ void __launch_bounds__(THREADS) spdnn_general_sparse(
        const T* __restrict__ y_in, T* __restrict__ y_out, const int* __restrict__ ids_in, int* __restrict__ ids_out,
        const int* __restrict__ mult_in, int* __restrict__ mult_out, const int* __restrict__ count_in,
        int* __restrict__ count_out, int* __restrict__ samples_out, int* __restrict__ flags,
        const unsigned short* __restrict__ entry_idx, const V* __restrict__ entry_val,
        const int2* __restrict__ warp_slices, const T* __restrict__ bias, T scalar, int dense_bias, int relu, T cap,
        int n_in, int n_out, int chunk, int nchunks, int slices) {
    static_assert(spdnn::TileKernelChecks<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>::ok, "");
    static_assert(spdnn::TileChecks<T, ROWS_PER_TILE>::ok, "");
    using TileT = spdnn::Tile<T, ROWS_PER_TILE>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TileT* inputs = reinterpret_cast<TileT*>(smem_raw);  // chunk + 1 tiles; inputs[chunk] == 0
    __shared__ int s_out_row[ROWS_PER_TILE];

    const int tid = threadIdx.x;
    constexpr int cols_per_slice = THREADS * COLS_PER_THREAD;
    const int count = *count_in;
    const int items = ((count + ROWS_PER_TILE - 1) / ROWS_PER_TILE) * slices;
    // The end of an item: the epilogue in registers, then the stores (every thread calls it).
    auto finish_item = [&](T (&acc)[COLS_PER_THREAD][ROWS_PER_TILE], int first_row, int slice_col) {
        const unsigned alive = spdnn::finish_tile<T, THREADS, ROWS_PER_TILE, COLS_PER_THREAD, true>(
            acc, bias, slice_col, n_out, first_row, count,
            [&](T sum, T b) { return spdnn::general_epilogue<T>(sum, b, dense_bias, relu, cap); },
            [&](T z) { return z != T(0); });  // a dense bias makes padding rows nonzero: not counted
        spdnn::store_tile<T, THREADS, ROWS_PER_TILE, COLS_PER_THREAD, COMPACT>(
            acc, alive, y_out, first_row, count, slice_col, n_out, ids_in, ids_out, mult_in, mult_out, count_out,
            samples_out, flags, s_out_row);
    };

    if constexpr (PIPELINED) {
        TileT* buffers[2] = {inputs, inputs + (chunk + 1)};  // buffer b: chunk + 1 Tiles
        if (tid == 0) {
            spdnn::zero_tile(buffers[0] + chunk);
            spdnn::zero_tile(buffers[1] + chunk);
        }
        int item = blockIdx.x;
        if (item < items)
            spdnn::stage_tile_async<T, ROWS_PER_TILE, THREADS>(buffers[0], y_in, n_in, (item / slices) * ROWS_PER_TILE,
                                                               count, tid);
        spdnn::cp_async_commit();
        for (int b = 0; item < items; item += gridDim.x, b ^= 1) {
            const int next = item + gridDim.x;
            if (next < items)  // into the buffer item - gridDim.x was summed from (a barrier ago)
                spdnn::stage_tile_async<T, ROWS_PER_TILE, THREADS>(buffers[b ^ 1], y_in, n_in,
                                                                   (next / slices) * ROWS_PER_TILE, count, tid);
            spdnn::cp_async_commit();
            spdnn::cp_async_wait<1>();  // this thread's copies for `item` are done...
            __syncthreads();            // ...and every thread's (and the zero slots)
            const int tile = item / slices;
            const int slice = item - tile * slices;
            T acc[COLS_PER_THREAD][ROWS_PER_TILE];
            spdnn::zero_acc<T, ROWS_PER_TILE, COLS_PER_THREAD>(acc);
            spdnn::sum_staged_chunk<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>(
                acc, buffers[b], slice, 0, 1, warp_slices, entry_idx, entry_val, scalar);
            finish_item(acc, tile * ROWS_PER_TILE, slice * cols_per_slice);
            __syncthreads();  // buffer b is read: the next item may stage into it
        }
        spdnn::cp_async_wait<0>();
    } else {
        if (tid == 0) spdnn::zero_tile(inputs + chunk);
        for (int item = blockIdx.x; item < items; item += gridDim.x) {
            const int tile = item / slices;
            const int slice = item - tile * slices;
            const int first_row = tile * ROWS_PER_TILE;
            T acc[COLS_PER_THREAD][ROWS_PER_TILE];
            spdnn::sum_tile_over_chunks<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>(
                acc, inputs, y_in, n_in, first_row, count, slice, chunk, nchunks, warp_slices, entry_idx, entry_val,
                scalar);
            finish_item(acc, first_row, slice * cols_per_slice);
        }
    }
}

// Dense layers: w is the n_in x n_out weight matrix, row-major, in the activation type.
// Ownership. A block of 256 threads takes output tiles of 64 rows x 64 outputs in a
// grid-stride loop (consecutive items share their rows); thread (ty, tx) = (tid / 16, tid % 16)
// owns rows ty + 16*a and outputs tx + 16*b of the tile, a, b < 4: a 4 x 4 register tile.
// The inputs go by in chunks of 16: the block stages the tile's 64 rows x 16 inputs and the
// 16 x 64 weights in shared memory, and every thread adds the 16 terms in input order, so each
// output is summed over its inputs ascending (out-of-range inputs add exact zeros). Outputs
// are written in place (row p at row p) and live rows flagged.
template <typename T>
__global__ void __launch_bounds__(256) spdnn_general_dense(
        const T* __restrict__ y_in, T* __restrict__ y_out, const int* __restrict__ count_in, int* __restrict__ flags,
        const T* __restrict__ w, const T* __restrict__ bias, int dense_bias, int relu, T cap, int n_in, int n_out) {
    constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;
    __shared__ T ys[BK][BM + 1];  // ys[k][r]: input k0 + k of row r0 + r (+1: no bank conflicts on stores)
    __shared__ T ws[BK][BN];      // ws[k][c]: weight (k0 + k, c0 + c)
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const int count = *count_in;
    const int col_tiles = (n_out + BN - 1) / BN;
    const int items = ((count + BM - 1) / BM) * col_tiles;
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
        const int r0 = (item / col_tiles) * BM, c0 = (item % col_tiles) * BN;
        T acc[TM][TN];
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
            for (int b = 0; b < TN; ++b) acc[a][b] = T(0);
        for (int k0 = 0; k0 < n_in; k0 += BK) {
            __syncthreads();  // the previous chunk's readers are done
#pragma unroll
            for (int q = 0; q < BM * BK / 256; ++q) {
                const int e = tid + 256 * q, r = e / BK, k = e % BK;
                ys[k][r] = (r0 + r < count && k0 + k < n_in) ? y_in[(size_t)(r0 + r) * n_in + k0 + k] : T(0);
            }
#pragma unroll
            for (int q = 0; q < BK * BN / 256; ++q) {
                const int e = tid + 256 * q, k = e / BN, c = e % BN;
                ws[k][c] = (k0 + k < n_in && c0 + c < n_out) ? w[(size_t)(k0 + k) * n_out + c0 + c] : T(0);
            }
            __syncthreads();
#pragma unroll
            for (int k = 0; k < BK; ++k) {
                T x[TM], v[TN];
#pragma unroll
                for (int a = 0; a < TM; ++a) x[a] = ys[k][ty + 16 * a];
#pragma unroll
                for (int b = 0; b < TN; ++b) v[b] = ws[k][tx + 16 * b];
#pragma unroll
                for (int a = 0; a < TM; ++a)
#pragma unroll
                    for (int b = 0; b < TN; ++b) acc[a][b] = spdnn::Arith<T>::madd(acc[a][b], v[b], x[a]);
            }
        }
#pragma unroll
        for (int a = 0; a < TM; ++a) {
            const int p = r0 + ty + 16 * a;
            if (p >= count) continue;
            bool live = false;
#pragma unroll
            for (int b = 0; b < TN; ++b) {
                const int j = c0 + tx + 16 * b;
                if (j >= n_out) continue;
                const T z = spdnn::general_epilogue<T>(acc[a][b], bias[j], dense_bias, relu, cap);
                y_out[(size_t)p * n_out + j] = z;
                live |= z != T(0);
            }
            if (live) flags[p] = 1;  // benign race: every writer stores 1
        }
    }
}

// Rows that live after an in-place layer that may not drop rows: *count_out += the flags of
// rows 0..*count_in-1 (left set: the engine reads the last layer's back). Ownership: thread g
// of the grid sums flags g, g + (grid threads), ...; a warp adds its sum with one atomicAdd.
__global__ void spdnn_general_count(const int* __restrict__ flags, const int* __restrict__ count_in,
                                    int* __restrict__ count_out) {
    const int count = *count_in;
    int live = 0;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < count; p += gridDim.x * blockDim.x) live += flags[p];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) live += __shfl_xor_sync(0xffffffffu, live, o);
    if ((threadIdx.x & 31) == 0 && live) atomicAdd(count_out, live);
}
