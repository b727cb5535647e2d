// Fused pack/unpack with ATen's multi-tensor ops: one launch per dtype group on CUDA (the
// foreach kernels), one pass per tensor on CPU, every dtype, on the caller's current stream.
#include "pack.h"

namespace hvdcut {

namespace {
std::vector<at::Tensor> views_of(const at::Tensor& flat, const std::vector<at::Tensor>& grads) {
  std::vector<at::Tensor> views;
  views.reserve(grads.size());
  int64_t offset = 0;
  for (const auto& g : grads) {
    TORCH_CHECK(!g.is_sparse(), "horovod_cutoff: sparse gradients are not supported with cutoff=");
    TORCH_CHECK(offset + g.numel() <= flat.numel(), "packed gradients overflow the fused buffer");
    views.push_back(flat.narrow(0, offset, g.numel()).view(g.sizes()));
    offset += g.numel();
  }
  return views;
}
}  // namespace

void pack_gradients(const std::vector<at::Tensor>& grads, at::Tensor& flat) {
  if (grads.empty()) return;
  auto views = views_of(flat, grads);
  at::_foreach_copy_(views, grads);
}

void unpack_gradients(at::Tensor& flat, std::vector<at::Tensor>& grads, int64_t count) {
  if (grads.empty()) return;
  auto views = views_of(flat, grads);
  if (count != 1) {
    int64_t numel = 0;
    for (const auto& g : grads) numel += g.numel();
    flat.narrow(0, 0, numel).div_(static_cast<double>(count));
  }
  at::_foreach_copy_(grads, views);
}

void zero_gradients(std::vector<at::Tensor>& grads) {
  if (!grads.empty()) at::_foreach_zero_(grads);
}

}  // namespace hvdcut
