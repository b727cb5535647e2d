// Step state machine of the deadline engine. Invariants:
// - exactly one contribution per rank per step, submitted by whoever claims the open step
//   first: the Python thread (gradients, or zeros if already past the deadline) or the
//   timer thread (zeros at the deadline);
// - step t+1 opens when reduction t completes (Horovod's callback time is the clock origin),
//   so at most one reduction of this engine is in flight and its name can stay constant;
// - memory is fixed at construction: max_lag + 1 output buffers (one in flight, the rest
//   holding results a lagging Python thread has not applied yet) plus one zero buffer. A
//   rank holding max_lag results is no longer cut: the others wait for it (bounded lag);
// - Horovod is never called with our mutex held; its callback only queues and notifies, and
//   no exception leaves the timer thread or the callback (either would end the process or
//   stop Horovod's background thread): errors are stored and raised in the Python thread;
// - with the arrival channel (steps >= 1 of a multi-rank engine; arrivals.h), every claim is
//   announced before it enters Horovod, and a deadline cuts a computing rank only if someone
//   has arrived: a deadline nobody met makes the step wait for every rank (or the quorum),
//   the rule that follows a step nobody made, applied within the step so nothing is lost.
//   The waiter thread cuts this rank at the k-th arrival. Channel calls are network round
//   trips: never made with the mutex held.
#include "engine.h"

#include <torch/extension.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>

#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <stdexcept>

#include "horovod/common/common.h"
#include "horovod/common/operations.h"
#include "horovod/torch/adapter_v2.h"
#include "arrivals.h"
#include "layout.h"
#include "pack.h"
#ifdef HOROVOD_CUTOFF_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

#undef LOG  // torch and Horovod both define it

namespace hvdcut {

namespace hc = horovod::common;
namespace ht = horovod::torch;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();
// Cutoffs beyond this many seconds (about 11.6 days) mean "wait for all": a larger one would
// overflow the clock's nanosecond count, and no step waits that long on purpose.
constexpr double kMaxCutoff = 1e6;
constexpr size_t kMaxObservations = 256;
constexpr double kCloseGraceSeconds = 5.0;
// A failed arrival channel becomes this engine's error after this long, unless an error that
// explains it (a rank's death or close, reported by Horovod) arrives first.
constexpr double kChannelGraceSeconds = 2.0;
// How long close() lets the step end by itself (every rank closing claims it) before it wakes
// its own waiter: the coordinator hosts the channel, so it waits longest. Taking the store down
// under the others' waiters would end them with c10d's "recvValue failed" stack traces.
constexpr double kHostCloseGraceSeconds = 5.0;
constexpr double kCloseWakeSeconds = 0.5;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double effective(double cutoff) { return cutoff > kMaxCutoff ? kInf : cutoff; }

Clock::time_point deadline_of(Clock::time_point start, double cutoff) {
  if (!(cutoff <= kMaxCutoff)) return Clock::time_point::max();
  return start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cutoff));
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

#ifdef HOROVOD_CUTOFF_WITH_CUDA
// A CUDA event Horovod waits for before it touches a buffer (an unpack still reading it, a
// header copy still writing it). Owns the event.
class CudaReady : public hc::ReadyEvent {
 public:
  static std::shared_ptr<CudaReady> record(cudaStream_t stream) {
    cudaEvent_t event = nullptr;
    if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) {
      throw std::runtime_error("horovod_cutoff: cudaEventCreate failed");
    }
    if (cudaEventRecord(event, stream) != cudaSuccess) {
      cudaEventDestroy(event);
      throw std::runtime_error("horovod_cutoff: cudaEventRecord failed");
    }
    return std::make_shared<CudaReady>(event);
  }
  explicit CudaReady(cudaEvent_t event) : event_(event) {}
  ~CudaReady() override { cudaEventDestroy(event_); }
  // An error also counts as ready: the op then reports it instead of waiting forever.
  bool Ready() const override { return cudaEventQuery(event_) != cudaErrorNotReady; }
  gpuEvent_t event() const override { return event_; }

 private:
  cudaEvent_t event_;
};
#endif
}  // namespace

// One fused buffer (gradients + header) and the host staging of its header.
struct Buffer {
  at::Tensor data;
  at::Tensor header;  // host, the buffer's dtype (pinned on CUDA)
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  std::shared_ptr<hc::ReadyEvent> last_use;  // device work that still reads or writes `data`
#endif
};
using BufferPtr = std::shared_ptr<Buffer>;

struct Completion {
  int64_t step;
  bool ok;
  std::string reason;
  Clock::time_point at;
};

struct Stored {
  StepResult result;
  BufferPtr output;  // null when count == 0 (nothing to apply, buffer recycled)
};

struct EngineState {
  EngineConfig config;
  Layout layout;
  at::TensorOptions options;

