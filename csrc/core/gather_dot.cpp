#include "gather_dot.h"

#include <limits>

namespace fusedlens {

template <typename W>
void gather_dot(const float* x, int64_t ldx, const W* w, int64_t ldw, const W* bias,
                const int64_t* ids, float* out, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static) if (rows * d > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t id = ids[r];
    if (id < 0) {
      out[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float* xr = x + r * ldx;
    const W* wr = w + id * ldw;
    double acc = 0.0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; ++j) acc += static_cast<double>(xr[j]) * to_float(wr[j]);
    if (bias) acc += to_float(bias[id]);
    out[r] = static_cast<float>(acc);
  }
}

template void gather_dot<float>(const float*, int64_t, const float*, int64_t, const float*,
                                const int64_t*, float*, int64_t, int64_t);
template void gather_dot<bf16>(const float*, int64_t, const bf16*, int64_t, const bf16*,
                               const int64_t*, float*, int64_t, int64_t);

}  // namespace fusedlens
