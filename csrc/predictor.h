// The predictor's hot path on the CPU: filter one step of the run-time model, draw S
// posterior-predictive samples of next step's N log times, pick the grid argmax cutoff. The
// same arithmetic as model/inference.hot_path(..., bins) (float32 network, float64 argmax),
// with weights copied once, every buffer allocated at construction and no allocation per
// call. Plain C++ (no torch): the caller passes host arrays. The kernels live in
// predictor_kernels.cc, built for the x86-64 baseline and for AVX2, chosen at construction.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "predictor_kernels.h"

namespace hvdcut {

enum class Objective : int { kStep = 0, kRatio = 1, kLambda = 2 };

// One named parameter of the PyTorch module (its state_dict entry), row-major float32.
struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
using WeightMap = std::map<std::string, HostTensor>;

// Sizes of the network, read from the weights' shapes.
struct Dims {
  int H = 0, G = 0, D = 0, K = 0, E = 0;
  bool operator==(const Dims& o) const {
    return H == o.H && G == o.G && D == o.D && K == o.K && E == o.E;
  }
};

// One full copy of the weights (the predictor keeps two: see load_weights).
struct PredictorWeights {
  WeightMap storage;          // the arrays the view points into
  WeightsView view;
  mutable std::mutex in_use;  // held by a step reading it, and by a load writing it
};

struct PredictorConfig {
  int workers = 1;
  int samples = 256;
  double overhead = 0.0;
  Objective objective = Objective::kStep;
  int bins = 4096;
  uint64_t seed = 0;
  std::string isa = "auto";  // "auto" (AVX2 where the CPU has it), "avx2" or "baseline"
};

// The recurrent state, as model.network.State for one cluster.
struct PredictorState {
  std::vector<float> h;        // [N][H]
  std::vector<float> g;        // [G]
  std::vector<float> z, z_sd;  // [D]
  float ref = 0;               // NaN before the first step
  int64_t steps = 0;
};

class Predictor {
 public:
  Predictor(const PredictorConfig& config, const WeightMap& weights);
  Predictor(const Predictor&) = delete;
  Predictor& operator=(const Predictor&) = delete;

  // One step: times [N] seconds (NaN absent), censored [N] (nonzero: cut at that time);
  // rate: the lambda objective's running throughput (NaN: unknown, use the step objective);
  // spread: the online calibration's factor (inference.predictive_log_times). Returns the
  // next cutoff in seconds (NaN if the state is broken). Uses the noise prepare() drew (draws
  // it first if there is none). Throws std::invalid_argument naming `times` if a time is
  // negative or infinite, or if no worker is present (the state is then unchanged).
  double step(const float* times, const uint8_t* censored, double rate, double spread = 1.0);
  // Draws the next step's noise (off the hot path, after a cutoff is out).
  void prepare();
  // Replaces the next step's noise (tests): z, transition [S][D]; uniform, normal [S][N].
  void set_noise(const float* z, const float* transition, const float* uniform,
                 const float* normal);
  // Copies new weights into the buffer no step is reading, then makes it current: a service
  // thread never stops and never sees half a model. Same sizes only (std::invalid_argument
  // naming what differs). Returns the new version (1 for the constructor's weights).
  int64_t load_weights(const WeightMap& weights);
  int64_t version() const { return version_.load(); }
  // The per-step overhead the objective charges from the next step on (the live engine
  // measures it as training runs). Call between steps, from the thread that steps.
  // std::invalid_argument unless finite and >= 0.
  void set_overhead(double seconds);
  PredictorState state() const;
  // The log samples of the last step, [S][present workers] (tests).
  std::vector<float> last_log_samples() const;
  // The next step's noise (drawn now if it was not): z, transition, uniform, normal (tests).
  std::vector<std::vector<float>> next_noise();
  const PredictorConfig& config() const { return config_; }
  const Dims& dims() const { return dims_; }
  const char* isa() const { return kernels_->isa; }

 private:
  void features(const float* times, const uint8_t* censored);

  PredictorConfig config_;
  Dims dims_;
  const KernelTable* kernels_ = nullptr;
  PredictorWeights weights_[2];
  std::atomic<int> active_{0};
  std::atomic<int64_t> version_{0};
  std::mutex load_mu_;          // one writer at a time
  mutable std::mutex call_mu_;  // step, prepare, set_noise, state: one at a time

  Workspace ws_;                // views of the buffers below
  float ref_ = 0;               // the running reference of log seconds; NaN before a step
  float median_ = 0;            // this step's lower median of log times
  int64_t steps_ = 0;
  bool noise_ready_ = false;
  uint64_t rng_[4 * kRngStreams] = {};
  std::vector<float> floats_;   // every float buffer of ws_, one allocation
  std::vector<double> doubles_;
  std::vector<int32_t> ints_;
  std::vector<uint64_t> noise_bits_;
  std::vector<Bin> bins_;
  std::vector<int> present_;
  std::vector<float> logs_;     // [N] this step's log times (the median's scratch)
};

}  // namespace hvdcut
