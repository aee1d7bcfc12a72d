// spdnn CUDA kernels: definitions shared by the kernel files.
//
// Every kernel file includes it first (#include "common.cuh": spdnn.engines.cuda.engine's
// kernel_source replaces such a line by the header's text, once per file, so CuPy's kernel
// cache key covers the headers). Semantics of a layer, rows are samples (docs/challenge.md,
// Semantics):
//     Y_out = clamp(Y_in W + b [Y_in W != 0], 0, ymax)
// Exactness (T = double): products and sums use __dmul_rn / __dadd_rn (no FMA), every sum
// starts from 0 and runs over ascending input neurons (padding adds an exact zero), so the
// result is bit-identical to the float64 reference (spdnn/engines/base.py states the contract).
//
// Words used in every kernel file:
//   row          one sample's activations (dense, row-major, `n` values); rows are compacted
//                as samples die, so row p is the p-th row still held, not sample p;
//   id           the sample a row is (ids_in/ids_out travel with the rows);
//   multiplicity how many samples a row stands for: 1, or more once identical rows are merged
//                (merge.cu); survivors' multiplicities are summed into the sample counts;
//   tile         ROWS_PER_TILE consecutive rows (KernelConfig.rows_per_tile) a block works on together;
//   warp slice   32 weight columns, one a lane, whose entries are interleaved lane by lane
//                (spdnn/engines/cuda/layout.py): warp_slices[..] = (first entry, entries a lane).

namespace spdnn {

// How weight values reach a kernel. The same numbering as spdnn.engines.cuda.layout
// (VALUE_SUM_THEN_SCALE, VALUE_SCALAR, VALUE_ARRAY).
enum ValueMode : int {
    kSumThenScale = 0,  // every weight of a layer is one power of two: sum the inputs, scale once
    kScalar = 1,        // one value per layer, multiplied into every term (no value loads)
    kArray = 2,         // per-entry values, stored in the narrowest exact type V
};

// The template parameters every tile kernel shares, checked once: T the activation type,
// V the stored weight type, VMODE a ValueMode, THREADS the block size (whole warps: a warp
// owns warp slices), ROWS_PER_TILE and COLS_PER_THREAD the register tile.
template <typename T, typename V, int VMODE, int THREADS, int ROWS_PER_TILE, int COLS_PER_THREAD>
struct TileKernelChecks {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "activations are float or double");
    static_assert(sizeof(V) <= sizeof(T), "weights are stored no wider than the activations (exactly)");
    static_assert(VMODE == kSumThenScale || VMODE == kScalar || VMODE == kArray, "VMODE is a ValueMode");
    static_assert(THREADS >= 32 && THREADS % 32 == 0 && THREADS <= 1024, "a block is whole warps");
    static_assert(COLS_PER_THREAD >= 1, "a thread sums one column or more");
    static_assert(ROWS_PER_TILE <= THREADS, "threads 0..ROWS_PER_TILE-1 each handle one row of the tile");
    static constexpr bool ok = true;
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

// The activations of one input neuron for the ROWS_PER_TILE rows of a tile: one shared-memory
// vector (a thread loads all of them with one or a few wide loads).
template <typename T, int ROWS_PER_TILE>
struct alignas(sizeof(T) * ROWS_PER_TILE <= 16 ? sizeof(T) * ROWS_PER_TILE : 16) Tile {
    T v[ROWS_PER_TILE];
};
// Row s of a tile is bit s of an `unsigned` alive mask; alignas needs a power of two; the
// engine sizes shared memory as (Tiles) * ROWS_PER_TILE * sizeof(T) (layout.py), so no padding.
template <typename T, int ROWS_PER_TILE> struct TileChecks {
    static_assert(ROWS_PER_TILE >= 1 && ROWS_PER_TILE <= 32, "a tile's rows are the bits of a 32-bit mask");
    static_assert((ROWS_PER_TILE & (ROWS_PER_TILE - 1)) == 0, "ROWS_PER_TILE is a power of two");
    static_assert(sizeof(Tile<T, ROWS_PER_TILE>) == sizeof(T) * ROWS_PER_TILE, "a Tile has no padding");
    static constexpr bool ok = true;
};

// The tile's zero slot: padding entries of a warp slice point at it, so they add exact zeros.
template <typename T, int ROWS_PER_TILE>
__device__ __forceinline__ void zero_tile(Tile<T, ROWS_PER_TILE>* slot) {
    Tile<T, ROWS_PER_TILE> zero;
#pragma unroll
    for (int s = 0; s < ROWS_PER_TILE; ++s) zero.v[s] = T(0);
    *slot = zero;
}

// One term of a sum: acc + w*x (VMODE kScalar/kArray) or acc + x (kSumThenScale, scaled later).
template <typename T, int VMODE>
__device__ __forceinline__ T accumulate(T acc, T w, T x) {
    return VMODE == kSumThenScale ? Arith<T>::add(acc, x) : Arith<T>::madd(acc, w, x);
}

// One lane's column of a warp slice: acc[s] += w * inputs[i].v[s] over its `width` entries,
// in order (the exactness order: ascending input). Entry e sits at idx[32*e] (an index into
// `inputs`; padding points to the zero slot) and, for kArray, val[32*e] (its weight);
// otherwise w = scalar.
template <typename T, typename V, int VMODE, int ROWS_PER_TILE>
__device__ __forceinline__ void sum_column(T (&acc)[ROWS_PER_TILE], const Tile<T, ROWS_PER_TILE>* __restrict__ inputs,
                                           const unsigned short* __restrict__ idx, const V* __restrict__ val,
                                           int width, T scalar) {
#pragma unroll 8
    for (int e = 0; e < width; ++e) {
        const Tile<T, ROWS_PER_TILE> x = inputs[idx[32 * e]];
        const T w = VMODE == kArray ? convert<T, V>(val[32 * e]) : scalar;
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) acc[s] = accumulate<T, VMODE>(acc[s], w, x.v[s]);
    }
}

