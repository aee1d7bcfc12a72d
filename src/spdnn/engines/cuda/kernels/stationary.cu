// spdnn CUDA engine: stationary tiles. A block takes a tile of MB alive rows and keeps it in
// shared memory through layers k0..k1-1, so activations cross device memory once per segment
// (read at its start, survivors written at its end) instead of once per layer, and a layer
// costs a block two barriers instead of a launch. Rows are independent, so no block ever
// waits for another: tiles are handed out by an atomic ticket (*ticket, zeroed before the
// launch; the next ticket is taken while the current tile runs) and a block that finishes
// one (all its rows dead, or k1 reached) takes the next. A launch does nothing unless the
// rows entering it number rows_lo..rows_hi: the engine queues two instances of a segment
// (tiles of MB rows for many rows, one-row tiles for the few left after merging) and the
// row count on the device picks the one that runs.
//
// Layout (one slice, one input chunk: spdnn/engines/cuda/layout.py with chunk == n): layer
// k's warp slices are meta[k*META + t*NWARPS + warp] = (offset, width), META = OPT*NWARPS,
// offsets relative to entry_off[k] - ebase in eidx/evals; entries are 16-bit input indices
// (n: the zero slot), ascending within a column (the exactness order). DEDUP:
// out_map[(k - kbase)*n + j] is the distinct column of output j.
//
// Ownership. Thread tid owns the columns v = t*THREADS + tid, t < OPT (distinct columns when
// DEDUP, outputs otherwise) for the MB rows of the tile: an OPT x MB register tile that reuses
// each weight load MB times. Shared memory: row[0..n] (Tile of the MB rows' values of input i;
// row[n] is the zero slot), then (DEDUP) sums[OPT*THREADS], then (STAGES > 0) a ring of
// STAGES stages of a layer's [meta | indices | values (kArray) | out_map (DEDUP)], filled
// with cp.async D = STAGES - 1 layers ahead. Each layer's scalar and the entry offsets of
// the layer being staged are loaded into registers a layer ahead, and a bias that is one
// value (bias_stride < 0: ubias) is a register, so no layer waits on device memory.
//
// Per layer: sum phase over the row -> barrier -> the new values overwrite the row in place
// (every read of the old values is done at the barrier): DEDUP, thread tid writes outputs
// j = tid + r*THREADS from sums[out_map[j]]; otherwise each thread its own outputs -> the
// stage of layer k+1 is waited for -> barrier that also ORs which rows are alive. Counting
// costs nothing while rows live: when rows of the tile die at layer k, thread 0 adds them to
// deaths[k+1] and their weights to wdeaths[k+1] (the engine turns deaths into survivors).
// Dead rows are all zero and stay zero (a zero sum gets no bias), riding along until the
// tile is dead.

#include "common.cuh"
#include "async_copy.cuh"

