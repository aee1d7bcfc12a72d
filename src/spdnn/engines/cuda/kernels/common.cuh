// spdnn CUDA kernels: definitions shared by every kernel file.
//
// The engine prepends this header to each .cu file before compiling it (so CuPy's kernel
// cache key covers it). Semantics of a layer, rows are samples (docs/challenge.md, Semantics):
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

// Bits of an activation, widened to 64 (for row hashes and bitwise comparison).
__device__ __forceinline__ unsigned long long value_bits(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned long long value_bits(double v) {
    return static_cast<unsigned long long>(__double_as_longlong(v));
}

// splitmix64's finalizer: a bijective 64-bit mix.
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// What output j holding z adds to its row's hash. The hash of a row is the sum (mod 2^64) of
// its nonzero outputs' terms: commutative, so equal rows hash equal whoever computes them.
template <typename T>
__device__ __forceinline__ unsigned long long hash_term(T z, int j) {
    return z != T(0) ? mix64(value_bits(z) + 0x9E3779B97F4A7C15ull * static_cast<unsigned long long>(j + 1)) : 0ull;
}

// Sum of `v` over the block (every thread calls it; the result is valid in thread 0).
// `scratch` holds one value per warp.
__device__ __forceinline__ unsigned long long block_sum(unsigned long long v, unsigned long long* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    unsigned long long total = 0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) total += scratch[w];
    __syncthreads();  // scratch may be reused at once
    return total;
}

// Asynchronous global -> shared copies (sm_80+): 16 bytes per call, completed by groups.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void cp_async8(void* smem, const void* gmem) {
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(s), "l"(gmem));
}

// The block copies `bytes` (a multiple of 16, both addresses 16-byte aligned) to shared memory.
__device__ __forceinline__ void stage_async(void* dst, const void* src, long long bytes) {
    for (long long o = 16LL * threadIdx.x; o < bytes; o += 16LL * blockDim.x)
        cp_async16(static_cast<char*>(dst) + o, static_cast<const char*>(src) + o);
}

// The block copies `count` 8-byte words (both addresses 8-byte aligned) to shared memory.
__device__ __forceinline__ void stage_async8(void* dst, const void* src, int count) {
    for (int w = threadIdx.x; w < count; w += blockDim.x)
        cp_async8(static_cast<char*>(dst) + 8 * w, static_cast<const char*>(src) + 8 * w);
}

}  // namespace spdnn