  // C++-owned buffers (never seen by Python: no GIL on their last release).
  BufferPtr zeros;
  std::vector<BufferPtr> free_outputs;
  BufferPtr in_flight;
  double submitted_at = 0;
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  c10::optional<c10::cuda::CUDAStream> side_stream;  // header copies: never the compute stream
  std::shared_ptr<hc::ReadyEvent> pending_pack;      // packed gradients not yet ready
  BufferPtr pending_buffer;
  double pending_time = 0;
#endif

  mutable std::mutex mu;
  std::condition_variable timer_cv;          // wakes the timer thread
  mutable std::condition_variable done_cv;   // wakes waiters on results and observations
  bool stop = false;
  bool closing = false;
  Clock::time_point close_by;
  std::string error;

  int64_t open = 0;                 // the step now collecting contributions
  Clock::time_point start;          // its clock origin
  double cutoff = kInf;             // its cutoff, the same on every rank
  double policy_cutoff = kInf;      // the coordinator's last delivered value
  int64_t policy_basis = -1;
  Clock::time_point deadline = Clock::time_point::max();
  bool submitted = false;           // this rank's contribution for `open` is claimed
  bool with_gradients = false;      // ... and carries gradients
  bool hold = false;                // no cut for `open`: paused, or at the lag bound
  bool paused = false;              // inside opt.paused()
  bool touched_by_pause = false;    // `open` was open while paused
  int64_t python_next = 0;          // the step the Python thread offers next
  double carried = std::numeric_limits<double>::quiet_NaN();  // coordinator's pending cutoff
  int64_t carried_basis = -1;

  std::deque<Completion> completions;
  std::map<int64_t, Stored> results;
  std::deque<StepResult> observations;  // coordinator: for the cutoff service
  int64_t dropped = 0;
  bool inject_timer_fault = false;  // tests: the timer throws at its first cut

  // The arrival channel. `channel` is set once (the coordinator: at construction; the others:
  // on the timer thread once step 0 told them its address) and then only read.
  std::unique_ptr<ArrivalChannel> channel;
  std::condition_variable arrival_cv;  // wakes the waiter, and a contribute() awaiting the channel
  bool channel_wanted = false;         // this engine uses one (config.arrivals and world > 1)
  std::string join_host;               // where to join it (known after step 0)
  int join_port = 0;
  std::string channel_fault;           // why it failed: the error at channel_fault_at
  Clock::time_point channel_fault_at = Clock::time_point::max();
  int64_t quorum = 0;                  // `open`'s k (0: none)
  int64_t policy_quorum = 0;
  int64_t carried_quorum = 0;
  bool waiting_all = false;  // `open`'s deadline passed with nobody arrived: no deadline cut
  bool ended = false;        // `open` ended at its quorum (its waiter has seen the end)
  bool cut_by_quorum = false;
  double announced_at = kNaN;
  int64_t waiter_step = -1;  // the step the waiter blocks on (close wakes it)
  bool waiter_done = false;

  // The channel serves step `step`: every rank uses it from step 1 on, or not at all.
  bool channel_serves(int64_t step) const {
    return channel_wanted && step >= 1 && channel_fault.empty();
  }
  int64_t quorum_k() const { return quorum > 0 ? quorum : config.world; }

  BufferPtr new_buffer(bool zero) {
    auto b = std::make_shared<Buffer>();
    b->data = zero ? at::zeros({layout.total()}, options) : at::empty({layout.total()}, options);
    auto host = at::TensorOptions().dtype(options.dtype()).device(at::kCPU);
    b->header = at::empty({layout.header_numel()}, host.pinned_memory(options.device().is_cuda()));
    return b;
  }

  BufferPtr take_free() {
    if (free_outputs.empty()) return nullptr;
    BufferPtr b = free_outputs.back();
    free_outputs.pop_back();
    return b;
  }

