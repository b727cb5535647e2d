// Fused pack (gradients into the step's buffer) and unpack (buffer * scale into gradients).
#pragma once
#include <torch/torch.h>
#include <vector>

namespace hvdcut {

// Copies each gradient, in order, into consecutive slices of `flat`.
void pack_gradients(const std::vector<at::Tensor>& grads, at::Tensor& flat);

// grads[i] = slice i of `flat` * scale, one pass per tensor (one launch on CUDA).
void unpack_gradients(const at::Tensor& flat, std::vector<at::Tensor>& grads, double scale);

}  // namespace hvdcut
