// spdnn CUDA engine: the distinct tail. After a merge most segments hold a handful of rows
// (often one); this kernel runs such a segment (layers k0..k1-1, k0 >= 1) with one row a
// block and keeps the row as its *distinct values* only.
//
// Why that is exact. With deduplicated columns (KernelConfig.dedupe) and one bias value
// for every output, the outputs j of layer k that share a distinct column c
// (out_map_k[j] == c) have the same weights, the same sum and so the same activation
// a_k[c]. Layer k+1 then needs only a_k: entry (i, j') of layer k+1 adds w * y[i] and
// y[i] == a_k[out_map_k[i]]. The engine packs, beside each layer's indices, the composed
// indices cidx = out_map_{k-1}[idx] (layout.compose_indices; the zero slot of the inputs
// maps to the zero slot COLS here), so the same terms are added in the same order as the
// stationary kernel adds them from the whole row: the same bits. A layer is then its
// distinct columns' sums, the epilogue in registers and one barrier: no expansion of the
// N outputs, and the row held is COLS + 1 values instead of N + 1 (so prefetch stages fit
// at N = 16384 too).
//
// A tile (a row r, by atomic ticket as in stationary.cu) starts from the row of layer
// k0 - 1's outputs in y_in: a[c] = y_in[r][reps_{k0-1}[c]] (the distinct column's first
// output; NO_REP = 0xFFFF for padding columns, read as 0). At the end of the segment a surviving
// row is expanded once: y_out[row][j] = a[out_map_{k1-1}[j]].
//
// Layout (as stationary.cu, one slice, one chunk, deduplicated): warp_slices[k*SLICES + t*NWARPS +
// warp] = (offset, width), offsets relative to entry_off[k]; entry_cidx the composed 16-bit indices
// (into 0..COLS, COLS the zero slot); out_map[k*n + j]; reps[k*COLS + c]. Weights are resident
// (not streamed): the engine uses this kernel only then.
//
// Template parameters: T, V, VMODE as spdnn_layer's; THREADS; COLS_PER_THREAD; STAGES >= 2
// (prefetch ring, layers staged STAGES - 1 ahead).
//
// Ownership. Thread tid owns distinct columns c = t*THREADS + tid (t < COLS_PER_THREAD);
// warp w sums warp slices t*NWARPS + w, lane the column within one. Shared memory: a[0]
// and a[1] (COLS + 1 values each; layer k reads a[(k - k0) & 1] and writes the other; slot
// COLS of each is zero), then a ring of STAGES stages of a layer's [warp slices | composed
// indices | values (kArray)], filled by cp.async STAGES - 1 layers ahead.
//
// Per layer: sums from a[q] -> epilogue, written to a[q ^ 1] (every read of a[q ^ 1] was
// done before the previous layer's barrier) -> the next stage waited for -> one barrier
// that also ORs whether the row lives (__syncthreads_or; it publishes a[q ^ 1] and the
// stage). Deaths are counted as in stationary.cu.
//
// Run-time assumptions (the engine's plan, checked there): n + 1 <= 65536; every layer's
// first entry and max_entries are multiples of 8 (16-byte cp.async of the indices); k0 >= 1.

#include "common.cuh"
#include "async_copy.cuh"

