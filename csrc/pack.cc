// Fused pack/unpack. CPU: one ATen copy per tensor into/out of the flat buffer. CUDA: all
// float32 tensors in one batched launch (pack_cuda.cu) on the current stream.
#include "pack.h"

#ifdef HOROVOD_CUTOFF_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include "pack_cuda.h"
#endif

namespace hvdcut {

#ifdef HOROVOD_CUTOFF_WITH_CUDA
namespace {
// Batched launch when every tensor is contiguous float32 on the buffer's device.
bool scaled_copy_cuda(const std::vector<at::Tensor>& from, std::vector<at::Tensor>& to,
                      const at::Tensor& flat, bool into_flat, double scale) {
  std::vector<const float*> src;
  std::vector<float*> dst;
  std::vector<int64_t> numel;
  int64_t offset = 0;
  const auto& tensors = into_flat ? from : to;
  for (const auto& t : tensors) {
    if (t.scalar_type() != at::kFloat || !t.is_contiguous() || t.device() != flat.device()) {
      return false;
    }
    float* slot = flat.data_ptr<float>() + offset;
    src.push_back(into_flat ? t.data_ptr<float>() : slot);
    dst.push_back(into_flat ? slot : t.data_ptr<float>());
    numel.push_back(t.numel());
    offset += t.numel();
  }
  void* stream = c10::cuda::getCurrentCUDAStream(flat.device().index()).stream();
  TORCH_CHECK(hvdcut_scaled_copy(src.data(), dst.data(), numel.data(),
                                 static_cast<int>(src.size()), static_cast<float>(scale),
                                 stream) == 0,
              "horovod_cutoff: CUDA pack/unpack launch failed");
  return true;
}
}  // namespace
#endif

void pack_gradients(const std::vector<at::Tensor>& grads, at::Tensor& flat) {
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  std::vector<at::Tensor> unused;
  if (flat.is_cuda() && scaled_copy_cuda(grads, unused, flat, /*into_flat=*/true, 1.0)) return;
#endif
  int64_t offset = 0;
  for (const auto& g : grads) {
    TORCH_CHECK(offset + g.numel() <= flat.numel(), "packed gradients overflow the fused buffer");
    flat.narrow(0, offset, g.numel()).view(g.sizes()).copy_(g);
    offset += g.numel();
  }
}

void unpack_gradients(const at::Tensor& flat, std::vector<at::Tensor>& grads, double scale) {
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  if (flat.is_cuda() && scaled_copy_cuda({}, grads, flat, /*into_flat=*/false, scale)) return;
#endif
  const auto factor = at::scalar_tensor(scale, flat.options().device(at::kCPU));
  int64_t offset = 0;
  for (auto& g : grads) {
    TORCH_CHECK(offset + g.numel() <= flat.numel(), "gradients overflow the fused buffer");
    at::mul_out(g, flat.narrow(0, offset, g.numel()).view(g.sizes()), factor);
    offset += g.numel();
  }
}

}  // namespace hvdcut
