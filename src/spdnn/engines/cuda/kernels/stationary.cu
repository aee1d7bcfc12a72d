// spdnn CUDA engine: stationary tiles. A block takes a tile of MB alive rows and keeps it in
// shared memory through layers k0..k1-1, so activations cross device memory once per segment
// (read at its start, survivors written at its end) instead of once per layer, and a layer
// costs a block a few barriers instead of a launch. Rows are independent, so no block ever
// waits for another: tiles are handed out by an atomic ticket (*ticket, zeroed before the
// launch) and a block that finishes one (all its rows dead, or k1 reached) takes the next.
//
// Layout (one slice, one input chunk: spdnn/engines/cuda/layout.py with chunk == n): layer k's
// warp slices are meta[k*OPT*NWARPS + t*NWARPS + warp] = (offset, width), offsets relative to
// entry_off[k] - ebase in eidx/evals; entries are 16-bit input indices (n: the zero slot),
// ascending within a column (the exactness order). DEDUP: out_map[(k - kbase)*n + j] is the
// distinct column of output j.
//
// Ownership. Thread tid owns the columns v = t*THREADS + tid, t < OPT (distinct columns when
// DEDUP, outputs otherwise) for the MB rows of the tile: an OPT x MB register tile that reuses
// each weight load MB times. Shared memory: row[0..n] (Tile of the MB rows' values of input i;
// row[n] is the zero slot), then (DEDUP) sums[OPT*THREADS], then (PREFETCH) two stages of a
// layer's indices (and values, kArray) and out_map, filled with cp.async one layer ahead.
//
// Per layer: sum phase over the row -> barrier -> the new values overwrite the row in place
// (every read of the old values is done at the barrier): DEDUP, thread tid writes outputs
// j = tid + r*THREADS from sums[out_map[j]]; otherwise each thread its own outputs -> barrier
// that also ORs which rows are alive. Thread 0 adds the tile's alive rows to counts[k+1] and
// their weights to wcounts[k+1]. Dead rows are all zero and stay zero (a zero sum gets no
// bias), so they ride along harmlessly until the whole tile is dead.

