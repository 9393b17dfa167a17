// vit_jax_matmul: C[b1, b2, m, n] = activation(scale sum_k A[b1, b2, m, k] B[b1, b2, k, n] + bias[n]) + R[b1, b2, m, n]
// by oneDNN's matmul primitive (registered and driven by vit_jax/native/onednn.py): the scale, the bias, the
// activation and the residual R (C's shape and strides; an empty buffer: none, as for the bias) applied to the
// float32 accumulator before C is written (a dense layer's forward pass and its residual add in one pass);
// vit_jax_softmax: a softmax over the last axis by oneDNN's softmax primitive (float32 or bf16 in and out), one pass
// over each row; vit_jax_layer_norm: LayerNorm over the last axis with a float32 scale and shift by oneDNN's layer
// normalization primitive (inference), statistics in float32; vit_jax_attention: softmax(scale Q K^T) V, below.
//
// Each operand is addressed through four strides (in elements), so an einsum's operands are read where they lie:
// transposed weight-gradient operands and attention's (batch, tokens, heads, head_dim) layouts need no copies.
// oneDNN is not linked: `vit_jax_load_onednn` opens the shared library the `onednn-cpu-gomp` wheel installs and
// resolves the few functions used here, so the extension builds without it and vit_jax falls back to XLA's
// products where it is missing. oneDNN runs single-threaded inside each chunk of XLA's own thread pool (batch
// entries, or rows when there is no batch, or the contraction for weight and bias gradients), as the BLAS call next
// door does. Every chunk is a dense slice of its operands: oneDNN's fast (brgemm) kernels take no other.

#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

#include "oneapi/dnnl/dnnl.h"
#include "parallel_for.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using vit_jax::ParallelFor;

namespace {

struct OneDnn {
  decltype(&dnnl_engine_create) engine_create;
  decltype(&dnnl_stream_create) stream_create;
  decltype(&dnnl_stream_wait) stream_wait;
  decltype(&dnnl_memory_desc_create_with_strides) memory_desc_create_with_strides;
  decltype(&dnnl_memory_desc_get_size) memory_desc_get_size;
  decltype(&dnnl_memory_create) memory_create;
  decltype(&dnnl_memory_destroy) memory_destroy;
  decltype(&dnnl_primitive_attr_create) attr_create;
  decltype(&dnnl_primitive_attr_destroy) attr_destroy;
  decltype(&dnnl_primitive_attr_set_scratchpad_mode) attr_set_scratchpad_mode;
  decltype(&dnnl_primitive_attr_set_post_ops) attr_set_post_ops;
  decltype(&dnnl_post_ops_create) post_ops_create;
  decltype(&dnnl_post_ops_append_eltwise) post_ops_append_eltwise;
  decltype(&dnnl_post_ops_append_binary) post_ops_append_binary;
  decltype(&dnnl_post_ops_destroy) post_ops_destroy;
  decltype(&dnnl_matmul_primitive_desc_create) matmul_primitive_desc_create;
  decltype(&dnnl_softmax_forward_primitive_desc_create) softmax_primitive_desc_create;
  decltype(&dnnl_layer_normalization_forward_primitive_desc_create) layer_norm_primitive_desc_create;
  decltype(&dnnl_primitive_desc_query_md) primitive_desc_query_md;
  decltype(&dnnl_primitive_desc_query) primitive_desc_query;
  decltype(&dnnl_primitive_desc_destroy) primitive_desc_destroy;
  decltype(&dnnl_memory_desc_destroy) memory_desc_destroy;
  decltype(&dnnl_primitive_create) primitive_create;
  decltype(&dnnl_primitive_execute) primitive_execute;
  void (*omp_set_num_threads)(int);
};

OneDnn g_dnnl;
dnnl_engine_t g_engine = nullptr;

// One compiled primitive (a product, a softmax or a LayerNorm): its memory objects' descriptors (src a, weights b or
// the scale, dst c, bias or the shift), and the execution arguments that pass b, the bias and the residual (its
// post-op's).
struct Product {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_desc_t a = nullptr, b = nullptr, c = nullptr, bias = nullptr, residual = nullptr;
  int b_arg = DNNL_ARG_WEIGHTS, bias_arg = DNNL_ARG_BIAS, residual_arg = 0;
  const_dnnl_memory_desc_t scratchpad = nullptr;
  size_t scratchpad_bytes = 0;
};

std::mutex g_products_mutex;
std::map<std::vector<int64_t>, Product>* g_products = new std::map<std::vector<int64_t>, Product>();

bool Ok(dnnl_status_t status) { return status == dnnl_success; }

constexpr int64_t kChunksPerThread = 4;
constexpr int64_t kRowUnit = 16;  // rows (or contraction) per chunk: a multiple of this
constexpr int64_t kMinContractionChunk = 256;  // a chunk of the contraction: at least this long
constexpr int64_t kContractionChunks = 8;  // at most, and their float32 partials take at most kPartialBytes
constexpr int64_t kPartialBytes = 32 << 20;  // larger results (ViT-B's MLP weights) keep row chunks: see below
// A primitive's key: its kind, then for a product (kMatmulKeySize values) b1, b2, m, k, n, A strides (4), B strides
// (4), C strides (4), types (3), bias type, activation, the scale's float bits, residual type; for a softmax rows,
// n, types (2); for a LayerNorm rows, n, types (2), epsilon's float bits.
enum Kind : int64_t { kMatmul = 0, kSoftmax = 1, kLayerNorm = 2 };
constexpr size_t kMatmulKeySize = 25, kSoftmaxKeySize = 5, kLayerNormKeySize = 6;
constexpr int64_t kScratchFloats = 64 * 1024;  // a softmax chunk's float32 weights before rounding: 256 KiB
constexpr int64_t kAttentionFloats = 128 * 1024;  // an attention block's float32 logits, all heads: 512 KiB

// Query rows per attention block: as many as keep its logits within kAttentionFloats (a multiple of kRowUnit unless
// all n), at least kRowUnit.
int64_t AttentionRows(int64_t n, int64_t heads, int64_t m) {
  const int64_t fit = kAttentionFloats / std::max<int64_t>(1, heads * m);
  return fit >= n ? n : std::max(kRowUnit, fit / kRowUnit * kRowUnit);
}

// vit_jax's activation codes (vit_jax/native/onednn.py's ACTIVATIONS) as oneDNN's eltwise post-ops.
bool AppendActivation(dnnl_post_ops_t post_ops, int64_t activation) {
  switch (activation) {
    case 1: return Ok(g_dnnl.post_ops_append_eltwise(post_ops, dnnl_eltwise_gelu_erf, 0.f, 0.f));
    case 2: return Ok(g_dnnl.post_ops_append_eltwise(post_ops, dnnl_eltwise_gelu_tanh, 0.f, 0.f));
    case 3: return Ok(g_dnnl.post_ops_append_eltwise(post_ops, dnnl_eltwise_swish, 1.702f, 0.f));  // quick GELU
    case 4: return Ok(g_dnnl.post_ops_append_eltwise(post_ops, dnnl_eltwise_swish, 1.f, 0.f));  // SiLU
    default: return false;
  }
}

// The primitive attributes: a user scratchpad; the scale (1: none), the activation (0: none) and the residual
// added (`product.residual`, nullptr: none) as post-ops, in that order.
bool SetAttributes(dnnl_primitive_attr_t attr, float scale, int64_t activation, Product& product) {
  if (!Ok(g_dnnl.attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user))) return false;
  if (activation == 0 && scale == 1.f && product.residual == nullptr) return true;
  dnnl_post_ops_t post_ops = nullptr;
  if (!Ok(g_dnnl.post_ops_create(&post_ops))) return false;
  const int before_residual = (scale != 1.f) + (activation != 0);
  product.residual_arg = DNNL_ARG_ATTR_MULTIPLE_POST_OP(before_residual) | DNNL_ARG_SRC_1;
  const bool ok = (scale == 1.f || Ok(g_dnnl.post_ops_append_eltwise(post_ops, dnnl_eltwise_linear, scale, 0.f))) &&
                  (activation == 0 || AppendActivation(post_ops, activation)) &&
                  (product.residual == nullptr ||
                   Ok(g_dnnl.post_ops_append_binary(post_ops, dnnl_binary_add, product.residual))) &&
                  Ok(g_dnnl.attr_set_post_ops(attr, post_ops));
  g_dnnl.post_ops_destroy(post_ops);
  return ok;
}

