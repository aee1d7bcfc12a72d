// spdnn CUDA engine: stationary tiles. A block takes a tile of ROWS_PER_TILE alive rows and keeps it in
// shared memory through layers k0..k1-1, so activations cross device memory once per segment
// (read at its start, survivors written at its end) instead of once per layer, and a layer
// costs a block two barriers instead of a launch. Rows are independent, so no block ever
// waits for another: tiles are handed out by an atomic ticket (*ticket, zeroed before the
// launch; the next ticket is taken while the current tile runs) and a block that finishes
// one (all its rows dead, or k1 reached) takes the next. A launch does nothing unless the
// rows entering it number rows_lo..rows_hi: the engine queues two instances of a segment
// (tiles of ROWS_PER_TILE rows for many rows, one-row tiles for the few left after merging) and the
// row count on the device picks the one that runs.
//
// Layout (one slice, one input chunk: spdnn/engines/cuda/layout.py with chunk == n): layer
// k's warp slices are warp_slices[k*SLICES_PER_LAYER + t*NWARPS + warp] = (offset, width), SLICES_PER_LAYER = COLS_PER_THREAD*NWARPS,
// offsets relative to entry_off[k] - ebase in entry_idx/entry_val; entries are 16-bit input indices
// (n: the zero slot), ascending within a column (the exactness order). DEDUP:
// out_map[(k - kbase)*n + j] is the distinct column of output j.
//
// Template parameters (the order the engine names them in): T, V, VMODE as spdnn_layer's;
// THREADS; ROWS_PER_TILE (KernelConfig.rows_per_tile); COLS_PER_THREAD (KernelConfig.cols_per_thread); DEDUP;
// STAGES (KernelConfig.prefetch_stages: 0 = no prefetch, else >= 2).
//
// Run-time assumptions (the engine's layout; not checked here, a check would cost every
// layer): n + 1 <= 65536 (the zero slot's 16-bit index); with STAGES > 0, each layer's first
// entry (entry_off[k] - ebase) and max_entries are multiples of 8 (16-byte cp.async of the
// indices and values; the layout's are multiples of 32, a warp slice being 32 lanes), and DEDUP needs n % 8 == 0 (the out_map copy).
//
// Ownership. A block owns one tile at a time (ticket). Warp w sums warp slices
// t*NWARPS + w of each layer, lane the column within one. Thread tid owns the columns
// v = t*THREADS + tid, t < COLS_PER_THREAD (distinct columns when DEDUP, outputs otherwise)
// for the tile's rows: a COLS_PER_THREAD x ROWS_PER_TILE register tile that reuses each
// weight load ROWS_PER_TILE times. Shared memory: row[0..n] (the Tile of input i: its value
// in each row of the tile; row[n] is the zero slot), then (DEDUP) sums[COLS_PER_THREAD *
// THREADS], then (STAGES > 0) a ring of STAGES stages of a layer's [warp_slices | indices |
// values (kArray) | out_map (DEDUP)], filled with cp.async D = STAGES - 1 layers ahead. Each
// layer's scalar and the entry offsets of the layer being staged are loaded into registers
// a layer ahead, and a bias that is one value (bias_stride < 0: ubias) is a register, so no
// layer waits on device memory.
//
// Per layer: sum phase over the row -> barrier -> the new values overwrite the row in place
// (every read of the old values is done at the barrier): DEDUP, thread tid writes outputs
// j = tid + r*THREADS from sums[out_map[j]]; otherwise each thread its own outputs -> the
// stage of layer k+1 is waited for -> barrier that also ORs which rows are alive (one
// barrier for all rows, unlike layer.cu's block_alive_rows: a warp ORs with
// __reduce_or_sync, lane 0 into s_alive). Counting costs nothing while rows live: when rows
// of the tile die at layer k, thread 0 adds them to deaths[k+1] and their multiplicities to
// sample_deaths[k+1] (the engine turns deaths into survivors). Dead rows are all zero and
// stay zero (a zero sum gets no bias), riding along until the tile is dead.
//
// Not shared with layer.cu (differences that are real, or that change the compiled code):
// the tile is staged once per segment with its own loop (no unroll pragma, unlike
// stage_tile_chunk), and the DEDUP expansion writes whole Tiles back into the row.

