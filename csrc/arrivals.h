// The arrival channel (DESIGN "Arrivals"): a c10d TCPStore hosted by the coordinator, through
// which the ranks of one engine learn, inside a step, how many have arrived. It lets a step
// end at min(cutoff, k-th arrival) and keeps a step from ending with nobody while ranks
// compute. Every call is a blocking network round trip: never call one with the engine's
// mutex held.
//
// Per step t, on one counter A(t) (a single atomic add answers every question at once):
//   arrival  (a rank claims t with its gradients)    adds 1
//   cut      (a rank claims t with zeros)            adds kCut
//   mark     (a computing rank reached its deadline) adds kMark
// The add that makes arrivals reach the quorum k, or arrivals + cuts reach N with fewer than
// k arrivals (every rank has claimed), sets every rank's wake key W(t, r) in one multiSet:
// that is the step's end, and it happens exactly once per step. Each rank's waiter thread
// blocks on its own W(t, r) (no timeouts: c10d logs each one), so a rank can also wake its
// own waiter (close) without ending the step for the others.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace c10d {
class Store;
}

namespace hvdcut {

struct Tally {
  int64_t arrivals = 0;  // ranks that claimed the step with gradients
  int64_t cuts = 0;      // ranks that claimed it with zeros
  int64_t marks = 0;     // deadlines reached by ranks still computing
};

class ArrivalChannel {
 public:
  // The coordinator: hosts the store on `port` (0: any free port) on every interface and
  // advertises `host`, which the other ranks must reach.
  static std::unique_ptr<ArrivalChannel> host(const std::string& name, const std::string& host,
                                              int port, int rank, int world, double timeout_s);
  // Any other rank: connects to the coordinator's store (retries until timeout_s).
  static std::unique_ptr<ArrivalChannel> join(const std::string& name, const std::string& host,
                                              int port, int rank, int world, double timeout_s);
  ~ArrivalChannel();

  int port() const { return port_; }
  const std::string& address() const { return host_; }

  // This rank claimed step t with gradients (arrival) or zeros (cut); `quorum` is the step's
  // k (1..N). Ends the step for everyone when this claim completes the rule above.
  Tally announce(int64_t step, bool arrival, int64_t quorum);
  // This rank reached step t's deadline while computing: the tally before its mark.
  Tally mark(int64_t step);
  // The waiter thread: blocks until step t ends (or wake(t) from this rank). Separate
  // connection, so announce() and mark() never queue behind it.
  void wait_end(int64_t step);
  // Releases this rank's waiter from step t (closing).
  void wake(int64_t step);
  // Deletes this rank's wake key of step t (after wait_end returned); the coordinator also
  // deletes the counter of step t (once the step is reduced: nobody adds to it any more).
  void forget(int64_t step, bool counter);

 private:
  ArrivalChannel() = default;
  static std::unique_ptr<ArrivalChannel> open(const std::string& name, const std::string& host,
                                              int port, bool server, int rank, int world,
                                              double timeout_s);
  std::string counter_key(int64_t step) const;
  std::string wake_key(int64_t step, int64_t rank) const;

  std::string prefix_;
  std::string host_;
  int port_ = 0;
  int rank_ = 0;
  int world_ = 1;
  std::shared_ptr<c10d::Store> ops_;     // announce, mark, wake, forget
  std::shared_ptr<c10d::Store> waiter_;  // wait_end only
};

}  // namespace hvdcut
