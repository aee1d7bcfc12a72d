// spdnn CUDA kernels: definitions shared by every kernel file.
//
// Every kernel file includes it first (#include "common.cuh": spdnn.engines.cuda.engine's
// kernel_source replaces such a line by the header's text, once per file, so CuPy's kernel
// cache key covers the headers). Semantics of a layer, rows are samples (docs/challenge.md, Semantics):
//     Y_out = clamp(Y_in W + b [Y_in W != 0], 0, ymax)
// Exactness (T = double): products and sums use __dmul_rn / __dadd_rn (no FMA), every sum
// starts from 0 and runs over ascending input neurons (padding adds an exact zero), so the
// result is bit-identical to the float64 reference (spdnn/engines/base.py states the contract).

namespace spdnn {

// How weight values reach a kernel. The same numbering as spdnn.engines.cuda.layout
// (VALUE_SUM_THEN_SCALE, VALUE_SCALAR, VALUE_ARRAY).
enum ValueMode : int {
    kSumThenScale = 0,  // every weight of a layer is one power of two: sum the inputs, scale once
    kScalar = 1,        // one value per layer, multiplied into every term (no value loads)
    kArray = 2,         // per-entry values, stored in the narrowest exact type V
};

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

// Weight values as stored: IEEE half (as its 16 bits), float or double; every conversion to
// the activation type is exact (the engine stores a value narrower only when exact).
template <typename T, typename V> __device__ __forceinline__ T convert(V v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ float convert<float, unsigned short>(unsigned short bits) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
}
template <> __device__ __forceinline__ double convert<double, unsigned short>(unsigned short bits) {
    return static_cast<double>(convert<float, unsigned short>(bits));
}

// The MB activations of one input neuron for the MB samples of a tile: one shared-memory vector.
template <typename T, int MB> struct alignas(sizeof(T) * MB <= 16 ? sizeof(T) * MB : 16) Tile {
    T v[MB];
};

// The tile's zero slot: padding entries of a warp slice point at it, so they add exact zeros.
template <typename T, int MB>
__device__ __forceinline__ void zero_tile(Tile<T, MB>* slot) {
    Tile<T, MB> zero;
#pragma unroll
    for (int s = 0; s < MB; ++s) zero.v[s] = T(0);
    *slot = zero;
}

// Stage inputs base..base+len-1 of the tile's rows p0..p0+MB-1 (row-major, `width` values a
// row; rows at or past `count` read as 0) into buf[0..len-1], one Tile per input neuron.
// Thread `tid` of the block's THREADS stages inputs tid, tid + THREADS, ...
template <typename T, int MB, int THREADS>
__device__ __forceinline__ void stage_tile_chunk(Tile<T, MB>* buf, const T* __restrict__ y_in, int width, int p0,
                                                 int count, int base, int len, int tid) {
#pragma unroll 4
    for (int i = tid; i < len; i += THREADS) {
        Tile<T, MB> x;
#pragma unroll
        for (int s = 0; s < MB; ++s)
            x.v[s] = (p0 + s < count) ? y_in[(size_t)(p0 + s) * width + base + i] : T(0);
        buf[i] = x;
    }
}

// One term of a sum: acc + w*x (VMODE kScalar/kArray) or acc + x (kSumThenScale, scaled later).
template <typename T, int VMODE>
__device__ __forceinline__ T accumulate(T acc, T w, T x) {
    return VMODE == kSumThenScale ? Arith<T>::add(acc, x) : Arith<T>::madd(acc, w, x);
}

// One lane's column of a warp slice: acc[s] += w * buf[i].v[s] over its `width` entries, in
// order (the exactness order: ascending input). Entry e sits at ip[32*e] (a buffer index;
// padding points to a zero) and, for kArray, vp[32*e] (its weight); otherwise w = scalar.
template <typename T, typename V, int VMODE, int MB>
__device__ __forceinline__ void sum_column(T (&acc)[MB], const Tile<T, MB>* __restrict__ buf,
                                           const unsigned short* __restrict__ ip, const V* __restrict__ vp,
                                           int width, T scalar) {
#pragma unroll 8
    for (int e = 0; e < width; ++e) {
        const Tile<T, MB> x = buf[ip[32 * e]];
        const T w = VMODE == kArray ? convert<T, V>(vp[32 * e]) : scalar;
#pragma unroll
        for (int s = 0; s < MB; ++s) acc[s] = accumulate<T, VMODE>(acc[s], w, x.v[s]);
    }
}

// DEDUP: thread tid's register tile of distinct-column sums to shared memory, at
// sums[t*THREADS + tid] (column t*THREADS + tid of the block), for the epilogue to expand.
template <typename T, int MB, int OPT, int THREADS>
__device__ __forceinline__ void store_sums(Tile<T, MB>* sums, const T (&acc)[OPT][MB]) {
#pragma unroll
    for (int t = 0; t < OPT; ++t) {
        Tile<T, MB> x;
#pragma unroll
        for (int s = 0; s < MB; ++s) x.v[s] = acc[t][s];
        sums[t * THREADS + threadIdx.x] = x;
    }
}

// z = clamp(scale(sum) + bias [scaled sum != 0], 0, ymax); dead outputs are +0.
template <typename T, int VMODE>
__device__ __forceinline__ T epilogue(T sum, T scalar, T b, T ymax) {
    T z = sum;
    if (VMODE == kSumThenScale) z = Arith<T>::mul(z, scalar);
    if (z != T(0)) z = Arith<T>::add(z, b);
    return z > T(0) ? (z < ymax ? z : ymax) : T(0);
}

// Reserve consecutive output rows for the samples of a tile that survive (bit s of `alive`;
// sample s is input row p0 + s). Thread 0 takes the rows with one atomicAdd on *count_out,
// writes each survivor's sample id and weight there and leaves its output row (or -1) in
// s_row[s]. Every thread of the block must call it (it ends with a barrier).
template <int MB>
__device__ __forceinline__ void reserve_rows(unsigned alive, int p0, const int* __restrict__ ids_in,
                                             int* __restrict__ ids_out, const int* __restrict__ wts_in,
                                             int* __restrict__ wts_out, int* __restrict__ count_out,
                                             int* __restrict__ wcount_out, int* s_row) {
    if (threadIdx.x == 0) {
        const int live = __popc(alive);
        const int first = live ? atomicAdd(count_out, live) : 0;
        int r = 0, samples = 0;
#pragma unroll
        for (int s = 0; s < MB; ++s) {
            if ((alive >> s) & 1u) {
                s_row[s] = first + r;
                ids_out[first + r] = ids_in[p0 + s];
                wts_out[first + r] = wts_in[p0 + s];
                samples += wts_in[p0 + s];
                ++r;
            } else {
                s_row[s] = -1;
            }
        }
        if (wcount_out != nullptr && samples) atomicAdd(wcount_out, samples);
    }
    __syncthreads();
}

}  // namespace spdnn