// `extent` cut into at most `wanted` chunks (at least one) of a multiple of `unit`: the chunk's length, the chunks.
struct Cut {
  int64_t per, chunks;
};

Cut CutInto(int64_t extent, int64_t wanted, int64_t unit = 1) {
  wanted = std::max<int64_t>(1, std::min(wanted, extent / unit));
  const int64_t per = ((extent + wanted - 1) / wanted + unit - 1) / unit * unit;
  return {per, (extent + per - 1) / per};
}

// Several chunks per thread of XLA's pool: a thread that starts late or is preempted leaves its share to the others.
int64_t ChunksFor(ffi::ThreadPool& pool) { return kChunksPerThread * std::max<int64_t>(1, pool.num_threads()); }

int64_t FloatBits(float value) {
  int32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float BitsFloat(int64_t bits) {
  const int32_t narrow = static_cast<int32_t>(bits);
  float value;
  std::memcpy(&value, &narrow, sizeof value);
  return value;
}

// A softmax over the last axis of contiguous (rows, n) data, `key` = {kSoftmax, rows, n, src type, dst type}.
dnnl_primitive_desc_t DescribeSoftmax(const std::vector<int64_t>& key, Product& product) {
  const int64_t* d = key.data() + 1;
  dnnl_dims_t dims = {d[0], d[1]}, strides = {d[1], 1};
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_primitive_desc_t desc = nullptr;
  const bool ok = Ok(g_dnnl.memory_desc_create_with_strides(&product.a, 2, dims, dnnl_data_type_t(d[2]), strides)) &&
                  Ok(g_dnnl.memory_desc_create_with_strides(&product.c, 2, dims, dnnl_data_type_t(d[3]), strides)) &&
                  Ok(g_dnnl.attr_create(&attr)) && SetAttributes(attr, 1.f, 0, product) &&
                  Ok(g_dnnl.softmax_primitive_desc_create(&desc, g_engine, dnnl_forward_inference,
                                                          dnnl_softmax_accurate, product.a, product.c, 1, attr));
  if (attr != nullptr) g_dnnl.attr_destroy(attr);
  return ok ? desc : nullptr;
}

// LayerNorm over the last axis of contiguous (rows, n) data with a float32 scale and shift of n, `key` = {kLayerNorm,
// rows, n, src type, dst type, epsilon's float bits}.
dnnl_primitive_desc_t DescribeLayerNorm(const std::vector<int64_t>& key, Product& product) {
  const int64_t* d = key.data() + 1;
  dnnl_dims_t dims = {d[0], d[1]}, strides = {d[1], 1}, features = {d[1]}, unit = {1};
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_primitive_desc_t desc = nullptr;
  product.b_arg = DNNL_ARG_SCALE;
  product.bias_arg = DNNL_ARG_SHIFT;
  const bool ok = Ok(g_dnnl.memory_desc_create_with_strides(&product.a, 2, dims, dnnl_data_type_t(d[2]), strides)) &&
                  Ok(g_dnnl.memory_desc_create_with_strides(&product.c, 2, dims, dnnl_data_type_t(d[3]), strides)) &&
                  Ok(g_dnnl.memory_desc_create_with_strides(&product.b, 1, features, dnnl_f32, unit)) &&
                  Ok(g_dnnl.memory_desc_create_with_strides(&product.bias, 1, features, dnnl_f32, unit)) &&
                  Ok(g_dnnl.attr_create(&attr)) && SetAttributes(attr, 1.f, 0, product) &&
                  Ok(g_dnnl.layer_norm_primitive_desc_create(&desc, g_engine, dnnl_forward_inference, product.a,
                                                             product.c, nullptr, BitsFloat(d[4]),
                                                             dnnl_use_scale | dnnl_use_shift, attr));
  if (attr != nullptr) g_dnnl.attr_destroy(attr);
  return ok ? desc : nullptr;
}

// A dimension of size 1 gets the stride a dense layout would give it: oneDNN's brgemm kernels take dense layouts
// only and judge such a dimension by its stride too (a chunk cut out of a larger product keeps that product's
// strides there, and an einsum's missing batch dimensions come with stride 0), leaving them to slower kernels.
void DenseWhereUnit(const dnnl_dims_t dims, dnnl_dims_t strides) {
  int64_t dense = 1;
  for (int axis = 3; axis >= 0; --axis) {
    if (dims[axis] == 1) strides[axis] = dense;
    dense *= dims[axis];
  }
}

// The primitive's descriptor for `key`, made on the calling thread with one OpenMP thread (nullptr: oneDNN has none).
dnnl_primitive_desc_t Describe(const std::vector<int64_t>& key, Product& product) {
  g_dnnl.omp_set_num_threads(1);  // oneDNN sizes its blocking by the threads it will have
  if (key.size() == kSoftmaxKeySize && key[0] == kSoftmax) return DescribeSoftmax(key, product);
  if (key.size() == kLayerNormKeySize && key[0] == kLayerNorm) return DescribeLayerNorm(key, product);
  if (key.size() != kMatmulKeySize || key[0] != kMatmul) return nullptr;
  const int64_t* d = key.data() + 1;  // see kMatmulKeySize
  dnnl_dims_t a_dims = {d[0], d[1], d[2], d[3]}, b_dims = {d[0], d[1], d[3], d[4]}, c_dims = {d[0], d[1], d[2], d[4]};
  dnnl_dims_t a_strides = {d[5], d[6], d[7], d[8]}, b_strides = {d[9], d[10], d[11], d[12]},
              c_strides = {d[13], d[14], d[15], d[16]};
  DenseWhereUnit(a_dims, a_strides);
  DenseWhereUnit(b_dims, b_strides);
  DenseWhereUnit(c_dims, c_strides);
  dnnl_dims_t bias_dims = {1, 1, 1, d[4]}, bias_strides = {d[4], d[4], d[4], 1};
  const bool biased = d[20] != dnnl_data_type_undef, residual = d[23] != dnnl_data_type_undef;
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_primitive_desc_t desc = nullptr;
  bool ok = Ok(g_dnnl.memory_desc_create_with_strides(&product.a, 4, a_dims, dnnl_data_type_t(d[17]), a_strides)) &&
            Ok(g_dnnl.memory_desc_create_with_strides(&product.b, 4, b_dims, dnnl_data_type_t(d[18]), b_strides)) &&
            Ok(g_dnnl.memory_desc_create_with_strides(&product.c, 4, c_dims, dnnl_data_type_t(d[19]), c_strides)) &&
            (!biased || Ok(g_dnnl.memory_desc_create_with_strides(&product.bias, 4, bias_dims,
                                                                   dnnl_data_type_t(d[20]), bias_strides))) &&
            (!residual || Ok(g_dnnl.memory_desc_create_with_strides(&product.residual, 4, c_dims,
                                                                     dnnl_data_type_t(d[23]), c_strides))) &&
            Ok(g_dnnl.attr_create(&attr)) && SetAttributes(attr, BitsFloat(d[22]), d[21], product) &&
            Ok(g_dnnl.matmul_primitive_desc_create(&desc, g_engine, product.a, product.b, product.bias, product.c,
                                                   attr));
  if (attr != nullptr) g_dnnl.attr_destroy(attr);
  return ok ? desc : nullptr;
}

// The primitive of `key` (a chunk's), created on first use by the calling (single-threaded) thread.
const Product* GetProduct(const std::vector<int64_t>& key) {
  std::lock_guard<std::mutex> lock(g_products_mutex);
  auto found = g_products->find(key);
  if (found != g_products->end()) return &found->second;
  Product product;
  dnnl_primitive_desc_t desc = Describe(key, product);
  if (desc == nullptr || !Ok(g_dnnl.primitive_create(&product.primitive, desc))) return nullptr;
  product.scratchpad = g_dnnl.primitive_desc_query_md(desc, dnnl_query_scratchpad_md, 0);  // desc kept: owns it
  product.scratchpad_bytes = product.scratchpad == nullptr ? 0 : g_dnnl.memory_desc_get_size(product.scratchpad);
  return &g_products->emplace(key, product).first->second;
}

// Runs one chunk on the calling thread: its own stream and scratchpad, memory objects around XLA's buffers
// (`b`, `bias`, `residual` nullptr where the primitive has none).
bool Execute(const std::vector<int64_t>& key, const void* a, const void* b, const void* bias, void* c,
             const void* residual = nullptr) {
  g_dnnl.omp_set_num_threads(1);  // the chunk runs on this thread alone
  const Product* product = GetProduct(key);
  if (product == nullptr) return false;
  thread_local dnnl_stream_t stream = nullptr;
  thread_local std::vector<char> scratch;
  if (stream == nullptr && !Ok(g_dnnl.stream_create(&stream, g_engine, dnnl_stream_default_flags))) return false;
  if (scratch.size() < product->scratchpad_bytes) scratch.resize(product->scratchpad_bytes);
  dnnl_memory_t memory[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  dnnl_exec_arg_t exec[6];
  int args = 0;
  auto add = [&](int arg, const_dnnl_memory_desc_t desc, const void* data) {
    exec[args] = {arg, nullptr};
    const bool made = Ok(g_dnnl.memory_create(&memory[args], desc, g_engine, const_cast<void*>(data)));
    exec[args].memory = memory[args];
    ++args;
    return made;
  };
  bool ok = add(DNNL_ARG_SRC, product->a, a) && add(DNNL_ARG_DST, product->c, c);
  if (ok && product->b != nullptr) ok = add(product->b_arg, product->b, b);
  if (ok && product->bias != nullptr) ok = add(product->bias_arg, product->bias, bias);
  if (ok && product->residual != nullptr) ok = add(product->residual_arg, product->residual, residual);
  if (ok && product->scratchpad_bytes > 0) ok = add(DNNL_ARG_SCRATCHPAD, product->scratchpad, scratch.data());
  if (ok) {
    ok = Ok(g_dnnl.primitive_execute(product->primitive, stream, args, exec)) && Ok(g_dnnl.stream_wait(stream));
  }
  for (dnnl_memory_t m : memory) {
    if (m != nullptr) g_dnnl.memory_destroy(m);
  }
  return ok;
}

int64_t DnnlType(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::BF16: return dnnl_bf16;
    case ffi::DataType::F32: return dnnl_f32;
    default: return dnnl_data_type_undef;
  }
}

// float32 -> bf16, rounded to nearest even (NaN stays NaN); on x86-64 compiled for the widest vectors the CPU has.
#if defined(__x86_64__) && defined(__GLIBC__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void RoundToBf16(const float* from, uint16_t* to, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &from[i], sizeof bits);
    const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
    to[i] = nan ? static_cast<uint16_t>((bits >> 16) | 0x40u)
                : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
}

