// pybind11 bindings of the C++ core into fusedlens._C. Only argument checks and
// dtype dispatch live here; the numerics are in csrc/core.
#include <torch/extension.h>

#include "../core/bf16_gemm.h"
#include "../core/gather_dot.h"
#include "../core/isa.h"
#include "../core/lens_epilogue.h"

std::vector<torch::Tensor> lens_stats(const torch::Tensor& xn, const torch::Tensor& w,
                                      const c10::optional<torch::Tensor>& bias, double softcap,
                                      const torch::Tensor& targets, int64_t k, int64_t token_block,
                                      int64_t vocab_tile, const c10::optional<torch::Tensor>& token_sets);
std::vector<torch::Tensor> logit_extremes(const torch::Tensor& rows, const torch::Tensor& w, int64_t k,
                                          int64_t row_block, int64_t vocab_tile);
int64_t ridge_gram(const torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& shift_x,
                const torch::Tensor& shift_y, torch::Tensor& out, int64_t block);
std::vector<torch::Tensor> lens_kl(const torch::Tensor& xn, const torch::Tensor& xf, const torch::Tensor& w,
                                   const c10::optional<torch::Tensor>& bias, double softcap, bool with_grad,
                                   int64_t token_block, int64_t vocab_tile, bool bf16);

void sweep_floor(const torch::Tensor& xn, const torch::Tensor& w, int64_t token_block, int64_t vocab_tile);

namespace {

torch::Tensor gather_dot(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& ids,
                         const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && ids.device().is_cpu(),
              "gather_dot: CPU tensors expected");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && ids.dim() == 1, "gather_dot: x [rows, d], w [vocab, d], ids [rows]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "gather_dot: x must be float32");
  TORCH_CHECK(ids.scalar_type() == torch::kInt64, "gather_dot: ids must be int64");
  TORCH_CHECK(x.size(1) == w.size(1) && x.size(0) == ids.size(0), "gather_dot: shape mismatch");
  TORCH_CHECK(x.stride(1) == 1 && w.stride(1) == 1, "gather_dot: rows must be contiguous");
  auto ids_c = ids.contiguous();
  auto out = torch::empty({x.size(0)}, x.options());
  torch::Tensor b;
  if (bias.has_value()) {
    b = bias->contiguous();
    TORCH_CHECK(b.scalar_type() == w.scalar_type() && b.numel() == w.size(0), "gather_dot: bias must match w");
  }
  if (w.scalar_type() == torch::kFloat32) {
    fusedlens::gather_dot<float>(x.data_ptr<float>(), x.stride(0), w.data_ptr<float>(), w.stride(0),
                                 b.defined() ? b.data_ptr<float>() : nullptr, ids_c.data_ptr<int64_t>(),
                                 out.data_ptr<float>(), x.size(0), x.size(1));
  } else if (w.scalar_type() == torch::kBFloat16) {
    auto cast = [](const torch::Tensor& t) { return reinterpret_cast<const fusedlens::bf16*>(t.data_ptr()); };
    fusedlens::gather_dot<fusedlens::bf16>(x.data_ptr<float>(), x.stride(0), cast(w), w.stride(0),
                                           b.defined() ? cast(b) : nullptr, ids_c.data_ptr<int64_t>(),
                                           out.data_ptr<float>(), x.size(0), x.size(1));
  } else {
    TORCH_CHECK(false, "gather_dot: w must be float32 or bfloat16");
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedlens C++ CPU kernels";
  m.def("gather_dot", &gather_dot, "out[r] = x[r] . w[ids[r]] (+ bias[ids[r]]), NaN where ids[r] < 0",
        py::arg("x"), py::arg("w"), py::arg("ids"), py::arg("bias") = py::none());
  m.def("has_bf16_dot", &fusedlens::has_bf16_dot, "whether the bf16 sweep uses the CPU's bf16 dot instructions");
  m.def("has_avx512_epilogue", &fusedlens::has_avx512_epilogue, "whether the AVX-512 lens epilogue runs");
  m.def("isa", [] { return std::string(fusedlens::isa_name(fusedlens::active_isa())); },
        "the ISA level the vector kernels run with: generic, avx2, avx512 or avx512bf16");
  m.def("cpu_isa", [] { return std::string(fusedlens::isa_name(fusedlens::cpu_isa())); },
        "the best ISA level this CPU supports");
  m.def("reset_isa", &fusedlens::reset_isa, "back to FUSEDLENS_ISA, else the detected level");
  m.def("bf16_dot_speedup", &fusedlens::bf16_dot_speedup,
        "measured multiply-adds/s of the CPU's bf16 dot over fp32 FMA (0: no AVX512-BF16)");
  m.def("set_isa", [](const std::string& name) {
        fusedlens::Isa isa;
        if (!fusedlens::isa_from_name(name.c_str(), &isa)) return false;
        return fusedlens::set_isa(isa);
      }, "run the vector kernels with this ISA level; false if unknown or the CPU lacks it", py::arg("name"));
  m.def("lens_stats", &lens_stats,
        "fused logit-lens statistics of xn [S, T, d] (site S-1 final) against w [V, d]; see ops.lens_stats",
        py::arg("xn"), py::arg("w"), py::arg("bias"), py::arg("softcap"), py::arg("targets"), py::arg("k"),
        py::arg("token_block") = 8, py::arg("vocab_tile") = 1024, py::arg("token_sets") = py::none());
  m.def("sweep_floor", &sweep_floor,
        "lens_stats' tile sweep of xn [S, T, d] against w [V, d] with no epilogue (the floor of our own tile "
        "GEMM, for benchmarks)", py::arg("xn"), py::arg("w"), py::arg("token_block") = 8, py::arg("vocab_tile") = 1024);
  m.def("logit_extremes", &logit_extremes,
        "the k largest and k smallest logits rows [R, d] . w[v] over the whole vocabulary of w [V, d] (top: "
        "descending, bottom: ascending, equal logits by ascending id); returns top_ids, top_logits, bottom_ids, "
        "bottom_logits [R, k]; see ops.logit_extremes",
        py::arg("rows"), py::arg("w"), py::arg("k"), py::arg("row_block") = 256, py::arg("vocab_tile") = 1024);
  m.def("ridge_gram", &ridge_gram,
        "out[s] += upper triangle of W_sᵀW_s, W_s = [x[s] - shift_x[s] | y - shift_y | 1] (fp32 GEMM, float64 sum); "
        "returns 0, or the number of NaN/Inf in x (then out is untouched)",
        py::arg("x"), py::arg("y"), py::arg("shift_x"), py::arg("shift_y"), py::arg("out"), py::arg("block") = 128);
  m.def("lens_kl", &lens_kl,
        "fused KL(p_final || q_site) of xn [L, T, d] against the final rows xf [T, d], and optionally its "
        "gradient wrt xn, with fp32 or (bf16=True) bf16 GEMM operands; see fusedlens.lens_kl",
        py::arg("xn"), py::arg("xf"), py::arg("w"), py::arg("bias"), py::arg("softcap"), py::arg("with_grad"),
        py::arg("token_block") = 8, py::arg("vocab_tile") = 512, py::arg("bf16") = false);
}