// DEDUP: thread tid's register tile of distinct-column sums to shared memory, at
// sums[t*THREADS + tid] (column t*THREADS + tid of the block), for expand_outputs.
template <typename T, int ROWS_PER_TILE, int COLS_PER_THREAD, int THREADS>
__device__ __forceinline__ void store_sums(Tile<T, ROWS_PER_TILE>* sums, const T (&acc)[COLS_PER_THREAD][ROWS_PER_TILE]) {
#pragma unroll
    for (int t = 0; t < COLS_PER_THREAD; ++t) {
        Tile<T, ROWS_PER_TILE> x;
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) x.v[s] = acc[t][s];
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

// Which rows of the tile live in some thread of the block: bit s of the result is set when
// bit s of any thread's `alive` is. Every thread of the block must call it (one barrier a row).
template <int ROWS_PER_TILE>
__device__ __forceinline__ unsigned block_alive_rows(unsigned alive) {
    unsigned block_alive = 0;
#pragma unroll
    for (int s = 0; s < ROWS_PER_TILE; ++s)
        if (__syncthreads_or((alive >> s) & 1u)) block_alive |= 1u << s;
    return block_alive;
}

// Reserve consecutive output rows for the rows of a tile that survive (bit s of `alive`;
// tile row s is input row first_row + s). Thread 0 takes the rows with one atomicAdd on
// *count_out, writes each survivor's sample id and multiplicity there, adds the survivors'
// multiplicities to *samples_out (when not null) and leaves each row's output row (or -1) in
// s_out_row[s]. Every thread of the block must call it (it ends with a barrier).
template <int ROWS_PER_TILE>
__device__ __forceinline__ void reserve_rows(unsigned alive, int first_row, const int* __restrict__ ids_in,
                                             int* __restrict__ ids_out, const int* __restrict__ mult_in,
                                             int* __restrict__ mult_out, int* __restrict__ count_out,
                                             int* __restrict__ samples_out, int* s_out_row) {
    if (threadIdx.x == 0) {
        const int live = __popc(alive);
        const int first = live ? atomicAdd(count_out, live) : 0;
        int r = 0, samples = 0;
#pragma unroll
        for (int s = 0; s < ROWS_PER_TILE; ++s) {
            if ((alive >> s) & 1u) {
                s_out_row[s] = first + r;
                ids_out[first + r] = ids_in[first_row + s];
                mult_out[first + r] = mult_in[first_row + s];
                samples += mult_in[first_row + s];
                ++r;
            } else {
                s_out_row[s] = -1;
            }
        }
        if (samples_out != nullptr && samples) atomicAdd(samples_out, samples);
    }
    __syncthreads();
}

}  // namespace spdnn