// Float32 buffers for the partial sums, reused from call to call: a fresh allocation of up to kPartialBytes each
// call would be page-faulted in again each time. The pool holds as many as ever ran at once (usually one).
class PartialSums {
 public:
  explicit PartialSums(int64_t count) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_->empty()) {
        buffer_ = std::move(free_->back());
        free_->pop_back();
      }
    }
    if (buffer_.size() < static_cast<size_t>(count)) buffer_.resize(count);
  }
  ~PartialSums() {
    std::lock_guard<std::mutex> lock(mutex_);
    free_->push_back(std::move(buffer_));
  }
  PartialSums(const PartialSums&) = delete;
  PartialSums& operator=(const PartialSums&) = delete;
  float* data() { return buffer_.data(); }

 private:
  static inline std::mutex mutex_;
  static inline std::vector<std::vector<float>>* free_ = new std::vector<std::vector<float>>();
  std::vector<float> buffer_;
};

// Whether C = scale A B is cut along the contraction instead of C's rows: products with no batch, bias or activation
// whose rows lie in A's columns or are too few to share (weight and bias gradients, A = a^T and k = the tokens). A
// chunk of such rows is a strided sub-matrix, which oneDNN's brgemm kernels refuse (they want dense operands),
// while a chunk of k is a dense slice of both operands. Where all the chunks' partials would not fit in
// kPartialBytes, the row chunks stay (oneDNN's gemm kernels): cut into the few chunks that fit, ViT-B's MLP weight
// gradients ran no faster on 2 threads (6304 x 768 x 3072: 355-365 vs 343-349 GFLOP/s; 6304 x 3072 x 768: 354-364
// vs 383-411).
bool CutsContraction(ffi::Span<const int64_t> dims, ffi::Span<const int64_t> a_strides,
                     ffi::Span<const int64_t> c_strides, bool biased, int64_t activation, bool residual) {
  const int64_t b1 = dims[0], b2 = dims[1], m = dims[2], k = dims[3], n = dims[4];
  const bool rows_in_columns = m > 1 && a_strides[2] < a_strides[3];
  const bool partials_fit = kContractionChunks * m * n * static_cast<int64_t>(sizeof(float)) <= kPartialBytes;
  return b1 == 1 && b2 == 1 && !biased && activation == 0 && !residual && k >= 2 * kMinContractionChunk &&
         partials_fit &&
         (n == 1 || c_strides[3] == 1) && (rows_in_columns || m < 2 * kRowUnit);
}