  // Fills this rank's header slots into `b` (all others zero). Device copies go on the side
  // stream; Horovod waits for them through `ready`.
  void write_header(Buffer& b, double weight, double time, bool cut, bool closed,
                    double next, int64_t basis, int64_t step, hc::ReadyEventList& ready) {
    const Layout& L = layout;
    const int64_t base = L.grad_numel;
    std::vector<double> h(L.header_numel(), 0.0);
    h[L.count() - base] = weight;
    if (config.rank == config.coordinator) {
      h[L.next_cutoff() - base] = next;
      h[L.cutoff_age() - base] = static_cast<double>(step - basis);
      h[L.next_quorum() - base] = static_cast<double>(carried_quorum);
      if (channel) {
        h[L.store_port() - base] = static_cast<double>(channel->port());
        in_addr a{};
        inet_pton(AF_INET, channel->address().c_str(), &a);  // checked at construction
        const auto* octets = reinterpret_cast<const uint8_t*>(&a.s_addr);
        for (int i = 0; i < 4; ++i) h[L.store_ip(i) - base] = octets[i];
      }
    }
    h[L.paused() - base] = touched_by_pause ? 1.0 : 0.0;
    h[L.time(config.rank) - base] = time;
    // 2 marks a rank that closed its optimizer: the others stop with a clear error.
    h[L.censored(config.rank) - base] = closed ? 2.0 : (cut ? 1.0 : 0.0);
    h[L.fingerprint(config.rank) - base] = static_cast<double>(config.fingerprint);
    h[L.behind(config.rank) - base] = static_cast<double>(std::max<int64_t>(open - python_next, 0));
    b.header.copy_(at::from_blob(h.data(), {L.header_numel()}, at::kDouble));
    auto slot = b.data.narrow(0, base, L.header_numel());
#ifdef HOROVOD_CUTOFF_WITH_CUDA
    if (b.data.is_cuda()) {
      c10::cuda::CUDAStreamGuard guard(*side_stream);
      slot.copy_(b.header, /*non_blocking=*/true);
      ready.AddReadyEvent(CudaReady::record(side_stream->stream()));
      if (b.last_use) ready.AddReadyEvent(b.last_use);
      return;
    }
#endif
    (void)ready;
    slot.copy_(b.header);
  }

  std::vector<double> read_header(Buffer& b) {
    auto slot = b.data.narrow(0, layout.grad_numel, layout.header_numel());
#ifdef HOROVOD_CUTOFF_WITH_CUDA
    if (b.data.is_cuda()) {
      // Horovod calls back once the reduction finished on the device; the side stream holds
      // no compute work, so this copy waits for nothing else.
      c10::cuda::CUDAStreamGuard guard(*side_stream);
      b.header.copy_(slot);
      side_stream->synchronize();
    } else {
      b.header.copy_(slot);
    }
#else
    b.header.copy_(slot);
#endif
    auto d = b.header.to(at::kDouble);
    return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  }
};

namespace {

void store_error(EngineState& s, const std::string& message) {
  if (s.error.empty()) s.error = message;
  s.done_cv.notify_all();
  s.timer_cv.notify_all();
  s.arrival_cv.notify_all();
}

// Lock held: a channel call failed. From now on deadlines cut as without a channel; the timer
// makes the fault this engine's error after a grace, unless the engine closes or an error
// that explains it comes first.
void channel_failed(EngineState& s, const std::string& what) {
  if (s.channel_fault.empty()) {
    s.channel_fault = "horovod_cutoff: the arrival channel (the TCPStore hosted by rank " +
                      std::to_string(s.config.coordinator) + ") failed on rank " +
                      std::to_string(s.config.rank) + ": " + what;
    s.channel_fault_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(kChannelGraceSeconds));
  }
  s.timer_cv.notify_all();
  s.arrival_cv.notify_all();
}

// Runs one channel round trip with the lock released (never held across the network);
// returns why it failed, or "" if it did not.
template <typename Call>
std::string unlocked(std::unique_lock<std::mutex>& lock, Call&& call) {
  lock.unlock();
  std::string fault;
  try {
    call();
  } catch (const std::exception& e) {
    fault = e.what();
  }
  lock.lock();
  return fault;
}

// Lock held on entry and exit (released for the round trip): announces this rank's claim of
// the open step `step`. A rank that has not joined the channel yet waits for it.
void announce(const std::shared_ptr<EngineState>& sp, std::unique_lock<std::mutex>& lock,
              int64_t step, bool arrival) {
  EngineState& s = *sp;
  if (!s.channel_serves(step)) return;
  s.arrival_cv.wait(lock, [&] {
    return s.channel || !s.channel_fault.empty() || !s.error.empty() || s.stop;
  });
  if (!s.channel || !s.channel_serves(step)) return;
  ArrivalChannel* channel = s.channel.get();
  const int64_t k = s.quorum_k();
  if (arrival) s.announced_at = seconds_between(s.start, Clock::now());
  const std::string fault = unlocked(lock, [&] { channel->announce(step, arrival, k); });
  if (!fault.empty()) channel_failed(s, fault);
}

// Lock held: this rank holds max_lag unapplied results, so it is not cut again; the others
// wait until its Python thread catches up (the lag bound).
bool at_lag_bound(EngineState& s) {
  if (static_cast<int>(s.results.size()) >= s.config.max_lag || s.free_outputs.empty()) {
    s.hold = true;
    return true;
  }
  return false;
}