template <typename T, typename V, int VMODE, int THREADS, int MB, int OPT, bool DEDUP, bool PREFETCH>
__global__ void __launch_bounds__(THREADS) spdnn_stationary(
        const T* __restrict__ y_in, T* __restrict__ y_out,
        const int* __restrict__ ids_in, int* __restrict__ ids_out,
        const int* __restrict__ wts_in, int* __restrict__ wts_out,
        const int* __restrict__ count_in, int* __restrict__ count_out, int* __restrict__ ticket,
        int* __restrict__ counts, int* __restrict__ wcounts,
        const unsigned short* __restrict__ eidx, const V* __restrict__ evals, const int2* __restrict__ meta,
        const long long* __restrict__ entry_off, long long ebase, int max_entries,
        const unsigned short* __restrict__ out_map, int kbase,
        const T* __restrict__ bias, long long bias_stride, const T* __restrict__ scalars,
        T ymax, int n, int k0, int k1) {
    using TileT = spdnn::Tile<T, MB>;
    constexpr int NWARPS = THREADS / 32;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TileT* row = reinterpret_cast<TileT*>(smem_raw);
    size_t off = (((size_t)(n + 1) * sizeof(TileT) + 15) / 16) * 16;
    TileT* sums = reinterpret_cast<TileT*>(smem_raw + off);
    if (DEDUP) off += (size_t)OPT * THREADS * sizeof(TileT);
    // PREFETCH stages: [idx (max_entries) | values (max_entries, kArray) | out_map (n, DEDUP)] x 2
    const size_t idx_bytes = (size_t)max_entries * sizeof(unsigned short);
    const size_t val_bytes = VMODE == spdnn::kArray ? (size_t)max_entries * sizeof(V) : 0;
    const size_t map_bytes = DEDUP ? (size_t)n * sizeof(unsigned short) : 0;
    const size_t stage_bytes = ((idx_bytes + val_bytes + map_bytes + 15) / 16) * 16;
    unsigned char* stages = smem_raw + off;

    __shared__ int s_tile, s_row[MB], s_w[MB];
    __shared__ unsigned s_alive[2];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int count = *count_in;
    const int ntiles = (count + MB - 1) / MB;

    // Layer k's weights into stage `st` (asynchronously; the caller commits and waits).
    auto stage_layer = [&](int k, int st) {
        unsigned char* dst = stages + st * stage_bytes;
        const long long e0 = entry_off[k] - ebase, e1 = entry_off[k + 1] - ebase;
        spdnn::stage_async(dst, eidx + e0, (e1 - e0) * (long long)sizeof(unsigned short));
        if (VMODE == spdnn::kArray) spdnn::stage_async(dst + idx_bytes, evals + e0, (e1 - e0) * (long long)sizeof(V));
        if (DEDUP) spdnn::stage_async(dst + idx_bytes + val_bytes, out_map + (size_t)(k - kbase) * n, map_bytes);
    };

    for (;;) {
        if (tid == 0) s_tile = atomicAdd(ticket, 1);
        __syncthreads();
        const int tile = s_tile;
        if (tile >= ntiles) break;
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
        if (PREFETCH) {
            stage_layer(k0, 0);
            spdnn::cp_async_commit();
        }
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
            if (PREFETCH) {
                if (k + 1 < k1) stage_layer(k + 1, q ^ 1);
                spdnn::cp_async_commit();
                spdnn::cp_async_wait<1>();  // layer k's stage has landed (for this thread)
                __syncthreads();            // ... and for every thread
                const unsigned char* st = stages + q * stage_bytes;
                lidx = reinterpret_cast<const unsigned short*>(st);
                lval = reinterpret_cast<const V*>(st + idx_bytes);
                lmap = reinterpret_cast<const unsigned short*>(st + idx_bytes + val_bytes);
            } else {
                const long long e0 = entry_off[k] - ebase;
                lidx = eidx + e0;
                lval = evals + e0;
                lmap = out_map + (size_t)(k - kbase) * n;
            }
            const T scalar = VMODE == spdnn::kArray ? T(0) : scalars[k];
            const T* b = bias + (size_t)k * bias_stride;

            T acc[OPT][MB];
#pragma unroll
            for (int t = 0; t < OPT; ++t) {
#pragma unroll
                for (int s = 0; s < MB; ++s) acc[t][s] = T(0);
                const int2 m = meta[((size_t)k * OPT + t) * NWARPS + warp];
                const unsigned short* ip = lidx + m.x + lane;
                const V* vp = lval + m.x + lane;
#pragma unroll 8
                for (int e = 0; e < m.y; ++e) {
                    const TileT x = row[ip[32 * e]];
                    const T w = VMODE == spdnn::kArray ? spdnn::convert<T, V>(vp[32 * e]) : scalar;
#pragma unroll
                    for (int s = 0; s < MB; ++s) acc[t][s] = spdnn::accumulate<T, VMODE>(acc[t][s], w, x.v[s]);
                }
            }
            unsigned live = 0;
            if (DEDUP) {
#pragma unroll
                for (int t = 0; t < OPT; ++t) {
                    TileT x;
#pragma unroll
                    for (int s = 0; s < MB; ++s) x.v[s] = acc[t][s];
                    sums[t * THREADS + tid] = x;
                }
                __syncthreads();  // sums complete; every read of the row is done
#pragma unroll 4
                for (int j = tid; j < n; j += THREADS) {
                    const TileT x = sums[lmap[j]];
                    const T bj = b[j];
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
                        const T bj = b[j];
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
            // Which rows live: OR over the block (slot q; thread 0 clears the other slot
            // for the next layer, whose ORs come after at least one more barrier).
            const unsigned wl = __reduce_or_sync(0xffffffffu, live);
            if (lane == 0 && wl) atomicOr(&s_alive[q], wl);
            __syncthreads();
            alive = s_alive[q];
            if (tid == 0) {
                s_alive[q ^ 1] = 0;
                if (alive) {
                    int samples = 0;
#pragma unroll
                    for (int s = 0; s < MB; ++s)
                        if ((alive >> s) & 1u) samples += s_w[s];
                    atomicAdd(counts + k + 1, __popc(alive));
                    atomicAdd(wcounts + k + 1, samples);
                }
            }
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
        __syncthreads();  // row, s_row and s_tile are reused by the next tile
    }
}
