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
// and "sum of x over set bits" is computed without ever unpacking a sign, two ways:
//  * look-up (AVX-512, 16 output rows at a time): per 4 input columns, a table of the 16 subset sums
//    of x; one permute of that 16-float table by 16 rows' nibbles adds 16 rows x 4 weights;
//  * masked adds (AVX2, and the last n_out % 16 rows): 16 (AVX-512) or 8 (AVX2) bits of a packed row
//    are the lane mask of one add over as many columns of x.
// Rows of the batch are processed in runs of one tenant, up to MAX_ROWS at a time so that each packed
// byte, loaded once, serves every row of the run.
//
// merged_linear serves a tenant's prompt (many rows): it builds that tenant's weight tile by tile
// (base + scale * sign, one SIMD blend per 16 weights) and runs one GEMM per tile.
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
constexpr int64_t GRAIN = 64;      // output rows per parallel task (a multiple of 16)

// One masked add has a latency of about 4 cycles and two can issue per cycle, so a loop that keeps one
// accumulator per batch row (decoding: 1-2 rows per tenant) waits on itself most of the time. The sums
// are therefore register-blocked over output rows too: OB output rows x M batch rows independent
// accumulators, and each load of x serves OB output rows (measured 3-4x on the bare kernel at M = 2).
template <int M>
constexpr int out_block() { return M == 1 ? 8 : 4; }

#if defined(__AVX512F__)
constexpr int LANES = 16;

// set_sums[o * M + r] = sum of x[r][j] over the set bits j of output rows o in [o, o + OB).
template <int M, int OB>
inline void masked_block(const float* xpad, int64_t n_cols_padded, const uint8_t* bits, int64_t n_groups,
                         int64_t o, float* set_sums) {
  const int64_t n_pairs = n_groups / 2;
  __m512 acc[OB][M];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < M; ++r) acc[b][r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < n_pairs; ++c) {
    __m512 xv[M];
    for (int r = 0; r < M; ++r) xv[r] = _mm512_loadu_ps(xpad + r * n_cols_padded + 16 * c);
    for (int b = 0; b < OB; ++b) {
      uint16_t mask;
      std::memcpy(&mask, bits + (o + b) * n_groups + 2 * c, 2);  // byte 2c -> lanes 0..7, 2c+1 -> lanes 8..15
      for (int r = 0; r < M; ++r) acc[b][r] = _mm512_mask_add_ps(acc[b][r], mask, acc[b][r], xv[r]);
    }
  }
  if (n_groups % 2) {  // a last lone byte: lanes 8..15 stay off
    for (int b = 0; b < OB; ++b) {
      const __mmask16 mask = bits[(o + b) * n_groups + n_groups - 1];
      for (int r = 0; r < M; ++r)
        acc[b][r] = _mm512_mask_add_ps(acc[b][r], mask, acc[b][r], _mm512_loadu_ps(xpad + r * n_cols_padded + 16 * n_pairs));
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < M; ++r) set_sums[(o + b) * M + r] = _mm512_reduce_add_ps(acc[b][r]);
}

// Sums by look-up for 16 output rows at once. tables[(r * n_quads + q) * 16 + v] holds the sum of
// x[r][4q + j] over the set bits j of the nibble v, so one permute of a 16-float table by the 16
// rows' nibbles of quad q replaces 16 rows x 4 columns of masked adds: 64 weights of a row per
// permute instead of 16 per masked add (measured about 2x on the bare kernel at 1-4 rows). The
// packed bytes of the 16 rows are fetched 4 at a time with one gather.
template <int M>
inline void lut_block(const float* tables, int64_t n_quads, const uint8_t* bits, int64_t n_groups, int64_t o,
                      float* set_sums) {
  const __m512i row_offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                 _mm512_set1_epi32(static_cast<int>(n_groups)));
  const __m512i nibble = _mm512_set1_epi32(0xF);
  const uint8_t* block = bits + o * n_groups;
  __m512 acc[M];
  for (int r = 0; r < M; ++r) acc[r] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 4 <= n_groups; g += 4) {  // bytes g..g+3 of each row: quads 2g..2g+7
    const __m512i words = _mm512_i32gather_epi32(row_offsets, block + g, 1);
    for (int q = 0; q < 8; ++q) {
      const __m512i index = _mm512_and_si512(_mm512_srli_epi32(words, 4 * q), nibble);
      for (int r = 0; r < M; ++r)
        acc[r] = _mm512_add_ps(acc[r], _mm512_permutexvar_ps(index, _mm512_loadu_ps(tables + (r * n_quads + 2 * g + q) * 16)));
    }
  }
  for (; g < n_groups; ++g) {  // the last 1-3 bytes of each row, one byte at a time (a gather of 4 could read past the end)
    alignas(64) int32_t bytes[16];
    for (int b = 0; b < 16; ++b) bytes[b] = block[b * n_groups + g];
    const __m512i words = _mm512_load_si512(bytes);
    for (int q = 0; q < 2; ++q) {
      const __m512i index = _mm512_and_si512(_mm512_srli_epi32(words, 4 * q), nibble);
      for (int r = 0; r < M; ++r)
        acc[r] = _mm512_add_ps(acc[r], _mm512_permutexvar_ps(index, _mm512_loadu_ps(tables + (r * n_quads + 2 * g + q) * 16)));
    }
  }
  for (int r = 0; r < M; ++r) {
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, acc[r]);
    for (int b = 0; b < 16; ++b) set_sums[(o + b) * M + r] = lanes[b];
  }
}

