// spdnn CUDA engine: merging identical rows (exact).
//
// Identical rows give identical outputs in every later layer (each row's arithmetic is the
// same sequence of operations wherever the row sits), so rows that have become equal can be
// computed once: the first of them (the representative) carries the multiplicity of the
// others (the samples they stand for), and each merged row records its representative's sample id
// in parent[], so categories and survivor counts still count every sample.
//
// Two launches over the n-value rows 0..*count_in-1 of y_in (table keys zeroed before):
// Blocks must be whole warps of at most 1024 threads (block_sum: full-mask shuffles, one
// scratch value a warp); not checked here (the engine launches 256).
//  1. spdnn_merge_find: one block per row p (grid-stride). The block hashes the row (sum of
//     hash_term over its nonzero values: equal rows hash equal). Thread 0 claims the hash in
//     an open-addressing table (keys[tmask + 1], vals[tmask + 1]) with atomicCAS: the first
//     claimer is a representative and publishes its row index at once (the row exists
//     already, so nobody ever waits on more than that store); a row finding its hash taken
//     waits for that index q, and the block compares the two rows bit for bit. Equal: rep[p]
//     = q and p's multiplicity is added to mult_add[q]. A hash collision or a full probe sequence:
//     rep[p] = p (the row stays on its own; merging is an optimisation, never a guess).
//  2. spdnn_merge_compact: one block per row p (grid-stride). Representatives and unmerged
//     rows (rep[p] == p) move to the first rows of y_out with their ids and multiplicities
//     (plus mult_add[p], then cleared); a merged row leaves parent[its id] = its representative's id.

#include "common.cuh"

namespace spdnn {

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

}  // namespace spdnn

namespace {
constexpr int kMaxProbes = 64;
}

template <typename T>
__global__ void spdnn_merge_find(const T* __restrict__ y, const int* __restrict__ mult,
                                 const int* __restrict__ count_in, unsigned long long* __restrict__ keys,
                                 int* __restrict__ vals, int tmask, int* __restrict__ rep,
                                 int* __restrict__ mult_add, int n) {
    __shared__ unsigned long long scratch[32];
    __shared__ int s_cand;
    const int count = *count_in;
    for (int p = blockIdx.x; p < count; p += gridDim.x) {
        const T* yp = y + (size_t)p * n;
        unsigned long long h = 0;
        for (int j = threadIdx.x; j < n; j += blockDim.x) h += spdnn::hash_term(yp[j], j);
        h = spdnn::block_sum(h, scratch);
        if (threadIdx.x == 0) {
            const unsigned long long key = h | 1ull;  // never the empty key 0
            int slot = static_cast<int>(spdnn::mix64(h) & static_cast<unsigned long long>(tmask));
            int cand = p;  // p: representative or alone; another row: compare with it
            for (int probe = 0; probe < kMaxProbes; ++probe, slot = (slot + 1) & tmask) {
                const unsigned long long prev = atomicCAS(keys + slot, 0ull, key);
                if (prev == 0ull) {              // claimed: p represents this hash
                    atomicExch(vals + slot, p + 1);
                    break;
                }
                if (prev == key) {               // taken: wait for the claimer's row index
                    int v;
                    do {
                        v = atomicAdd(vals + slot, 0);
                    } while (v == 0);
                    cand = v - 1;
                    break;
                }
            }
            s_cand = cand;
        }
        __syncthreads();
        const int q = s_cand;
        if (q != p) {
            const T* yq = y + (size_t)q * n;
            int differ = 0;
            for (int j = threadIdx.x; j < n; j += blockDim.x)
                differ |= spdnn::value_bits(yp[j]) != spdnn::value_bits(yq[j]);
            if (__syncthreads_or(differ)) {
                if (threadIdx.x == 0) rep[p] = p;  // a hash collision: keep the row
            } else if (threadIdx.x == 0) {
                rep[p] = q;
                atomicAdd(mult_add + q, mult[p]);
            }
        } else if (threadIdx.x == 0) {
            rep[p] = p;
        }
        __syncthreads();  // s_cand and scratch are reused for the next row
    }
}

template <typename T>
__global__ void spdnn_merge_compact(const T* __restrict__ y_in, T* __restrict__ y_out,
                                    const int* __restrict__ ids_in, int* __restrict__ ids_out,
                                    const int* __restrict__ mult_in, int* __restrict__ mult_out,
                                    const int* __restrict__ count_in, int* __restrict__ count_out,
                                    const int* __restrict__ rep, int* __restrict__ mult_add,
                                    int* __restrict__ parent, int n) {
    __shared__ int s_row;
    const int count = *count_in;
    for (int p = blockIdx.x; p < count; p += gridDim.x) {
        if (threadIdx.x == 0) {
            const int q = rep[p];
            if (q == p) {
                s_row = atomicAdd(count_out, 1);
                ids_out[s_row] = ids_in[p];
                mult_out[s_row] = mult_in[p] + mult_add[p];
                mult_add[p] = 0;
            } else {
                s_row = -1;
                parent[ids_in[p]] = ids_in[q];
            }
        }
        __syncthreads();
        const int row = s_row;
        if (row >= 0) {
            const T* a = y_in + (size_t)p * n;
            T* b = y_out + (size_t)row * n;
            for (int j = threadIdx.x; j < n; j += blockDim.x) b[j] = a[j];
        }
        __syncthreads();  // s_row is reused for the next row
    }
}
