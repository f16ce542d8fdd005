// Multi-tenant 1-bit delta matmul on x86 CPUs: packed sign bits used as SIMD lane masks.
//
// For each batch row r of tenant t (row_slots[r] = t, -1 = no delta):
//
//     y[r] += sum_i scales[t][i] * x[r] . sign[t][i]^T,   sign in {-1, +1}^[out, in]
//
// The signs stay packed (byte g of an output row holds input columns 8g..8g+7, column 8g+j in bit j,
// set bit = +1). Because sign = 2*bit - 1,
//
//     x . sign_o = 2 * (sum of x[j] over the set bits j of row o) - sum_j x[j],
//
// and "sum of x over set bits" is a masked add: 16 (AVX-512) or 8 (AVX2) bits of a packed row are
// the lane mask for as many columns of x, so one add instruction consumes 16 or 8 weights per input
// row and no unpacked sign ever exists. Rows of the batch are processed in runs of one tenant, up
// to MAX_ROWS at a time so that each packed byte, loaded once, serves every row of the run.
//
// Built on first use by deltaguard.kernels.cpu_bitdelta with -march=native; a CPU without AVX2
// uses the PyTorch path instead.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int MAX_ROWS = 4;        // rows of one tenant sharing each load of the packed bits
constexpr int64_t GRAIN = 64;      // output rows per parallel task

#if defined(__AVX512F__)
constexpr int LANES = 16;

template <int M>
void masked_sums(const float* xpad, int64_t n_cols_padded, const uint8_t* bits, int64_t n_groups,
                 int64_t o_begin, int64_t o_end, float* set_sums) {
  const int64_t n_pairs = n_groups / 2;
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* row = bits + o * n_groups;
    __m512 acc[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n_pairs; ++c) {
      uint16_t mask;
      std::memcpy(&mask, row + 2 * c, 2);  // little-endian: byte 2c -> lanes 0..7, byte 2c+1 -> lanes 8..15
      for (int r = 0; r < M; ++r)
        acc[r] = _mm512_mask_add_ps(acc[r], mask, acc[r], _mm512_loadu_ps(xpad + r * n_cols_padded + 16 * c));
    }
    if (n_groups % 2) {  // a last lone byte: lanes 8..15 stay off
      const __mmask16 mask = row[n_groups - 1];
      for (int r = 0; r < M; ++r)
        acc[r] = _mm512_mask_add_ps(acc[r], mask, acc[r], _mm512_loadu_ps(xpad + r * n_cols_padded + 16 * n_pairs));
    }
    for (int r = 0; r < M; ++r) set_sums[o * M + r] = _mm512_reduce_add_ps(acc[r]);
  }
}

#elif defined(__AVX2__)
constexpr int LANES = 8;

template <int M>
void masked_sums(const float* xpad, int64_t n_cols_padded, const uint8_t* bits, int64_t n_groups,
                 int64_t o_begin, int64_t o_end, float* set_sums) {
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  for (int64_t o = o_begin; o < o_end; ++o) {
    const uint8_t* row = bits + o * n_groups;
    __m256 acc[M];
    for (int r = 0; r < M; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < n_groups; ++g) {
      const __m256i spread = _mm256_and_si256(_mm256_set1_epi32(row[g]), lane_bits);
      const __m256 on = _mm256_castsi256_ps(_mm256_cmpeq_epi32(spread, lane_bits));  // all-ones where the bit is set
      for (int r = 0; r < M; ++r)
        acc[r] = _mm256_add_ps(acc[r], _mm256_and_ps(on, _mm256_loadu_ps(xpad + r * n_cols_padded + 8 * g)));
    }
    for (int r = 0; r < M; ++r) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[r]);
      float total = 0.f;
      for (float v : lanes) total += v;
      set_sums[o * M + r] = total;
    }
  }
}

#else
#error "deltaguard's CPU kernel needs AVX2 or AVX-512 (the PyTorch path serves other CPUs)"
#endif

// y[rows] += scale * x[rows] . sign^T for M consecutive rows of one tenant and one sign pass.
template <int M>
void sign_pass(const float* x, int64_t ldx, int64_t n_in, const uint8_t* bits, int64_t n_out, int64_t n_groups,
               float scale, float* y, int64_t ldy) {
  const int64_t n_cols_padded = (n_groups * 8 + LANES - 1) / LANES * LANES;
  std::vector<float> xpad(M * n_cols_padded, 0.f);  // zeros under padding bits: they add nothing
  float row_sums[M];
  for (int r = 0; r < M; ++r) {
    float total = 0.f;
    for (int64_t j = 0; j < n_in; ++j) {
      xpad[r * n_cols_padded + j] = x[r * ldx + j];
      total += x[r * ldx + j];
    }
    row_sums[r] = total;
  }
  std::vector<float> set_sums(n_out * M);
  at::parallel_for(0, n_out, GRAIN, [&](int64_t o_begin, int64_t o_end) {
    masked_sums<M>(xpad.data(), n_cols_padded, bits, n_groups, o_begin, o_end, set_sums.data());
  });
  for (int r = 0; r < M; ++r)
    for (int64_t o = 0; o < n_out; ++o) y[r * ldy + o] += scale * (2.f * set_sums[o * M + r] - row_sums[r]);
}

