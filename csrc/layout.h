// Layout of the one fused buffer a step reduces: the packed gradients, then a header.
// Every rank writes only its own slots (the coordinator also writes the cutoff slots), so
// after the Sum every rank holds every rank's time, censoring flag, configuration
// fingerprint and lag, plus the contributor count, the coordinator's next cutoff and quorum,
// and the address of its arrival channel (an IPv4 address and a port).
// Every value is an integer below 2^24 or a time, so float32 carries it exactly enough.
#pragma once
#include <cstdint>

namespace hvdcut {

struct Layout {
  int64_t grad_numel;  // packed gradient elements
  int64_t world;       // N ranks

  int64_t count() const { return grad_numel; }             // sum of weights (contributors)
  int64_t next_cutoff() const { return grad_numel + 1; }   // coordinator only
  int64_t cutoff_age() const { return grad_numel + 2; }    // coordinator: steps since its basis
  int64_t paused() const { return grad_numel + 3; }        // ranks that were inside paused()
  int64_t next_quorum() const { return grad_numel + 4; }   // coordinator: k, 0 for none
  int64_t store_port() const { return grad_numel + 5; }    // coordinator: 0 for no channel
  int64_t store_ip(int64_t i) const { return grad_numel + 6 + i; }  // 4 octets
  static constexpr int64_t kFixed = 10;
  int64_t time(int64_t r) const { return grad_numel + kFixed + r; }
  int64_t censored(int64_t r) const { return grad_numel + kFixed + world + r; }
  int64_t fingerprint(int64_t r) const { return grad_numel + kFixed + 2 * world + r; }
  int64_t behind(int64_t r) const { return grad_numel + kFixed + 3 * world + r; }
  int64_t header_numel() const { return kFixed + 4 * world; }
  int64_t total() const { return grad_numel + header_numel(); }
};

}  // namespace hvdcut