// Submits `input` (reduced into `output`) as this rank's contribution to `step`. Called
// without the lock; the caller has claimed the step.
void submit(const std::shared_ptr<EngineState>& s, int64_t step, BufferPtr input,
            BufferPtr output, bool with_gradients, double time, bool closed = false) {
  hc::ReadyEventList ready;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->write_header(*input, with_gradients ? 1.0 : 0.0, time, !with_gradients, closed,
                    s->carried, s->carried_basis, step, ready);
    s->in_flight = output;
    s->submitted_at = seconds_between(s->start, Clock::now());
  }
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  if (output != input && output->last_use) ready.AddReadyEvent(output->last_use);
#endif
  const int device = s->config.device < 0 ? CPU_DEVICE_ID : s->config.device;
  auto context = std::make_shared<ht::TorchOpContext>(device, output->data);
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
      context, std::make_shared<ht::TorchTensor>(input->data),
      std::make_shared<ht::TorchTensor>(output->data), ready,
      "allreduce.hvdcut." + s->config.name, device, callback, hc::ReduceOp::SUM);
  if (!status.ok()) {
    std::lock_guard<std::mutex> lock(s->mu);
    store_error(*s, "horovod_cutoff: submitting step " + std::to_string(step) +
                        " failed: " + status.reason());
  }
}

// Claims the open step for a zero contribution, announces the claim (unless the step's end is
// already known) and submits it. Lock held on entry and exit.
void submit_zeros(const std::shared_ptr<EngineState>& s, std::unique_lock<std::mutex>& lock,
                  bool closed = false, bool announce_claim = true) {
  BufferPtr output = s->take_free();
  if (!output) {  // unreachable while the lag bound holds; never hang on it
    store_error(*s, "horovod_cutoff: internal error: no free output buffer at step " +
                        std::to_string(s->open));
    return;
  }
  s->submitted = true;
  s->with_gradients = false;
  const int64_t step = s->open;
  // The censored time: the cutoff, or when the step ended for this rank (a quorum, waiting).
  const double elapsed = seconds_between(s->start, Clock::now());
  const double time = std::isfinite(s->cutoff) ? std::min(s->cutoff, elapsed) : elapsed;
  if (announce_claim) announce(s, lock, step, /*arrival=*/false);
  lock.unlock();
  submit(s, step, s->zeros, output, /*with_gradients=*/false, time, closed);
  lock.lock();
}