// C = scale A B (no batch) with the contraction cut into chunks, each into a float32 partial of C; the partials are
// then added in a fixed order and rounded once into C, rows over the pool. The chunks depend on k alone, not on the
// threads, so the result is the same bits on any number of threads and in every run (training stays reproducible).
ffi::Error MatmulOverContraction(ffi::ThreadPool& pool, const char* a_data, const char* b_data, char* c_data,
                                 ffi::Span<const int64_t> dims, ffi::Span<const int64_t> a_strides,
                                 ffi::Span<const int64_t> b_strides, ffi::Span<const int64_t> c_strides,
                                 const int64_t types[5], size_t a_bytes, size_t b_bytes, float scale) {
  const int64_t m = dims[2], k = dims[3], n = dims[4];
  const Cut cut = CutInto(k, std::min(kContractionChunks, k / kMinContractionChunk), kRowUnit);
  const int64_t per = cut.per, chunks = cut.chunks;
  PartialSums held(chunks * m * n);  // chunk i's partial: m x n, dense
  float* const partials = held.data();
  std::vector<char> failed(chunks, 0);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t first = i * per, count = std::min(per, k - first);
    std::vector<int64_t> key = {kMatmul, 1, 1, m, count, n};
    key.insert(key.end(), a_strides.begin(), a_strides.end());
    key.insert(key.end(), b_strides.begin(), b_strides.end());
    key.insert(key.end(), {m * n, m * n, n, 1});
    key.insert(key.end(), {types[0], types[1], dnnl_f32, dnnl_data_type_undef, 0});
    key.insert(key.end(), {FloatBits(scale), dnnl_data_type_undef});
    failed[i] = !Execute(key, a_data + first * a_strides[3] * a_bytes, b_data + first * b_strides[2] * b_bytes,
                         nullptr, partials + i * m * n);
  });
  if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
    return ffi::Error::Internal("vit_jax_matmul: oneDNN could not create or run the product");
  }
  const Cut row_cut = CutInto(m, ChunksFor(pool));
  const int64_t rows_per = row_cut.per, row_chunks = row_cut.chunks;
  const bool to_bf16 = types[2] == dnnl_bf16;
  const size_t c_bytes = to_bf16 ? 2 : 4;
  ParallelFor(pool, row_chunks, [&](int64_t i) {
    thread_local std::vector<float> row;
    row.resize(n);
    for (int64_t r = i * rows_per; r < std::min(m, (i + 1) * rows_per); ++r) {
      const float* partial = partials + r * n;
      std::copy(partial, partial + n, row.begin());
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        partial += m * n;
        for (int64_t j = 0; j < n; ++j) row[j] += partial[j];
      }
      char* to = c_data + r * c_strides[2] * c_bytes;  // C's columns are contiguous (CutsContraction)
      if (to_bf16) {
        RoundToBf16(row.data(), reinterpret_cast<uint16_t*>(to), n);
      } else {
        std::memcpy(to, row.data(), n * sizeof(float));
      }
    }
  });
  return ffi::Error::Success();
}

