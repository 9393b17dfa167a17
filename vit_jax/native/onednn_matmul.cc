// vit_jax_matmul: C[b1, b2, m, n] = sum_k A[b1, b2, m, k] B[b1, b2, k, n] by oneDNN's matmul primitive
// (registered and driven by vit_jax/native/onednn.py).
//
// Each operand is addressed through four strides (in elements), so an einsum's operands are read where they lie:
// transposed weight-gradient operands and attention's (batch, tokens, heads, head_dim) layouts need no copies.
// oneDNN is not linked: `vit_jax_load_onednn` opens the shared library the `onednn-cpu-gomp` wheel installs and
// resolves the few functions used here, so the extension builds without it and vit_jax falls back to XLA's
// products where it is missing. oneDNN runs single-threaded inside each chunk of XLA's own thread pool (batch
// entries, or rows when there is no batch), as the BLAS call next door does.

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
  decltype(&dnnl_matmul_primitive_desc_create) matmul_primitive_desc_create;
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

// One compiled product: its primitive and the descriptors its memory objects are made from.
struct Product {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_desc_t a = nullptr, b = nullptr, c = nullptr;
  const_dnnl_memory_desc_t scratchpad = nullptr;
  size_t scratchpad_bytes = 0;
};

std::mutex g_products_mutex;
std::map<std::vector<int64_t>, Product>* g_products = new std::map<std::vector<int64_t>, Product>();

bool Ok(dnnl_status_t status) { return status == dnnl_success; }

constexpr int64_t kChunksPerThread = 4;

// The product's descriptor for `key`, made on the calling thread with one OpenMP thread (nullptr: oneDNN has none).
dnnl_primitive_desc_t Describe(const std::vector<int64_t>& key, Product& product) {
  const int64_t* d = key.data();  // b1, b2, m, k, n, A strides (4), B strides (4), C strides (4), types (3)
  dnnl_dims_t a_dims = {d[0], d[1], d[2], d[3]}, b_dims = {d[0], d[1], d[3], d[4]}, c_dims = {d[0], d[1], d[2], d[4]};
  dnnl_dims_t a_strides = {d[5], d[6], d[7], d[8]}, b_strides = {d[9], d[10], d[11], d[12]},
              c_strides = {d[13], d[14], d[15], d[16]};
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_primitive_desc_t desc = nullptr;
  g_dnnl.omp_set_num_threads(1);  // oneDNN sizes its blocking by the threads it will have
  bool ok = Ok(g_dnnl.memory_desc_create_with_strides(&product.a, 4, a_dims, dnnl_data_type_t(d[17]), a_strides)) &&
            Ok(g_dnnl.memory_desc_create_with_strides(&product.b, 4, b_dims, dnnl_data_type_t(d[18]), b_strides)) &&
            Ok(g_dnnl.memory_desc_create_with_strides(&product.c, 4, c_dims, dnnl_data_type_t(d[19]), c_strides)) &&
            Ok(g_dnnl.attr_create(&attr)) && Ok(g_dnnl.attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user)) &&
            Ok(g_dnnl.matmul_primitive_desc_create(&desc, g_engine, product.a, product.b, nullptr, product.c, attr));
  if (attr != nullptr) g_dnnl.attr_destroy(attr);
  return ok ? desc : nullptr;
}

// The product of `key` (chunk dims, strides, types), created on first use by the calling (single-threaded) thread.
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