#include "common.cuh"
#include "async_copy.cuh"

template <typename T, typename V, int VMODE, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD, bool DEDUP, int STAGES>
__global__ void __launch_bounds__(THREADS) spdnn_stationary(
        const T* __restrict__ y_in, T* __restrict__ y_out,
        const int* __restrict__ ids_in, int* __restrict__ ids_out,
        const int* __restrict__ mult_in, int* __restrict__ mult_out,
        const int* __restrict__ count_in, int* __restrict__ count_out, int* __restrict__ ticket,
        int* __restrict__ deaths, int* __restrict__ sample_deaths,
        const unsigned short* __restrict__ entry_idx, const V* __restrict__ entry_val, const int2* __restrict__ warp_slices,
        const long long* __restrict__ entry_off, long long ebase, int max_entries,
        const unsigned short* __restrict__ out_map, int kbase,
        const T* __restrict__ bias, long long bias_stride, T ubias, const T* __restrict__ scalars,
        T ymax, int n, int k0, int k1, int rows_lo, int rows_hi) {
    static_assert(STAGES == 0 || STAGES >= 2, "a prefetch ring needs two stages or more");
    static_assert(spdnn::TileKernelChecks<T, V, VMODE, THREADS, ROWS_PER_TILE, COLS_PER_THREAD>::ok, "");
    static_assert(spdnn::TileChecks<T, ROWS_PER_TILE>::ok, "");
    // The stages (cp.async, 16-byte copies) start 16-byte aligned after the row and the sums.
    static_assert(!DEDUP || (COLS_PER_THREAD * THREADS * sizeof(spdnn::Tile<T, ROWS_PER_TILE>)) % 16 == 0,
                  "the sums keep the stages 16-byte aligned");
    static_assert(sizeof(int2) == 8, "warp slices are staged 8 bytes at a time");
    using TileT = spdnn::Tile<T, ROWS_PER_TILE>;
    constexpr int NWARPS = THREADS / 32, SLICES_PER_LAYER = COLS_PER_THREAD * NWARPS;
    constexpr bool PREFETCH = STAGES > 0;
    constexpr int D = PREFETCH ? STAGES - 1 : 0;  // prefetch distance, layers
    constexpr int WAIT = D > 0 ? D - 1 : 0;      // groups left in flight when a stage is needed
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TileT* row = reinterpret_cast<TileT*>(smem_raw);
    size_t off = (((size_t)(n + 1) * sizeof(TileT) + 15) / 16) * 16;
    TileT* sums = reinterpret_cast<TileT*>(smem_raw + off);
    if (DEDUP) off += (size_t)COLS_PER_THREAD * THREADS * sizeof(TileT);
    // A stage: [warp_slices (SLICES_PER_LAYER int2) | idx (max_entries) | values (kArray) | out_map (n, DEDUP)]
    const size_t slices_bytes = ((size_t)SLICES_PER_LAYER * sizeof(int2) + 15) / 16 * 16;
    const size_t idx_bytes = (size_t)max_entries * sizeof(unsigned short);
    const size_t val_bytes = VMODE == spdnn::kArray ? (size_t)max_entries * sizeof(V) : 0;
    const size_t map_bytes = DEDUP ? (size_t)n * sizeof(unsigned short) : 0;
    const size_t stage_bytes = ((slices_bytes + idx_bytes + val_bytes + map_bytes + 15) / 16) * 16;
    unsigned char* stages = smem_raw + off;

    __shared__ int s_tile, s_out_row[ROWS_PER_TILE], s_mult[ROWS_PER_TILE];
    __shared__ unsigned s_alive[2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;  // the other instance of this segment runs
    const bool one_bias = bias_stride < 0;
    const int ntiles = (count + ROWS_PER_TILE - 1) / ROWS_PER_TILE;

    // Layer k's weights (entries e0..e1 of entry_idx/entry_val) into its stage, asynchronously.
    auto stage_layer = [&](int k, long long e0, long long e1) {
        unsigned char* dst = stages + ((k - k0) % (PREFETCH ? STAGES : 1)) * stage_bytes;
        spdnn::stage_async8(dst, warp_slices + (size_t)k * SLICES_PER_LAYER, SLICES_PER_LAYER);
        spdnn::stage_async(dst + slices_bytes, entry_idx + e0, (e1 - e0) * (long long)sizeof(unsigned short));
        if (VMODE == spdnn::kArray)
            spdnn::stage_async(dst + slices_bytes + idx_bytes, entry_val + e0, (e1 - e0) * (long long)sizeof(V));
        if (DEDUP) spdnn::stage_async(dst + slices_bytes + idx_bytes + val_bytes, out_map + (size_t)(k - kbase) * n, map_bytes);
    };

    if (tid == 0) s_tile = atomicAdd(ticket, 1);
    __syncthreads();
    for (;;) {
        const int tile = s_tile;
        if (tile >= ntiles) break;  // block-uniform
        int next_tile = 0;
        if (tid == 0) next_tile = atomicAdd(ticket, 1);  // its latency overlaps this tile
        const int first_row = tile * ROWS_PER_TILE;
        // Stage the tile's rows (missing rows of the last tile are zero: dead from the start).
        for (int i = tid; i < n; i += THREADS) {
            TileT x;
#pragma unroll
            for (int s = 0; s < ROWS_PER_TILE; ++s) x.v[s] = (first_row + s < count) ? y_in[(size_t)(first_row + s) * n + i] : T(0);
            row[i] = x;
        }
        if (tid == 0) {
            spdnn::zero_tile(row + n);
            s_alive[0] = s_alive[1] = 0;
        }
        if (tid < ROWS_PER_TILE) s_mult[tid] = (first_row + tid < count) ? mult_in[first_row + tid] : 0;
        // Entry offsets of the layer staged at layer k (k+D): off_a..off_b, and off_b's
        // successor for the next layer loaded a layer ahead.
        long long off_a = 0, off_b = 0;
        if (PREFETCH) {
            long long o = entry_off[k0] - ebase;
            for (int d = 0; d < D; ++d) {  // layers k0..k0+D-1, one commit group each
                if (k0 + d < k1) {
                    const long long o1 = entry_off[k0 + d + 1] - ebase;
                    stage_layer(k0 + d, o, o1);
                    o = o1;
                }
                spdnn::cp_async_commit();
            }
            off_a = o;
            if (k0 + D < k1) off_b = entry_off[k0 + D + 1] - ebase;
            spdnn::cp_async_wait<WAIT>();  // layer k0's stage has landed (for this thread)
        }
        T scalar = VMODE == spdnn::kArray ? T(0) : scalars[k0];
        __syncthreads();

        unsigned alive = 0;  // rows of the tile that exist (and, after each layer, that live)
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s)
            if (first_row + s < count) alive |= 1u << s;
        for (int k = k0; k < k1; ++k) {
            const int q = (k - k0) & 1;
            const unsigned short* layer_idx;
            const V* layer_val;
            const unsigned short* layer_map;
            const int2* layer_slices;
            long long off_c = 0;
            if (PREFETCH) {
                if (k + D < k1) {
                    stage_layer(k + D, off_a, off_b);
                    if (k + D + 1 < k1) off_c = entry_off[k + D + 2] - ebase;  // used at the next layer
                }
                spdnn::cp_async_commit();
                const unsigned char* st = stages + ((k - k0) % STAGES) * stage_bytes;
                layer_slices = reinterpret_cast<const int2*>(st);
                layer_idx = reinterpret_cast<const unsigned short*>(st + slices_bytes);
                layer_val = reinterpret_cast<const V*>(st + slices_bytes + idx_bytes);
                layer_map = reinterpret_cast<const unsigned short*>(st + slices_bytes + idx_bytes + val_bytes);
            } else {
                const long long e0 = entry_off[k] - ebase;
                layer_slices = warp_slices + (size_t)k * SLICES_PER_LAYER;
                layer_idx = entry_idx + e0;
                layer_val = entry_val + e0;
                layer_map = out_map + (size_t)(k - kbase) * n;
            }
            const T scalar_next = (VMODE != spdnn::kArray && k + 1 < k1) ? scalars[k + 1] : T(0);
            const T* b = bias + (one_bias ? 0 : (size_t)k * bias_stride);

            T acc[COLS_PER_THREAD][ROWS_PER_TILE];
#pragma unroll
            for (int t = 0; t < COLS_PER_THREAD; ++t) {
#pragma unroll
                for (int s = 0; s < ROWS_PER_TILE; ++s) acc[t][s] = T(0);
                const int2 m = layer_slices[t * NWARPS + warp];
                spdnn::sum_column<T, V, VMODE, ROWS_PER_TILE>(acc[t], row, layer_idx + m.x + lane, layer_val + m.x + lane, m.y, scalar);
            }
            unsigned live = 0;
            if (DEDUP) {
                spdnn::store_sums<T, ROWS_PER_TILE, COLS_PER_THREAD, THREADS>(sums, acc);
                __syncthreads();  // sums complete; every read of the row is done
#pragma unroll 4
                for (int j = tid; j < n; j += THREADS) {
                    const TileT x = sums[layer_map[j]];
                    const T bj = one_bias ? ubias : b[j];
                    TileT z;
#pragma unroll
                    for (int s = 0; s < ROWS_PER_TILE; ++s) {
                        z.v[s] = spdnn::epilogue<T, VMODE>(x.v[s], scalar, bj, ymax);
                        if (z.v[s] > T(0)) live |= 1u << s;
                    }
                    row[j] = z;
                }
            } else {
                __syncthreads();  // every read of the row is done
#pragma unroll
                for (int t = 0; t < COLS_PER_THREAD; ++t) {
                    const int j = t * THREADS + tid;
                    if (j < n) {
                        const T bj = one_bias ? ubias : b[j];
                        TileT z;
#pragma unroll
                        for (int s = 0; s < ROWS_PER_TILE; ++s) {
                            z.v[s] = spdnn::epilogue<T, VMODE>(acc[t][s], scalar, bj, ymax);
                            if (z.v[s] > T(0)) live |= 1u << s;
                        }
                        row[j] = z;
                    }
                }
            }
            if (PREFETCH) spdnn::cp_async_wait<WAIT>();  // layer k+1's stage has landed (for this thread)
            // Which rows live: OR over the block (slot q; thread 0 clears the other slot
            // for the next layer, whose ORs come after at least one more barrier). The
            // barrier also publishes the new row and layer k+1's stage to every thread.
            const unsigned wl = __reduce_or_sync(0xffffffffu, live);
            if (lane == 0 && wl) atomicOr(&s_alive[q], wl);
            __syncthreads();
            const unsigned died = alive & ~s_alive[q];       // alive before layer k, dead after it
            alive = s_alive[q];
            if (tid == 0) {
                s_alive[q ^ 1] = 0;
                if (died) {
                    int samples = 0;
#pragma unroll
                    for (int s = 0; s < ROWS_PER_TILE; ++s)
                        if ((died >> s) & 1u) samples += s_mult[s];
                    atomicAdd(deaths + k + 1, __popc(died));
                    atomicAdd(sample_deaths + k + 1, samples);
                }
            }
            scalar = scalar_next;
            off_a = off_b;
            off_b = off_c;
            if (!alive) break;  // block-uniform
        }
        if (PREFETCH) spdnn::cp_async_wait<0>();  // no copy may land in the stages after this tile

        // Survivors of the segment to the first rows of y_out.
        spdnn::reserve_rows<ROWS_PER_TILE>(alive, first_row, ids_in, ids_out, mult_in, mult_out, count_out, nullptr, s_out_row);
        for (int i = tid; i < n; i += THREADS) {
            const TileT x = row[i];
#pragma unroll
            for (int s = 0; s < ROWS_PER_TILE; ++s)
                if (s_out_row[s] >= 0) y_out[(size_t)s_out_row[s] * n + i] = x.v[s];
        }
        if (tid == 0) s_tile = next_tile;  // every thread read s_tile before this tile's barriers
        __syncthreads();                    // row, s_out_row and s_tile are reused by the next tile
    }
}
