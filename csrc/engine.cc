// Step state machine of the deadline engine. Invariants:
// - exactly one contribution per rank per step, submitted by whoever claims the open step
//   first: the Python thread (gradients, or zeros if already past the deadline) or the
//   timer thread (zeros at the deadline);
// - step t+1 opens when reduction t completes (Horovod's callback time is the clock origin),
//   so at most one reduction of this engine is in flight and its name can stay constant;
// - Horovod is never called with our mutex held, and its callback only queues and notifies
//   (it runs on Horovod's background thread and must neither block nor throw).
#include "engine.h"

#include <torch/extension.h>

#include <pthread.h>
#include <sched.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "horovod/common/common.h"
#include "horovod/common/operations.h"
#include "horovod/torch/adapter_v2.h"
#include "pack.h"
#ifdef HOROVOD_CUTOFF_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include "horovod/torch/ready_event.h"
#include "pack_cuda.h"
#endif

#undef LOG  // torch and Horovod both define it

namespace hvdcut {

namespace hc = horovod::common;
namespace ht = horovod::torch;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();

Clock::time_point deadline_of(Clock::time_point start, double cutoff) {
  if (!std::isfinite(cutoff)) return Clock::time_point::max();
  return start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cutoff));
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
}  // namespace

struct Completion {
  int64_t step;
  bool ok;
  std::string reason;
  Clock::time_point at;
};

struct Stored {
  StepResult result;
  at::Tensor output;  // undefined when count == 0 (nothing to apply, buffer recycled)
};

struct EngineState {
  // Fixed at construction.
  std::string name;
  int rank;
  int world;
  Layout layout;
  at::TensorOptions options;
  int device;
  int64_t fingerprint;

  // C++-owned buffers (never seen by Python: no GIL on their last release).
  at::Tensor send;  // packed gradients + header
  at::Tensor zeros; // a cut rank's contribution: zeros + header
  std::vector<at::Tensor> free_outputs;
  at::Tensor in_flight_output;
  double submitted_at = 0;  // seconds from step start to this rank's submission (P4 measures it)

  mutable std::mutex mu;
  std::condition_variable timer_cv;     // wakes the timer thread
  mutable std::condition_variable done_cv;  // wakes waiters on results
  bool stop = false;
  std::string error;

  int64_t open = 0;                 // the step now collecting contributions
  Clock::time_point start;          // its clock origin
  double cutoff = kInf;             // its cutoff
  Clock::time_point deadline = Clock::time_point::max();
  bool submitted = false;           // this rank's contribution for `open` is claimed
  bool python_claimed = false;      // ... by the Python thread with gradients
  double next_cutoff = std::numeric_limits<double>::quiet_NaN();  // coordinator's pending value

  std::deque<Completion> completions;
  std::map<int64_t, Stored> results;

#ifdef HOROVOD_CUTOFF_WITH_CUDA
  void* pending_event = nullptr;    // GPU: packed gradients not yet ready on the device
#endif

  at::Tensor take_output() {
    if (!free_outputs.empty()) {
      at::Tensor out = free_outputs.back();
      free_outputs.pop_back();
      return out;
    }
    return at::empty({layout.total()}, options);
  }

  // Writes this rank's header slots; every other header slot must be zero.
  void write_header(at::Tensor& buffer, double weight, double time, bool cut, double carried) {
    std::vector<double> header(layout.header_numel(), 0.0);
    const int64_t base = layout.grad_numel;
    header[layout.count() - base] = weight;
    header[layout.next_cutoff() - base] = rank == 0 ? carried : 0.0;
    header[layout.time(rank) - base] = time;
    header[layout.censored(rank) - base] = cut ? 1.0 : 0.0;
    header[layout.fingerprint(rank) - base] = static_cast<double>(fingerprint);
    auto cpu = at::tensor(header, at::TensorOptions().dtype(at::kDouble)).to(options.dtype());
    buffer.narrow(0, base, layout.header_numel()).copy_(cpu);
  }
};

namespace {

void submit(const std::shared_ptr<EngineState>& s, int64_t step, bool with_gradients,
            double time, double carried) {
  at::Tensor& input = with_gradients ? s->send : s->zeros;
  s->write_header(input, with_gradients ? 1.0 : 0.0, time, !with_gradients, carried);
  at::Tensor output;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    output = s->take_output();
    s->in_flight_output = output;
    s->submitted_at = seconds_between(s->start, Clock::now());
  }
  auto context = std::make_shared<ht::TorchOpContext>(s->device < 0 ? CPU_DEVICE_ID : s->device,
                                                      output);
  hc::ReadyEventList ready;
  std::weak_ptr<EngineState> weak = s;
  auto callback = [weak, step](const hc::Status& status) {
    try {
      const auto at = Clock::now();
      if (auto st = weak.lock()) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->completions.push_back({step, status.ok(), status.reason(), at});
        st->timer_cv.notify_all();
      }
    } catch (...) {
      // Throwing here would stop Horovod's background thread and hang every rank.
    }
  };
  hc::Status status = hc::EnqueueTensorAllreduce(
      context, std::make_shared<ht::TorchTensor>(input), std::make_shared<ht::TorchTensor>(output),
      ready, "allreduce.hvdcut." + s->name, s->device < 0 ? CPU_DEVICE_ID : s->device, callback,
      hc::ReduceOp::SUM);
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->error.empty()) s->error = "horovod_cutoff: submitting step " + std::to_string(step) +
                                     " failed: " + status.reason();
    s->done_cv.notify_all();
  }
}

