// spdnn CUDA kernels: asynchronous global -> shared memory copies (cp.async, sm_80+), for
// kernels that stage data ahead of its use (stationary.cu). A copy is issued by one thread,
// grouped by cp_async_commit and waited for by cp_async_wait<N> (N groups may stay in flight);
// a wait covers the calling thread's copies only, so a barrier must follow before other
// threads read them.

namespace spdnn {

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

// One element of BYTES (4, 8 or 16) bytes to shared memory, asynchronously; src_bytes = 0
// writes zeros and reads nothing (src must still be a valid address), else src_bytes = BYTES.
template <int BYTES>
__device__ __forceinline__ void cp_async_zfill(void* smem, const void* gmem, int src_bytes) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(BYTES), "r"(src_bytes));
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
