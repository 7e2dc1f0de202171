// Torch binding of the CUDA anti-aliased Snake activation (kernel and launcher: anti_alias_cuda.cu).
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_runtime.h>

extern "C" int clipsonic_anti_alias_launch(int dtype, const void* x, void* out, const float* up, const float* down,
                                           const float* alpha, const float* inv_beta, int64_t rows, int64_t channels,
                                           int64_t length, void* stream);

torch::Tensor anti_alias_activation(torch::Tensor x, torch::Tensor up_filter, torch::Tensor down_filter,
                                    torch::Tensor alpha, torch::Tensor beta) {
  TORCH_CHECK(x.is_cuda(), "anti_alias_activation (CUDA): x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 3, "anti_alias_activation (CUDA): x must be [B, C, T], got ", x.sizes());
  int dtype = -1;
  if (x.scalar_type() == torch::kFloat) dtype = 0;
  if (x.scalar_type() == torch::kHalf) dtype = 1;
  if (x.scalar_type() == torch::kBFloat16) dtype = 2;
  TORCH_CHECK(dtype >= 0, "anti_alias_activation (CUDA): x must be float32, float16 or bfloat16");
  TORCH_CHECK(up_filter.numel() == 12 && down_filter.numel() == 12, "anti_alias_activation (CUDA): filters must have 12 taps");
  const int64_t channels = x.size(1), length = x.size(2), rows = x.size(0) * channels;
  TORCH_CHECK(alpha.numel() == channels, "anti_alias_activation (CUDA): alpha must have ", channels, " values");
  TORCH_CHECK(beta.numel() == 0 || beta.numel() == channels, "anti_alias_activation (CUDA): beta must be empty or have ",
              channels, " values");
  TORCH_CHECK(rows <= 65535, "anti_alias_activation (CUDA): at most 65535 rows (B * C), got ", rows);
  auto options = x.options().dtype(torch::kFloat);
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  auto up = up_filter.to(options).contiguous();
  auto down = down_filter.to(options).contiguous();
  auto a = alpha.to(options).contiguous();
  auto inv_beta = (beta.numel() ? beta : alpha).to(options).add(1e-9).reciprocal().contiguous();
  const int status = clipsonic_anti_alias_launch(dtype, input.data_ptr(), out.data_ptr(), up.data_ptr<float>(),
                                                 down.data_ptr<float>(), a.data_ptr<float>(), inv_beta.data_ptr<float>(),
                                                 rows, channels, length, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(status == 0, "anti_alias_activation (CUDA): launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("anti_alias_activation", &anti_alias_activation, "2x upsample -> snake/snakebeta -> 2x downsample (CUDA)");
}
