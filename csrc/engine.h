// The deadline engine: one per DistributedOptimizer. It owns the step's fused buffers, a
// C++ thread that submits a zero contribution into Horovod when the deadline passes (no
// GIL, so a busy Python thread never holds the other ranks), and the results of completed
// reductions until the Python thread applies them, in order.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace hvdcut {

using Clock = std::chrono::steady_clock;

enum class Outcome : int {
  kContributed = 0,  // gradients went in with weight 1
  kCut = 1,          // too late: a zero contribution went in (now, or by the timer)
  kLate = 2,         // the step was already reduced when this rank offered it
};

// What a completed reduction tells every rank (bound to Python as a read-only class).
struct StepResult {
  int64_t step = 0;
  int64_t count = 0;           // contributors
  double cutoff = 0;           // the cutoff this step ran under (inf: waited for all)
  int64_t quorum = 0;          // the arrivals that ended it early (0: none asked)
  double next_cutoff = 0;      // the cutoff step+1 runs under (every rule applied)
  int64_t cutoff_basis = -1;   // the last step the coordinator's policy had seen when it chose
                               // next_cutoff (-1: chosen before any observation)
  double seconds = 0;          // this rank's wall time from step start to reduction done
  double submitted_at = 0;     // when this rank's contribution entered Horovod, from step start
  double announced_at = 0;     // when this rank began announcing its arrival, from step start
                               // (NaN: it did not arrive)
  double started = 0;          // step start on this host's steady clock, seconds (compares
                               // ranks on one host)
  bool contributed = false;    // this rank's gradients are in the sum
  bool ended_by_quorum = false;  // this rank was cut by the k-th arrival, not by the deadline
  bool paused = false;         // some rank was inside opt.paused(): times are not a sample
  std::vector<double> times;   // per rank: compute time, or the cutoff if censored
  std::vector<uint8_t> censored;
  std::vector<int64_t> fingerprints;
  std::vector<int64_t> behind;  // per rank: whole steps its Python thread was behind
};

struct EngineConfig {
  std::string name;          // the same on every rank (Horovod matches reductions by name)
  int rank = 0;
  int world = 1;
  int coordinator = 0;       // the rank whose policy chooses the cutoff
  int64_t grad_numel = 0;
  at::ScalarType dtype = at::kFloat;
  int device = -1;           // -1 for CPU, else the CUDA device index
  int64_t fingerprint = 1;   // of the configuration every rank must share
  double first_cutoff = 0;   // step 0's cutoff (inf: wait for all)
  int max_lag = 2;           // stored results a lagging rank may hold before it stops being cut
  int watchdog_steps = 100;  // a cutoff older than this many steps means: wait for all
  // The arrival channel (world > 1): the coordinator hosts it on store_port (0: any free one)
  // and advertises store_host (IPv4), which the others reach; a non-empty store_host on
  // another rank overrides the advertised address.
  bool arrivals = false;
  std::string store_host;
  int store_port = 0;
  double store_timeout = 30;  // seconds a channel operation may take before it is a fault
};

struct EngineState;

class Engine {
 public:
  explicit Engine(const EngineConfig& config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Offers this rank's gradients for `step`. Call without the GIL. If packing fails, a zero
  // contribution goes in instead (the other ranks never wait for it) and the error is thrown.
  Outcome contribute(int64_t step, const std::vector<at::Tensor>& grads);
  // This rank has no gradients for `step` (its closure failed): contributes zeros now.
  void withdraw(int64_t step);
  // True once `step` can no longer take this rank's gradients (cheap; hooks poll it).
  bool is_cut(int64_t step) const;
  // Waits up to timeout_s for reduction `step`; false on timeout. Throws on a Horovod error.
  bool wait(int64_t step, double timeout_s) const;
  // Takes reduction `step` (after wait): writes sum/count into grads when count > 0, zeros
  // when nobody contributed (so every rank's gradients are identical either way).
  StepResult take(int64_t step, std::vector<at::Tensor>& grads);
  // Coordinator: the cutoff (and quorum, 0 for none) the next submitted reduction carries to
  // every rank, chosen from observations up to step `basis`.
  void set_next_cutoff(double seconds, int64_t basis, int64_t quorum = 0);
  // Coordinator: the arrival channel's port (0 without one).
  int store_port() const;
  // Coordinator: waits up to timeout_s (no GIL) for completed steps the policy has not seen;
  // returns them in order (at most the last 256: older ones are dropped and counted).
  std::vector<StepResult> next_observations(double timeout_s);
  int64_t dropped_observations() const;
  // opt.paused(): no cut while paused; the step open at resume waits for this rank.
  void pause();
  void resume();
  int64_t open_step() const;
  void close();

 private:
  std::shared_ptr<EngineState> state_;
  std::thread timer_;
  std::thread waiter_;  // the arrival channel's: ends the step here at the k-th arrival
};

}  // namespace hvdcut