// Runs one chunk on the calling thread: its own stream and scratchpad, memory objects around XLA's buffers.
bool Execute(const std::vector<int64_t>& key, const void* a, const void* b, void* c) {
  g_dnnl.omp_set_num_threads(1);  // the chunk runs on this thread alone
  const Product* product = GetProduct(key);
  if (product == nullptr) return false;
  thread_local dnnl_stream_t stream = nullptr;
  thread_local std::vector<char> scratch;
  if (stream == nullptr && !Ok(g_dnnl.stream_create(&stream, g_engine, dnnl_stream_default_flags))) return false;
  if (scratch.size() < product->scratchpad_bytes) scratch.resize(product->scratchpad_bytes);
  dnnl_memory_t memory[4] = {nullptr, nullptr, nullptr, nullptr};
  bool ok = Ok(g_dnnl.memory_create(&memory[0], product->a, g_engine, const_cast<void*>(a))) &&
            Ok(g_dnnl.memory_create(&memory[1], product->b, g_engine, const_cast<void*>(b))) &&
            Ok(g_dnnl.memory_create(&memory[2], product->c, g_engine, c));
  int args = 3;
  if (ok && product->scratchpad_bytes > 0) {
    ok = Ok(g_dnnl.memory_create(&memory[3], product->scratchpad, g_engine, scratch.data()));
    args = 4;
  }
  if (ok) {
    dnnl_exec_arg_t exec[4] = {{DNNL_ARG_SRC, memory[0]}, {DNNL_ARG_WEIGHTS, memory[1]}, {DNNL_ARG_DST, memory[2]},
                               {DNNL_ARG_SCRATCHPAD, memory[3]}};
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

ffi::Error Matmul(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  ffi::Span<const int64_t> dims, ffi::Span<const int64_t> a_strides,
                  ffi::Span<const int64_t> b_strides, ffi::Span<const int64_t> c_strides) {
  if (g_engine == nullptr) return ffi::Error::Internal("vit_jax_matmul: oneDNN is not loaded");
  if (dims.size() != 5 || a_strides.size() != 4 || b_strides.size() != 4 || c_strides.size() != 4) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: expected 5 dims (b1, b2, m, k, n) and 4 strides each");
  }
  const int64_t types[3] = {DnnlType(a.element_type()), DnnlType(b.element_type()), DnnlType(c->element_type())};
  if (types[0] == dnnl_data_type_undef || types[1] == dnnl_data_type_undef || types[2] == dnnl_data_type_undef) {
    return ffi::Error::InvalidArgument("vit_jax_matmul: expected bf16 or f32 buffers");
  }
  const size_t a_bytes = ffi::ByteWidth(a.element_type()), b_bytes = ffi::ByteWidth(b.element_type()),
               c_bytes = ffi::ByteWidth(c->element_type());
  // chunks: over b1 when there is a batch, else over rows of C (multiples of 16)
  const int64_t b1 = dims[0], m = dims[2];
  const bool by_batch = b1 > 1;
  const int64_t extent = by_batch ? b1 : m, unit = by_batch ? 1 : 16;
  // several chunks per thread: a thread that starts late or is preempted leaves its share to the others
  const int64_t wanted = std::max<int64_t>(1, std::min<int64_t>(kChunksPerThread * pool.num_threads(), extent / unit));
  const int64_t per = ((extent + wanted - 1) / wanted + unit - 1) / unit * unit;
  const int64_t chunks = (extent + per - 1) / per;
  const int axis = by_batch ? 0 : 2;  // the dim the chunks cut
  const char* a_data = static_cast<const char*>(a.untyped_data());
  const char* b_data = static_cast<const char*>(b.untyped_data());
  char* c_data = static_cast<char*>(c->untyped_data());
  std::vector<char> failed(chunks, 0);
  ParallelFor(pool, chunks, [&](int64_t i) {
    const int64_t first = i * per, count = std::min(per, extent - first);
    std::vector<int64_t> key(dims.begin(), dims.end());
    key[axis] = count;
    key.insert(key.end(), a_strides.begin(), a_strides.end());
    key.insert(key.end(), b_strides.begin(), b_strides.end());
    key.insert(key.end(), c_strides.begin(), c_strides.end());
    key.insert(key.end(), types, types + 3);
    const char* a_chunk = a_data + first * a_strides[axis] * a_bytes;
    const char* b_chunk = by_batch ? b_data + first * b_strides[0] * b_bytes : b_data;
    char* c_chunk = c_data + first * c_strides[axis] * c_bytes;
    failed[i] = !Execute(key, a_chunk, b_chunk, c_chunk);
  });
  if (std::find(failed.begin(), failed.end(), 1) != failed.end()) {
    return ffi::Error::Internal("vit_jax_matmul: oneDNN could not create or run the product");
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
                  Resolve(library, "dnnl_matmul_primitive_desc_create", d.matmul_primitive_desc_create) &&
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

// The name of the kernel oneDNN picks for the whole product `key` (20 values: dims, strides, types; see
// GetProduct), copied into `name` (at most `size` bytes with the terminator); 0 when it has none. vit_jax asks
// at trace time and keeps XLA's product where there is no kernel or only a reference one.
extern "C" int vit_jax_onednn_kernel(const int64_t* key, char* name, int64_t size) {
  if (g_engine == nullptr || size < 1) return 0;
  Product product;
  dnnl_primitive_desc_t desc = Describe(std::vector<int64_t>(key, key + 20), product);
  const char* info = nullptr;
  const bool ok = desc != nullptr && Ok(g_dnnl.primitive_desc_query(desc, dnnl_query_impl_info_str, 0, &info)) &&
                  info != nullptr;
  if (ok) {
    std::strncpy(name, info, size - 1);
    name[size - 1] = '\0';
  }
  if (desc != nullptr) g_dnnl.primitive_desc_destroy(desc);
  for (dnnl_memory_desc_t md : {product.a, product.b, product.c}) {
    if (md != nullptr) g_dnnl.memory_desc_destroy(md);
  }
  return ok ? 1 : 0;
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VitJaxMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("dims")
                                  .Attr<ffi::Span<const int64_t>>("a_strides")
                                  .Attr<ffi::Span<const int64_t>>("b_strides")
                                  .Attr<ffi::Span<const int64_t>>("c_strides"));
