// spdnn CUDA engine: one sparse DNN layer, Y_out = clamp(Y_in W + b [Y_in W != 0], 0, ymax).
//
// Gather formulation over dense, sample-major activations (row p = the p-th alive
// sample, N values). Layout of the weights: spdnn/engines/cuda/layout.py (warp-sliced
// ELLPACK per block slice and input chunk, 16-bit buffer-local indices, lane-interleaved).
//
// A block of THREADS threads takes work items (tile of MB alive samples, slice of THREADS*OPT outputs) in a
// grid-stride loop whose length it reads from device memory (*count_in), so that the
// whole layer loop can be captured once in a CUDA graph. For each input chunk it stages
// the tile's inputs in shared memory as buf[i][s] (one 16- or 32-byte vector per input,
// plus a zero slot at i = chunk for padding entries), then each thread accumulates its
// OPT x MB register tile, reusing every weight load MB times. Bias (only where the sum is
// nonzero), ReLU and the cap are fused in the epilogue.
//
// FUSED (one slice: the block owns whole samples): the block also drops its dead samples:
// one atomicAdd on *count_out reserves rows of the output for the tile's survivors, which
// are written there directly with their ids (no extra pass, no host round trip).
// Not FUSED (outputs split across blocks): rows are written in place and flagged; the
// kernel spdnn_compact then moves the survivors.
//
// PF > 0 (one chunk, N <= PF * THREADS): register prefetch. Thread tid holds inputs
// i = tid + r * THREADS (r < PF) of the block's NEXT work item in registers; at each item
// they are stored to shared memory and the loads for the item after are issued at once,
// so they are in flight while this item is summed, its epilogue run and its rows written.
//
// DEDUP (layers with identical columns, e.g. RadiX-Net's N/16 distinct ones): the register
// tile holds the sums of the distinct columns only; they go to shared memory and the
// epilogue expands them to the N outputs through out_map (the block owns whole samples).
//
// Exactness (T = double): products and sums use __dmul_rn / __dadd_rn (no FMA), each sum
// starts from 0 and runs over ascending input neurons (padding adds an exact zero), so
// the result is bit-identical to the float64 reference. VMODE 0 (every weight the same
// power of two) sums the inputs then multiplies once, which is bit-identical too.

