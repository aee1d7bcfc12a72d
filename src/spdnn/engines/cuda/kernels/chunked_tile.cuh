// spdnn CUDA kernels: one layer of a register tile summed over staged input chunks, the
// per-layer kernels' common steps (layer.cu's spdnn_layer, general.cu's spdnn_general_sparse).
//
// Weights: the layout of spdnn/engines/cuda/layout.py (warp-sliced ELLPACK per output slice
// and input chunk, 16-bit chunk-local indices, lane-interleaved). A block's work item is a
// tile of ROWS_PER_TILE rows (first_row..) x a slice of THREADS*COLS_PER_THREAD columns;
// thread tid owns columns slice*THREADS*COLS_PER_THREAD + t*THREADS + tid, t < COLS_PER_THREAD,
// for the tile's rows: a COLS_PER_THREAD x ROWS_PER_TILE register tile acc[t][s] that reuses
// every weight load ROWS_PER_TILE times. Warp w of the block sums warp slice t*NWARPS + w
// (lane = column within it) of each chunk.

#include "async_copy.cuh"

namespace spdnn {

// Stage inputs base..base+len-1 of the tile's rows first_row..first_row+ROWS_PER_TILE-1
// (row-major, `width` values a row; rows at or past `count` read as 0) into
// inputs[0..len-1], one Tile per input neuron. Thread tid of the block's THREADS stages
// inputs tid, tid + THREADS, ...
template <typename T, int ROWS_PER_TILE, int THREADS>
__device__ __forceinline__ void stage_tile_chunk(Tile<T, ROWS_PER_TILE>* inputs, const T* __restrict__ y_in, int width,
                                                 int first_row, int count, int base, int len, int tid) {
#pragma unroll 4
    for (int i = tid; i < len; i += THREADS) {
        Tile<T, ROWS_PER_TILE> x;
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s)
            x.v[s] = (first_row + s < count) ? y_in[(size_t)(first_row + s) * width + base + i] : T(0);
        inputs[i] = x;
    }
}

// Stage inputs 0..width-1 of the tile's rows first_row..first_row+ROWS_PER_TILE-1 into
// inputs[0..width-1] asynchronously (cp.async, one element a copy; rows at or past `count`
// are zero-filled): what stage_tile_chunk does for a whole row, completed by the caller's
// cp_async_commit / cp_async_wait and a barrier. Thread tid of the block's THREADS copies
// inputs tid, tid + THREADS, ...
template <typename T, int ROWS_PER_TILE, int THREADS>
__device__ __forceinline__ void stage_tile_async(Tile<T, ROWS_PER_TILE>* inputs, const T* __restrict__ y_in,
                                                 int width, int first_row, int count, int tid) {
    for (int i = tid; i < width; i += THREADS) {
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) {
            const bool real = first_row + s < count;
            const T* src = real ? y_in + (size_t)(first_row + s) * width + i : y_in;
            cp_async_zfill<sizeof(T)>(&inputs[i].v[s], src, real ? int(sizeof(T)) : 0);
        }
    }
}

// Chunk c of the sum phase, its inputs already staged in `inputs` (the zero slot included):
// acc[t][s] += the terms of the chunk's entries, warp slice by warp slice:
// warp_slices[((slice*nchunks + c)*COLS_PER_THREAD + t) * NWARPS + warp] = (first entry,
// entries a lane) in entry_idx/entry_val.
template <typename T, typename V, int VMODE, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD>
__device__ __forceinline__ void sum_staged_chunk(T (&acc)[COLS_PER_THREAD][ROWS_PER_TILE],
                                                 const Tile<T, ROWS_PER_TILE>* inputs, int slice, int c, int nchunks,
                                                 const int2* __restrict__ warp_slices,
                                                 const unsigned short* __restrict__ entry_idx,
                                                 const V* __restrict__ entry_val, T scalar) {
    constexpr int NWARPS = THREADS / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int t = 0; t < COLS_PER_THREAD; ++t) {
        const int2 m = warp_slices[((slice * nchunks + c) * COLS_PER_THREAD + t) * NWARPS + warp];
        sum_column<T, V, VMODE, ROWS_PER_TILE>(acc[t], inputs, entry_idx + m.x + lane, entry_val + m.x + lane, m.y,
                                               scalar);
    }
}

template <typename T, int ROWS_PER_TILE, int COLS_PER_THREAD>
__device__ __forceinline__ void zero_acc(T (&acc)[COLS_PER_THREAD][ROWS_PER_TILE]) {
#pragma unroll
    for (int t = 0; t < COLS_PER_THREAD; ++t)
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) acc[t][s] = T(0);
}