// Called with the lock held: records reduction c.step and opens the next step.
void complete(EngineState& s, const Completion& c) {
  if (!c.ok) {
    if (s.error.empty()) {
      s.error = "horovod_cutoff: reduction of step " + std::to_string(c.step) +
                " failed (a rank may have died or disagreed on the model): " + c.reason;
    }
    s.done_cv.notify_all();
    return;
  }
  at::Tensor output = s.in_flight_output;
  s.in_flight_output = at::Tensor();
  const Layout& L = s.layout;
  auto header = output.narrow(0, L.grad_numel, L.header_numel())
                    .to(at::TensorOptions().dtype(at::kDouble).device(at::kCPU));
  const double* h = header.data_ptr<double>();
  const int64_t base = L.grad_numel;

  StepResult r;
  r.step = c.step;
  r.count = std::round(h[L.count() - base]);
  r.cutoff = s.cutoff;
  r.seconds = seconds_between(s.start, c.at);
  r.submitted_at = s.submitted_at;
  for (int64_t k = 0; k < s.world; ++k) {
    r.times.push_back(h[L.time(k) - base]);
    r.censored.push_back(h[L.censored(k) - base] > 0.5);
    r.fingerprints.push_back(static_cast<int64_t>(std::llround(h[L.fingerprint(k) - base])));
  }
  // The coordinator's value, unless it had none (its Python thread is late): reuse.
  double next = h[L.next_cutoff() - base];
  if (!(next > 0)) next = s.cutoff;
  // Nobody made it: widen, identically on every rank, whatever the policy says.
  if (r.count == 0 && std::isfinite(s.cutoff)) next = std::max(next, 2.0 * s.cutoff);
  r.next_cutoff = next;

  Stored stored{r, r.count > 0 ? output : at::Tensor()};
  if (r.count <= 0) s.free_outputs.push_back(output);
  s.results.emplace(c.step, std::move(stored));

  s.open = c.step + 1;
  s.start = c.at;
  s.cutoff = next;
  s.deadline = deadline_of(s.start, next);
  s.submitted = false;
  s.python_claimed = false;
  s.done_cv.notify_all();
}

// The deadline must hold even when every core is busy with compute: a real-time priority
// lets the (mostly sleeping) timer thread preempt it at once. Needs CAP_SYS_NICE (root);
// without it the thread keeps normal priority and the overshoot tail grows (see P4).
// HOROVOD_CUTOFF_TIMER_PRIORITY=0 opts out.
void raise_timer_priority() {
  const char* env = std::getenv("HOROVOD_CUTOFF_TIMER_PRIORITY");
  if (env != nullptr && std::strcmp(env, "0") == 0) return;
  sched_param param{};
  param.sched_priority = sched_get_priority_min(SCHED_FIFO);
  pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);  // best effort
}

void timer_loop(std::shared_ptr<EngineState> s) {
  raise_timer_priority();
  std::unique_lock<std::mutex> lock(s->mu);
  while (!s->stop) {
    while (!s->completions.empty()) {
      Completion c = std::move(s->completions.front());
      s->completions.pop_front();
      complete(*s, c);
    }
    if (!s->error.empty()) {
      s->timer_cv.wait(lock, [&] { return s->stop; });
      break;
    }
    const auto now = Clock::now();
#ifdef HOROVOD_CUTOFF_WITH_CUDA
    if (s->pending_event != nullptr) {
      const int ready = hvdcut_event_query(s->pending_event);
      if (ready != 0 || now >= s->deadline) {
        hvdcut_event_destroy(s->pending_event);
        s->pending_event = nullptr;
        const bool in_time = ready == 1 && now < s->deadline;
        const int64_t step = s->open;
        const double time = in_time ? seconds_between(s->start, now) : s->cutoff;
        const double carried = s->next_cutoff;
        lock.unlock();
        submit(s, step, in_time, time, carried);
        lock.lock();
        continue;
      }
      // Poll the device every 50 us until the gradients are ready or the deadline passes.
      s->timer_cv.wait_for(lock, std::chrono::microseconds(50));
      continue;
    }
#endif
    if (!s->submitted && now >= s->deadline) {
      s->submitted = true;
      const int64_t step = s->open;
      const double cutoff = s->cutoff;
      const double carried = s->next_cutoff;
      lock.unlock();
      submit(s, step, /*with_gradients=*/false, cutoff, carried);
      lock.lock();
      continue;
    }
    if (s->submitted || s->deadline == Clock::time_point::max()) {
      s->timer_cv.wait(lock);
    } else {
      s->timer_cv.wait_until(lock, s->deadline);
    }
  }
}

}  // namespace