// The look-up tables of M rows of padded x: for each 4 columns, the 16 subset sums as one vector (lane v
// adds column j where bit j of v is set: four masked adds of the broadcast columns). Columns past the
// input are zeros, so padding bits add nothing.
inline void build_tables(const float* xpad, int64_t n_cols_padded, int m, int64_t n_quads, float* tables) {
  for (int r = 0; r < m; ++r)
    for (int64_t q = 0; q < n_quads; ++q) {
      const float* x = xpad + r * n_cols_padded + 4 * q;
      __m512 t = _mm512_setzero_ps();
      t = _mm512_mask_add_ps(t, 0xAAAA, t, _mm512_set1_ps(x[0]));
      t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(x[1]));
      t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(x[2]));
      t = _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(x[3]));
      _mm512_storeu_ps(tables + (r * n_quads + q) * 16, t);
    }
}
constexpr bool HAS_LUT = true;

#elif defined(__AVX2__)
constexpr int LANES = 8;

template <int M, int OB>
inline void masked_block(const float* xpad, int64_t n_cols_padded, const uint8_t* bits, int64_t n_groups,
                         int64_t o, float* set_sums) {
  const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  __m256 acc[OB][M];
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < M; ++r) acc[b][r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < n_groups; ++g) {
    __m256 xv[M];
    for (int r = 0; r < M; ++r) xv[r] = _mm256_loadu_ps(xpad + r * n_cols_padded + 8 * g);
    for (int b = 0; b < OB; ++b) {
      const __m256i spread = _mm256_and_si256(_mm256_set1_epi32(bits[(o + b) * n_groups + g]), lane_bits);
      const __m256 on = _mm256_castsi256_ps(_mm256_cmpeq_epi32(spread, lane_bits));  // all-ones where the bit is set
      for (int r = 0; r < M; ++r) acc[b][r] = _mm256_add_ps(acc[b][r], _mm256_and_ps(on, xv[r]));
    }
  }
  for (int b = 0; b < OB; ++b)
    for (int r = 0; r < M; ++r) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[b][r]);
      float total = 0.f;
      for (float v : lanes) total += v;
      set_sums[(o + b) * M + r] = total;
    }
}

constexpr bool HAS_LUT = false;
inline void build_tables(const float*, int64_t, int, int64_t, float*) {}
template <int M>
inline void lut_block(const float*, int64_t, const uint8_t*, int64_t, int64_t, float*) {}

#else
#error "deltaguard's CPU kernel needs AVX2 or AVX-512 (the PyTorch path serves other CPUs)"
#endif

// Output rows [o_begin, o_end): by look-up 16 at a time where AVX-512 has it, then masked adds in blocks of
// out_block<M>(), the remainder one row at a time.
template <int M>
void masked_sums(const float* xpad, int64_t n_cols_padded, const float* tables, int64_t n_quads,
                 const uint8_t* bits, int64_t n_groups, int64_t o_begin, int64_t o_end, float* set_sums) {
  constexpr int OB = out_block<M>();
  int64_t o = o_begin;
  if (HAS_LUT)
    for (; o + 16 <= o_end; o += 16) lut_block<M>(tables, n_quads, bits, n_groups, o, set_sums);
  for (; o + OB <= o_end; o += OB) masked_block<M, OB>(xpad, n_cols_padded, bits, n_groups, o, set_sums);
  for (; o < o_end; ++o) masked_block<M, 1>(xpad, n_cols_padded, bits, n_groups, o, set_sums);
}

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
  const int64_t n_quads = n_groups * 2;
  std::vector<float> tables(HAS_LUT ? M * n_quads * 16 : 0);
  build_tables(xpad.data(), n_cols_padded, M, n_quads, tables.data());
  std::vector<float> set_sums(n_out * M);
  // Parallel over whole blocks of 16 output rows: which path sums a row (look-up or masked adds, whose
  // float results differ in the last bits) then depends on the row alone, never on the thread count.
  const int64_t n_blocks = (n_out + 15) / 16;
  at::parallel_for(0, n_blocks, GRAIN / 16, [&](int64_t b_begin, int64_t b_end) {
    masked_sums<M>(xpad.data(), n_cols_padded, tables.data(), n_quads, bits, n_groups, 16 * b_begin,
                   std::min(16 * b_end, n_out), set_sums.data());
  });
  for (int r = 0; r < M; ++r)
    for (int64_t o = 0; o < n_out; ++o) y[r * ldy + o] += scale * (2.f * set_sums[o * M + r] - row_sums[r]);
}