// The sum phase of one work item: acc[t][s] = the sum over all n_in inputs of the tile's row
// s times column t of this thread, chunk by chunk (`chunk` inputs each, `nchunks` of them).
// For each chunk the block stages the tile's inputs in `inputs` (chunk + 1 Tiles: the zero
// slot inputs[chunk] is set by the caller once and never overwritten) between two barriers,
// then each warp sums its warp slices (sum_staged_chunk). Every thread of the block must
// call it.
template <typename T, typename V, int VMODE, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD>
__device__ __forceinline__ void sum_tile_over_chunks(T (&acc)[COLS_PER_THREAD][ROWS_PER_TILE],
                                                     Tile<T, ROWS_PER_TILE>* inputs, const T* __restrict__ y_in,
                                                     int n_in, int first_row, int count, int slice, int chunk,
                                                     int nchunks, const int2* __restrict__ warp_slices,
                                                     const unsigned short* __restrict__ entry_idx,
                                                     const V* __restrict__ entry_val, T scalar) {
    zero_acc<T, ROWS_PER_TILE, COLS_PER_THREAD>(acc);
    for (int c = 0; c < nchunks; ++c) {
        const int base = c * chunk;
        const int len = min(chunk, n_in - base);
        __syncthreads();  // the previous chunk's (or item's) readers are done with inputs
        stage_tile_chunk<T, ROWS_PER_TILE, THREADS>(inputs, y_in, n_in, first_row, count, base, len, threadIdx.x);
        __syncthreads();
        sum_staged_chunk<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>(acc, inputs, slice, c, nchunks,
                                                                                warp_slices, entry_idx, entry_val,
                                                                                scalar);
    }
}

// The end of a layer in registers: acc[t][s] = finish(acc[t][s], bias[j]) for this thread's
// outputs j = slice_col + t*THREADS + tid (outputs past n_out get bias 0 and are never
// stored). Returns the rows s of the tile with an output j < n_out for which lives(z);
// EXISTING_ONLY: and only rows that exist (first_row + s < count; padding rows past the
// last row are zero before the epilogue, but a dense bias can make them nonzero).
template <typename T, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD, bool EXISTING_ONLY, typename Finish,
          typename Lives>
__device__ __forceinline__ unsigned finish_tile(T (&acc)[COLS_PER_THREAD][ROWS_PER_TILE], const T* __restrict__ bias,
                                                int slice_col, int n_out, int first_row, int count, Finish&& finish,
                                                Lives&& lives) {
    unsigned alive = 0;
#pragma unroll
    for (int t = 0; t < COLS_PER_THREAD; ++t) {
        const int j = slice_col + t * THREADS + threadIdx.x;
        const T b = (j < n_out) ? bias[j] : T(0);
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) {
            const T z = finish(acc[t][s], b);
            acc[t][s] = z;
            if (lives(z) && j < n_out && (!EXISTING_ONLY || first_row + s < count)) alive |= 1u << s;
        }
    }
    return alive;
}

// Store the finished register tile z[t][s] (output j = slice_col + t*THREADS + tid < n_out of
// tile row s). COMPACT (the block owns whole rows): the block's live rows (bits of any
// thread's `alive`) get output rows from reserve_rows and are written there; every thread
// of the block must call it. Otherwise: tile row s (input row p = first_row + s < count) is
// written in place, at row p, and flags[p] set to 1 when it lives in this thread.
template <typename T, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD, bool COMPACT>
__device__ __forceinline__ void store_tile(const T (&z)[COLS_PER_THREAD][ROWS_PER_TILE], unsigned alive,
                                           T* __restrict__ y_out, int first_row, int count, int slice_col,
                                           int n_out, const int* __restrict__ ids_in, int* __restrict__ ids_out,
                                           const int* __restrict__ mult_in, int* __restrict__ mult_out,
                                           int* __restrict__ count_out, int* __restrict__ samples_out,
                                           int* __restrict__ flags, int* s_out_row) {
    if (COMPACT) {
        const unsigned block_alive = block_alive_rows<ROWS_PER_TILE>(alive);
        reserve_rows<ROWS_PER_TILE>(block_alive, first_row, ids_in, ids_out, mult_in, mult_out, count_out,
                                    samples_out, s_out_row);
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) {
            const int row = s_out_row[s];
            if (row < 0) continue;
#pragma unroll
            for (int t = 0; t < COLS_PER_THREAD; ++t) {
                const int j = slice_col + t * THREADS + threadIdx.x;
                if (j < n_out) y_out[(size_t)row * n_out + j] = z[t][s];
            }
        }
    } else {
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) {
            const int p = first_row + s;
            if (p >= count) continue;
#pragma unroll
            for (int t = 0; t < COLS_PER_THREAD; ++t) {
                const int j = slice_col + t * THREADS + threadIdx.x;
                if (j < n_out) y_out[(size_t)p * n_out + j] = z[t][s];
            }
            if ((alive >> s) & 1u) flags[p] = 1;  // benign race: every writer stores 1
        }
    }
}

}  // namespace spdnn
