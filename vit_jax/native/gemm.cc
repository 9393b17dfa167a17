// XLA FFI custom calls for the CPU (registered by vit_jax/native/__init__.py):
//
// vit_jax_transpose: a 2-D transpose of 2- or 4-byte elements that XLA cannot fold into the product that follows
// (vit_jax/models/mixed_precision.py: XLA:CPU runs a bf16 product fast only on operands laid out [m, k] x [k, n],
// and turns products of folded or barrier-separated transposes into float32 ones).
//
// vit_jax_sgemm: a float32 matrix product computed by a BLAS `cblas_sgemm` whose address Python hands over at load
// time (vit_jax/models/blas.py): numpy's bundled OpenBLAS, so nothing is linked at build time.
//
// C = op(A) op(B), row-major, op = transpose when `trans_a` / `trans_b` is 1. The rows of C are split over XLA's
// own intra-op threads, each running a single-threaded sgemm: BLAS threads of their own would compete with XLA's
// for the same cores.

#include <algorithm>
#include <cstdint>

#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using vit_jax::ParallelFor;

namespace {

enum CblasConstant : int { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };

// cblas_sgemm with 64-bit integers (OpenBLAS's INTERFACE64, as numpy ships it) or 32-bit ones (LP64).
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                         int64_t, float, float*, int64_t);
using Sgemm32 = void (*)(int, int, int, int32_t, int32_t, int32_t, float, const float*, int32_t, const float*,
                         int32_t, float, float*, int32_t);

using SetThreadsLocal = int (*)(int);

void* g_sgemm = nullptr;
int g_int64 = 1;
SetThreadsLocal g_set_threads_local = nullptr;  // OpenBLAS's per-thread thread count, if it has one

void CallSgemm(int op_a, int op_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
               int64_t ldb, float* c, int64_t ldc) {
  if (g_int64) {
    reinterpret_cast<Sgemm64>(g_sgemm)(kRowMajor, op_a, op_b, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  } else {
    reinterpret_cast<Sgemm32>(g_sgemm)(kRowMajor, op_a, op_b, static_cast<int32_t>(m), static_cast<int32_t>(n),
                                       static_cast<int32_t>(k), 1.0f, a, static_cast<int32_t>(lda), b,
                                       static_cast<int32_t>(ldb), 0.0f, c, static_cast<int32_t>(ldc));
  }
}

ffi::Error Sgemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                 ffi::ResultBuffer<ffi::F32> c, int32_t trans_a, int32_t trans_b) {
  if (g_sgemm == nullptr) {
    return ffi::Error::Internal("vit_jax_sgemm: no BLAS was set (vit_jax.models.blas loads one)");
  }
  auto ad = a.dimensions();
  auto bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2) {
    return ffi::Error::InvalidArgument("vit_jax_sgemm: expected 2-D operands");
  }
  const int64_t m = trans_a ? ad[1] : ad[0];
  const int64_t k = trans_a ? ad[0] : ad[1];
  const int64_t k_b = trans_b ? bd[1] : bd[0];
  const int64_t n = trans_b ? bd[0] : bd[1];
  if (k != k_b) {
    return ffi::Error::InvalidArgument("vit_jax_sgemm: the contracted dimensions differ");
  }
  const int op_a = trans_a ? kTrans : kNoTrans;
  const int op_b = trans_b ? kTrans : kNoTrans;
  const float* a_data = a.typed_data();
  const float* b_data = b.typed_data();
  float* c_data = c->typed_data();
  const int64_t lda = ad[1], ldb = bd[1];
  // rows of C per chunk: whole multiples of 16, at most one chunk per thread
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), m / 16));
  const int64_t rows = ((m + threads - 1) / threads + 15) / 16 * 16;
  const int64_t chunks = (m + rows - 1) / rows;
  ParallelFor(pool, chunks, [=](int64_t i) {
    if (g_set_threads_local != nullptr) g_set_threads_local(1);
    const int64_t first = i * rows, count = std::min(rows, m - first);
    const float* a_rows = trans_a ? a_data + first : a_data + first * lda;  // op(A)'s rows: A's columns if transposed
    CallSgemm(op_a, op_b, count, n, k, a_rows, lda, b_data, ldb, c_data + first * n, n);
  });
  return ffi::Error::Success();
}

template <typename T>
void TransposeRows(const T* in, T* out, int64_t rows, int64_t cols, int64_t first_col, int64_t last_col) {
  constexpr int64_t kTile = 16;  // out[j, i] = in[i, j], tile by tile for both caches
  for (int64_t j0 = first_col; j0 < last_col; j0 += kTile) {
    const int64_t j1 = std::min(j0 + kTile, last_col);
    for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
      const int64_t i1 = std::min(i0 + kTile, rows);
      if (i1 - i0 == kTile && j1 - j0 == kTile) {  // a full tile: fixed trip counts, which the compiler unrolls
        T tile[kTile][kTile];
        for (int64_t i = 0; i < kTile; ++i) {
          for (int64_t j = 0; j < kTile; ++j) tile[j][i] = in[(i0 + i) * cols + j0 + j];
        }
        for (int64_t j = 0; j < kTile; ++j) {
          for (int64_t i = 0; i < kTile; ++i) out[(j0 + j) * rows + i0 + i] = tile[j][i];
        }
        continue;
      }
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) out[j * rows + i] = in[i * cols + j];
      }
    }
  }
}

ffi::Error Transpose(ffi::ThreadPool pool, ffi::AnyBuffer in, ffi::Result<ffi::AnyBuffer> out) {
  auto dims = in.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("vit_jax_transpose: expected a 2-D operand");
  const int64_t rows = dims[0], cols = dims[1];
  const size_t bytes = ffi::ByteWidth(in.element_type());
  if (bytes != 2 && bytes != 4) {
    return ffi::Error::InvalidArgument("vit_jax_transpose: expected 2- or 4-byte elements");
  }
  // output rows (input columns) split over the threads, in multiples of the tile
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), cols / 32));
  const int64_t per = ((cols + threads - 1) / threads + 31) / 32 * 32;
  const int64_t chunks = (cols + per - 1) / per;
  const void* src = in.untyped_data();
  void* dst = out->untyped_data();
  ParallelFor(pool, chunks, [=](int64_t i) {
    const int64_t first = i * per, last = std::min(cols, first + per);
    if (bytes == 2) {
      TransposeRows(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), rows, cols, first, last);
    } else {
      TransposeRows(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), rows, cols, first, last);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxTranspose, Transpose,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

extern "C" void vit_jax_set_sgemm(void* sgemm, int int64, void* set_threads_local) {
  g_sgemm = sgemm;
  g_int64 = int64;
  g_set_threads_local = reinterpret_cast<SetThreadsLocal>(set_threads_local);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxSgemm, Sgemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("trans_a")
                                  .Attr<int32_t>("trans_b"));