template <typename T, typename V, int VMODE, int THREADS, int COLS_PER_THREAD, int STAGES>
__global__ void __launch_bounds__(THREADS) spdnn_tail(
        const T* __restrict__ y_in, T* __restrict__ y_out,
        const int* __restrict__ ids_in, int* __restrict__ ids_out,
        const int* __restrict__ mult_in, int* __restrict__ mult_out,
        const int* __restrict__ count_in, int* __restrict__ count_out, int* __restrict__ ticket,
        int* __restrict__ deaths, int* __restrict__ sample_deaths,
        const unsigned short* __restrict__ entry_cidx, const V* __restrict__ entry_val,
        const int2* __restrict__ warp_slices, const long long* __restrict__ entry_off, int max_entries,
        const unsigned short* __restrict__ out_map, const unsigned short* __restrict__ reps,
        T ubias, const T* __restrict__ scalars, T ymax, int n, int k0, int k1, int rows_lo, int rows_hi) {
    static_assert(STAGES >= 2, "the distinct tail prefetches: two stages or more");
    static_assert(spdnn::TileKernelChecks<T, V, VMODE, THREADS, 1, COLS_PER_THREAD>::ok, "");
    static_assert(sizeof(int2) == 8, "warp slices are staged 8 bytes at a time");
    using Value = spdnn::Tile<T, 1>;   // one row: sum_column's input type
    constexpr int NWARPS = THREADS / 32, SLICES_PER_LAYER = COLS_PER_THREAD * NWARPS;
    constexpr int COLS = COLS_PER_THREAD * THREADS;          // distinct-column slots; COLS is the zero slot
    constexpr unsigned short NO_REP = 0xFFFF;                // reps of a padding column (layout.NO_REP)
    static_assert(COLS < NO_REP, "composed indices and reps are 16-bit");
    constexpr int D = STAGES - 1, WAIT = D - 1;              // prefetch distance; groups left in flight
    constexpr size_t A_BYTES = ((COLS + 1) * sizeof(T) + 15) / 16 * 16;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    Value* const a0 = reinterpret_cast<Value*>(smem_raw);          // a[0]
    Value* const a1 = reinterpret_cast<Value*>(smem_raw + A_BYTES);  // a[1]
    const size_t slices_bytes = ((size_t)SLICES_PER_LAYER * sizeof(int2) + 15) / 16 * 16;
    const size_t idx_bytes = (size_t)max_entries * sizeof(unsigned short);
    const size_t val_bytes = VMODE == spdnn::kArray ? (size_t)max_entries * sizeof(V) : 0;
    const size_t stage_bytes = ((slices_bytes + idx_bytes + val_bytes + 15) / 16) * 16;
    unsigned char* stages = smem_raw + 2 * A_BYTES;

    __shared__ int s_tile, s_out_row[1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int count = *count_in;
    if (count < rows_lo || count > rows_hi) return;  // the other instance of this segment runs

    auto stage_layer = [&](int k, long long e0, long long e1) {
        unsigned char* dst = stages + ((k - k0) % STAGES) * stage_bytes;
        spdnn::stage_async8(dst, warp_slices + (size_t)k * SLICES_PER_LAYER, SLICES_PER_LAYER);
        spdnn::stage_async(dst + slices_bytes, entry_cidx + e0, (e1 - e0) * (long long)sizeof(unsigned short));
        if (VMODE == spdnn::kArray)
            spdnn::stage_async(dst + slices_bytes + idx_bytes, entry_val + e0, (e1 - e0) * (long long)sizeof(V));
    };

    if (tid == 0) s_tile = atomicAdd(ticket, 1);
    __syncthreads();
    for (;;) {
        const int r = s_tile;  // this tile's row
        if (r >= count) break;  // block-uniform
        int next_tile = 0;
        if (tid == 0) next_tile = atomicAdd(ticket, 1);  // its latency overlaps this row
        long long o = entry_off[k0];
        for (int d = 0; d < D; ++d) {  // layers k0..k0+D-1, one commit group each
            if (k0 + d < k1) {
                const long long o1 = entry_off[k0 + d + 1];
                stage_layer(k0 + d, o, o1);
                o = o1;
            }
            spdnn::cp_async_commit();
        }
        long long off_a = o, off_b = k0 + D < k1 ? entry_off[k0 + D + 1] : 0;
        // The row as layer k0-1's distinct values; both zero slots (and padding columns) zero.
        const unsigned short* rep = reps + (size_t)(k0 - 1) * COLS;
        for (int c = tid; c <= COLS; c += THREADS) {
            const unsigned short src = c < COLS ? rep[c] : NO_REP;
            a0[c].v[0] = src != NO_REP ? y_in[(size_t)r * n + src] : T(0);
            a1[c].v[0] = T(0);
        }
        const int mult = mult_in[r];
        spdnn::cp_async_wait<WAIT>();  // layer k0's stage has landed (for this thread)
        T scalar = VMODE == spdnn::kArray ? T(0) : scalars[k0];
        __syncthreads();

        unsigned alive = 1;
        for (int k = k0; k < k1; ++k) {
            const int q = (k - k0) & 1;
            const Value* const in = q ? a1 : a0;  // a[q]
            Value* const out = q ? a0 : a1;       // a[q ^ 1]
            long long off_c = 0;
            if (k + D < k1) {
                stage_layer(k + D, off_a, off_b);
                if (k + D + 1 < k1) off_c = entry_off[k + D + 2];  // used at the next layer
            }
            spdnn::cp_async_commit();
            const unsigned char* st = stages + ((k - k0) % STAGES) * stage_bytes;
            const int2* layer_slices = reinterpret_cast<const int2*>(st);
            const unsigned short* layer_idx = reinterpret_cast<const unsigned short*>(st + slices_bytes);
            const V* layer_val = reinterpret_cast<const V*>(st + slices_bytes + idx_bytes);
            const T scalar_next = (VMODE != spdnn::kArray && k + 1 < k1) ? scalars[k + 1] : T(0);

            T acc[COLS_PER_THREAD][1];
#pragma unroll
            for (int t = 0; t < COLS_PER_THREAD; ++t) {
                acc[t][0] = T(0);
                const int2 m = layer_slices[t * NWARPS + warp];
                spdnn::sum_column<T, V, VMODE, 1>(acc[t], in, layer_idx + m.x + lane, layer_val + m.x + lane, m.y, scalar);
            }
            unsigned live = 0;
#pragma unroll
            for (int t = 0; t < COLS_PER_THREAD; ++t) {
                const T z = spdnn::epilogue<T, VMODE>(acc[t][0], scalar, ubias, ymax);
                out[t * THREADS + tid].v[0] = z;
                if (z > T(0)) live = 1;
            }
            spdnn::cp_async_wait<WAIT>();  // layer k+1's stage has landed (for this thread)
            // The barrier (with the OR of `live`): a[q ^ 1] and the stage complete, every read of a[q] done.
            alive = __syncthreads_or(live) ? 1u : 0u;
            if (tid == 0 && !alive) {
                atomicAdd(deaths + k + 1, 1);
                atomicAdd(sample_deaths + k + 1, mult);
            }
            scalar = scalar_next;
            off_a = off_b;
            off_b = off_c;
            if (!alive) break;  // block-uniform
        }
        spdnn::cp_async_wait<0>();  // no copy may land in the stages after this row

        // A survivor of the segment: expanded to its n outputs, once.
        spdnn::reserve_rows<1>(alive, r, ids_in, ids_out, mult_in, mult_out, count_out, nullptr, s_out_row);
        if (s_out_row[0] >= 0) {
            const Value* fin = (k1 - k0) & 1 ? a1 : a0;
            const unsigned short* map = out_map + (size_t)(k1 - 1) * n;
            T* dst = y_out + (size_t)s_out_row[0] * n;
            for (int j = tid; j < n; j += THREADS) dst[j] = fin[map[j]].v[0];
        }
        if (tid == 0) s_tile = next_tile;  // every thread read s_tile before this row's barriers
        __syncthreads();                    // a, s_out_row and s_tile are reused by the next row
    }
}
