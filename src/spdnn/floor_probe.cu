// Microbenchmarks of the floor's constants (spdnn.floor_probe compiles this with CuPy).
//
// Every chain kernel runs `steps` dependent steps; the host times a launch with events
// and divides by `steps`. A step is the smallest exchange a layer needs at that scope:
// each thread (block, for the grid) writes one word, the barrier, then it reads the word
// of a neighbour written in the same step. Words alternate between two buffers by step
// parity, so one barrier a step suffices: step i+2 overwrites a word only after every
// reader of step i has passed the barrier of step i+1. The last value read goes to
// `out`, so no step can be removed by the compiler.
//
// Three parts, compiled as separate modules so that one the runtime cannot build does not
// take the others with it: the default part (block barrier, atomic grid barrier, graph
// step, add throughput, cache-bypassing copy), SPDNN_PROBE_CLUSTER (thread-block cluster
// barriers, sm_90) and SPDNN_PROBE_CG (cooperative groups' grid.sync()).

#if !defined(SPDNN_PROBE_CLUSTER) && !defined(SPDNN_PROBE_CG)

// Block-wide: one block a multiprocessor, blockDim.x <= 1024 threads; thread t reads the
// word of thread t+1 (mod blockDim.x) after __syncthreads().
extern "C" __global__ void probe_block_barrier(int steps, int* out) {
    __shared__ int words[2][1024];
    const int t = threadIdx.x, next = (t + 1) % blockDim.x;
    int v = t;
    for (int i = 0; i < steps; ++i) {
        words[i & 1][t] = v + 1;
        __syncthreads();
        v = words[i & 1][next];
    }
    out[blockIdx.x * blockDim.x + t] = v;
}

__device__ __forceinline__ unsigned probe_ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void probe_arrive(unsigned* p) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}

// Grid-wide, by one counter that only grows (no reset): at step i every block adds one
// and waits until the counter reaches (i + 1) * gridDim.x. All blocks must be resident
// (the host launches at most one block a multiprocessor, cooperatively where it can).
// `counter` must be zero at launch; block b reads the word of block b+1 (mod gridDim.x).
extern "C" __global__ void probe_grid_barrier(int steps, unsigned* counter, int* words, int* out) {
    const int b = blockIdx.x, next = (b + 1) % gridDim.x;
    int v = b;
    for (int i = 0; i < steps; ++i) {
        if (threadIdx.x == 0) {
            words[(i & 1) * gridDim.x + b] = v + 1;
            probe_arrive(counter);
            const unsigned target = (unsigned)(i + 1) * gridDim.x;
            while (probe_ld_acquire(counter) < target) {
            }
            v = *(volatile int*)&words[(i & 1) * gridDim.x + next];
        }
        __syncthreads();            // the block waits for its thread 0, as a layer would
    }
    if (threadIdx.x == 0) out[b] = v;
}

// One step of a chain of kernels (captured into a CUDA graph by the host): block b reads
// the word block b+1 wrote in the previous kernel and writes its own; `parity` alternates.
extern "C" __global__ void probe_graph_step(int* words, int parity) {
    if (threadIdx.x == 0) {
        const int b = blockIdx.x, next = (b + 1) % gridDim.x;
        const int v = words[(parity ^ 1) * gridDim.x + next];
        words[parity * gridDim.x + b] = v + 1;
    }
}