// C = activation(scale A B + bias) + residual, cut into chunks over XLA's thread pool; an empty `bias_buffer` or
// `residual_buffer`: none.
ffi::Error Matmul(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer bias_buffer,
                  ffi::AnyBuffer residual_buffer, ffi::Result<ffi::AnyBuffer> c, ffi::Span<const int64_t> dims,
                  ffi::Span<const int64_t> a_strides,
                  ffi::Span<const int64_t> b_strides, ffi::Span<const int64_t> c_strides, int64_t activation,
                  float scale) {
  if (g_engine == nullptr) return ffi::Error::Internal("vit_jax_matmul: oneDNN is not loaded");
  const ffi::AnyBuffer* bias = bias_buffer.element_count() == 0 ? nullptr : &bias_buffer;
  const ffi::AnyBuffer* residual = residual_buffer.element_count() == 0 ? nullptr : &residual_buffer;
  if (bias == nullptr && activation != 0) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: an activation needs a bias");
  }
  if (dims.size() != 5 || a_strides.size() != 4 || b_strides.size() != 4 || c_strides.size() != 4) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: expected 5 dims (b1, b2, m, k, n) and 4 strides each");
  }
  const int64_t types[5] = {DnnlType(a.element_type()), DnnlType(b.element_type()), DnnlType(c->element_type()),
                            bias == nullptr ? dnnl_data_type_undef : DnnlType(bias->element_type()), activation};
  if (types[0] == dnnl_data_type_undef || types[1] == dnnl_data_type_undef || types[2] == dnnl_data_type_undef ||
      (bias != nullptr && types[3] == dnnl_data_type_undef)) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: expected bf16 or f32 buffers");
  }
  if (bias != nullptr && bias->element_count() != static_cast<size_t>(dims[4])) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: expected a bias of n elements");
  }
  if (activation < 0 || activation > 4) return ffi::Error::InvalidArgument("vit_jax_matmul: unknown activation");
  const int64_t residual_type = residual == nullptr ? dnnl_data_type_undef : DnnlType(residual->element_type());
  if (residual != nullptr && (residual_type == dnnl_data_type_undef ||
                              residual->element_count() != c->element_count())) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: expected a bf16 or f32 residual of the result's shape");
  }
  const size_t a_bytes = ffi::ByteWidth(a.element_type()), b_bytes = ffi::ByteWidth(b.element_type()),
               c_bytes = ffi::ByteWidth(c->element_type());
  const char* a_data = static_cast<const char*>(a.untyped_data());
  const char* b_data = static_cast<const char*>(b.untyped_data());
  char* c_data = static_cast<char*>(c->untyped_data());
  if (CutsContraction(dims, a_strides, c_strides, bias != nullptr, activation, residual != nullptr)) {
    return MatmulOverContraction(pool, a_data, b_data, c_data, dims, a_strides, b_strides, c_strides, types, a_bytes,
                                 b_bytes, scale);
  }
  // chunks: over b1 when there is a batch, else over rows of C (multiples of kRowUnit)
  const int64_t b1 = dims[0], m = dims[2];
  const bool by_batch = b1 > 1;
  const int64_t extent = by_batch ? b1 : m, unit = by_batch ? 1 : kRowUnit;
  const Cut cut = CutInto(extent, ChunksFor(pool), unit);
  const int64_t per = cut.per, chunks = cut.chunks;
  const int axis = by_batch ? 0 : 2;  // the dim the chunks cut
  const void* bias_data = bias == nullptr ? nullptr : bias->untyped_data();
  const char* residual_data = residual == nullptr ? nullptr : static_cast<const char*>(residual->untyped_data());
  const size_t residual_bytes = residual == nullptr ? 0 : ffi::ByteWidth(residual->element_type());
  std::vector<char> failed(chunks, 0);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t first = i * per, count = std::min(per, extent - first);
    std::vector<int64_t> key = {kMatmul};
    key.insert(key.end(), dims.begin(), dims.end());
    key[1 + axis] = count;
    key.insert(key.end(), a_strides.begin(), a_strides.end());
    key.insert(key.end(), b_strides.begin(), b_strides.end());
    key.insert(key.end(), c_strides.begin(), c_strides.end());
    key.insert(key.end(), types, types + 5);
    key.insert(key.end(), {FloatBits(scale), residual_type});
    const char* a_chunk = a_data + first * a_strides[axis] * a_bytes;
    const char* b_chunk = by_batch ? b_data + first * b_strides[0] * b_bytes : b_data;
    char* c_chunk = c_data + first * c_strides[axis] * c_bytes;
    const char* residual_chunk =
        residual == nullptr ? nullptr : residual_data + first * c_strides[axis] * residual_bytes;
    failed[i] = !Execute(key, a_chunk, b_chunk, bias_data, c_chunk, residual_chunk);
  });
  if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
    return ffi::Error::Internal("vit_jax_matmul: oneDNN could not create or run the product");
  }
  return ffi::Error::Success();
}

