// BigVGAN's anti-aliased Snake activation on the CPU in one pass per channel row:
// 2x upsample (12-tap filter, replicate padding) -> x + sin^2(alpha x) / beta -> 12-tap low-pass,
// keep every second sample. Mirrors clipsonic/ops/anti_alias_reference.py, which the tests
// compare it against.
//
// The upsampling transposed convolution is written in polyphase form. With replicate padding
// by 5 and the crop of 15 samples, output u = 2p + r of the upsampler is
//   up[2p]     = 2 * sum_{d=-3..2} x[clamp(p + d)] * h[5 - 2d]
//   up[2p + 1] = 2 * sum_{d=-2..3} x[clamp(p + d)] * h[6 - 2d]
// and the decimating low-pass (replicate padding 5 left, 6 right) is
//   out[m] = sum_{k=0..11} act[clamp(2m + k - 5)] * g[k].
// sin^2(y) is evaluated as (1 - cos 2y) / 2 with a Cephes-style polynomial after reduction to
// [-pi/4, pi/4], written branch-free so the compiler vectorises it.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr int kTaps = 12;

inline float cos_poly(float x) {
  // Quadrant j = round(x * 2/pi); r = x - j * pi/2 in three parts (Cody-Waite).
  const float j = std::nearbyint(x * 0.63661977236758134f);
  float r = x - j * 1.5703125f;
  r = r - j * 4.837512969970703125e-4f;
  r = r - j * 7.54978995489188216e-8f;
  const float r2 = r * r;
  const float s = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
  const float c = 1.0f - 0.5f * r2 + r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
  const int q = static_cast<int>(j) & 3;  // cos(x) = c, -s, -c, s for quadrants 0..3
  const float magnitude = (q & 1) ? s : c;
  return (q == 1 || q == 2) ? -magnitude : magnitude;
}

template <typename scalar_t>
void run_rows(const scalar_t* x, scalar_t* out, const float* up, const float* down, const float* alpha,
              const float* inv_beta, int64_t channels, int64_t length, int64_t begin, int64_t end) {
  // Row buffer: the input with 3 replicated samples each side, the activation with 5 / 6.
  std::vector<float> padded(length + 6);
  std::vector<float> act(2 * length + 11);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t channel = row % channels;
    const scalar_t* src = x + row * length;
    for (int64_t i = 0; i < length + 6; ++i) {
      int64_t n = i - 3;
      n = n < 0 ? 0 : (n >= length ? length - 1 : n);
      padded[i] = static_cast<float>(src[n]);
    }
    const float a = alpha[channel];
    const float b = inv_beta[channel];
    float* dst = act.data() + 5;
    for (int64_t p = 0; p < length; ++p) {
      const float* w = padded.data() + p;  // w[3 + d] = x[clamp(p + d)]
      float even = 0.0f, odd = 0.0f;
      for (int d = -3; d <= 2; ++d) even += w[3 + d] * up[5 - 2 * d];
      for (int d = -2; d <= 3; ++d) odd += w[3 + d] * up[6 - 2 * d];
      dst[2 * p] = 2.0f * even;
      dst[2 * p + 1] = 2.0f * odd;
    }
    for (int64_t u = 0; u < 2 * length; ++u) {
      const float v = dst[u];
      dst[u] = v + b * 0.5f * (1.0f - cos_poly(2.0f * a * v));
    }
    for (int k = 0; k < 5; ++k) act[k] = dst[0];
    for (int k = 0; k < 6; ++k) act[2 * length + 5 + k] = dst[2 * length - 1];
    scalar_t* target = out + row * length;
    for (int64_t m = 0; m < length; ++m) {
      const float* window = act.data() + 2 * m;
      float sum = 0.0f;
      for (int k = 0; k < kTaps; ++k) sum += window[k] * down[k];
      target[m] = static_cast<scalar_t>(sum);
    }
  }
}

torch::Tensor anti_alias_activation(torch::Tensor x, torch::Tensor up_filter, torch::Tensor down_filter,
                                    torch::Tensor alpha, torch::Tensor beta) {
  TORCH_CHECK(x.device().is_cpu(), "anti_alias_activation (C++): x must be on the CPU");
  TORCH_CHECK(x.dim() == 3, "anti_alias_activation (C++): x must be [B, C, T], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16,
              "anti_alias_activation (C++): x must be float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(up_filter.numel() == kTaps && down_filter.numel() == kTaps,
              "anti_alias_activation (C++): filters must have 12 taps, got ", up_filter.numel(), " and ",
              down_filter.numel());
  const int64_t channels = x.size(1), length = x.size(2);
  TORCH_CHECK(alpha.numel() == channels, "anti_alias_activation (C++): alpha must have ", channels, " values");
  TORCH_CHECK(beta.numel() == 0 || beta.numel() == channels,
              "anti_alias_activation (C++): beta must be empty (Snake) or have ", channels, " values");
  auto input = x.contiguous();
  auto out = torch::empty_like(input);
  if (input.numel() == 0) return out;
  auto up = up_filter.to(torch::kFloat).contiguous();
  auto down = down_filter.to(torch::kFloat).contiguous();
  auto a = alpha.to(torch::kFloat).contiguous();
  auto inv_beta = (beta.numel() ? beta : alpha).to(torch::kFloat).add(1e-9).reciprocal().contiguous();
  const int64_t rows = input.size(0) * channels;
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, input.scalar_type(), "anti_alias_activation_cpu", [&] {
    const scalar_t* src = input.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      run_rows<scalar_t>(src, dst, up.data_ptr<float>(), down.data_ptr<float>(), a.data_ptr<float>(),
                         inv_beta.data_ptr<float>(), channels, length, begin, end);
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("anti_alias_activation", &anti_alias_activation,
        "2x upsample -> snake/snakebeta -> 2x downsample, one pass per row (CPU)");
}
