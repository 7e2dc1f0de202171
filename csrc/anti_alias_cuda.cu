// BigVGAN's anti-aliased Snake activation on CUDA: the same maths as anti_alias_cpu.cpp (see
// there for the polyphase form), one thread block per tile of TILE outputs of one (b, c) row.
// Raw-pointer launcher only, so this file compiles with plain nvcc (no torch headers); the
// torch binding lives in anti_alias_cuda.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kTaps = 12;
constexpr int kTile = 256;  // outputs per block

template <typename T> __device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_float(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

__device__ __forceinline__ int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

template <typename T>
__global__ void anti_alias_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ up,
                                  const float* __restrict__ down, const float* __restrict__ alpha,
                                  const float* __restrict__ inv_beta, int64_t channels, int64_t length) {
  // Shared: input samples [m0 - 6, m0 + kTile + 6), activations [2 m0 - 5, 2 m0 + 2 kTile + 6).
  __shared__ float xs[kTile + 12];
  __shared__ float acts[2 * kTile + 11];
  const int64_t row = blockIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const T* src = x + row * length;
  const float a = alpha[row % channels];
  const float b = inv_beta[row % channels];
  for (int i = threadIdx.x; i < kTile + 12; i += blockDim.x) xs[i] = to_float(src[clamp_index(m0 - 6 + i, length)]);
  __syncthreads();
  for (int j = threadIdx.x; j < 2 * kTile + 11; j += blockDim.x) {
    const int64_t u = clamp_index(2 * m0 - 5 + j, 2 * length);  // replicate padding of the activation
    const int64_t p = u >> 1;
    const int local = static_cast<int>(p - m0) + 6;  // xs[local + d] = x[clamp(p + d)]
    float v = 0.0f;
    if (u & 1) {
      for (int d = -2; d <= 3; ++d) v += xs[local + d] * up[6 - 2 * d];
    } else {
      for (int d = -3; d <= 2; ++d) v += xs[local + d] * up[5 - 2 * d];
    }
    v *= 2.0f;
    const float s = sinf(a * v);
    acts[j] = v + b * s * s;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTile; i += blockDim.x) {
    const int64_t m = m0 + i;
    if (m >= length) break;
    float sum = 0.0f;
    for (int k = 0; k < kTaps; ++k) sum += acts[2 * i + k] * down[k];
    out[row * length + m] = from_float<T>(sum);
  }
}

template <typename T>
int launch(const void* x, void* out, const float* up, const float* down, const float* alpha, const float* inv_beta,
           int64_t rows, int64_t channels, int64_t length, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((length + kTile - 1) / kTile), static_cast<unsigned>(rows));
  anti_alias_kernel<T><<<grid, 256, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(out), up, down, alpha,
                                                 inv_beta, channels, length);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

// dtype: 0 float32, 1 float16, 2 bfloat16. Returns a cudaError_t value (0 on success).
extern "C" int clipsonic_anti_alias_launch(int dtype, const void* x, void* out, const float* up, const float* down,
                                           const float* alpha, const float* inv_beta, int64_t rows, int64_t channels,
                                           int64_t length, void* stream) {
  if (rows == 0 || length == 0) return 0;
  if (rows > 65535) return static_cast<int>(cudaErrorInvalidConfiguration);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0: return launch<float>(x, out, up, down, alpha, inv_beta, rows, channels, length, s);
    case 1: return launch<__half>(x, out, up, down, alpha, inv_beta, rows, channels, length, s);
    case 2: return launch<__nv_bfloat16>(x, out, up, down, alpha, inv_beta, rows, channels, length, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}