// Lock held: records reduction c.step and opens the next step.
void complete(EngineState& s, const Completion& c) {
  if (!c.ok) {
    store_error(s, "horovod_cutoff: reduction of step " + std::to_string(c.step) +
                       " failed (a rank may have died or disagreed on the model): " + c.reason);
    return;
  }
  BufferPtr output = std::move(s.in_flight);
  const Layout& L = s.layout;
  const int64_t base = L.grad_numel;
  const std::vector<double> h = s.read_header(*output);
  auto at = [&](int64_t index) { return h[index - base]; };

  StepResult r;
  r.step = c.step;
  r.count = std::llround(at(L.count()));
  r.cutoff = s.cutoff;
  r.quorum = s.quorum;
  r.seconds = seconds_between(s.start, c.at);
  r.submitted_at = s.submitted_at;
  r.announced_at = s.announced_at;
  r.started = std::chrono::duration<double>(s.start.time_since_epoch()).count();
  r.contributed = s.with_gradients;
  r.ended_by_quorum = s.cut_by_quorum;
  r.paused = at(L.paused()) > 0.5;
  std::vector<int> closed;
  for (int64_t k = 0; k < s.config.world; ++k) {
    const double flag = at(L.censored(k));
    if (flag > 1.5) closed.push_back(static_cast<int>(k));
    r.times.push_back(at(L.time(k)));
    r.censored.push_back(flag > 0.5 ? 1 : 0);
    r.fingerprints.push_back(std::llround(at(L.fingerprint(k))));
    r.behind.push_back(std::llround(at(L.behind(k))));
  }
  if (!closed.empty() && !s.closing) {
    std::string who;
    for (int k : closed) who += (who.empty() ? "" : ", ") + std::to_string(k);
    store_error(s, "horovod_cutoff: rank(s) " + who + " closed or dropped this "
                   "DistributedOptimizer at step " + std::to_string(c.step) +
                   " while this rank still steps it; every rank must step the same optimizer");
    s.free_outputs.push_back(output);
    return;
  }
  // The coordinator's value, unless it had none yet (its Python thread is late): reuse.
  const double delivered = at(L.next_cutoff());
  if (delivered > 0) {
    s.policy_cutoff = effective(delivered);
    s.policy_quorum = std::llround(at(L.next_quorum()));
    s.policy_basis = c.step - std::llround(at(L.cutoff_age()));
  }
  double next = s.policy_cutoff;
  int64_t next_quorum = s.policy_quorum;
  r.cutoff_basis = s.policy_basis;
  // A policy that stopped answering (its service is stuck): wait for all until it answers.
  // Nobody made it: the next step waits for every rank, identically on every rank. (The one
  // rule for a step nobody made; the simulator's copy is policies.base.cutoff_after_empty_step.)
  if (c.step - s.policy_basis > s.config.watchdog_steps || r.count == 0) {
    next = kInf;
    next_quorum = 0;
  }
  r.next_cutoff = next;
  if (c.step == 0 && s.channel_wanted && !s.channel) {
    // Where the coordinator's arrival channel listens; the timer thread joins it next.
    s.join_port = static_cast<int>(std::llround(at(L.store_port())));
    if (!s.config.store_host.empty()) {
      s.join_host = s.config.store_host;
    } else {
      s.join_host.clear();
      for (int i = 0; i < 4; ++i) {
        s.join_host += (i ? "." : "") + std::to_string(std::llround(at(L.store_ip(i))));
      }
    }
    if (s.join_port <= 0) {
      channel_failed(s, "the coordinator advertised no channel (was it built with arrivals off?)");
    }
  }

  const bool keep = r.count > 0;
  if (!keep) s.free_outputs.push_back(output);
  if (s.config.rank == s.config.coordinator && c.step > 0) {
    if (s.observations.size() >= kMaxObservations) {
      s.observations.pop_front();
      ++s.dropped;
    }
    s.observations.push_back(r);
  }
  s.results.emplace(c.step, Stored{std::move(r), keep ? output : nullptr});

  s.open = c.step + 1;
  s.start = c.at;
  s.cutoff = next;
  s.quorum = next_quorum;
  s.deadline = deadline_of(s.start, next);
  s.submitted = false;
  s.with_gradients = false;
  s.hold = s.paused;
  s.touched_by_pause = s.paused;
  s.waiting_all = false;
  s.ended = false;
  s.cut_by_quorum = false;
  s.announced_at = kNaN;
  s.done_cv.notify_all();
  s.arrival_cv.notify_all();
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

// Lock held (released for the round trip): may the deadline cut this computing rank? Only if
// someone has arrived; if nobody has, the step waits for every rank, or the quorum
// (waiting_all). Without a working channel the deadline alone decides.
bool deadline_cuts(EngineState& s, std::unique_lock<std::mutex>& lock) {
  if (!s.channel_serves(s.open) || !s.channel) return true;
  const int64_t step = s.open;
  ArrivalChannel* channel = s.channel.get();
  Tally tally;
  const std::string fault = unlocked(lock, [&] { tally = channel->mark(step); });
  if (!fault.empty()) {
    channel_failed(s, fault);
    return true;
  }
  if (s.open == step && tally.arrivals == 0) {
    s.waiting_all = true;
    return false;
  }
  return true;
}

// One pass of the timer: returns false when the thread should end. Lock held.
bool timer_pass(const std::shared_ptr<EngineState>& sp, std::unique_lock<std::mutex>& lock) {
  EngineState& s = *sp;
  while (!s.completions.empty()) {
    Completion c = std::move(s.completions.front());
    s.completions.pop_front();
    complete(s, c);
  }
  if (s.stop) return false;
  if (s.channel_wanted && !s.channel && s.join_port > 0 && s.channel_fault.empty() &&
      !s.closing) {
    // Join the coordinator's channel before anything of step 1 happens on this rank.
    const std::string host = s.join_host;
    const int port = s.join_port;
    std::unique_ptr<ArrivalChannel> joined;
    const std::string fault = unlocked(lock, [&] {
      joined = ArrivalChannel::join(s.config.name, host, port, s.config.rank, s.config.world,
                                    s.config.store_timeout);
    });
    if (joined) s.channel = std::move(joined);
    if (!fault.empty()) {
      channel_failed(s, "could not reach " + host + ":" + std::to_string(port) +
                            " (set HOROVOD_CUTOFF_STORE_ADDR to an address every rank reaches): " +
                            fault);
    }
    s.arrival_cv.notify_all();
    return true;
  }
  const auto now = Clock::now();
  if (!s.channel_fault.empty() && s.error.empty() && !s.closing && now >= s.channel_fault_at) {
    store_error(s, s.channel_fault);
  }
  if (s.closing) {
    // Tell the other ranks, through the open step, that this optimizer is gone.
    if (!s.submitted && s.error.empty()) {
      submit_zeros(sp, lock, /*closed=*/true);
      return false;
    }
    if (now >= s.close_by || !s.error.empty()) return false;
    s.timer_cv.wait_until(lock, s.close_by);
    return true;
  }
  if (!s.error.empty()) {
    s.timer_cv.wait(lock);
    return true;
  }
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  if (s.pending_pack) {
    const bool ready = s.pending_pack->Ready();
    bool late = s.ended || (now >= s.deadline && !s.hold && !s.waiting_all);
    if (late && !s.ended) {
      const int64_t step = s.open;
      late = deadline_cuts(s, lock);
      if (s.open != step || !s.pending_pack) return true;  // changed meanwhile: look again
    }
    if (ready || late) {
      BufferPtr packed = std::move(s.pending_buffer);
      packed->last_use = std::move(s.pending_pack);
      const int64_t step = s.open;
      if (ready && !late) {
        const double time = s.pending_time;
        announce(sp, lock, step, /*arrival=*/true);
        lock.unlock();
        submit(sp, step, packed, packed, /*with_gradients=*/true, time);
        lock.lock();
      } else {
        // The device did not finish the gradients in time: zeros go in, and the packed
        // buffer returns to the pool (Horovod waits for the pack before reusing it).
        s.free_outputs.push_back(packed);
        s.submitted = false;
        s.cut_by_quorum = s.ended;
        submit_zeros(sp, lock, /*closed=*/false, /*announce_claim=*/!s.ended);
      }
      return true;
    }
    s.timer_cv.wait_for(lock, std::chrono::microseconds(50));
    return true;
  }
#endif
  if (!s.submitted && !s.hold && !s.waiting_all && now >= s.deadline) {
    if (at_lag_bound(s)) return true;
    if (s.inject_timer_fault) {
      s.inject_timer_fault = false;
      throw std::runtime_error("injected fault (HOROVOD_CUTOFF_INJECT_TIMER_FAULT)");
    }
    const int64_t step = s.open;
    if (!deadline_cuts(s, lock)) return true;
    if (s.open != step || s.submitted || s.hold) return true;  // changed meanwhile: look again
    submit_zeros(sp, lock);
    return true;
  }
  auto until = Clock::time_point::max();
  if (!s.submitted && !s.hold && !s.waiting_all) until = s.deadline;
  if (!s.channel_fault.empty() && s.error.empty()) until = std::min(until, s.channel_fault_at);
  if (until == Clock::time_point::max()) {
    s.timer_cv.wait(lock);
  } else {
    s.timer_cv.wait_until(lock, until);
  }
  return true;
}

void timer_loop(std::shared_ptr<EngineState> s) {
  raise_timer_priority();
  std::unique_lock<std::mutex> lock(s->mu);
  for (;;) {
    try {
      if (!timer_pass(s, lock)) break;
    } catch (const std::exception& e) {
      if (!lock.owns_lock()) lock.lock();
      store_error(*s, std::string("horovod_cutoff: the deadline timer failed: ") + e.what());
    } catch (...) {
      if (!lock.owns_lock()) lock.lock();
      store_error(*s, "horovod_cutoff: the deadline timer failed (unknown exception)");
    }
  }
  s->stop = true;
  s->done_cv.notify_all();
  s->arrival_cv.notify_all();
}

// The arrival channel's waiter: for each step from 1 on, blocks until the step ends (the
// k-th arrival, or every rank has claimed it) and cuts this rank if it is still computing.
// It visits every step in order, so each of its wake keys is deleted once used.
void waiter_loop(std::shared_ptr<EngineState> sp) {
  EngineState& s = *sp;
  const bool coordinator = s.config.rank == s.config.coordinator;
  std::unique_lock<std::mutex> lock(s.mu);
  struct Done {  // however the loop ends, close() learns of it
    EngineState& s;
    ~Done() {
      s.waiter_done = true;
      s.arrival_cv.notify_all();
    }
  } done{s};
  auto quit = [&] { return s.stop || s.closing || !s.error.empty() || !s.channel_fault.empty(); };
  for (int64_t t = 1;; ++t) {
    s.arrival_cv.wait(lock, [&] { return quit() || (s.channel && s.open >= t); });
    if (quit()) break;
    ArrivalChannel* channel = s.channel.get();
    s.waiter_step = t;
    std::string fault = unlocked(lock, [&] { channel->wait_end(t); });
    s.waiter_step = -1;
    if (s.stop || s.closing) break;
    if (!fault.empty()) {
      channel_failed(s, fault);
      break;
    }
    if (s.open == t) {
      s.ended = true;
      if (!s.submitted && !s.hold && !at_lag_bound(s)) {
        s.cut_by_quorum = true;
        submit_zeros(sp, lock, /*closed=*/false, /*announce_claim=*/false);
      }
      s.timer_cv.notify_all();  // a device pack still pending is now too late
    }
    fault = unlocked(lock, [&] { channel->forget(t, /*previous_counter=*/coordinator); });
    if (!fault.empty()) {
      if (!s.stop && !s.closing) channel_failed(s, fault);
      break;
    }
  }
}

}  // namespace

