// Fused pack (gradients into the step's buffer) and unpack (buffer / count into gradients).
#pragma once
#include <torch/torch.h>
#include <vector>

namespace hvdcut {

// Copies each gradient, in order, into consecutive slices of `flat` (any dtype, any device).
void pack_gradients(const std::vector<at::Tensor>& grads, at::Tensor& flat);

// grads[i] = slice i of `flat` / count. Scales `flat` in place.
void unpack_gradients(at::Tensor& flat, std::vector<at::Tensor>& grads, int64_t count);

// Every gradient to zero (a step nobody made: identical gradients on every rank).
void zero_gradients(std::vector<at::Tensor>& grads);

}  // namespace hvdcut
