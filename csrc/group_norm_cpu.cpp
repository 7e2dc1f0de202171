// GroupNorm with the UNet's extras fused, on the CPU: normalise (float32 statistics), affine,
// h * (1 + scale) + shift, SiLU -- one pass for the statistics, one for the output, instead of
// four or five over the activations. Mirrors clipsonic/ops/group_norm_reference.py.
//
// Layouts: [B, C, *spatial] either contiguous or channels-last (then each spatial position holds
// C contiguous channels). float32 and bfloat16; bfloat16 is converted with bit operations (round
// to nearest even) and exp() is a branch-free polynomial, so the inner loops vectorise.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float load(float v) { return v; }
inline float load(double v) { return static_cast<float>(v); }  // only to satisfy the dtype dispatch
inline float load(c10::BFloat16 v) {
  uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}
inline void store(float* p, float v) { *p = v; }
inline void store(double* p, float v) { *p = v; }
inline void store(c10::BFloat16* p, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  p->x = static_cast<uint16_t>(bits >> 16);
}

inline float fast_exp(float x) {
  // exp(x) = 2^n * p(r), n = round(x / ln 2), |r| <= ln(2) / 2; Cephes' expf polynomial.
  x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float apply(float v, float a, float b, bool silu) {
  const float h = v * a + b;
  return silu ? h / (1.0f + fast_exp(-h)) : h;
}

template <typename scalar_t>
void run(const scalar_t* x, scalar_t* out, int64_t batch, int64_t channels, int64_t spatial, int64_t groups,
         const float* weight, const float* bias, const float* scale, const float* shift, double eps, bool silu,
         bool channels_last) {
  const int64_t per_group = channels / groups;
  // Statistics: partial per-channel sums over chunks of positions, reduced per group in double.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(spatial, at::get_num_threads() * 4));
  std::vector<float> sums(batch * chunks * channels * 2, 0.0f);
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, chunk = task % chunks;
      const int64_t first = spatial * chunk / chunks, last = spatial * (chunk + 1) / chunks;
      float* sum = sums.data() + task * channels * 2;
      float* square = sum + channels;
      if (channels_last) {
        for (int64_t s = first; s < last; ++s) {
          const scalar_t* row = x + (b * spatial + s) * channels;
          for (int64_t c = 0; c < channels; ++c) {
            const float v = load(row[c]);
            sum[c] += v;
            square[c] += v * v;
          }
        }
      } else {
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* row = x + (b * channels + c) * spatial;
          float s1 = 0.0f, s2 = 0.0f;
          for (int64_t s = first; s < last; ++s) {
            const float v = load(row[s]);
            s1 += v;
            s2 += v * v;
          }
          sum[c] = s1;
          square[c] = s2;
        }
      }
    }
  });
  // Per (b, c): out = silu(x * A + B), folding mean, rstd, affine, scale and shift.
  std::vector<float> factor(batch * channels), offset(batch * channels);
  const double count = static_cast<double>(per_group * spatial);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t g = 0; g < groups; ++g) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const float* sum = sums.data() + (b * chunks + chunk) * channels * 2;
        for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
          s1 += sum[c];
          s2 += sum[channels + c];
        }
      }
      const double mean = s1 / count;
      const double var = std::max(s2 / count - mean * mean, 0.0);
      const double rstd = 1.0 / std::sqrt(var + eps);
      for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) {
        const double w = weight ? weight[c] : 1.0, bb = bias ? bias[c] : 0.0;
        const double gain = scale ? 1.0 + scale[b * channels + c] : 1.0;
        const double move = shift ? shift[b * channels + c] : 0.0;
        factor[b * channels + c] = static_cast<float>(rstd * w * gain);
        offset[b * channels + c] = static_cast<float>((bb - mean * rstd * w) * gain + move);
      }
    }
  }
  if (channels_last) {
    at::parallel_for(0, batch * spatial, 64, [&](int64_t begin, int64_t end) {
      for (int64_t position = begin; position < end; ++position) {
        const int64_t b = position / spatial;
        const float* a = factor.data() + b * channels;
        const float* o = offset.data() + b * channels;
        const scalar_t* row = x + position * channels;
        scalar_t* target = out + position * channels;
        for (int64_t c = 0; c < channels; ++c) store(target + c, apply(load(row[c]), a[c], o[c], silu));
      }
    });
  } else {
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const float a = factor[plane], o = offset[plane];
        const scalar_t* row = x + plane * spatial;
        scalar_t* target = out + plane * spatial;
        for (int64_t s = 0; s < spatial; ++s) store(target + s, apply(load(row[s]), a, o, silu));
      }
    });
  }
}

torch::Tensor group_norm(torch::Tensor x, int64_t groups, c10::optional<torch::Tensor> weight,
                         c10::optional<torch::Tensor> bias, double eps, c10::optional<torch::Tensor> scale,
                         c10::optional<torch::Tensor> shift, bool silu) {
  TORCH_CHECK(x.device().is_cpu(), "group_norm (C++): x must be on the CPU");
  TORCH_CHECK(x.dim() >= 2, "group_norm (C++): x must be [B, C, ...]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kBFloat16,
              "group_norm (C++): x must be float32 or bfloat16, got ", x.scalar_type());
  const int64_t batch = x.size(0), channels = x.size(1);
  TORCH_CHECK(groups > 0 && channels % groups == 0, "group_norm (C++): ", channels, " channels do not split into ",
              groups, " groups");
  const int64_t spatial = channels ? x.numel() / (batch * channels) : 0;
  const bool channels_last = x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  auto input = channels_last ? x : x.contiguous();
  auto out = torch::empty_like(input);
  if (input.numel() == 0) return out;
  auto as_float = [&](const c10::optional<torch::Tensor>& t, int64_t expected, const char* name) -> torch::Tensor {
    if (!t.has_value() || !t->defined()) return torch::Tensor();
    TORCH_CHECK(t->numel() == expected, "group_norm (C++): ", name, " must have ", expected, " values");
    return t->to(torch::kFloat).contiguous();
  };
  auto w = as_float(weight, channels, "weight"), b = as_float(bias, channels, "bias");
  auto sc = as_float(scale, batch * channels, "scale"), sh = as_float(shift, batch * channels, "shift");
  AT_DISPATCH_FLOATING_TYPES_AND(torch::kBFloat16, input.scalar_type(), "group_norm_cpu", [&] {
    run<scalar_t>(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch, channels, spatial, groups,
                  w.defined() ? w.data_ptr<float>() : nullptr, b.defined() ? b.data_ptr<float>() : nullptr,
                  sc.defined() ? sc.data_ptr<float>() : nullptr, sh.defined() ? sh.data_ptr<float>() : nullptr, eps,
                  silu, channels_last);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_norm", &group_norm, "GroupNorm + scale-shift + SiLU in two passes (CPU)");
}