Engine::Engine(const std::string& name, int rank, int world, int64_t grad_numel,
               at::ScalarType dtype, int device, int64_t fingerprint, double first_cutoff) {
  if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("bad rank/world");
  if (grad_numel < 0) throw std::invalid_argument("grad_numel must be >= 0");
  if (!(first_cutoff > 0)) throw std::invalid_argument("first_cutoff must be > 0");
  hc::Status init = hc::CheckInitialized();
  if (!init.ok()) throw std::runtime_error("horovod_cutoff: " + init.reason());
#ifndef HOROVOD_CUTOFF_WITH_CUDA
  if (device >= 0) {
    throw std::runtime_error(
        "horovod_cutoff was built without CUDA; rebuild with scripts/setup.sh on a GPU machine");
  }
#endif
  auto s = std::make_shared<EngineState>();
  s->name = name;
  s->rank = rank;
  s->world = world;
  s->layout = Layout{grad_numel, world};
  s->options = at::TensorOptions().dtype(dtype).device(
      device < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, device));
  s->device = device;
  s->fingerprint = fingerprint;
  s->send = at::zeros({s->layout.total()}, s->options);
  s->zeros = at::zeros({s->layout.total()}, s->options);
  s->start = Clock::now();
  s->cutoff = first_cutoff;
  s->deadline = deadline_of(s->start, first_cutoff);
  state_ = s;
  timer_ = std::thread(timer_loop, s);
}

Engine::~Engine() { close(); }

void Engine::close() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
    state_->timer_cv.notify_all();
    state_->done_cv.notify_all();
  }
  if (timer_.joinable()) timer_.join();
}

Outcome Engine::contribute(int64_t step, const std::vector<at::Tensor>& grads) {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  // A step already reduced (this rank is behind) needs nothing from Horovod any more: its
  // result is applied even if Horovod has since shut down (another rank finished first).
  if (step < s.open) return Outcome::kLate;
  if (!s.error.empty()) throw std::runtime_error(s.error);
  if (s.stop) throw std::runtime_error("horovod_cutoff: the optimizer was closed");
  if (step > s.open) {
    throw std::logic_error("horovod_cutoff: step " + std::to_string(step) +
                           " offered before step " + std::to_string(s.open) + " was reduced");
  }
  if (s.submitted) return Outcome::kLate;
  s.submitted = true;
  const auto now = Clock::now();
  const double cutoff = s.cutoff;
  const double carried = s.next_cutoff;
  if (now >= s.deadline) {
    lock.unlock();
    submit(state_, step, /*with_gradients=*/false, cutoff, carried);
    return Outcome::kCut;
  }
  s.python_claimed = true;
  const double time = seconds_between(s.start, now);
  lock.unlock();
  pack_gradients(grads, s.send);
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  if (s.device >= 0) {
    // The gradients count only if the device finishes them before the deadline: the timer
    // thread polls this event and submits gradients or zeros, whichever is due.
    void* stream = c10::cuda::getCurrentCUDAStream(s.device).stream();
    void* event = hvdcut_event_record(stream);
    if (event == nullptr) throw std::runtime_error("horovod_cutoff: cudaEventRecord failed");
    std::lock_guard<std::mutex> relock(s.mu);
    s.pending_event = event;
    s.timer_cv.notify_all();
    return Outcome::kContributed;
  }
#endif
  submit(state_, step, /*with_gradients=*/true, time, carried);
  return Outcome::kContributed;
}

bool Engine::is_cut(int64_t step) const {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (step < s.open) return true;
  if (step > s.open) return false;
  if (s.submitted) return !s.python_claimed;
  return Clock::now() >= s.deadline;
}

bool Engine::wait(int64_t step, double timeout_s) const {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(timeout_s));
  const bool ready = s.done_cv.wait_until(lock, until, [&] {
    return s.results.count(step) > 0 || !s.error.empty() || s.stop;
  });
  if (s.results.count(step) > 0) return true;
  if (!s.error.empty()) throw std::runtime_error(s.error);
  if (s.stop) throw std::runtime_error("horovod_cutoff: the optimizer was closed");
  return ready;
}

StepResult Engine::take(int64_t step, std::vector<at::Tensor>& grads) {
  auto& s = *state_;
  Stored stored;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.results.find(step);
    if (it == s.results.end()) {
      throw std::logic_error("horovod_cutoff: step " + std::to_string(step) + " is not reduced");
    }
    stored = std::move(it->second);
    s.results.erase(it);
  }
  if (stored.output.defined()) {
    unpack_gradients(stored.output, grads, 1.0 / stored.result.count);
    std::lock_guard<std::mutex> lock(s.mu);
    s.free_outputs.push_back(stored.output);
  }
  return stored.result;
}

void Engine::set_next_cutoff(double seconds) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->next_cutoff = seconds;
}

int64_t Engine::open_step() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->open;
}

}  // namespace hvdcut
