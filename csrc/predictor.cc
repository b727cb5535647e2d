// The CPU predictor (see predictor.h): weights, buffers, locking, the step's features and
// the choice of kernels; the arithmetic of the network and the argmax is in
// predictor_kernels.cc. Invariants:
// - nothing allocates after construction: step, prepare and set_noise use the buffers;
// - two copies of the weights: load_weights writes the one no step reads (a step holds its
//   copy's mutex; a writer takes the spare's), then flips the index;
// - a step that throws (bad times) leaves the state as it was.
#include "predictor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

namespace hvdcut {

namespace {
constexpr int kFeatures = 3;      // normalised log time, censored flag, present flag
constexpr int kStats = 3;         // mean normalised log time, fraction censored, fraction present
constexpr float kYClamp = 6.0f;   // model.network.Y_CLAMP
constexpr float kRefRate = 0.1f;  // model.network.REF_RATE
constexpr int kPad = 8;           // rows of the feature-major buffers: a multiple of this
constexpr int kChunk = 1024;      // samples binned per pass (bin indices stay in L1)
constexpr int kNoiseChunk = 1024;  // random words per pass of the noise draw

size_t padded(size_t n) { return (n + kPad - 1) / kPad * kPad; }

// The row stride of a feature-major buffer: n padded to kPad, and kept 64 bytes or more away
// from a multiple of 2 KiB: rows 4 KiB apart share an L1 set, and a product reading 27-48 rows
// (its inputs) would evict its own lines.
size_t stride(size_t n) {
  size_t p = padded(n);
  while (p >= 256 && (p % 512 < 16 || p % 512 > 496)) p += kPad;
  return p;
}

const HostTensor& find(const WeightMap& weights, const std::string& name) {
  auto it = weights.find(name);
  if (it == weights.end()) throw std::invalid_argument("model: weights have no '" + name + "'");
  return it->second;
}

// A view of nn.Linear "name" (weight [out][in], bias [out]); `in`, if given, is checked.
LinearView linear(const WeightMap& weights, const std::string& name, int in = -1) {
  const HostTensor& w = find(weights, name + ".weight");
  const HostTensor& b = find(weights, name + ".bias");
  if (w.shape.size() != 2 || b.shape.size() != 1 || b.shape[0] != w.shape[0] ||
      (in >= 0 && w.shape[1] != in)) {
    throw std::invalid_argument("model: unexpected shape of '" + name + "'");
  }
  return LinearView{static_cast<int>(w.shape[1]), static_cast<int>(w.shape[0]), w.data.data(),
                    b.data.data()};
}

GruView gru(const WeightMap& weights, const std::string& name, int in, int hidden) {
  const HostTensor& wih = find(weights, name + ".weight_ih");
  const HostTensor& whh = find(weights, name + ".weight_hh");
  const HostTensor& bih = find(weights, name + ".bias_ih");
  const HostTensor& bhh = find(weights, name + ".bias_hh");
  const int64_t gates = 3 * static_cast<int64_t>(hidden);
  using Shape = std::vector<int64_t>;
  if (wih.shape != Shape{gates, in} || whh.shape != Shape{gates, hidden} ||
      bih.shape != Shape{gates} || bhh.shape != Shape{gates}) {
    throw std::invalid_argument("model: unexpected shape of '" + name + "'");
  }
  const int g = static_cast<int>(gates);
  return GruView{LinearView{in, g, wih.data.data(), bih.data.data()},
                 LinearView{hidden, g, whh.data.data(), bhh.data.data()}};
}

Dims read_dims(const WeightMap& weights) {
  Dims d;
  const HostTensor& whh = find(weights, "worker_cell.weight_hh");
  const HostTensor& ghh = find(weights, "global_cell.weight_hh");
  const HostTensor& emb = find(weights, "worker_embed.2.weight");
  const HostTensor& pri = find(weights, "prior_net.2.weight");
  const HostTensor& emi = find(weights, "emission_net.2.weight");
  if (whh.shape.size() != 2 || ghh.shape.size() != 2 || emb.shape.size() != 2 ||
      pri.shape.size() != 2 || emi.shape.size() != 2) {
    throw std::invalid_argument("model: weights of unexpected rank");
  }
  d.H = static_cast<int>(whh.shape[1]);
  d.G = static_cast<int>(ghh.shape[1]);
  d.E = static_cast<int>(emb.shape[0]);
  d.D = static_cast<int>(pri.shape[0] / 2);
  d.K = static_cast<int>((emi.shape[0] - d.D) / 3);
  if (d.H < 1 || d.G < 1 || d.E < 1 || d.D < 1 || d.K < 1 || pri.shape[0] != 2 * d.D ||
      emi.shape[0] != 3 * d.K + d.D) {
    throw std::invalid_argument("model: inconsistent sizes in the weights");
  }
  return d;
}

// Copies `m` into `w` and points its view at the copy, checking every shape.
void fill(PredictorWeights& w, const WeightMap& m) {
  const Dims d = read_dims(m);
  for (const auto& item : m) {
    size_t count = 1;
    for (int64_t s : item.second.shape) count *= static_cast<size_t>(s);
    if (count != item.second.data.size()) {
      throw std::invalid_argument("model: '" + item.first + "' holds fewer values than its shape");
    }
  }
  w.storage = m;
  const WeightMap& s = w.storage;
  WeightsView& v = w.view;
  v.embed1 = linear(s, "worker_embed.0", kFeatures + d.H);
  v.embed2 = linear(s, "worker_embed.2", v.embed1.out);
  v.post1 = linear(s, "posterior_net.0", d.G + d.D + d.E + kStats);
  v.post2 = linear(s, "posterior_net.2", v.post1.out);
  v.prior1 = linear(s, "prior_net.0", d.G + d.D);
  v.prior2 = linear(s, "prior_net.2", v.prior1.out);
  v.emit1 = linear(s, "emission_net.0", d.H + d.G);
  v.emit2 = linear(s, "emission_net.2", v.emit1.out);
  v.worker = gru(s, "worker_cell", kFeatures + d.D + d.G, d.H);
  v.global = gru(s, "global_cell", d.E + kStats + d.D, d.G);
  if (v.embed2.out != d.E || v.post2.out != 2 * d.D || v.prior2.out != 2 * d.D ||
      v.emit2.out != 3 * d.K + d.D) {
    throw std::invalid_argument("model: inconsistent output sizes in the weights");
  }
}

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

const KernelTable* choose_kernels(const std::string& isa) {
  if (isa != "auto" && isa != "avx2" && isa != "baseline") {
    throw std::invalid_argument("isa must be 'auto', 'avx2' or 'baseline', got '" + isa + "'");
  }
#ifdef HOROVOD_CUTOFF_AVX2_KERNELS
  const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (isa == "avx2" && !has_avx2) throw std::invalid_argument("isa: this CPU has no AVX2");
  if (isa != "baseline" && has_avx2) return &avx2::kernels();
#else
  if (isa == "avx2") throw std::invalid_argument("isa: this build has no AVX2 kernels");
#endif
  return &baseline::kernels();
}
}  // namespace

namespace {
void check_overhead(double seconds) {
  if (!(seconds >= 0.0) || !std::isfinite(seconds)) {
    throw std::invalid_argument("overhead must be finite and >= 0");
  }
}
}  // namespace

Predictor::Predictor(const PredictorConfig& config, const WeightMap& weights) : config_(config) {
  if (config.workers < 1) throw std::invalid_argument("workers must be >= 1");
  if (config.samples < 1) throw std::invalid_argument("samples must be >= 1");
  if (config.bins < 1) throw std::invalid_argument("bins must be >= 1");
  check_overhead(config.overhead);
  kernels_ = choose_kernels(config.isa);
  dims_ = read_dims(weights);
  fill(weights_[0], weights);
  version_.store(1);

  const size_t N = config.workers, S = config.samples, B = config.bins;
  const size_t Np = stride(N), Sp = stride(S);
  const size_t H = dims_.H, G = dims_.G, D = dims_.D, K = dims_.K, E = dims_.E;
  const WeightsView& w = weights_[0].view;
  const size_t width = std::max({w.embed1.out, w.post1.out, w.prior1.out, w.emit1.out});
  const size_t longest = std::max({width, 3 * std::max(H, G), G + D + E + kStats});
  Workspace& ws = ws_;
  ws.N = config.workers;
  ws.S = config.samples;
  ws.B = config.bins;
  ws.Np = static_cast<int>(Np);
  ws.Sp = static_cast<int>(Sp);
  ws.H = dims_.H;
  ws.G = dims_.G;
  ws.D = dims_.D;
  ws.K = dims_.K;
  ws.E = dims_.E;
  ws.objective = static_cast<int>(config.objective);
  ws.overhead = config.overhead;

  // One allocation per element type, zero-filled: padding stays finite and is never read back.
  std::vector<std::pair<float**, size_t>> floats = {
      {&ws.feat, (kFeatures + H) * Np}, {&ws.g, G}, {&ws.z, D}, {&ws.z_sd, D},
      {&ws.noise_z, S * D}, {&ws.noise_tr, S * D}, {&ws.noise_u, S * N}, {&ws.noise_eps, S * N},
      {&ws.noise_cos, kNoiseChunk}, {&ws.noise_sin, kNoiseChunk},
      {&ws.hidden, width * std::max(Np, Sp)}, {&ws.embed, E * Np},
      {&ws.gates_i, 3 * std::max(H, G) * Np}, {&ws.gates_h, 3 * std::max(H, G) * Np},
      {&ws.small_a, longest}, {&ws.small_b, longest}, {&ws.small_c, longest},
      {&ws.zg, D + G}, {&ws.pooled_stats, E + kStats}, {&ws.emit_out, (3 * K + D) * Np},
      {&ws.cum, K * Np}, {&ws.loc, K * Np}, {&ws.scale, K * Np},
      {&ws.z_next, D * Sp}, {&ws.prior_out, 2 * D * Sp}, {&ws.centre, Np},
      {&ws.row, N}, {&ws.log_x, S * N}, {&ws.row_max, S}};
  size_t total = 0;
  for (auto& f : floats) total += padded(f.second);
  floats_.assign(total, 0.0f);
  total = 0;
  for (auto& f : floats) {
    *f.first = floats_.data() + total;
    total += padded(f.second);
  }
  std::vector<std::pair<double**, size_t>> doubles = {
      {&ws.wide, kChunk}, {&ws.max_sum, B}, {&ws.cand, B + 1}, {&ws.expected, B + 1},
      {&ws.rest, B + 1}, {&ws.msum, B + 1}, {&ws.value, B + 1}};
  total = 0;
  for (auto& f : doubles) total += padded(f.second);
  doubles_.assign(total, 0.0);
  total = 0;
  for (auto& f : doubles) {
    *f.first = doubles_.data() + total;
    total += padded(f.second);
  }
  ints_.assign(kChunk + B, 0);
  ws.bin_of = ints_.data();
  ws.max_count = ints_.data() + kChunk;
  noise_bits_.assign(kNoiseChunk, 0);
  ws.noise_bits = noise_bits_.data();
  ws.noise_chunk = kNoiseChunk;
  ws.chunk = kChunk;
  bins_.assign(B, Bin{-std::numeric_limits<float>::infinity(), 0});  // empty (argmax keeps them so)
  ws.bins = bins_.data();
  present_.assign(N, 0);
  ws.present = present_.data();
  logs_.assign(N, 0.0f);

  std::fill(ws.z_sd, ws.z_sd + D, 1.0f);  // model.initial_state
  ref_ = std::numeric_limits<float>::quiet_NaN();
  uint64_t seed = config.seed;
  for (auto& word : rng_) word = splitmix64(seed);
  ws.rng = rng_;
}

void Predictor::set_overhead(double seconds) {
  check_overhead(seconds);
  config_.overhead = seconds;
  ws_.overhead = seconds;
}

int64_t Predictor::load_weights(const WeightMap& weights) {
  std::lock_guard<std::mutex> writer(load_mu_);  // before reading a copy another load may write
  const int spare = 1 - active_.load();
  for (const auto& item : weights_[1 - spare].storage) {
    auto it = weights.find(item.first);
    if (it == weights.end() || it->second.shape != item.second.shape) {
      throw std::invalid_argument("model: '" + item.first + "' is missing or has another shape " +
                                  "than the predictor's; build a new predictor for other sizes");
    }
  }
  {
    // A step that read the old index before the last swap may still be on this copy.
    std::lock_guard<std::mutex> lock(weights_[spare].in_use);
    fill(weights_[spare], weights);
  }
  active_.store(spare);
  return ++version_;
}

void Predictor::prepare() {
  std::lock_guard<std::mutex> lock(call_mu_);
  if (!noise_ready_) kernels_->draw_noise(ws_);
  noise_ready_ = true;
}

void Predictor::set_noise(const float* z, const float* transition, const float* uniform,
                          const float* normal) {
  std::lock_guard<std::mutex> lock(call_mu_);
  const size_t SD = static_cast<size_t>(ws_.S) * ws_.D, SN = static_cast<size_t>(ws_.S) * ws_.N;
  std::copy(z, z + SD, ws_.noise_z);
  std::copy(transition, transition + SD, ws_.noise_tr);
  std::copy(uniform, uniform + SN, ws_.noise_u);
  std::copy(normal, normal + SN, ws_.noise_eps);
  noise_ready_ = true;
}

// The normalised features of model.network._features into feat's first rows: log seconds,
// their lower median (torch.nanmedian), the first step's reference, clamped differences.
void Predictor::features(const float* times, const uint8_t* censored) {
  const int N = ws_.N, Np = ws_.Np;
  int P = 0;
  for (int n = 0; n < N; ++n) {
    if (std::isnan(times[n])) continue;
    if (!(times[n] >= 0.0f) || std::isinf(times[n])) {
      throw std::invalid_argument("times must be finite seconds >= 0 or NaN (absent), got " +
                                  std::to_string(times[n]) + " for worker " + std::to_string(n));
    }
    logs_[P] = std::log(std::max(times[n], 1e-30f));
    present_[P++] = n;
  }
  if (P == 0) throw std::invalid_argument("times: no worker is present (all NaN)");
  float* y = ws_.feat;
  float* cf = y + Np;
  float* pf = cf + Np;
  // Each worker's log time into place first: the median's selection reorders them.
  for (int m = 0, n = 0; n < N; ++n) {
    const bool here = m < P && present_[m] == n;
    y[n] = here ? logs_[m++] : 0.0f;
    pf[n] = here ? 1.0f : 0.0f;
    cf[n] = (here && censored[n]) ? 1.0f : 0.0f;
  }
  const int mid = (P - 1) / 2;  // the lower median, as torch.nanmedian
  std::nth_element(logs_.begin(), logs_.begin() + mid, logs_.begin() + P);
  median_ = logs_[mid];
  const float ref = std::isnan(ref_) ? median_ : ref_;
  float y_sum = 0.0f, c_sum = 0.0f;
  for (int n = 0; n < N; ++n) {
    y[n] = pf[n] != 0.0f ? std::min(std::max(y[n] - ref, -kYClamp), kYClamp) : 0.0f;
    y_sum += y[n] * pf[n];
    c_sum += cf[n];
  }
  ws_.P = P;
  ws_.y_sum = y_sum;
  ws_.c_sum = c_sum;
  ws_.ref = ref;
}

double Predictor::step(const float* times, const uint8_t* censored, double rate, double spread) {
  if (!(spread > 0.0) || !std::isfinite(spread)) {
    throw std::invalid_argument("spread must be a finite number > 0, got " +
                                std::to_string(spread));
  }
  std::lock_guard<std::mutex> lock(call_mu_);
  features(times, censored);  // throws before anything changed
  ws_.scaled = spread != 1.0;
  ws_.spread = static_cast<float>(spread);  // torch scales float32 samples by a float32 factor
  if (!noise_ready_) kernels_->draw_noise(ws_);
  noise_ready_ = false;  // every step uses fresh noise
  {
    // The copy a concurrent load_weights does not write: it waits for this lock.
    const PredictorWeights& w = weights_[active_.load()];
    std::lock_guard<std::mutex> in_use(w.in_use);
    kernels_->filter(w.view, ws_);
    ref_ = ws_.ref + kRefRate * (median_ - ws_.ref);
    ws_.ref = ref_;  // the samples are built on the updated reference
    kernels_->predict(w.view, ws_);
  }
  steps_ += 1;
  return kernels_->argmax(ws_, rate);
}

PredictorState Predictor::state() const {
  std::lock_guard<std::mutex> lock(call_mu_);
  const int N = ws_.N, H = ws_.H, Np = ws_.Np;
  PredictorState out;
  out.h.resize(static_cast<size_t>(N) * H);
  const float* h = ws_.feat + kFeatures * static_cast<size_t>(Np);
  for (int n = 0; n < N; ++n) {  // [H][Np] -> [N][H]
    for (int k = 0; k < H; ++k) {
      out.h[static_cast<size_t>(n) * H + k] = h[static_cast<size_t>(k) * Np + n];
    }
  }
  out.g.assign(ws_.g, ws_.g + ws_.G);
  out.z.assign(ws_.z, ws_.z + ws_.D);
  out.z_sd.assign(ws_.z_sd, ws_.z_sd + ws_.D);
  out.ref = ref_;
  out.steps = steps_;
  return out;
}

std::vector<float> Predictor::last_log_samples() const {
  std::lock_guard<std::mutex> lock(call_mu_);
  return std::vector<float>(ws_.log_x, ws_.log_x + static_cast<size_t>(ws_.S) * ws_.P);
}

std::vector<std::vector<float>> Predictor::next_noise() {
  std::lock_guard<std::mutex> lock(call_mu_);
  if (!noise_ready_) kernels_->draw_noise(ws_);
  noise_ready_ = true;
  const size_t SD = static_cast<size_t>(ws_.S) * ws_.D, SN = static_cast<size_t>(ws_.S) * ws_.N;
  return {std::vector<float>(ws_.noise_z, ws_.noise_z + SD),
          std::vector<float>(ws_.noise_tr, ws_.noise_tr + SD),
          std::vector<float>(ws_.noise_u, ws_.noise_u + SN),
          std::vector<float>(ws_.noise_eps, ws_.noise_eps + SN)};
}

}  // namespace hvdcut