// Add throughput: every thread runs 8 independent chains of `steps` adds (a + c, c known
// only at run time, so nothing folds); the sums go to out.
template <typename T>
__device__ __forceinline__ void probe_add_chains(int steps, T c, T* out) {
    const int tid = blockIdx.x * blockDim.x + threadIdx.x;
    T a0 = T(tid), a1 = a0 + T(1), a2 = a0 + T(2), a3 = a0 + T(3);
    T a4 = a0 + T(4), a5 = a0 + T(5), a6 = a0 + T(6), a7 = a0 + T(7);
#pragma unroll 16
    for (int i = 0; i < steps; ++i) {
        a0 = a0 + c; a1 = a1 + c; a2 = a2 + c; a3 = a3 + c;
        a4 = a4 + c; a5 = a5 + c; a6 = a6 + c; a7 = a7 + c;
    }
    out[tid] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

extern "C" __global__ void probe_add_f32(int steps, float c, float* out) { probe_add_chains<float>(steps, c, out); }
extern "C" __global__ void probe_add_f64(int steps, double c, double* out) { probe_add_chains<double>(steps, c, out); }

// Copy `reps` times n4 float4 from src to dst, loads and stores bypassing L1 (.cg), each
// repetition shifted by one grid's worth so no load repeats an address of its thread.
// With a footprint within L2 this measures L2's bandwidth; far larger, device memory's.
// (The shift is reduced once a repetition: no division in the copy loop.)
extern "C" __global__ void probe_copy(const float4* __restrict__ src, float4* __restrict__ dst, long long n4,
                                      int reps) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (int r = 0; r < reps; ++r) {
        const long long shift = ((long long)r * stride) % n4;
        for (long long i = first; i < n4; i += stride) {
            long long j = i + shift;
            if (j >= n4) j -= n4;
            __stcg(&dst[j], __ldcg(&src[j]));
        }
    }
}

#endif

#if defined(SPDNN_PROBE_CLUSTER)

// Cluster-wide (Hopper, sm_90): thread t of block r in a cluster of C blocks writes its
// word, barrier.cluster, then reads the word of thread t of block r+1 (mod C) through
// distributed shared memory. The last barrier keeps every block's shared memory alive
// until its neighbour's last read.
__device__ __forceinline__ void probe_cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

__device__ __forceinline__ unsigned probe_cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

__device__ __forceinline__ unsigned probe_cluster_size() {
    unsigned n;
    asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(n));
    return n;
}

__device__ __forceinline__ int probe_ld_remote(const int* local, unsigned rank) {
    unsigned addr = (unsigned)__cvta_generic_to_shared(local), remote;
    int v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
    asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(remote) : "memory");
    return v;
}

__device__ __forceinline__ void probe_cluster_chain(int steps, int* out) {
    __shared__ int words[2][1024];
    const int t = threadIdx.x;
    const unsigned next = (probe_cluster_rank() + 1) % probe_cluster_size();
    int v = t;
    for (int i = 0; i < steps; ++i) {
        words[i & 1][t] = v + 1;
        probe_cluster_sync();
        v = probe_ld_remote(&words[i & 1][t], next);
    }
    probe_cluster_sync();
    out[blockIdx.x * blockDim.x + t] = v;
}

extern "C" __global__ void __cluster_dims__(2, 1, 1) probe_cluster_barrier_2(int steps, int* out) {
    probe_cluster_chain(steps, out);
}
extern "C" __global__ void __cluster_dims__(4, 1, 1) probe_cluster_barrier_4(int steps, int* out) {
    probe_cluster_chain(steps, out);
}
extern "C" __global__ void __cluster_dims__(8, 1, 1) probe_cluster_barrier_8(int steps, int* out) {
    probe_cluster_chain(steps, out);
}

#endif

#if defined(SPDNN_PROBE_CG)

#include <cooperative_groups.h>

// Grid-wide by cooperative groups (launched cooperatively): block b reads the word of
// block b+1 (mod gridDim.x) after grid.sync().
extern "C" __global__ void probe_grid_sync(int steps, int* words, int* out) {
    cooperative_groups::grid_group grid = cooperative_groups::this_grid();
    const int b = blockIdx.x, next = (b + 1) % gridDim.x;
    int v = b;
    for (int i = 0; i < steps; ++i) {
        if (threadIdx.x == 0) words[(i & 1) * gridDim.x + b] = v + 1;
        grid.sync();
        if (threadIdx.x == 0) v = *(volatile int*)&words[(i & 1) * gridDim.x + next];
    }
    if (threadIdx.x == 0) out[b] = v;
}

#endif
