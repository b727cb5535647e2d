// The deadline engine: one per DistributedOptimizer. It owns the step's fused buffers, a
// C++ thread that submits a zero contribution into Horovod when the deadline passes (no
// GIL, so a busy Python thread never holds the other ranks), and the results of completed
// reductions until the Python thread applies them, in order.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "layout.h"

namespace hvdcut {

using Clock = std::chrono::steady_clock;

enum class Outcome : int {
  kContributed = 0,  // gradients went in with weight 1
  kCut = 1,          // too late: a zero contribution went in (now, or by the timer)
  kLate = 2,         // the step was already submitted or reduced: gradients discarded
};

// What a completed reduction tells every rank.
struct StepResult {
  int64_t step = 0;
  double count = 0;        // contributors
  double cutoff = 0;       // the cutoff this step ran under
  double next_cutoff = 0;  // the cutoff step+1 runs under (reuse and widen rules applied)
  double seconds = 0;      // this rank's wall time from step start to reduction done
  double submitted_at = 0; // when this rank's contribution entered Horovod, from step start
  std::vector<double> times;
  std::vector<bool> censored;
  std::vector<int64_t> fingerprints;
};

struct EngineState;

class Engine {
 public:
  // device: -1 for CPU, else the CUDA device index. first_cutoff applies to step 0.
  Engine(const std::string& name, int rank, int world, int64_t grad_numel, at::ScalarType dtype,
         int device, int64_t fingerprint, double first_cutoff);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Offers this rank's gradients for `step`. Call without the GIL.
  Outcome contribute(int64_t step, const std::vector<at::Tensor>& grads);
  // True once `step` can no longer take this rank's gradients (cheap; hooks poll it).
  bool is_cut(int64_t step) const;
  // Waits up to timeout_s for reduction `step`; false on timeout. Throws on a Horovod error.
  bool wait(int64_t step, double timeout_s) const;
  // Takes reduction `step` (after wait): writes sum/count into grads when count > 0.
  StepResult take(int64_t step, std::vector<at::Tensor>& grads);
  // Coordinator only: the cutoff the next submitted reduction carries to every rank.
  void set_next_cutoff(double seconds);
  int64_t open_step() const;
  void close();

 private:
  std::shared_ptr<EngineState> state_;
  std::thread timer_;
};

}  // namespace hvdcut
