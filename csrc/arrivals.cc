#include "arrivals.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <stdexcept>

namespace hvdcut {

namespace {
// Field widths of the counter: up to 2^20 - 1 ranks.
constexpr int64_t kCut = int64_t{1} << 20;
constexpr int64_t kMark = int64_t{1} << 40;
constexpr int64_t kField = kCut - 1;
// A wait_end slice: a step may legitimately last longer, so a slice that times out is
// retried; its only cost is one c10d log line per slice.
constexpr std::chrono::seconds kWaitSlice{120};

Tally decode(int64_t v) {
  return Tally{v & kField, (v >> 20) & kField, v >> 40};
}

std::shared_ptr<c10d::Store> as_shared(c10::intrusive_ptr<c10d::Store> store) {
  // intrusive_ptr -> shared_ptr that keeps one reference for its lifetime.
  c10d::Store* raw = store.release();
  return std::shared_ptr<c10d::Store>(
      raw, [](c10d::Store* p) { c10::intrusive_ptr<c10d::Store>::reclaim(p); });
}
}  // namespace

std::unique_ptr<ArrivalChannel> ArrivalChannel::open(const std::string& name,
                                                     const std::string& host, int port,
                                                     bool server, int rank, int world,
                                                     double timeout_s) {
  if (world >= kCut) throw std::invalid_argument("the arrival channel supports < 2^20 ranks");
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(port);
  opts.isServer = server;
  opts.waitWorkers = false;
  opts.numWorkers = std::nullopt;
  opts.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  auto store = c10::make_intrusive<c10d::TCPStore>(host, opts);
  std::unique_ptr<ArrivalChannel> ch(new ArrivalChannel());
  ch->prefix_ = "hvdcut/" + name + "/";
  ch->host_ = host;
  ch->port_ = store->getPort();
  ch->rank_ = rank;
  ch->world_ = world;
  ch->waiter_ = as_shared(store->clone());
  ch->ops_ = as_shared(std::move(store));
  return ch;
}

std::unique_ptr<ArrivalChannel> ArrivalChannel::host(const std::string& name,
                                                     const std::string& host, int port, int rank,
                                                     int world, double timeout_s) {
  return open(name, host, port, /*server=*/true, rank, world, timeout_s);
}

std::unique_ptr<ArrivalChannel> ArrivalChannel::join(const std::string& name,
                                                     const std::string& host, int port, int rank,
                                                     int world, double timeout_s) {
  return open(name, host, port, /*server=*/false, rank, world, timeout_s);
}

ArrivalChannel::~ArrivalChannel() = default;

std::string ArrivalChannel::counter_key(int64_t step) const {
  return prefix_ + "a/" + std::to_string(step);
}

std::string ArrivalChannel::wake_key(int64_t step, int64_t rank) const {
  return prefix_ + "w/" + std::to_string(step) + "/" + std::to_string(rank);
}

Tally ArrivalChannel::announce(int64_t step, bool arrival, int64_t quorum) {
  const Tally t = decode(ops_->add(counter_key(step), arrival ? 1 : kCut));
  const bool quorum_reached = arrival && t.arrivals == quorum;
  const bool all_claimed = t.arrivals + t.cuts == world_ && t.arrivals < quorum;
  if (quorum_reached || all_claimed) {
    std::vector<std::string> keys;
    std::vector<std::vector<uint8_t>> values;
    keys.reserve(world_);
    for (int64_t r = 0; r < world_; ++r) {
      keys.push_back(wake_key(step, r));
      values.push_back({static_cast<uint8_t>(quorum_reached ? 'q' : 'a')});
    }
    ops_->multiSet(keys, values);
  }
  return t;
}

Tally ArrivalChannel::mark(int64_t step) {
  Tally t = decode(ops_->add(counter_key(step), kMark));
  t.marks -= 1;  // the tally before this mark
  return t;
}

void ArrivalChannel::wait_end(int64_t step) {
  const std::vector<std::string> keys{wake_key(step, rank_)};
  for (;;) {
    try {
      waiter_->wait(keys, kWaitSlice);
      return;
    } catch (const c10::DistStoreError& e) {
      // A timeout is a long step, not a fault: check the store still answers, then go on.
      // (A dead store fails the check, or the wait, with another error.)
      if (std::string(e.what()).find("timeout") == std::string::npos) throw;
      waiter_->check(keys);
    }
  }
}

void ArrivalChannel::wake(int64_t step) { ops_->set(wake_key(step, rank_), std::vector<uint8_t>{'w'}); }

void ArrivalChannel::forget(int64_t step, bool counter) {
  ops_->deleteKey(wake_key(step, rank_));
  if (counter) ops_->deleteKey(counter_key(step));
}

}  // namespace hvdcut