namespace spdnn {

template <typename T> struct Arith;

template <> struct Arith<float> {
    static __device__ __forceinline__ float madd(float acc, float w, float y) { return fmaf(w, y, acc); }
    static __device__ __forceinline__ float add(float a, float b) { return a + b; }
    static __device__ __forceinline__ float mul(float a, float b) { return a * b; }
};

template <> struct Arith<double> {
    static __device__ __forceinline__ double madd(double acc, double w, double y) {
        return __dadd_rn(acc, __dmul_rn(w, y));
    }
    static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
    static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
};

// Weight values as stored: IEEE half (as its 16 bits), float or double; every conversion
// to the activation type is exact (the engine stores a value narrower only when exact).
template <typename T, typename V> __device__ __forceinline__ T convert(V v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ float convert<float, unsigned short>(unsigned short bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}
template <> __device__ __forceinline__ double convert<double, unsigned short>(unsigned short bits) {
    return static_cast<double>(convert<float, unsigned short>(bits));
}

// MB activations of one input neuron, loaded from shared memory as one vector.
template <typename T, int MB> struct alignas(sizeof(T) * MB <= 16 ? sizeof(T) * MB : 16) Tile {
    T v[MB];
};

}  // namespace spdnn

namespace spdnn {
// z = clamp(scale(sum) + bias [scaled sum != 0], 0, ymax)
template <typename T, int VMODE>
__device__ __forceinline__ T epilogue(T sum, T scalar, T b, T ymax) {
    using A = Arith<T>;
    T z = sum;
    if (VMODE == 0) z = A::mul(z, scalar);
    if (z != T(0)) z = A::add(z, b);
    return z > T(0) ? (z < ymax ? z : ymax) : T(0);
}
}  // namespace spdnn

template <typename T, typename V, int VMODE, int THREADS, int MB, int OPT, bool FUSED, bool DEDUP, int PF>
__global__ void __launch_bounds__(THREADS) spdnn_layer(const T* __restrict__ y_in, T* __restrict__ y_out,
                            const int* __restrict__ ids_in, int* __restrict__ ids_out,
                            const int* __restrict__ count_in, int* __restrict__ count_out,
                            int* __restrict__ flags,
                            const unsigned short* __restrict__ eidx, const V* __restrict__ evals,
                            const int2* __restrict__ meta, const T* __restrict__ bias,
                            const unsigned short* __restrict__ out_map,
                            T scalar, T ymax, int n, int chunk, int nchunks, int slices) {
    using A = spdnn::Arith<T>;
    using TileT = spdnn::Tile<T, MB>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    TileT* buf = reinterpret_cast<TileT*>(smem_raw);  // chunk + 1 tiles; buf[chunk] == 0
    // DEDUP: the sums of the distinct columns, after the (16-byte aligned) input buffer.
    TileT* sums = reinterpret_cast<TileT*>(smem_raw + (((size_t)(chunk + 1) * sizeof(TileT) + 15) / 16) * 16);
    __shared__ int s_row[MB];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    constexpr int nwarps = THREADS / 32, per_slice = THREADS * OPT;
    const int count = *count_in;
    const int ntiles = (count + MB - 1) / MB;
    const int items = ntiles * slices;
    if (tid == 0) {
        TileT zero;
#pragma unroll
        for (int s = 0; s < MB; ++s) zero.v[s] = T(0);
        buf[chunk] = zero;
    }
    TileT pf[PF > 0 ? PF : 1];  // PF > 0: the next item's inputs tid + r * THREADS
    auto fetch = [&](int it) {
        const int q0 = (it / slices) * MB;
#pragma unroll
        for (int r = 0; r < PF; ++r) {
            const int i = tid + r * THREADS;
#pragma unroll
            for (int s = 0; s < MB; ++s)
                pf[r].v[s] = (i < n && q0 + s < count) ? y_in[(size_t)(q0 + s) * n + i] : T(0);
        }
    };
    if (PF > 0 && (int)blockIdx.x < items) fetch(blockIdx.x);

    for (int item = blockIdx.x; item < items; item += gridDim.x) {
        const int tile = item / slices;
        const int slice = item - tile * slices;
        const int p0 = tile * MB;
        T acc[OPT][MB];
#pragma unroll
        for (int t = 0; t < OPT; ++t)
#pragma unroll
            for (int s = 0; s < MB; ++s) acc[t][s] = T(0);

        for (int c = 0; c < nchunks; ++c) {
            const int base = c * chunk;
            const int len = min(chunk, n - base);
            __syncthreads();  // the previous chunk's readers are done with buf
            if (PF > 0) {     // one chunk: this item's inputs are in pf; fetch the next item's
#pragma unroll
                for (int r = 0; r < PF; ++r)
                    if (tid + r * THREADS < len) buf[tid + r * THREADS] = pf[r];
                if (item + (int)gridDim.x < items) fetch(item + gridDim.x);
            } else {
#pragma unroll 4
                for (int i = tid; i < len; i += THREADS) {
                    TileT x;
#pragma unroll
                    for (int s = 0; s < MB; ++s)
                        x.v[s] = (p0 + s < count) ? y_in[(size_t)(p0 + s) * n + base + i] : T(0);
                    buf[i] = x;
                }
            }
            __syncthreads();
#pragma unroll
            for (int t = 0; t < OPT; ++t) {
                const int2 m = meta[((slice * nchunks + c) * OPT + t) * nwarps + warp];
                const unsigned short* ip = eidx + m.x + lane;
                const V* vp = evals + m.x + lane;
#pragma unroll 8
                for (int k = 0; k < m.y; ++k) {
                    const TileT x = buf[ip[32 * k]];
                    if (VMODE == 0) {
#pragma unroll
                        for (int s = 0; s < MB; ++s) acc[t][s] = A::add(acc[t][s], x.v[s]);
                    } else {
                        const T w = (VMODE == 1) ? scalar : spdnn::convert<T, V>(vp[32 * k]);
#pragma unroll
                        for (int s = 0; s < MB; ++s) acc[t][s] = A::madd(acc[t][s], w, x.v[s]);
                    }
                }
            }
        }

        if (DEDUP) {
            // Sums of the distinct columns to shared memory; each output reads its own.
#pragma unroll
            for (int t = 0; t < OPT; ++t) {
                TileT x;
#pragma unroll
                for (int s = 0; s < MB; ++s) x.v[s] = acc[t][s];
                sums[t * THREADS + tid] = x;
            }
            __syncthreads();
            unsigned live = 0;
#pragma unroll 4
            for (int j = tid; j < n; j += THREADS) {
                const TileT x = sums[out_map[j]];
                const T b = bias[j];
#pragma unroll
                for (int s = 0; s < MB; ++s)
                    if (spdnn::epilogue<T, VMODE>(x.v[s], scalar, b, ymax) > T(0)) live |= 1u << s;
            }
            unsigned block_alive = 0;
#pragma unroll
            for (int s = 0; s < MB; ++s)
                if (__syncthreads_or((live >> s) & 1u)) block_alive |= 1u << s;
            if (tid == 0) {
                const int nlive = __popc(block_alive);
                const int first = nlive ? atomicAdd(count_out, nlive) : 0;
                int r = 0;
#pragma unroll
                for (int s = 0; s < MB; ++s) {
                    if ((block_alive >> s) & 1u) {
                        s_row[s] = first + r;
                        ids_out[first + r] = ids_in[p0 + s];
                        ++r;
                    } else {
                        s_row[s] = -1;
                    }
                }
            }
            __syncthreads();
            int rows[MB];
#pragma unroll
            for (int s = 0; s < MB; ++s) rows[s] = s_row[s];
#pragma unroll 4
            for (int j = tid; j < n; j += THREADS) {
                const TileT x = sums[out_map[j]];
                const T b = bias[j];
#pragma unroll
                for (int s = 0; s < MB; ++s)
                    if (rows[s] >= 0) y_out[(size_t)rows[s] * n + j] = spdnn::epilogue<T, VMODE>(x.v[s], scalar, b, ymax);
            }
            continue;
        }

        // Epilogue: scale (VMODE 0), bias where nonzero, ReLU, cap; which samples live.
        unsigned alive = 0;
#pragma unroll
        for (int t = 0; t < OPT; ++t) {
            const int j = slice * per_slice + t * THREADS + tid;
            const T b = (j < n) ? bias[j] : T(0);
#pragma unroll
            for (int s = 0; s < MB; ++s) {
                const T z = spdnn::epilogue<T, VMODE>(acc[t][s], scalar, b, ymax);
                acc[t][s] = z;
                if (z > T(0) && j < n) alive |= 1u << s;
            }
        }

        if (FUSED) {
            unsigned block_alive = 0;
#pragma unroll
            for (int s = 0; s < MB; ++s)
                if (__syncthreads_or((alive >> s) & 1u)) block_alive |= 1u << s;
            if (tid == 0) {
                const int live = __popc(block_alive);
                const int first = live ? atomicAdd(count_out, live) : 0;
                int r = 0;
#pragma unroll
                for (int s = 0; s < MB; ++s) {
                    if ((block_alive >> s) & 1u) {
                        s_row[s] = first + r;
                        ids_out[first + r] = ids_in[p0 + s];
                        ++r;
                    } else {
                        s_row[s] = -1;
                    }
                }
            }
            __syncthreads();
#pragma unroll
            for (int s = 0; s < MB; ++s) {
                const int row = s_row[s];
                if (row < 0) continue;
#pragma unroll
                for (int t = 0; t < OPT; ++t) {
                    const int j = slice * per_slice + t * THREADS + tid;
                    if (j < n) y_out[(size_t)row * n + j] = acc[t][s];
                }
            }
        } else {
#pragma unroll
            for (int s = 0; s < MB; ++s) {
                const int p = p0 + s;
                if (p >= count) continue;
#pragma unroll
                for (int t = 0; t < OPT; ++t) {
                    const int j = slice * per_slice + t * THREADS + tid;
                    if (j < n) y_out[(size_t)p * n + j] = acc[t][s];
                }
                if ((alive >> s) & 1u) flags[p] = 1;  // benign race: every writer stores 1
            }
        }
    }
}

// Per-sample warp kernel (deduplicated layers whose row fits a warp's shared memory).
//
// Each warp owns one alive sample at a time (grid-stride over samples p = warp's global
// index, step gridDim.x * WARPS) and has its own slice of shared memory: the row's N
// inputs plus a zero slot (stage_elems values, 16-byte aligned), then the sums of the
// opt * 32 distinct columns. Lane l sums distinct columns t * 32 + l (t < opt) over the
// entries of a one-warp packing (meta[t] = (offset, width), lane-interleaved 16-bit
// indices, ascending: the exactness order). The epilogue writes the N outputs back over
// the staged row; a ballot says whether the sample lives; lane 0 takes an output row with
// one atomicAdd and the warp copies the row out. Only __syncwarp: no block barrier.
namespace spdnn {
template <typename T> struct Vec16;
template <> struct Vec16<float> { using type = float4; };
template <> struct Vec16<double> { using type = double2; };

// dst[0..n) = src[0..n), by the 32 lanes of a warp (16-byte vectors when both allow it).
template <typename T>
__device__ __forceinline__ void warp_copy(T* __restrict__ dst, const T* __restrict__ src, int n, bool vec, int lane) {
    if (vec) {
        using V = typename Vec16<T>::type;
        constexpr int E = 16 / sizeof(T);
        const V* s = reinterpret_cast<const V*>(src);
        V* d = reinterpret_cast<V*>(dst);
#pragma unroll 4
        for (int i = lane; i < n / E; i += 32) d[i] = s[i];
    } else {
#pragma unroll 4
        for (int i = lane; i < n; i += 32) dst[i] = src[i];
    }
}
}  // namespace spdnn

template <typename T, typename V, int VMODE, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) spdnn_layer_warp(const T* __restrict__ y_in, T* __restrict__ y_out,
                            const int* __restrict__ ids_in, int* __restrict__ ids_out,
                            const int* __restrict__ count_in, int* __restrict__ count_out,
                            const unsigned short* __restrict__ eidx, const V* __restrict__ evals,
                            const int2* __restrict__ meta, const T* __restrict__ bias,
                            const unsigned short* __restrict__ out_map,
                            T scalar, T ymax, int n, int opt, int stage_elems) {
    using A = spdnn::Arith<T>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T* buf = reinterpret_cast<T*>(smem_raw) + (size_t)warp * (stage_elems + opt * 32);
    T* sums = buf + stage_elems;
    const int count = *count_in;
    // rows are 16-byte aligned when n * sizeof(T) is a multiple of 16 (buffers are)
    const bool vec = ((size_t)n * sizeof(T)) % 16 == 0;
    if (lane == 0) buf[n] = T(0);  // the zero slot padding entries point to

    for (int p = blockIdx.x * WARPS + warp; p < count; p += gridDim.x * WARPS) {
        __syncwarp();  // the previous sample's copy-out has read buf
        spdnn::warp_copy(buf, y_in + (size_t)p * n, n, vec, lane);
        __syncwarp();
        for (int t = 0; t < opt; ++t) {
            const int2 m = meta[t];
            const unsigned short* ip = eidx + m.x + lane;
            const V* vp = evals + m.x + lane;
            T acc = T(0);
#pragma unroll 8
            for (int k = 0; k < m.y; ++k) {
                const T x = buf[ip[32 * k]];
                if (VMODE == 0) {
                    acc = A::add(acc, x);
                } else {
                    const T w = (VMODE == 1) ? scalar : spdnn::convert<T, V>(vp[32 * k]);
                    acc = A::madd(acc, w, x);
                }
            }
            sums[t * 32 + lane] = acc;
        }
        __syncwarp();  // sums complete; every lane is done reading the inputs
        bool live = false;
#pragma unroll 4
        for (int j = lane; j < n; j += 32) {
            const T z = spdnn::epilogue<T, VMODE>(sums[out_map[j]], scalar, bias[j], ymax);
            buf[j] = z;
            live |= z > T(0);
        }
        if (!__any_sync(0xffffffffu, live)) continue;  // warp-uniform: the sample dies
        int row = 0;
        if (lane == 0) {
            row = atomicAdd(count_out, 1);
            ids_out[row] = ids_in[p];
        }
        row = __shfl_sync(0xffffffffu, row, 0);
        __syncwarp();  // the epilogue's writes to buf are visible to every lane
        spdnn::warp_copy(y_out + (size_t)row * n, buf, n, vec, lane);
    }
}

// Move the flagged rows of src (positions 0..*count_in-1) to the first rows of dst, with
// their ids; clears the flags. One block per row in a grid-stride loop.
template <typename T>
__global__ void spdnn_compact(const T* __restrict__ src, T* __restrict__ dst,
                              const int* __restrict__ ids_in, int* __restrict__ ids_out,
                              int* __restrict__ flags, const int* __restrict__ count_in,
                              int* __restrict__ count_out, int n) {
    __shared__ int s_row;
    const int count = *count_in;
    for (int p = blockIdx.x; p < count; p += gridDim.x) {
        const int live = flags[p];
        __syncthreads();
        if (threadIdx.x == 0) {
            s_row = live ? atomicAdd(count_out, 1) : -1;
            if (live) {
                ids_out[s_row] = ids_in[p];
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