// y = softmax(x) over the last axis, rows cut into chunks over XLA's thread pool. oneDNN's softmax writes float32
// (the chunk's, in a cache-resident scratch buffer, where y is bf16): its own bf16 output is off by one unit in
// the last place for a quarter of the weights, this is rounded once, to nearest.
ffi::Error Softmax(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (g_engine == nullptr) return ffi::Error::Internal("vit_jax_softmax: oneDNN is not loaded");
  const int64_t src = DnnlType(x.element_type()), dst = DnnlType(y->element_type());
  const auto shape = x.dimensions();
  if (src == dnnl_data_type_undef || dst == dnnl_data_type_undef || shape.size() == 0 ||
      x.element_count() != y->element_count()) {
    return ffi::Error::InvalidArgument("vit_jax_softmax: expected bf16 or f32 buffers of the same shape");
  }
  const int64_t n = shape[shape.size() - 1], rows = n == 0 ? 0 : static_cast<int64_t>(x.element_count()) / n;
  if (rows == 0) return ffi::Error::Success();
  int64_t per = CutInto(rows, ChunksFor(pool)).per;
  if (dst != dnnl_f32) per = std::min(per, std::max<int64_t>(1, kScratchFloats / n));  // the scratch stays in cache
  const int64_t chunks = (rows + per - 1) / per;
  const char* x_data = static_cast<const char*>(x.untyped_data());
  char* y_data = static_cast<char*>(y->untyped_data());
  const size_t x_row = n * ffi::ByteWidth(x.element_type()), y_row = n * ffi::ByteWidth(y->element_type());
  std::vector<char> failed(chunks, 0);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t first = i * per, count = std::min(per, rows - first);
    const std::vector<int64_t> key = {kSoftmax, count, n, src, dnnl_f32};
    if (dst == dnnl_f32) {
      failed[i] = !Execute(key, x_data + first * x_row, nullptr, nullptr, y_data + first * y_row);
      return;
    }
    thread_local std::vector<float> weights;
    weights.resize(count * n);
    failed[i] = !Execute(key, x_data + first * x_row, nullptr, nullptr, weights.data());
    RoundToBf16(weights.data(), reinterpret_cast<uint16_t*>(y_data + first * y_row), count * n);
  });
  if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
    return ffi::Error::Internal("vit_jax_softmax: oneDNN could not create or run the softmax");
  }
  return ffi::Error::Success();
}

// y = LayerNorm(x) * scale + shift over the last axis, rows cut into chunks over XLA's thread pool.
ffi::Error LayerNorm(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                     ffi::Result<ffi::AnyBuffer> y, float epsilon) {
  if (g_engine == nullptr) return ffi::Error::Internal("vit_jax_layer_norm: oneDNN is not loaded");
  const int64_t src = DnnlType(x.element_type()), dst = DnnlType(y->element_type());
  const auto shape = x.dimensions();
  const int64_t n = shape.size() == 0 ? 0 : shape[shape.size() - 1];
  if (src == dnnl_data_type_undef || dst == dnnl_data_type_undef || n == 0 ||
      x.element_count() != y->element_count() || scale.element_count() != static_cast<size_t>(n) ||
      shift.element_count() != static_cast<size_t>(n)) {
    return ffi::Error::InvalidArgument("vit_jax_layer_norm: expected bf16 or f32 x and y of the same shape, a "
                                       "float32 scale and shift of the last axis' length");
  }
  const int64_t rows = static_cast<int64_t>(x.element_count()) / n;
  if (rows == 0) return ffi::Error::Success();
  const Cut cut = CutInto(rows, ChunksFor(pool));
  const int64_t per = cut.per, chunks = cut.chunks;
  const char* x_data = static_cast<const char*>(x.untyped_data());
  char* y_data = static_cast<char*>(y->untyped_data());
  const size_t x_row = n * ffi::ByteWidth(x.element_type()), y_row = n * ffi::ByteWidth(y->element_type());
  std::vector<char> failed(chunks, 0);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t first = i * per, count = std::min(per, rows - first);
    const std::vector<int64_t> key = {kLayerNorm, count, n, src, dst, FloatBits(epsilon)};
    failed[i] = !Execute(key, x_data + first * x_row, scale.typed_data(), shift.typed_data(), y_data + first * y_row);
  });
  if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
    return ffi::Error::Internal("vit_jax_layer_norm: oneDNN could not create or run the LayerNorm");
  }
  return ffi::Error::Success();
}

