// Layout of the one fused buffer a step reduces: the packed gradients, then a header.
// Every rank writes only its own slots, so after the Sum every rank holds every rank's
// time, censoring flag and configuration fingerprint, plus the contributor count and the
// coordinator's cutoff for a coming step.
#pragma once
#include <cstdint>

namespace hvdcut {

struct Layout {
  int64_t grad_numel;  // packed gradient elements
  int64_t world;       // N ranks

  int64_t count() const { return grad_numel; }           // sum of weights (contributors)
  int64_t next_cutoff() const { return grad_numel + 1; }  // written by rank 0 only
  int64_t time(int64_t r) const { return grad_numel + 2 + r; }
  int64_t censored(int64_t r) const { return grad_numel + 2 + world + r; }
  int64_t fingerprint(int64_t r) const { return grad_numel + 2 + 2 * world + r; }
  int64_t header_numel() const { return 2 + 3 * world; }
  int64_t total() const { return grad_numel + header_numel(); }
};

}  // namespace hvdcut
