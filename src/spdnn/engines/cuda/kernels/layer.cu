// spdnn CUDA engine: one layer per launch, for layouts whose rows do not fit a block's
// shared memory (stationary.cu keeps rows in shared memory across layers when they do).
//
// Gather formulation over dense, sample-major activations (row p = the p-th alive row, n
// values). Weights: spdnn/engines/cuda/layout.py (warp-sliced ELLPACK per output slice and
// input chunk, 16-bit chunk-local indices, lane-interleaved).
//
// Each row carries a sample id and a multiplicity (the samples it stands for, > 1 once
// identical rows are merged: merge.cu); *samples_out sums the survivors' multiplicities.

#include "common.cuh"
#include "chunked_tile.cuh"

// spdnn_layer. Template parameters (the order the engine names them in):
//   T, V, VMODE      activation type, stored weight type, spdnn::ValueMode;
//   THREADS          block size (KernelConfig.threads);
//   ROWS_PER_TILE    rows of a work item's tile (KernelConfig.rows_per_tile);
//   COLS_PER_THREAD  columns a thread sums for each row (KernelConfig.cols_per_thread);
//   FUSED            one slice (the block owns whole rows): it drops its dead rows itself;
//   DEDUP            the columns summed are the layer's distinct columns, expanded through out_map.
//
// Ownership. A block takes work items (tile of ROWS_PER_TILE alive rows) x (slice of
// THREADS*COLS_PER_THREAD columns) in a grid-stride loop whose length it reads from device
// memory (*count_in), so the layer loop can be captured once in a CUDA graph. Thread tid owns
// the columns (outputs, or DEDUP the distinct columns) v = slice*THREADS*COLS_PER_THREAD +
// t*THREADS + tid, t < COLS_PER_THREAD, for the tile's rows: a register tile that reuses
// every weight load ROWS_PER_TILE times; warp w sums warp slices t*(THREADS/32) + w, lane
// the column within one (chunked_tile.cuh). For each input chunk the block stages the tile's
// inputs in shared memory as inputs[i] (one Tile per input i, plus the zero slot
// inputs[chunk] that padding entries read).
//
// FUSED: reserve_rows hands out output rows for the tile's survivors (thread 0 of the block
// reserves them), written there directly. Not FUSED (outputs sliced over blocks): rows are
// written in place and flagged; the kernel spdnn_compact then moves the survivors.
// DEDUP (layers with identical columns, e.g. RadiX-Net's N/16 distinct ones; always one
// slice): the register tile holds the sums of the distinct columns; they go to shared
// memory, and ownership switches for the epilogue: thread tid expands outputs
// j = tid + r*THREADS through out_map[j] (the block owns whole rows).
//
// The launch does nothing unless the rows entering it number rows_lo..rows_hi (the engine
// may queue the wide path for few rows beside it; see spdnn_wide_sums).
//
// Run-time assumptions (the engine's layout; not checked here): chunk + 1 <= 65536 (16-bit
// indices reach the zero slot), nchunks = ceil(n / chunk), slices = ceil(n /
// (THREADS*COLS_PER_THREAD)) (1 when FUSED or DEDUP), dynamic shared memory as
// KernelConfig.smem_bytes.
template <typename T, typename V, int VMODE, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD, bool FUSED,
          bool DEDUP>