// O[b, :, h, :] = softmax(scale Q[b, :, h, :] K[b, :, h, :]^T) V[b, :, h, :] for (B, N, H, d) queries, (B, M, H, d)
// keys and (B, M, H, e) values, all dense, a block of one batch entry's query rows at a time (all heads: a dense
// slice, as oneDNN's brgemm kernels want): the block's float32 logits and weights stay in a cache-resident buffer
// instead of going through memory twice each as the three primitives apart do. The same primitives in the same
// order as apart, so the same bits: the logits' product scaled on its float32 accumulator, the softmax in float32,
// the weights rounded once to the values' type, then their product with the values.
ffi::Error Attention(ffi::ThreadPool pool, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                     ffi::Result<ffi::AnyBuffer> o, float scale) {
  if (g_engine == nullptr) return ffi::Error::Internal("vit_jax_attention: oneDNN is not loaded");
  const int64_t type = DnnlType(q.element_type()), out_type = DnnlType(o->element_type());
  const auto qs = q.dimensions(), ks = k.dimensions(), vs = v.dimensions(), os = o->dimensions();
  if (type == dnnl_data_type_undef || out_type == dnnl_data_type_undef || k.element_type() != q.element_type() ||
      v.element_type() != q.element_type()) {
    return ffi::Error::InvalidArgument("vit_jax_attention: expected bf16 or f32 queries, keys and values alike");
  }
  if (qs.size() != 4 || ks.size() != 4 || vs.size() != 4 || os.size() != 4 || ks[0] != qs[0] || ks[2] != qs[2] ||
      ks[3] != qs[3] || vs[0] != qs[0] || vs[1] != ks[1] || vs[2] != qs[2] || os[0] != qs[0] || os[1] != qs[1] ||
      os[2] != qs[2] || os[3] != vs[3]) {
    return ffi::Error::InvalidArgument("vit_jax_attention: expected (B, N, H, d) queries, (B, M, H, d) keys, "
                                       "(B, M, H, e) values and a (B, N, H, e) result");
  }
  const int64_t batch = qs[0], n = qs[1], heads = qs[2], d = qs[3], m = ks[1], e = vs[3];
  if (batch * n * heads * d * m * e == 0) return ffi::Error::Success();
  const int64_t block = AttentionRows(n, heads, m);
  const int64_t blocks = (n + block - 1) / block, items = batch * blocks;
  const Cut cut = CutInto(items, ChunksFor(pool));
  const int64_t per = cut.per, chunks = cut.chunks;
  const size_t bytes = ffi::ByteWidth(q.element_type()), out_bytes = ffi::ByteWidth(o->element_type());
  const char* q_data = static_cast<const char*>(q.untyped_data());
  const char* k_data = static_cast<const char*>(k.untyped_data());
  const char* v_data = static_cast<const char*>(v.untyped_data());
  char* o_data = static_cast<char*>(o->untyped_data());
  std::vector<char> failed(chunks, 0);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    thread_local std::vector<float> logits;
    thread_local std::vector<uint16_t> rounded;
    logits.resize(heads * block * m);
    if (type == dnnl_bf16) rounded.resize(heads * block * m);
    for (int64_t item = chunk * per; item < std::min(items, (chunk + 1) * per) && !failed[chunk]; ++item) {
      const int64_t b = item / blocks, first = (item % blocks) * block, rows = std::min(block, n - first);
      const std::vector<int64_t> logits_key = {kMatmul, 1, heads, rows, d, m, 0, d, heads * d, 1, 0, d, 1, heads * d,
                                               0, rows * m, m, 1, type, type, dnnl_f32, dnnl_data_type_undef, 0,
                                               FloatBits(scale), dnnl_data_type_undef};
      const std::vector<int64_t> softmax_key = {kSoftmax, heads * rows, m, dnnl_f32, dnnl_f32};
      const std::vector<int64_t> values_key = {kMatmul, 1, heads, rows, m, e, 0, rows * m, m, 1, 0, e, heads * e, 1,
                                               0, e, heads * e, 1, type, type, out_type, dnnl_data_type_undef, 0,
                                               FloatBits(1.f), dnnl_data_type_undef};
      const void* weights = logits.data();
      bool ok = Execute(logits_key, q_data + (b * n + first) * heads * d * bytes, k_data + b * m * heads * d * bytes,
                        nullptr, logits.data()) &&
                Execute(softmax_key, logits.data(), nullptr, nullptr, logits.data());
      if (ok && type == dnnl_bf16) {
        RoundToBf16(logits.data(), rounded.data(), heads * rows * m);
        weights = rounded.data();
      }
      ok = ok && Execute(values_key, weights, v_data + b * m * heads * e * bytes, nullptr,
                         o_data + (b * n + first) * heads * e * out_bytes);
      failed[chunk] = !ok;
    }
  });
  if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
    return ffi::Error::Internal("vit_jax_attention: oneDNN could not create or run a primitive");
  }
  return ffi::Error::Success();
}