Engine::Engine(const EngineConfig& config) {
  if (config.world < 1 || config.rank < 0 || config.rank >= config.world) {
    throw std::invalid_argument("bad rank/world");
  }
  if (config.coordinator < 0 || config.coordinator >= config.world) {
    throw std::invalid_argument("coordinator must be a rank in [0, world)");
  }
  if (config.grad_numel < 0) throw std::invalid_argument("grad_numel must be >= 0");
  if (!(config.first_cutoff > 0)) throw std::invalid_argument("first_cutoff must be > 0");
  if (config.max_lag < 1) throw std::invalid_argument("max_lag must be >= 1");
  if (config.watchdog_steps < 1) throw std::invalid_argument("watchdog_steps must be >= 1");
  hc::Status init = hc::CheckInitialized();
  if (!init.ok()) throw std::runtime_error("horovod_cutoff: " + init.reason());
#ifndef HOROVOD_CUTOFF_WITH_CUDA
  if (config.device >= 0) {
    throw std::runtime_error(
        "horovod_cutoff was built without CUDA; rebuild with scripts/setup.sh on a GPU machine");
  }
#endif
  auto s = std::make_shared<EngineState>();
  s->config = config;
  s->layout = Layout{config.grad_numel, config.world};
  s->options = at::TensorOptions().dtype(config.dtype).device(
      config.device < 0 ? at::Device(at::kCPU) : at::Device(at::kCUDA, config.device));
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  if (config.device >= 0) {
    s->side_stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/true,
                                                  static_cast<c10::DeviceIndex>(config.device));
  }
