// CUDA path of the fused pack/unpack: one launch copies (and scales) a batch of float32
// tensors, instead of one launch per parameter. Plain CUDA runtime API, no torch headers,
// so it compiles with nvcc on machines without a GPU (tests/test_cuda_sources.py).
#include <cuda_runtime.h>
#include <cstdint>

#include "pack_cuda.h"

namespace {

struct Batch {
  const float* src[HVDCUT_BATCH];
  float* dst[HVDCUT_BATCH];
  int64_t numel[HVDCUT_BATCH];
};

__global__ void scaled_copy_batch(Batch batch, float scale) {
  const int t = blockIdx.y;
  const int64_t n = batch.numel[t];
  const float* __restrict__ src = batch.src[t];
  float* __restrict__ dst = batch.dst[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dst[i] = src[i] * scale;
  }
}

}  // namespace

extern "C" int hvdcut_scaled_copy(const float* const* src, float* const* dst, const int64_t* numel,
                                  int count, float scale, void* stream) {
  constexpr int kThreads = 256;
  for (int first = 0; first < count; first += HVDCUT_BATCH) {
    const int in_batch = count - first < HVDCUT_BATCH ? count - first : HVDCUT_BATCH;
    Batch batch;
    int64_t longest = 0;
    for (int i = 0; i < in_batch; ++i) {
      batch.src[i] = src[first + i];
      batch.dst[i] = dst[first + i];
      batch.numel[i] = numel[first + i];
      longest = numel[first + i] > longest ? numel[first + i] : longest;
    }
    if (longest == 0) continue;
    int64_t blocks = (longest + kThreads - 1) / kThreads;
    if (blocks > 1024) blocks = 1024;  // grid-stride loop covers the rest
    dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(in_batch));
    scaled_copy_batch<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(batch, scale);
    if (cudaGetLastError() != cudaSuccess) return -1;
  }
  return 0;
}

extern "C" void* hvdcut_event_record(void* stream) {
  cudaEvent_t event = nullptr;
  if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) return nullptr;
  if (cudaEventRecord(event, static_cast<cudaStream_t>(stream)) != cudaSuccess) {
    cudaEventDestroy(event);
    return nullptr;
  }
  return event;
}

extern "C" int hvdcut_event_query(void* event) {
  const cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(event));
  if (status == cudaSuccess) return 1;
  if (status == cudaErrorNotReady) return 0;
  return -1;
}

extern "C" void hvdcut_event_destroy(void* event) {
  if (event != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}