// out[o, :] = weight[o, :] + sum_i scales[i] * sign_i[o, :] for rows [o_begin, o_end): a tenant's own
// weights, built one tile at a time for its prompt (many rows: one GEMM on the merged tile beats the
// masked sums). Adding +-s is exact, so the tile equals base + scale * unpacked signs bit for bit.
void merge_rows(const float* weight, int64_t ldw, const uint8_t* bits, int64_t k, int64_t matrix_bytes,
                int64_t n_groups, const float* scales, int64_t n_in, int64_t o_begin, int64_t o_end, float* out) {
  for (int64_t o = o_begin; o < o_end; ++o) {
    float* row = out + (o - o_begin) * n_in;
    for (int64_t i = 0; i < k; ++i) {
      const float* from = i == 0 ? weight + o * ldw : row;  // the first pass copies the base row as it adds
      const uint8_t* packed = bits + i * matrix_bytes + o * n_groups;
      const float s = scales[i];
      int64_t j = 0;
#if defined(__AVX512F__)
      const __m512 plus = _mm512_set1_ps(s), minus = _mm512_set1_ps(-s);
      for (; j + 16 <= n_in; j += 16) {
        uint16_t mask;
        std::memcpy(&mask, packed + j / 8, 2);
        _mm512_storeu_ps(row + j, _mm512_add_ps(_mm512_loadu_ps(from + j), _mm512_mask_blend_ps(mask, minus, plus)));
      }
#else
      const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256 plus = _mm256_set1_ps(s), minus = _mm256_set1_ps(-s);
      for (; j + 8 <= n_in; j += 8) {
        const __m256i spread = _mm256_and_si256(_mm256_set1_epi32(packed[j / 8]), lane_bits);
        const __m256 on = _mm256_castsi256_ps(_mm256_cmpeq_epi32(spread, lane_bits));
        _mm256_storeu_ps(row + j, _mm256_add_ps(_mm256_loadu_ps(from + j), _mm256_blendv_ps(minus, plus, on)));
      }
#endif
      for (; j < n_in; ++j) row[j] = from[j] + (((packed[j >> 3] >> (j & 7)) & 1) ? s : -s);
    }
    if (k == 0) std::memcpy(row, weight + o * ldw, n_in * sizeof(float));
  }
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

// x . (W + sum_i scales[i] * S_i)^T + bias for the many rows of ONE tenant (a prompt): tile_rows output
// rows of the tenant's weight are built (merge_rows) and multiplied at once, so only one tile of its
// weights exists at a time. bits: uint8 [k, out, G]; scales: float32 [k]; x, weight float32.
torch::Tensor merged_linear(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias,
                            torch::Tensor bits, torch::Tensor scales, int64_t tile_rows) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1), "x [m, in] and weight [out, in]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32, "float32 x and weight");
  TORCH_CHECK(weight.stride(1) == 1 && bits.is_contiguous() && bits.scalar_type() == torch::kUInt8 && bits.dim() == 3,
              "contiguous weight rows and uint8 bits [k, out, G]");
  const int64_t n_out = weight.size(0), n_in = weight.size(1), k = bits.size(0), n_groups = bits.size(2);
  TORCH_CHECK(bits.size(1) == n_out && n_groups == (n_in + 7) / 8, "bits do not match the weight");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat32 && scales.is_contiguous() && scales.numel() == k, "k scales");
  const auto xc = x.contiguous();
  auto out = torch::empty({x.size(0), n_out}, x.options());
  // The tile lives in a per-thread buffer kept between calls: a fresh tile of a few hundred KB or more
  // comes from mmap, and its page faults cost as much as building it (measured: a third of the time of
  // a 576 x 1536 layer).
  thread_local std::vector<float> tile_buffer;
  const int64_t tile_size = std::min(tile_rows, n_out) * n_in;
  if (static_cast<int64_t>(tile_buffer.size()) < tile_size) tile_buffer.resize(tile_size);
  auto tile = torch::from_blob(tile_buffer.data(), {std::min(tile_rows, n_out), n_in}, weight.options());
  const uint8_t* b = bits.data_ptr<uint8_t>();
  const float* w = weight.data_ptr<float>();
  const float* sc = scales.data_ptr<float>();
  for (int64_t start = 0; start < n_out; start += tile_rows) {
    const int64_t stop = std::min(start + tile_rows, n_out);
    float* t = tile.data_ptr<float>();
    at::parallel_for(start, stop, 16, [&](int64_t o_begin, int64_t o_end) {
      merge_rows(w, weight.stride(0), b, k, n_out * n_groups, n_groups, sc, n_in, o_begin, o_end,
                 t + (o_begin - start) * n_in);
    });
    auto block = out.narrow(1, start, stop - start);
    at::mm_out(block, xc, tile.narrow(0, 0, stop - start).t());
  }
  if (bias.has_value() && bias->defined()) out.add_(*bias);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("multi_tenant_bitdelta_", &multi_tenant_bitdelta_,
        "y[r] += sum_i scales[t][i] * x[r] . sign[t][i]^T for t = row_slots[r] (packed 1-bit signs), in place",
        py::call_guard<py::gil_scoped_release>());
  m.def("merged_linear", &merged_linear,
        "x . (W + sum_i scales[i] * sign_i)^T + bias for one tenant's many rows, built a tile of W at a time",
        py::call_guard<py::gil_scoped_release>());
}