using PassFn = void (*)(const float*, int64_t, int64_t, const uint8_t*, int64_t, int64_t, float, float*, int64_t);
constexpr PassFn PASSES[MAX_ROWS + 1] = {nullptr, sign_pass<1>, sign_pass<2>, sign_pass<3>, sign_pass<4>};

}  // namespace

// The packed signs of slot t are k_t = layout[t][1] matrices [out, G] stored back to back in the flat
// uint8 tensor bits[t], from byte layout[t][0] on (several layers of one tenant may share one buffer);
// scales is float32 [T, k_max], row t's first k_t used. Slots no row uses may have empty bits.
void multi_tenant_bitdelta_(torch::Tensor y, torch::Tensor x, const std::vector<torch::Tensor>& bits,
                            torch::Tensor layout, torch::Tensor scales, torch::Tensor row_slots) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "x [n, in] and y [n, out] expected");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && y.scalar_type() == torch::kFloat32, "x and y must be float32");
  TORCH_CHECK(x.device().is_cpu() && y.device().is_cpu(), "CPU tensors expected");
  TORCH_CHECK(x.stride(1) == 1 && y.stride(1) == 1, "x and y rows must be contiguous");
  TORCH_CHECK(row_slots.scalar_type() == torch::kInt64 && row_slots.numel() == x.size(0), "one int64 slot per row");
  const int64_t n_slots = static_cast<int64_t>(bits.size());
  TORCH_CHECK(layout.scalar_type() == torch::kInt64 && layout.is_contiguous() && layout.dim() == 2 &&
              layout.size(0) == n_slots && layout.size(1) == 2, "layout: contiguous int64 [slots, 2] (offset, k)");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.dim() == 2 && scales.is_contiguous() &&
              scales.size(0) == n_slots, "scales: contiguous float32 [slots, k]");
  const int64_t n = x.size(0), n_in = x.size(1), n_out = y.size(1), n_groups = (n_in + 7) / 8;
  const int64_t matrix_bytes = n_out * n_groups;
  const auto slots = row_slots.contiguous();
  const int64_t* slot_of = slots.data_ptr<int64_t>();
  const int64_t* layout_of = layout.data_ptr<int64_t>();
  for (int64_t start = 0; start < n;) {
    const int64_t slot = slot_of[start];
    int64_t stop = start + 1;
    while (stop < n && slot_of[stop] == slot) ++stop;
    if (slot >= 0) {
      TORCH_CHECK(slot < n_slots, "slot ", slot, " has no signs");
      const torch::Tensor& b = bits[slot];
      const int64_t offset = layout_of[2 * slot], k = layout_of[2 * slot + 1];
      TORCH_CHECK(b.scalar_type() == torch::kUInt8 && b.is_contiguous() && b.device().is_cpu(),
                  "bits of slot ", slot, ": contiguous uint8 CPU tensor expected");
      TORCH_CHECK(k >= 1 && k <= scales.size(1) && offset >= 0 && offset + k * matrix_bytes <= b.numel(),
                  "signs of slot ", slot, " do not match x and y (", k, " x [", n_out, ", ", n_groups, "] bytes from ",
                  offset, " in a buffer of ", b.numel(), ")");
      const uint8_t* slot_bits = b.data_ptr<uint8_t>() + offset;
      const float* slot_scales = scales.data_ptr<float>() + slot * scales.size(1);
      for (int64_t r = start; r < stop; r += MAX_ROWS) {
        const int m = static_cast<int>(std::min<int64_t>(MAX_ROWS, stop - r));
        for (int64_t i = 0; i < k; ++i)
          PASSES[m](x.data_ptr<float>() + r * x.stride(0), x.stride(0), n_in, slot_bits + i * matrix_bytes, n_out,
                    n_groups, slot_scales[i], y.data_ptr<float>() + r * y.stride(0), y.stride(0));
      }
    }
    start = stop;
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("multi_tenant_bitdelta_", &multi_tenant_bitdelta_,
        "y[r] += sum_i scales[t][i] * x[r] . sign[t][i]^T for t = row_slots[r] (packed 1-bit signs), in place",
        py::call_guard<py::gil_scoped_release>());
}