__global__ void __launch_bounds__(THREADS) spdnn_layer(const T* __restrict__ y_in, T* __restrict__ y_out,
                            const int* __restrict__ ids_in, int* __restrict__ ids_out,
                            const int* __restrict__ mult_in, int* __restrict__ mult_out,
                            const int* __restrict__ count_in, int* __restrict__ count_out,
                            int* __restrict__ samples_out, int* __restrict__ flags,
                            const unsigned short* __restrict__ entry_idx, const V* __restrict__ entry_val,
                            const int2* __restrict__ warp_slices, const T* __restrict__ bias,
                            const unsigned short* __restrict__ out_map,
                            T scalar, T ymax, int n, int chunk, int nchunks, int slices, int rows_lo,
                            int rows_hi) {
    static_assert(spdnn::TileKernelChecks<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>::ok, "");
    static_assert(spdnn::TileChecks<T, ROWS_PER_TILE>::ok, "");
    using TileT = spdnn::Tile<T, ROWS_PER_TILE>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TileT* inputs = reinterpret_cast<TileT*>(smem_raw);  // chunk + 1 tiles; inputs[chunk] == 0
    // DEDUP: the sums of the distinct columns, after the (16-byte aligned) input buffer.
    TileT* sums = reinterpret_cast<TileT*>(smem_raw + (((size_t)(chunk + 1) * sizeof(TileT) + 15) / 16) * 16);
    __shared__ int s_out_row[ROWS_PER_TILE];

    const int tid = threadIdx.x;
    constexpr int cols_per_slice = THREADS * COLS_PER_THREAD;
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;  // the wide path (below) runs this layer
    const int ntiles = (count + ROWS_PER_TILE - 1) / ROWS_PER_TILE;
    const int items = ntiles * slices;
    if (tid == 0) spdnn::zero_tile(inputs + chunk);

    for (int item = blockIdx.x; item < items; item += gridDim.x) {
        const int tile = item / slices;
        const int slice = item - tile * slices;
        const int first_row = tile * ROWS_PER_TILE;
        const int slice_col = slice * cols_per_slice;  // the slice's first column
        T acc[COLS_PER_THREAD][ROWS_PER_TILE];
        spdnn::sum_tile_over_chunks<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>(
            acc, inputs, y_in, n, first_row, count, slice, chunk, nchunks, warp_slices, entry_idx, entry_val, scalar);

        if (DEDUP) {
            // Sums of the distinct columns to shared memory; each output reads its own.
            spdnn::store_sums<T, ROWS_PER_TILE, COLS_PER_THREAD, THREADS>(sums, acc);
            __syncthreads();
            // visit(j, s, z) for this thread's outputs j = tid + r*THREADS of every row s of
            // the tile, z the epilogue's value: run twice, to learn which rows live, then to
            // write the survivors once their output rows are reserved.
            auto expand = [&](auto&& visit) {
#pragma unroll 4
                for (int j = tid; j < n; j += THREADS) {
                    const TileT x = sums[out_map[j]];
                    const T b = bias[j];
#pragma unroll
                    for (int s = 0; s < ROWS_PER_TILE; ++s)
                        visit(j, s, spdnn::epilogue<T, VMODE>(x.v[s], scalar, b, ymax));
                }
            };
            unsigned live = 0;
            expand([&](int, int s, T z) {
                if (z > T(0)) live |= 1u << s;
            });
            const unsigned block_alive = spdnn::block_alive_rows<ROWS_PER_TILE>(live);
            spdnn::reserve_rows<ROWS_PER_TILE>(block_alive, first_row, ids_in, ids_out, mult_in, mult_out, count_out,
                                               samples_out, s_out_row);
            int rows[ROWS_PER_TILE];
#pragma unroll
            for (int s = 0; s < ROWS_PER_TILE; ++s) rows[s] = s_out_row[s];
            expand([&](int j, int s, T z) {
                if (rows[s] >= 0) y_out[(size_t)rows[s] * n + j] = z;
            });
            continue;
        }

        // Epilogue in registers: scale (kSumThenScale), bias where nonzero, ReLU, cap.
        const unsigned alive = spdnn::finish_tile<T, THREADS, ROWS_PER_TILE, COLS_PER_THREAD, false>(
            acc, bias, slice_col, n, first_row, count,
            [&](T sum, T b) { return spdnn::epilogue<T, VMODE>(sum, scalar, b, ymax); },
            [&](T z) { return z > T(0); });  // padding rows: a zero sum gets no bias, so dead
        spdnn::store_tile<T, THREADS, ROWS_PER_TILE, COLS_PER_THREAD, FUSED>(
            acc, alive, y_out, first_row, count, slice_col, n, ids_in, ids_out, mult_in, mult_out, count_out,
            samples_out, flags, s_out_row);
    }
}