#endif
  // Every buffer now, on this (Python) thread: an allocation failure is an error here, never
  // on the timer thread, and memory stays flat however far this rank lags.
  s->zeros = s->new_buffer(/*zero=*/true);
  for (int i = 0; i <= config.max_lag; ++i) s->free_outputs.push_back(s->new_buffer(false));
  const char* fault = std::getenv("HOROVOD_CUTOFF_INJECT_TIMER_FAULT");
  s->inject_timer_fault = fault != nullptr && std::strcmp(fault, "1") == 0;
  s->channel_wanted = config.arrivals && config.world > 1;
  if (s->channel_wanted && config.rank == config.coordinator) {
    in_addr a{};
    if (inet_pton(AF_INET, config.store_host.c_str(), &a) != 1) {
      throw std::invalid_argument("store_host must be an IPv4 address the other ranks reach, got '" +
                                  config.store_host + "'");
    }
    if (config.store_port < 0 || config.store_port > 65535) {
      throw std::invalid_argument("store_port must lie in [0, 65535] (0: any free port)");
    }
    try {
      s->channel = ArrivalChannel::host(config.name, config.store_host, config.store_port,
                                        config.rank, config.world, config.store_timeout);
    } catch (const std::exception& e) {
      throw std::runtime_error("horovod_cutoff: could not host the arrival channel at " +
                               config.store_host + ":" + std::to_string(config.store_port) +
                               ": " + e.what());
    }
  }
  s->start = Clock::now();
  s->cutoff = effective(config.first_cutoff);
  s->deadline = deadline_of(s->start, s->cutoff);
  state_ = s;
  timer_ = std::thread(timer_loop, s);
  if (s->channel_wanted) waiter_ = std::thread(waiter_loop, s);
}

Engine::~Engine() {
  try {
    close();
  } catch (...) {
  }
}

void Engine::close() {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!state_->closing && !state_->stop) {
      state_->closing = true;
      state_->close_by = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(kCloseGraceSeconds));
    }
    state_->timer_cv.notify_all();
    state_->done_cv.notify_all();
    state_->arrival_cv.notify_all();
  }
  if (timer_.joinable()) timer_.join();  // sends (and announces) this rank's closing zeros
  if (waiter_.joinable()) {
    int64_t blocked_on = -1;
    {
      std::unique_lock<std::mutex> lock(state_->mu);
      const bool hosts = state_->config.rank == state_->config.coordinator;
      state_->arrival_cv.wait_for(
          lock, std::chrono::duration<double>(hosts ? kHostCloseGraceSeconds : kCloseWakeSeconds),
          [&] { return state_->waiter_done; });
      if (!state_->waiter_done) blocked_on = state_->waiter_step;
    }
    if (blocked_on >= 0 && state_->channel) {
      try {
        state_->channel->wake(blocked_on);
      } catch (...) {
        // A dead channel has already failed the wait.
      }
    }
    waiter_.join();
  }
}

