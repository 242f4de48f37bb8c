// Streaming ridge accumulation on CPU: for every site of a batch, the upper triangle
// of the Gram of W = [x - shift_x | y - shift_y | 1], added into float64 totals. The
// d x d block XᵀX is computed in fp32, and symmetry halves its work: only the block
// pairs (i <= j) of a blocked GEMM, each by ATen (MKL) on strided column panels of W.
// The m + 1 last columns (Xᵀy, Σx, yᵀy, Σy, n: ~1% of the work) are summed in float64.
// Rows go in chunks so the packed fp32 copy of all sites stays small.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "../core/ridge_pack.h"

namespace {

constexpr int64_t kPackFloats = int64_t(8) << 20;  // packed rows of all sites: at most 32 MiB

template <typename T>
void pack_sites(const torch::Tensor& x, const float* y, int64_t ldy, const float* shift_x, const float* shift_y,
                int64_t r0, int64_t rows, int64_t m, float* buf) {
  const int64_t S = x.size(0), d = x.size(2), D = d + m + 1;
  const T* base = reinterpret_cast<const T*>(x.data_ptr());
  at::parallel_for(0, S, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s)
      fusedlens::pack_augmented<T>(base + s * x.stride(0) + r0 * x.stride(1), x.stride(1), shift_x + s * d,
                                   y + r0 * ldy, ldy, shift_y, rows, d, m, buf + s * rows * D, D);
  });
}

template <typename T>
int64_t nonfinite_sites(const torch::Tensor& x) {
  const T* base = reinterpret_cast<const T*>(x.data_ptr());
  std::vector<int64_t> bad(x.size(0), 0);
  at::parallel_for(0, x.size(0), 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s)
      bad[s] = fusedlens::count_nonfinite<T>(base + s * x.stride(0), x.stride(1), x.size(1), x.size(2));
  });
  int64_t total = 0;
  for (int64_t b : bad) total += b;
  return total;
}

}  // namespace

// x [S, N, d] float32 or bfloat16 (unit stride along d); y [N, m] float32;
// shift_x [S, d], shift_y [m] float32; out [S, D, D] float64 contiguous, D = d + m + 1.
// Adds each site's batch Gram (upper triangle, diagonal included) into out in place and
// returns 0; or, if x holds NaN/Inf, adds nothing and returns how many (y is the caller's).
int64_t ridge_gram(const torch::Tensor& x, const torch::Tensor& y_in, const torch::Tensor& shift_x_in,
                const torch::Tensor& shift_y_in, torch::Tensor& out, int64_t block) {
  TORCH_CHECK(x.device().is_cpu() && y_in.device().is_cpu() && out.device().is_cpu(), "ridge_gram: CPU tensors");
  TORCH_CHECK(x.dim() == 3 && y_in.dim() == 2 && shift_x_in.dim() == 2 && shift_y_in.dim() == 1 && out.dim() == 3,
              "ridge_gram: x [S, N, d], y [N, m], shift_x [S, d], shift_y [m], out [S, D, D]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16,
              "ridge_gram: x must be float32 or bfloat16");
  TORCH_CHECK(x.stride(2) == 1, "ridge_gram: x rows must be contiguous");
  TORCH_CHECK(out.scalar_type() == torch::kFloat64 && out.is_contiguous(), "ridge_gram: out must be contiguous float64");
  const int64_t S = x.size(0), N = x.size(1), d = x.size(2);
  const auto y = y_in.to(torch::kFloat32).contiguous();
  const auto shift_x = shift_x_in.to(torch::kFloat32).contiguous();
  const auto shift_y = shift_y_in.to(torch::kFloat32).contiguous();
  const int64_t m = y.size(1), D = d + m + 1;
  TORCH_CHECK(y.size(0) == N && shift_x.size(0) == S && shift_x.size(1) == d && shift_y.size(0) == m,
              "ridge_gram: shape mismatch");
  TORCH_CHECK(out.size(0) == S && out.size(1) == D && out.size(2) == D, "ridge_gram: out must be [S, d+m+1, d+m+1]");
  TORCH_CHECK(block >= 1, "ridge_gram: block must be positive");
  if (N == 0) return 0;
  const int64_t bad = x.scalar_type() == torch::kFloat32 ? nonfinite_sites<float>(x) : nonfinite_sites<fusedlens::bf16>(x);
  if (bad) return bad;

  std::vector<std::pair<int64_t, int64_t>> pairs;  // (i0, j0) block origins of XᵀX with i0 <= j0
  for (int64_t i0 = 0; i0 < d; i0 += block)
    for (int64_t j0 = i0; j0 < d; j0 += block) pairs.emplace_back(i0, j0);
  const int64_t P = static_cast<int64_t>(pairs.size()) + 1;  // work items per site: the pairs, then the f64 columns

  const int64_t row_chunk = std::max<int64_t>(1, std::min<int64_t>(N, kPackFloats / (S * D)));
  std::vector<float> buf(static_cast<size_t>(S * std::min(row_chunk, N) * D));
  double* o = out.data_ptr<double>();
  for (int64_t r0 = 0; r0 < N; r0 += row_chunk) {
    const int64_t rows = std::min(row_chunk, N - r0);
    if (x.scalar_type() == torch::kFloat32)
      pack_sites<float>(x, y.data_ptr<float>(), m, shift_x.data_ptr<float>(), shift_y.data_ptr<float>(), r0, rows, m,
                        buf.data());
    else
      pack_sites<fusedlens::bf16>(x, y.data_ptr<float>(), m, shift_x.data_ptr<float>(), shift_y.data_ptr<float>(), r0,
                                  rows, m, buf.data());
    // Every (site, block pair) writes its own region of out: no two items touch the same entry.
    at::parallel_for(0, S * P, 1, [&](int64_t k0, int64_t k1) {
      std::vector<float> tile(static_cast<size_t>(block * block));
      std::vector<double> scratch;
      const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t s = k / P;
        float* w = buf.data() + s * rows * D;
        if (k % P == P - 1) {
          scratch.resize(static_cast<size_t>((m + 1) * D));
          fusedlens::add_upper_columns_f64(w, D, rows, d, D, o + s * D * D, D, scratch.data());
          continue;
        }
        const auto [i0, j0] = pairs[k % P];
        const int64_t bi = std::min(block, d - i0), bj = std::min(block, d - j0);
        auto a = torch::from_blob(w + i0, {rows, bi}, {D, 1}, f32);
        auto b = torch::from_blob(w + j0, {rows, bj}, {D, 1}, f32);
        auto t = torch::from_blob(tile.data(), {bi, bj}, f32);
        at::mm_out(t, a.t(), b);
        fusedlens::add_upper_tile(tile.data(), bj, bi, bj, i0, j0, o + s * D * D, D);
      }
    });
  }
  return 0;
}