// Few rows, wide layers (DEDUP layouts whose rows do not fit shared memory, N = 65536):
// spdnn_layer gives a row one block, so a layer of one row is one multiprocessor's work. The
// engine queues, beside spdnn_layer, this path that spreads the row over the grid:
// spdnn_wide_sums, spdnn_wide_expand, then spdnn_wide_place; each launch reads the row count
// and runs only when it is rows_lo..rows_hi, so the count on the device picks the path
// (spdnn_layer gets the complementary range). live[r] says whether row r still lives:
// cleared by spdnn_wide_sums, set by spdnn_wide_expand, read by spdnn_wide_place.
//
// spdnn_wide_sums. Ownership: a warp of the grid takes items (row r, warp slice u) in a
// grid-stride loop; u = t*layout_warps + w names the 32 distinct columns that warp w of the
// layer kernel's blocking sums at t < cols_per_thread (one slice); lane owns column
// u*32 + lane. Blocks own nothing (any size of whole warps: a warp must not straddle two
// items). The lane adds its entries chunk by chunk straight from the row in device memory
// (padding, index `chunk`, adds an exact zero): the terms and the order of spdnn_layer, so
// the same bits. sums[r*vcols + column] receives the sum (vcols = cols_per_thread *
// layout_warps * 32).
template <typename T, typename V, int VMODE>
__global__ void spdnn_wide_sums(const T* __restrict__ y_in, const int* __restrict__ count_in, int rows_lo,
                                int rows_hi, const unsigned short* __restrict__ entry_idx,
                                const V* __restrict__ entry_val, const int2* __restrict__ warp_slices, T scalar,
                                T* __restrict__ sums, int* __restrict__ live, int n, int chunk, int nchunks,
                                int cols_per_thread, int layout_warps) {
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;
    if (blockIdx.x == 0)
        for (int r = threadIdx.x; r < count; r += blockDim.x) live[r] = 0;
    const int lane = threadIdx.x & 31;
    const int units = cols_per_thread * layout_warps, vcols = units * 32;
    const int warps = (gridDim.x * blockDim.x) >> 5;
    for (int item = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; item < count * units; item += warps) {
        const int r = item / units, u = item - r * units;
        const int t = u / layout_warps, w = u - t * layout_warps;
        const T* row = y_in + (size_t)r * n;
        T acc = T(0);
        for (int c = 0; c < nchunks; ++c) {
            const int base = c * chunk, len = min(chunk, n - base);
            const int2 m = warp_slices[(c * cols_per_thread + t) * layout_warps + w];
            const unsigned short* ip = entry_idx + m.x + lane;
            const V* vp = entry_val + m.x + lane;
#pragma unroll 8
            for (int e = 0; e < m.y; ++e) {
                const int i = ip[32 * e];
                const T x = i < len ? row[base + i] : T(0);
                const T wv = VMODE == spdnn::kArray ? spdnn::convert<T, V>(vp[32 * e]) : scalar;
                acc = spdnn::accumulate<T, VMODE>(acc, wv, x);
            }
        }
        sums[(size_t)r * vcols + u * 32 + lane] = acc;
    }
}

// spdnn_wide_expand. Ownership: for each row r < count in turn, thread g of the grid owns
// outputs j = g + s*(grid threads): z = epilogue(sums[r*vcols + out_map[j]]) goes to
// z_out[r*n + j], and a block that saw a live output sets live[r].
template <typename T, int VMODE>
__global__ void spdnn_wide_expand(const T* __restrict__ sums, int vcols, const int* __restrict__ count_in,
                                  int rows_lo, int rows_hi, const unsigned short* __restrict__ out_map,
                                  const T* __restrict__ bias, T scalar, T ymax, T* __restrict__ z_out,
                                  int* __restrict__ live, int n) {
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;
    const int stride = gridDim.x * blockDim.x;
    for (int r = 0; r < count; ++r) {  // block-uniform
        int any = 0;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += stride) {
            const T z = spdnn::epilogue<T, VMODE>(sums[(size_t)r * vcols + out_map[j]], scalar, bias[j], ymax);
            z_out[(size_t)r * n + j] = z;
            any |= z > T(0);
        }
        if (__syncthreads_or(any) && threadIdx.x == 0) live[r] = 1;  // benign race: every writer stores 1
    }
}