Outcome Engine::contribute(int64_t step, const std::vector<at::Tensor>& grads) {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  // A step already reduced (this rank is behind) needs nothing from Horovod any more: its
  // result is applied even if Horovod has since shut down (another rank finished first).
  if (step < s.open) return Outcome::kLate;
  if (!s.error.empty()) throw std::runtime_error(s.error);
  if (s.stop || s.closing) throw std::runtime_error("horovod_cutoff: the optimizer was closed");
  if (step > s.open) {
    throw std::logic_error("horovod_cutoff: step " + std::to_string(step) +
                           " offered before step " + std::to_string(s.open) + " was reduced");
  }
  if (s.submitted) return Outcome::kCut;  // the timer sent zeros while this rank computed
  const auto now = Clock::now();
  // With the channel only a claim cuts (a deadline nobody met waits for this rank too).
  const bool arrivals = s.channel_serves(step);
  if (!arrivals && now >= s.deadline && !s.hold) {
    submit_zeros(state_, lock);
    return Outcome::kCut;
  }
  BufferPtr buffer = s.take_free();
  if (!buffer) {
    submit_zeros(state_, lock);  // stores the internal error
    throw std::runtime_error(s.error);
  }
  s.submitted = true;
  s.with_gradients = true;
  const double time = seconds_between(s.start, now);
  // On a device the arrival is when its gradients are ready: the timer announces it then.
  if (arrivals && s.config.device < 0) announce(state_, lock, step, /*arrival=*/true);
  lock.unlock();
  try {
    pack_gradients(grads, buffer->data);
  } catch (...) {
    // Nothing of this rank went in yet: send zeros so the others never wait for it.
    lock.lock();
    s.with_gradients = false;
    lock.unlock();
    submit(state_, step, s.zeros, buffer, /*with_gradients=*/false, time);
    throw;
  }
#ifdef HOROVOD_CUTOFF_WITH_CUDA
  if (s.config.device >= 0) {
    // The gradients count only if the device finishes them before the deadline: the timer
    // thread polls this event and submits gradients or zeros, whichever is due.
    auto stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(s.config.device));
    auto packed = CudaReady::record(stream.stream());
    std::lock_guard<std::mutex> relock(s.mu);
    s.pending_pack = packed;
    s.pending_buffer = buffer;
    s.pending_time = time;
    s.timer_cv.notify_all();
    return Outcome::kContributed;
  }
#endif
  submit(state_, step, buffer, buffer, /*with_gradients=*/true, time);
  return Outcome::kContributed;
}

void Engine::withdraw(int64_t step) {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  if (step != s.open || s.submitted || s.stop || s.closing || !s.error.empty()) return;
  submit_zeros(state_, lock);
}

bool Engine::is_cut(int64_t step) const {
  auto& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (step < s.open) return true;
  if (step > s.open) return false;
  if (s.submitted) return !s.with_gradients;
  if (s.channel_serves(step)) return false;  // only a claim cuts
  return !s.hold && Clock::now() >= s.deadline;
}

bool Engine::wait(int64_t step, double timeout_s) const {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                        std::chrono::duration<double>(timeout_s));
  const bool ready = s.done_cv.wait_until(lock, until, [&] {
    return s.results.count(step) > 0 || !s.error.empty() || s.stop || s.closing;
  });
  if (s.results.count(step) > 0) return true;
  if (!s.error.empty()) throw std::runtime_error(s.error);
  if (s.stop || s.closing) throw std::runtime_error("horovod_cutoff: the optimizer was closed");
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
    s.python_next = step + 1;
  }
  if (stored.output) {
    unpack_gradients(stored.output->data, grads, stored.result.count);
#ifdef HOROVOD_CUTOFF_WITH_CUDA
    if (stored.output->data.is_cuda()) {
      // Horovod must not overwrite the buffer before this unpack has read it.
      auto stream = c10::cuda::getCurrentCUDAStream(stored.output->data.device().index());
      stored.output->last_use = CudaReady::record(stream.stream());
    }
#endif
    std::lock_guard<std::mutex> lock(s.mu);
    s.free_outputs.push_back(stored.output);
    s.timer_cv.notify_all();  // a rank at its lag bound may be cut again
  } else {
    zero_gradients(grads);
  }
  return stored.result;
}

void Engine::set_next_cutoff(double seconds, int64_t basis, int64_t quorum) {
  if (quorum < 0 || quorum > state_->config.world) {
    throw std::invalid_argument("quorum must lie in [0, world] (0: none), got " +
                                std::to_string(quorum));
  }
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->carried = seconds;
  state_->carried_basis = basis;
  state_->carried_quorum = quorum;
}

int Engine::store_port() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->channel ? state_->channel->port() : 0;
}

std::vector<StepResult> Engine::next_observations(double timeout_s) {
  auto& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.done_cv.wait_for(lock, std::chrono::duration<double>(timeout_s),
                     [&] { return !s.observations.empty() || s.stop || s.closing; });
  std::vector<StepResult> out(s.observations.begin(), s.observations.end());
  s.observations.clear();
  return out;
}

int64_t Engine::dropped_observations() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->dropped;
}

void Engine::pause() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->paused = true;
  state_->hold = true;
  state_->touched_by_pause = true;
  state_->timer_cv.notify_all();
}

void Engine::resume() {
  // The step open now keeps its hold: it waits for this rank, whatever its deadline.
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->paused = false;
  state_->timer_cv.notify_all();
}

int64_t Engine::open_step() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->open;
}

}  // namespace hvdcut