template <typename T, typename V, int VMODE, int THREADS, int MB, int OPT, bool DEDUP, int STAGES>
__global__ void __launch_bounds__(THREADS) spdnn_stationary(
        const T* __restrict__ y_in, T* __restrict__ y_out,
        const int* __restrict__ ids_in, int* __restrict__ ids_out,
        const int* __restrict__ wts_in, int* __restrict__ wts_out,
        const int* __restrict__ count_in, int* __restrict__ count_out, int* __restrict__ ticket,
        int* __restrict__ deaths, int* __restrict__ wdeaths,
        const unsigned short* __restrict__ eidx, const V* __restrict__ evals, const int2* __restrict__ meta,
        const long long* __restrict__ entry_off, long long ebase, int max_entries,
        const unsigned short* __restrict__ out_map, int kbase,
        const T* __restrict__ bias, long long bias_stride, T ubias, const T* __restrict__ scalars,
        T ymax, int n, int k0, int k1, int rows_lo, int rows_hi) {
    static_assert(STAGES == 0 || STAGES >= 2, "a prefetch ring needs two stages or more");
    using TileT = spdnn::Tile<T, MB>;
    constexpr int NWARPS = THREADS / 32, META = OPT * NWARPS;
    constexpr bool PREFETCH = STAGES > 0;
    constexpr int D = PREFETCH ? STAGES - 1 : 0;  // prefetch distance, layers
    constexpr int WAIT = D > 0 ? D - 1 : 0;      // groups left in flight when a stage is needed
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TileT* row = reinterpret_cast<TileT*>(smem_raw);
    size_t off = (((size_t)(n + 1) * sizeof(TileT) + 15) / 16) * 16;
    TileT* sums = reinterpret_cast<TileT*>(smem_raw + off);
    if (DEDUP) off += (size_t)OPT * THREADS * sizeof(TileT);
    // A stage: [meta (META int2) | idx (max_entries) | values (kArray) | out_map (n, DEDUP)]
    const size_t meta_bytes = ((size_t)META * sizeof(int2) + 15) / 16 * 16;
    const size_t idx_bytes = (size_t)max_entries * sizeof(unsigned short);
    const size_t val_bytes = VMODE == spdnn::kArray ? (size_t)max_entries * sizeof(V) : 0;
    const size_t map_bytes = DEDUP ? (size_t)n * sizeof(unsigned short) : 0;
    const size_t stage_bytes = ((meta_bytes + idx_bytes + val_bytes + map_bytes + 15) / 16) * 16;
    unsigned char* stages = smem_raw + off;

    __shared__ int s_tile, s_row[MB], s_w[MB];
    __shared__ unsigned s_alive[2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;  // the other instance of this segment runs
    const bool one_bias = bias_stride < 0;
    const int ntiles = (count + MB - 1) / MB;

    // Layer k's weights (entries e0..e1 of eidx/evals) into its stage, asynchronously.
    auto stage_layer = [&](int k, long long e0, long long e1) {
        unsigned char* dst = stages + ((k - k0) % (PREFETCH ? STAGES : 1)) * stage_bytes;
        spdnn::stage_async8(dst, meta + (size_t)k * META, META);
        spdnn::stage_async(dst + meta_bytes, eidx + e0, (e1 - e0) * (long long)sizeof(unsigned short));
        if (VMODE == spdnn::kArray)
            spdnn::stage_async(dst + meta_bytes + idx_bytes, evals + e0, (e1 - e0) * (long long)sizeof(V));
        if (DEDUP) spdnn::stage_async(dst + meta_bytes + idx_bytes + val_bytes, out_map + (size_t)(k - kbase) * n, map_bytes);
    };

    if (tid == 0) s_tile = atomicAdd(ticket, 1);
    __syncthreads();
    for (;;) {
        const int tile = s_tile;
        if (tile >= ntiles) break;  // block-uniform
        int next_tile = 0;
        if (tid == 0) next_tile = atomicAdd(ticket, 1);  // its latency overlaps this tile
        const int p0 = tile * MB;
        // Stage the tile's rows (missing rows of the last tile are zero: dead from the start).
        for (int i = tid; i < n; i += THREADS) {
            TileT x;
#pragma unroll
            for (int s = 0; s < MB; ++s) x.v[s] = (p0 + s < count) ? y_in[(size_t)(p0 + s) * n + i] : T(0);
            row[i] = x;
        }
        if (tid == 0) {
            TileT zero;
#pragma unroll
            for (int s = 0; s < MB; ++s) zero.v[s] = T(0);
            row[n] = zero;
            s_alive[0] = s_alive[1] = 0;
        }
        if (tid < MB) s_w[tid] = (p0 + tid < count) ? wts_in[p0 + tid] : 0;
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
        for (int s = 0; s < MB; ++s)
            if (p0 + s < count) alive |= 1u << s;
        for (int k = k0; k < k1; ++k) {
            const int q = (k - k0) & 1;
            const unsigned short* lidx;
            const V* lval;
            const unsigned short* lmap;
            const int2* lmeta;
            long long off_c = 0;
            if (PREFETCH) {
                if (k + D < k1) {
                    stage_layer(k + D, off_a, off_b);
                    if (k + D + 1 < k1) off_c = entry_off[k + D + 2] - ebase;  // used at the next layer
                }
                spdnn::cp_async_commit();
                const unsigned char* st = stages + ((k - k0) % STAGES) * stage_bytes;
                lmeta = reinterpret_cast<const int2*>(st);
                lidx = reinterpret_cast<const unsigned short*>(st + meta_bytes);
                lval = reinterpret_cast<const V*>(st + meta_bytes + idx_bytes);
                lmap = reinterpret_cast<const unsigned short*>(st + meta_bytes + idx_bytes + val_bytes);
            } else {
                const long long e0 = entry_off[k] - ebase;
                lmeta = meta + (size_t)k * META;
                lidx = eidx + e0;
                lval = evals + e0;
                lmap = out_map + (size_t)(k - kbase) * n;
            }
            const T scalar_next = (VMODE != spdnn::kArray && k + 1 < k1) ? scalars[k + 1] : T(0);
            const T* b = bias + (one_bias ? 0 : (size_t)k * bias_stride);

            T acc[OPT][MB];
#pragma unroll
            for (int t = 0; t < OPT; ++t) {
#pragma unroll
                for (int s = 0; s < MB; ++s) acc[t][s] = T(0);
                const int2 m = lmeta[t * NWARPS + warp];
                spdnn::sum_column<T, V, VMODE, MB>(acc[t], row, lidx + m.x + lane, lval + m.x + lane, m.y, scalar);
            }
            unsigned live = 0;
            if (DEDUP) {
                spdnn::store_sums<T, MB, OPT, THREADS>(sums, acc);
                __syncthreads();  // sums complete; every read of the row is done
#pragma unroll 4
                for (int j = tid; j < n; j += THREADS) {
                    const TileT x = sums[lmap[j]];
                    const T bj = one_bias ? ubias : b[j];
                    TileT z;
#pragma unroll
                    for (int s = 0; s < MB; ++s) {
                        z.v[s] = spdnn::epilogue<T, VMODE>(x.v[s], scalar, bj, ymax);
                        if (z.v[s] > T(0)) live |= 1u << s;
                    }
                    row[j] = z;
                }
            } else {
                __syncthreads();  // every read of the row is done
#pragma unroll
                for (int t = 0; t < OPT; ++t) {
                    const int j = t * THREADS + tid;
                    if (j < n) {
                        const T bj = one_bias ? ubias : b[j];
                        TileT z;
#pragma unroll
                        for (int s = 0; s < MB; ++s) {
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
                    for (int s = 0; s < MB; ++s)
                        if ((died >> s) & 1u) samples += s_w[s];
                    atomicAdd(deaths + k + 1, __popc(died));
                    atomicAdd(wdeaths + k + 1, samples);
                }
            }
            scalar = scalar_next;
            off_a = off_b;
            off_b = off_c;
            if (!alive) break;  // block-uniform
        }
        if (PREFETCH) spdnn::cp_async_wait<0>();  // no copy may land in the stages after this tile

        // Survivors of the segment to the first rows of y_out.
        spdnn::reserve_rows<MB>(alive, p0, ids_in, ids_out, wts_in, wts_out, count_out, nullptr, s_row);
        for (int i = tid; i < n; i += THREADS) {
            const TileT x = row[i];
#pragma unroll
            for (int s = 0; s < MB; ++s)
                if (s_row[s] >= 0) y_out[(size_t)s_row[s] * n + i] = x.v[s];
        }
        if (tid == 0) s_tile = next_tile;  // every thread read s_tile before this tile's barriers
        __syncthreads();                    // row, s_row and s_tile are reused by the next tile
    }
}