template <typename F>
bool Resolve(void* library, const char* name, F& function) {
  function = reinterpret_cast<F>(dlsym(library, name));
  return function != nullptr;
}

}  // namespace

// Opens oneDNN (a libdnnl.so.3 built with the OpenMP runtime) at `path`; 1 when every function resolved and a CPU
// engine was made, else 0 (the caller then keeps XLA's products).
// An attention block's query rows (AttentionRows), for vit_jax to ask its primitives' kernels at trace time.
extern "C" int64_t vit_jax_attention_rows(int64_t n, int64_t heads, int64_t m) { return AttentionRows(n, heads, m); }

extern "C" int vit_jax_load_onednn(const char* path) {
  if (g_engine != nullptr) return 1;
  void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) return 0;
  OneDnn d;
  const bool ok = Resolve(library, "dnnl_engine_create", d.engine_create) &&
                  Resolve(library, "dnnl_stream_create", d.stream_create) &&
                  Resolve(library, "dnnl_stream_wait", d.stream_wait) &&
                  Resolve(library, "dnnl_memory_desc_create_with_strides", d.memory_desc_create_with_strides) &&
                  Resolve(library, "dnnl_memory_desc_get_size", d.memory_desc_get_size) &&
                  Resolve(library, "dnnl_memory_create", d.memory_create) &&
                  Resolve(library, "dnnl_memory_destroy", d.memory_destroy) &&
                  Resolve(library, "dnnl_primitive_attr_create", d.attr_create) &&
                  Resolve(library, "dnnl_primitive_attr_destroy", d.attr_destroy) &&
                  Resolve(library, "dnnl_primitive_attr_set_scratchpad_mode", d.attr_set_scratchpad_mode) &&
                  Resolve(library, "dnnl_primitive_attr_set_post_ops", d.attr_set_post_ops) &&
                  Resolve(library, "dnnl_post_ops_create", d.post_ops_create) &&
                  Resolve(library, "dnnl_post_ops_append_eltwise", d.post_ops_append_eltwise) &&
                  Resolve(library, "dnnl_post_ops_append_binary", d.post_ops_append_binary) &&
                  Resolve(library, "dnnl_post_ops_destroy", d.post_ops_destroy) &&
                  Resolve(library, "dnnl_matmul_primitive_desc_create", d.matmul_primitive_desc_create) &&
                  Resolve(library, "dnnl_softmax_forward_primitive_desc_create", d.softmax_primitive_desc_create) &&
                  Resolve(library, "dnnl_layer_normalization_forward_primitive_desc_create",
                          d.layer_norm_primitive_desc_create) &&
                  Resolve(library, "dnnl_primitive_desc_query_md", d.primitive_desc_query_md) &&
                  Resolve(library, "dnnl_primitive_desc_query", d.primitive_desc_query) &&
                  Resolve(library, "dnnl_primitive_desc_destroy", d.primitive_desc_destroy) &&
                  Resolve(library, "dnnl_memory_desc_destroy", d.memory_desc_destroy) &&
                  Resolve(library, "dnnl_primitive_create", d.primitive_create) &&
                  Resolve(library, "dnnl_primitive_execute", d.primitive_execute) &&
                  Resolve(library, "omp_set_num_threads", d.omp_set_num_threads);  // from its OpenMP runtime
  if (!ok) return 0;
  dnnl_engine_t engine = nullptr;
  if (d.engine_create(&engine, dnnl_cpu, 0) != dnnl_success) return 0;
  g_dnnl = d;
  g_engine = engine;
  return 1;
}

// The name of the kernel oneDNN picks for the whole primitive `key` (`length` values, as kMatmulKeySize or
// kSoftmaxKeySize describe), copied into `name` (at most `size` bytes with the terminator); 0 when it has none.
// vit_jax asks at trace time and keeps XLA's computation where there is no kernel or only a reference one.
extern "C" int vit_jax_onednn_kernel(const int64_t* key, int64_t length, char* name, int64_t size) {
  if (g_engine == nullptr || size < 1 || length < 1) return 0;
  Product product;
  dnnl_primitive_desc_t desc = Describe(std::vector<int64_t>(key, key + length), product);
  const char* info = nullptr;
  const bool ok = desc != nullptr && Ok(g_dnnl.primitive_desc_query(desc, dnnl_query_impl_info_str, 0, &info)) &&
                  info != nullptr;
  if (ok) {
    std::strncpy(name, info, size - 1);
    name[size - 1] = '\0';
  }
  if (desc != nullptr) g_dnnl.primitive_desc_destroy(desc);
  for (dnnl_memory_desc_t md : {product.a, product.b, product.c, product.bias, product.residual}) {
    if (md != nullptr) g_dnnl.memory_desc_destroy(md);
  }
  return ok ? 1 : 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("dims")
                                  .Attr<ffi::Span<const int64_t>>("a_strides")
                                  .Attr<ffi::Span<const int64_t>>("b_strides")
                                  .Attr<ffi::Span<const int64_t>>("c_strides")
                                  .Attr<int64_t>("activation")
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxLayerNorm, LayerNorm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxSoftmax, Softmax,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
