// Work split over XLA's own intra-op threads (the FFI ThreadPool), shared by vit_jax's custom calls: libraries
// run single-threaded inside each chunk, since threads of their own would compete with XLA's for the same cores.
#ifndef VIT_JAX_NATIVE_PARALLEL_FOR_H_
#define VIT_JAX_NATIVE_PARALLEL_FOR_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace vit_jax {

// Runs `run(0 .. count - 1)` on the calling thread and the pool's; chunks are claimed from a counter, so tasks the
// pool starts late find nothing left and the caller never waits for a task that has not started.
struct Chunks {
  std::function<void(int64_t)> run;
  int64_t count = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mutex;
  std::condition_variable finished;

  void Drain() {
    for (int64_t i; (i = next.fetch_add(1)) < count;) {
      run(i);
      if (done.fetch_add(1) + 1 == count) {
        std::lock_guard<std::mutex> lock(mutex);
        finished.notify_all();
      }
    }
  }
};

inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run) {
  auto chunks = std::make_shared<Chunks>();
  chunks->run = std::move(run);
  chunks->count = count;
  for (int64_t t = 1; t < count; ++t) pool.Schedule([chunks]() { chunks->Drain(); });
  chunks->Drain();
  std::unique_lock<std::mutex> lock(chunks->mutex);
  chunks->finished.wait(lock, [&]() { return chunks->done.load() == chunks->count; });
}

}  // namespace vit_jax

#endif  // VIT_JAX_NATIVE_PARALLEL_FOR_H_