// spdnn_wide_place: the live rows of z (r < count, in order) become the first rows of y_out,
// with their ids and multiplicities; *count_out and *samples_out (zero before) count them
// and the samples they stand for. Ownership: every thread walks the (few) rows and finds
// each destination itself; thread g of the grid copies elements j = g + s*(grid threads) of each live row; thread 0
// of block 0 writes the ids, multiplicities and counts.
template <typename T>
__global__ void spdnn_wide_place(const T* __restrict__ z, T* __restrict__ y_out, const int* __restrict__ ids_in,
                                 int* __restrict__ ids_out, const int* __restrict__ mult_in,
                                 int* __restrict__ mult_out, const int* __restrict__ live,
                                 const int* __restrict__ count_in, int rows_lo, int rows_hi,
                                 int* __restrict__ count_out, int* __restrict__ samples_out, int n) {
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;
    const bool lead = blockIdx.x == 0 && threadIdx.x == 0;
    const int stride = gridDim.x * blockDim.x;
    int dst = 0, samples = 0;
    for (int r = 0; r < count; ++r) {
        if (!live[r]) continue;
        if (lead) {
            ids_out[dst] = ids_in[r];
            mult_out[dst] = mult_in[r];
            samples += mult_in[r];
        }
        const T* a = z + (size_t)r * n;
        T* b = y_out + (size_t)dst * n;
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += stride) b[j] = a[j];
        ++dst;
    }
    if (lead) {
        *count_out = dst;
        *samples_out = samples;
    }
}

// Sliced layers, second step: move the flagged rows of src (positions
// 0..*count_in-1) to the first rows of dst with their ids and multiplicities, and clear the flags.
// One block per row (grid-stride); thread 0 reserves the output row. Runs only when the
// count is rows_lo..rows_hi.
template <typename T>
__global__ void spdnn_compact(const T* __restrict__ src, T* __restrict__ dst,
                              const int* __restrict__ ids_in, int* __restrict__ ids_out,
                              const int* __restrict__ mult_in, int* __restrict__ mult_out,
                              int* __restrict__ flags, const int* __restrict__ count_in,
                              int* __restrict__ count_out, int* __restrict__ samples_out, int n,
                              int rows_lo, int rows_hi) {
    __shared__ int s_row;
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;
    for (int p = blockIdx.x; p < count; p += gridDim.x) {
        const int live = flags[p];
        __syncthreads();  // everyone has read the previous row's s_row
        if (threadIdx.x == 0) {
            s_row = live ? atomicAdd(count_out, 1) : -1;
            if (live) {
                ids_out[s_row] = ids_in[p];
                mult_out[s_row] = mult_in[p];
                atomicAdd(samples_out, mult_in[p]);
                flags[p] = 0;
            }
        }
        __syncthreads();
        const int row = s_row;
        if (row < 0) continue;
        const T* a = src + (size_t)p * n;
        T* b = dst + (size_t)row * n;
        for (int j = threadIdx.x; j < n; j += blockDim.x) b[j] = a[j];
    }
}

// Write *src to *dst (a device-side copy of one counter, capturable in a graph).
__global__ void spdnn_copy_count(const int* __restrict__ src, int* __restrict__ dst) {
    if (threadIdx.x == 0 && blockIdx.x == 0) *dst = *src;
}

// Dense rows from CSR features: y[r, :] = row r of (indptr, indices, data), zeros elsewhere.
// One block per row (grid-stride); rows 0..rows-1 of y are fully written.
template <typename T>
__global__ void spdnn_densify(const long long* __restrict__ indptr, const int* __restrict__ indices,
                              const T* __restrict__ data, T* __restrict__ y, int rows, int n) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        T* row = y + (size_t)r * n;
        for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] = T(0);
        __syncthreads();
        for (long long e = indptr[r] + threadIdx.x; e < indptr[r + 1]; e += blockDim.x) row[indices[e]] = data[e];
        __syncthreads();
    }
}
