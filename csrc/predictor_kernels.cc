// The predictor's kernels (see predictor_kernels.h), compiled twice by CMakeLists.txt: with
// HVDCUT_ISA=baseline at the x86-64 baseline (SSE2), and with HVDCUT_ISA=avx2 and -mavx2 (no
// FMA: both builds round every operation alike, so they give the same bits). No standard
// library templates or inline functions here (see predictor_kernels.h): own helpers, all in an
// unnamed namespace.
//
// Every matrix product runs over workers (or samples) for each weight: a register-blocked
// loop on vectors of 4 or 8 floats (GCC/Clang vector extensions). The transcendental
// functions are branch-free float approximations (about 1 ulp) so that the loops over them
// vectorise; the argmax's exp is a float64 one within 1 ulp of glibc's.
#include <cstring>

#include "predictor_kernels.h"

#ifndef HVDCUT_ISA
#error "compile with -DHVDCUT_ISA=baseline or avx2"
#endif

namespace hvdcut {
namespace HVDCUT_ISA {

namespace {
constexpr int kFeatures = 3;  // normalised log time, censored flag, present flag
constexpr int kStats = 3;     // mean normalised log time, fraction censored, fraction present
constexpr float kMinScale = 0.005f;          // model.network.MIN_SCALE
constexpr float kMinSd = 1e-3f;              // RunTimeModel._gaussian's floor
constexpr float kSoftplusThreshold = 20.0f;  // torch's softplus default
constexpr int kRows = 8;                     // rows per block of a product (= the padding)
constexpr int kMaxLatent = 64;               // latent sizes the vector loop of sample_rows takes
constexpr int kObjectiveRatio = 1;           // Objective::kRatio
constexpr int kObjectiveLambda = 2;          // Objective::kLambda

#if defined(__AVX2__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
constexpr int kVecs = kRows / kLanes;  // vectors per block row

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

#if defined(__AVX2__)
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x}; }
#else
inline vf splat(float x) { return vf{x, x, x, x}; }
#endif

inline float fmin(float a, float b) { return b < a ? b : a; }
inline float fmax(float a, float b) { return b > a ? b : a; }
inline bool is_nan(float x) { return x != x; }
inline float inf() { return __builtin_inff(); }

inline float from_bits(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// exp(x) - 1 and exp(x), about 1 ulp, from one range reduction x = n ln2 + r, |r| <= ln2/2
// (Cephes' polynomial for e^r - 1 - r). Clamped to the normal range; NaN stays NaN.
inline float expm1_f(float x, bool plus_one) {
  x = fmin(fmax(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float q = p * (r * r) + r;  // e^r - 1
  const float scale = from_bits((static_cast<int32_t>(n) + 127) << 23);
  return plus_one ? scale * q + scale : scale * q + (scale - 1.0f);
}

inline float exp_f(float x) { return expm1_f(x, true); }

// ELU: exp(x) - 1 where x <= 0; what expm1_f computes elsewhere is discarded (no traps:
// -fno-trapping-math), so the select vectorises. NaN stays NaN.
inline float elu_f(float x) {
  const float e = expm1_f(x, false);
  return x <= 0.0f ? e : x;
}

// exp(x) in float64, within 1 ulp of glibc's (Taylor to degree 13 on |r| <= ln2/2, fdlibm's
// split of ln2), branch-free so the loops over candidates vectorise.
inline double exp_d(double x) {
  x = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double n = (x * 1.4426950408889634 + 6755399441055744.0) - 6755399441055744.0;
  const double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * (r * r) + r;  // e^r - 1
  const int64_t bits = (static_cast<int64_t>(static_cast<int32_t>(n)) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return scale * p + scale;
}

// log(x) for normal x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s).
inline float log_f(float x) {
  const int32_t bits = to_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = from_bits((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 0.11111111f;
  p = p * s2 + 0.14285714f;
  p = p * s2 + 0.2f;
  p = p * s2 + 0.33333333f;
  return static_cast<float>(e) * 0.693147181f + (2.0f * s + 2.0f * s * s2 * p);
}

// torch.nn.functional.softplus (beta 1, threshold 20): log1p(exp(x)), log1p by Goldberg's
// correction log(u) * t / (u - 1) so that tiny exp(x) keep their relative accuracy.
inline float softplus_f(float x) {
  const float t = exp_f(x);
  const float u = 1.0f + t;
  const float l = u == 1.0f ? t : log_f(u) * (t / (u - 1.0f));
  return x > kSoftplusThreshold ? x : l;
}

inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline float tanh_f(float x) {
  const float e = expm1_f(2.0f * x, false);
  return e / (e + 2.0f);
}

// The smallest and largest of row[0..n) (n >= 1); true if any is NaN. Vectors by hand:
// min/max reductions over floats do not auto-vectorise.
bool row_range(const float* row, int n, float* lo, float* hi) {
  vf top = splat(row[0]), bottom = splat(row[0]);
  vi nan = {};
  int m = 0;
  for (; m + kLanes <= n; m += kLanes) {
    const vf x = load(row + m);
    top = x > top ? x : top;
    bottom = x < bottom ? x : bottom;
    nan |= x != x;
  }
  float t = top[0], b = bottom[0];
  bool bad = false;
  for (int j = 0; j < kLanes; ++j) {
    t = fmax(t, top[j]);
    b = fmin(b, bottom[j]);
    bad |= nan[j] != 0;
  }
  for (; m < n; ++m) {
    t = fmax(t, row[m]);
    b = fmin(b, row[m]);
    bad |= is_nan(row[m]);
  }
  *lo = b;
  *hi = t;
  return bad;
}

// BO outputs x 8 rows of Y = bias + W X, accumulators in registers: per input, one 8-row
// load of X and BO broadcasts of a weight. Summation order as the plain loop (bias, then
// the inputs in order), so the vector width does not change a value.
template <int BO>
inline void affine_block(const float* __restrict X, int in, int R, const float* __restrict W,
                         int ldw, const float* __restrict bias, float* __restrict Y, int r) {
  vf acc[BO][kVecs];
  for (int k = 0; k < BO; ++k) {
    for (int v = 0; v < kVecs; ++v) acc[k][v] = splat(bias ? bias[k] : 0.0f);
  }
  for (int i = 0; i < in; ++i) {
    const float* x = X + static_cast<size_t>(i) * R + r;
    vf xs[kVecs];
    for (int v = 0; v < kVecs; ++v) xs[v] = load(x + v * kLanes);
    for (int k = 0; k < BO; ++k) {
      const vf w = splat(W[static_cast<size_t>(k) * ldw + i]);
      for (int v = 0; v < kVecs; ++v) acc[k][v] += w * xs[v];
    }
  }
  for (int k = 0; k < BO; ++k) {
    float* y = Y + static_cast<size_t>(k) * R + r;
    for (int v = 0; v < kVecs; ++v) store(y + v * kLanes, acc[k][v]);
  }
}

// Y[o][r] = bias[o] + sum_i W[o][i] X[i][r] for r < R (a multiple of 8): X [in][R],
// W [out][ldw] (its first `in` columns), Y [out][R]. bias may be null (zero).
void affine(const float* X, int in, int R, const float* W, int ldw, const float* bias, int out,
            float* Y) {
  int o = 0;
  for (; o + 4 <= out; o += 4) {
    const float* w = W + static_cast<size_t>(o) * ldw;
    const float* b = bias ? bias + o : nullptr;
    float* y = Y + static_cast<size_t>(o) * R;
    for (int r = 0; r < R; r += kRows) affine_block<4>(X, in, R, w, ldw, b, y, r);
  }
  for (; o < out; ++o) {
    const float* w = W + static_cast<size_t>(o) * ldw;
    const float* b = bias ? bias + o : nullptr;
    float* y = Y + static_cast<size_t>(o) * R;
    for (int r = 0; r < R; r += kRows) affine_block<1>(X, in, R, w, ldw, b, y, r);
  }
}

// y[o] = bias[o] + sum_i W[o][i] x[i] for one vector x (W [out][ldw]). Eight partial sums
// (fixed, whatever the vector width), so that a long dot product is not one dependency chain.
void affine_vec(const float* x, int in, const float* W, int ldw, const float* bias, int out,
                float* y) {
  for (int o = 0; o < out; ++o) {
    const float* w = W + static_cast<size_t>(o) * ldw;
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= in; i += 8) {
      for (int j = 0; j < 8; ++j) part[j] += w[i + j] * x[i + j];
    }
    for (; i < in; ++i) part[0] += w[i] * x[i];
    const float acc =
        ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    y[o] = (bias ? bias[o] : 0.0f) + acc;
  }
}

void affine_vec(const float* x, const LinearView& l, float* y) {
  affine_vec(x, l.in, l.w, l.in, l.b, l.out, y);
}

void elu_inplace(float* __restrict v, size_t n) {
  for (size_t i = 0; i < n; ++i) v[i] = elu_f(v[i]);
}

// One GRU update of a single vector (the global cell), PyTorch's equations and order.
void gru_vec(const GruView& c, const float* x, float* h, float* gi, float* gh, int H) {
  affine_vec(x, c.ih, gi);
  affine_vec(h, c.hh, gh);
  for (int o = 0; o < H; ++o) {
    const float r = sigmoid_f(gh[o] + gi[o]);
    const float u = sigmoid_f(gh[H + o] + gi[H + o]);
    const float n = tanh_f(gi[2 * H + o] + gh[2 * H + o] * r);
    h[o] = (h[o] - n) * u + n;
  }
}

// The S x N log samples: component by inverse cdf (k = #{j < K-1: u > cum_j}), then
// log x = ref + loc_k + load . z_{t+1} + scale_k eps, in the reference's order, and scaled
// about the worker's centre m by the spread: m + spread (x - m); each row's maximum and the
// range over present workers on the way. kD, kK: the sizes at compile time
// (the shipped model's), or 0 to read them from ws. Returns true if any sample is NaN.
template <int kD, int kK>
bool sample_rows(Workspace& ws, const float* loads) {
  const int N = ws.N, P = ws.P, Np = ws.Np, Sp = ws.Sp;
  const int D = kD ? kD : ws.D, K = kK ? kK : ws.K;
  const bool all = P == N;
  vf lo_v = splat(inf());
  vi nan_v = {};
  float lo = inf(), hi = -inf();
  bool nan = false;
  const vf ref = splat(ws.ref), spread = splat(ws.spread);
  for (int s = 0; s < ws.S; ++s) {
    const float* u = ws.noise_u + static_cast<size_t>(s) * N;
    const float* eps = ws.noise_eps + static_cast<size_t>(s) * N;
    float* out = all ? ws.log_x + static_cast<size_t>(s) * N : ws.row;
    float zs[kD ? kD : kMaxLatent];
    for (int k = 0; k < D && k < kMaxLatent; ++k) {
      zs[k] = ws.z_next[static_cast<size_t>(k) * Sp + s];
    }
    vf top = splat(-inf());
    int n = 0;
    if (D <= kMaxLatent) {  // else the scalar loop below does every worker
      for (; n + kLanes <= N; n += kLanes) {
        vf shift = splat(zs[0]) * load(loads + n);
        for (int k = 1; k < D; ++k) {
          shift += splat(zs[k]) * load(loads + static_cast<size_t>(k) * Np + n);
        }
        const vf uu = load(u + n);
        vf loc = load(ws.loc + n), scale = load(ws.scale + n);
        for (int k = 1; k < K; ++k) {
          const vi beyond = uu > load(ws.cum + static_cast<size_t>(k - 1) * Np + n);
          loc = beyond ? load(ws.loc + static_cast<size_t>(k) * Np + n) : loc;
          scale = beyond ? load(ws.scale + static_cast<size_t>(k) * Np + n) : scale;
        }
        vf x = ((ref + loc) + shift) + scale * load(eps + n);
        if (ws.scaled) {
          const vf m = load(ws.centre + n);
          x = m + spread * (x - m);
        }
        store(out + n, x);
        top = x > top ? x : top;
        lo_v = x < lo_v ? x : lo_v;
        nan_v |= x != x;
      }
    }
    float row_top = top[0];
    for (int j = 1; j < kLanes; ++j) row_top = fmax(row_top, top[j]);
    for (; n < N; ++n) {
      float shift = ws.z_next[s] * loads[n];
      for (int k = 1; k < D; ++k) {
        const size_t zk = static_cast<size_t>(k) * Sp + s, lk = static_cast<size_t>(k) * Np + n;
        shift += ws.z_next[zk] * loads[lk];
      }
      float loc = ws.loc[n], scale = ws.scale[n];
      for (int k = 1; k < K; ++k) {
        const bool beyond = u[n] > ws.cum[static_cast<size_t>(k - 1) * Np + n];
        loc = beyond ? ws.loc[static_cast<size_t>(k) * Np + n] : loc;
        scale = beyond ? ws.scale[static_cast<size_t>(k) * Np + n] : scale;
      }
      float x = ((ws.ref + loc) + shift) + scale * eps[n];
      if (ws.scaled) x = ws.centre[n] + ws.spread * (x - ws.centre[n]);
      out[n] = x;
      if (all) {
        row_top = fmax(row_top, x);
        lo = fmin(lo, x);
        nan |= is_nan(x);
      }
    }
    if (!all) {  // the present workers only: gather, then their range
      float* kept = ws.log_x + static_cast<size_t>(s) * P;
      for (int m = 0; m < P; ++m) kept[m] = out[ws.present[m]];
      float row_lo;
      nan |= row_range(kept, P, &row_lo, &row_top);
      lo = fmin(lo, row_lo);
    }
    ws.row_max[s] = row_top;
    hi = fmax(hi, row_top);
  }
  if (all) {
    for (int j = 0; j < kLanes; ++j) {
      lo = fmin(lo, lo_v[j]);
      nan |= nan_v[j] != 0;
    }
  }
  ws.sample_lo = lo;
  ws.sample_hi = hi;
  return nan;
}

// n random words (n a multiple of kRngStreams) from kRngStreams xoshiro256** generators side
// by side: word i from stream i % kRngStreams. Multiplications by 5 and 9 as shifts and adds
// (no 64-bit vector multiply before AVX-512), so the loop over streams vectorises.
void random_words(uint64_t* state, uint64_t* out, size_t n) {
  typedef uint64_t vu __attribute__((vector_size(4 * kLanes)));  // kLanes / 2 words
  constexpr int kWords = kLanes / 2, kParts = kRngStreams / kWords;
  vu s0[kParts], s1[kParts], s2[kParts], s3[kParts];
  for (int p = 0; p < kParts; ++p) {
    std::memcpy(&s0[p], state + p * kWords, sizeof(vu));
    std::memcpy(&s1[p], state + kRngStreams + p * kWords, sizeof(vu));
    std::memcpy(&s2[p], state + 2 * kRngStreams + p * kWords, sizeof(vu));
    std::memcpy(&s3[p], state + 3 * kRngStreams + p * kWords, sizeof(vu));
  }
  for (size_t i = 0; i < n; i += kRngStreams) {
    for (int p = 0; p < kParts; ++p) {
      const vu times5 = (s1[p] << 2) + s1[p];
      const vu r = (times5 << 7) | (times5 >> 57);
      const vu word = (r << 3) + r;
      std::memcpy(out + i + p * kWords, &word, sizeof(vu));
      const vu t = s1[p] << 17;
      s2[p] ^= s0[p];
      s3[p] ^= s1[p];
      s1[p] ^= s2[p];
      s0[p] ^= s3[p];
      s2[p] ^= t;
      s3[p] = (s3[p] << 45) | (s3[p] >> 19);
    }
  }
  for (int p = 0; p < kParts; ++p) {
    std::memcpy(state + p * kWords, &s0[p], sizeof(vu));
    std::memcpy(state + kRngStreams + p * kWords, &s1[p], sizeof(vu));
    std::memcpy(state + 2 * kRngStreams + p * kWords, &s2[p], sizeof(vu));
    std::memcpy(state + 3 * kRngStreams + p * kWords, &s3[p], sizeof(vu));
  }
}

// The random words for the next `wanted` values, two per word, into ws.noise_bits: returns
// how many words to use (at most the workspace's chunk; whole rounds of the streams are drawn).
size_t next_words(Workspace& ws, size_t wanted) {
  const size_t chunk = static_cast<size_t>(ws.noise_chunk);
  const size_t words = (wanted + 1) / 2 < chunk ? (wanted + 1) / 2 : chunk;
  random_words(ws.rng, ws.noise_bits, (words + kRngStreams - 1) / kRngStreams * kRngStreams);
  return words;
}

// n uniforms in [0, 1) with 24 bits (as torch.rand's float32), two per random word.
void uniforms(Workspace& ws, float* out, size_t n) {
  const uint64_t* bits = ws.noise_bits;
  for (size_t done = 0; done < n;) {
    const size_t words = next_words(ws, n - done);
    float* lo = ws.noise_cos;
    float* hi = ws.noise_sin;
    for (size_t m = 0; m < words; ++m) {
      lo[m] = static_cast<float>(static_cast<int32_t>(bits[m] >> 40)) * 0x1.0p-24f;
      hi[m] = static_cast<float>(static_cast<int32_t>((bits[m] >> 8) & 0xffffff)) * 0x1.0p-24f;
    }
    const size_t take = n - done < 2 * words ? n - done : 2 * words;
    std::memcpy(out + done, lo, sizeof(float) * words);
    std::memcpy(out + done + words, hi, sizeof(float) * (take - words));
    done += take;
  }
}

// n standard normals by Box-Muller, two per random word: the radius from 24 of its bits, the
// angle from 24 others: two bits pick the quadrant, 22 an angle x in [-pi/4, pi/4), so that
// sin x and cos x need only short polynomials and the transform vectorises.
void normals(Workspace& ws, float* out, size_t n) {
  const uint64_t* bits = ws.noise_bits;
  float* cs = ws.noise_cos;
  float* sn = ws.noise_sin;
  for (size_t done = 0; done < n;) {
    const size_t pairs = next_words(ws, n - done);
    for (size_t m = 0; m < pairs; ++m) {
      const uint32_t a = static_cast<uint32_t>(bits[m] >> 32), b = static_cast<uint32_t>(bits[m]);
      const float u1 = static_cast<float>(static_cast<int32_t>(a >> 8) + 1) * 0x1.0p-24f;  // (0, 1]
      const float radius = __builtin_sqrtf(-2.0f * log_f(u1));
      const int32_t q = static_cast<int32_t>(b >> 30);
      const int32_t angle = static_cast<int32_t>((b >> 8) & 0x3fffff);
      const float f = static_cast<float>(angle) * 0x1.0p-22f - 0.5f;
      const float x = f * 1.57079632679489662f;
      const float x2 = x * x;
      const float sin_x =
          x + x * x2 * (-1.0f / 6 + x2 * (1.0f / 120 + x2 * (-1.0f / 5040 + x2 * (1.0f / 362880))));
      const float cos_x =
          1.0f + x2 * (-0.5f + x2 * (1.0f / 24 + x2 * (-1.0f / 720 + x2 * (1.0f / 40320))));
      // Rotate (cos x, sin x) by q quarter turns: swap on odd q, then the signs.
      const int32_t swap = -(q & 1);
      const float c = from_bits((to_bits(sin_x) & swap) | (to_bits(cos_x) & ~swap));
      const float d = from_bits((to_bits(cos_x) & swap) | (to_bits(sin_x) & ~swap));
      const int32_t c_sign = static_cast<int32_t>(static_cast<uint32_t>((q + 1) & 2) << 30);
      const int32_t d_sign = static_cast<int32_t>(static_cast<uint32_t>(q & 2) << 30);
      cs[m] = radius * from_bits(to_bits(c) ^ c_sign);
      sn[m] = radius * from_bits(to_bits(d) ^ d_sign);
    }
    const size_t take = n - done < 2 * pairs ? n - done : 2 * pairs;
    std::memcpy(out + done, cs, sizeof(float) * pairs);
    std::memcpy(out + done + pairs, sn, sizeof(float) * (take - pairs));
    done += take;
  }
}

void filter(const WeightsView& w, Workspace& ws) {
  const int N = ws.N, P = ws.P, Np = ws.Np;
  const int H = ws.H, G = ws.G, D = ws.D, E = ws.E;
  float* pf = ws.feat + 2 * static_cast<size_t>(Np);
  float* h = ws.feat + kFeatures * static_cast<size_t>(Np);  // [H][Np]
  const float count = P > 1 ? static_cast<float>(P) : 1.0f;

  // Worker embeddings e = MLP([features, h]) and their mean over present workers.
  affine(ws.feat, kFeatures + H, Np, w.embed1.w, w.embed1.in, w.embed1.b, w.embed1.out, ws.hidden);
  elu_inplace(ws.hidden, static_cast<size_t>(w.embed1.out) * Np);
  affine(ws.hidden, w.embed1.out, Np, w.embed2.w, w.embed2.in, w.embed2.b, E, ws.embed);
  float* pooled = ws.pooled_stats;
  for (int k = 0; k < E; ++k) {
    const float* e = ws.embed + static_cast<size_t>(k) * Np;
    float acc = 0.0f;
    for (int n = 0; n < N; ++n) acc += e[n] * pf[n];
    pooled[k] = acc / count;
  }
  pooled[E] = ws.y_sum / count;
  pooled[E + 1] = ws.c_sum / count;
  pooled[E + 2] = static_cast<float>(P) / static_cast<float>(N);

  // Posterior mean and sd of the latent from [g, z, pooled, stats].
  float* x = ws.small_a;
  std::memcpy(x, ws.g, sizeof(float) * G);
  std::memcpy(x + G, ws.z, sizeof(float) * D);
  std::memcpy(x + G + D, pooled, sizeof(float) * (E + kStats));
  affine_vec(x, w.post1, ws.small_b);
  elu_inplace(ws.small_b, w.post1.out);
  float* q = ws.small_c;
  affine_vec(ws.small_b, w.post2, q);
  float* zg = ws.zg;  // [z, g]: the worker cell's shared input
  for (int k = 0; k < D; ++k) {
    zg[k] = q[k];
    ws.z_sd[k] = softplus_f(q[D + k]) + kMinSd;
  }
  std::memcpy(zg + D, ws.g, sizeof(float) * G);

  // Worker cell: the [z, g] columns of its input product once, as a bias; per worker only
  // the feature columns and the recurrent product. Absent workers keep their h.
  const GruView& c = w.worker;
  float* shared = ws.small_a;
  affine_vec(zg, D + G, c.ih.w + kFeatures, c.ih.in, c.ih.b, 3 * H, shared);
  affine(ws.feat, kFeatures, Np, c.ih.w, c.ih.in, shared, 3 * H, ws.gates_i);
  affine(h, H, Np, c.hh.w, H, c.hh.b, 3 * H, ws.gates_h);
  for (int o = 0; o < H; ++o) {
    const float* __restrict gir = ws.gates_i + static_cast<size_t>(o) * Np;
    const float* __restrict giz = gir + static_cast<size_t>(H) * Np;
    const float* __restrict gin = giz + static_cast<size_t>(H) * Np;
    const float* __restrict ghr = ws.gates_h + static_cast<size_t>(o) * Np;
    const float* __restrict ghz = ghr + static_cast<size_t>(H) * Np;
    const float* __restrict ghn = ghz + static_cast<size_t>(H) * Np;
    float* __restrict hr = h + static_cast<size_t>(o) * Np;
    for (int n = 0; n < Np; ++n) {
      const float r = sigmoid_f(ghr[n] + gir[n]);
      const float u = sigmoid_f(ghz[n] + giz[n]);
      const float nn = tanh_f(gin[n] + ghn[n] * r);
      const float updated = (hr[n] - nn) * u + nn;
      hr[n] = pf[n] != 0.0f ? updated : hr[n];
    }
  }

  // Global cell on [pooled, stats, z]; then the latent's mean.
  float* gx = ws.small_b;
  std::memcpy(gx, pooled, sizeof(float) * (E + kStats));
  std::memcpy(gx + E + kStats, zg, sizeof(float) * D);
  gru_vec(w.global, gx, ws.g, ws.gates_i, ws.gates_h, G);
  std::memcpy(ws.z, zg, sizeof(float) * D);
}

void predict(const WeightsView& w, Workspace& ws) {
  const int N = ws.N, S = ws.S, Np = ws.Np, Sp = ws.Sp;
  const int H = ws.H, G = ws.G, D = ws.D, K = ws.K;
  const float* h = ws.feat + kFeatures * static_cast<size_t>(Np);

  // Emission of every worker: [h, g] -> (logits, loc, raw scale, load), g's columns once.
  float* shared = ws.small_a;
  affine_vec(ws.g, G, w.emit1.w + H, w.emit1.in, w.emit1.b, w.emit1.out, shared);
  affine(h, H, Np, w.emit1.w, w.emit1.in, shared, w.emit1.out, ws.hidden);
  elu_inplace(ws.hidden, static_cast<size_t>(w.emit1.out) * Np);
  affine(ws.hidden, w.emit1.out, Np, w.emit2.w, w.emit2.in, w.emit2.b, w.emit2.out, ws.emit_out);
  const float* logits = ws.emit_out;
  const float* locs = logits + static_cast<size_t>(K) * Np;
  const float* raws = locs + static_cast<size_t>(K) * Np;
  const float* loads = raws + static_cast<size_t>(K) * Np;  // [D][Np]
  // Mixture weights as a cumulative softmax (the inverse cdf's thresholds).
  for (int n = 0; n < N; ++n) {
    float top = logits[n];
    for (int k = 1; k < K; ++k) top = fmax(top, logits[static_cast<size_t>(k) * Np + n]);
    float total = 0.0f;
    for (int k = 0; k < K; ++k) {
      const float e = exp_f(logits[static_cast<size_t>(k) * Np + n] - top);
      ws.cum[static_cast<size_t>(k) * Np + n] = e;
      total += e;
    }
    float run = 0.0f, mix = 0.0f;
    for (int k = 0; k < K; ++k) {
      const float p = ws.cum[static_cast<size_t>(k) * Np + n] / total;
      run += p;
      mix += p * locs[static_cast<size_t>(k) * Np + n];
      ws.cum[static_cast<size_t>(k) * Np + n] = run;
    }
    ws.centre[n] = mix;  // sum_k pi_k loc_k: the spread's centre, less ref and the latent's part
  }
  for (size_t i = 0; i < static_cast<size_t>(K) * Np; ++i) {
    ws.loc[i] = locs[i];
    ws.scale[i] = softplus_f(raws[i]) + kMinScale;
  }

  // S draws of the next latent: z_t = z + z_sd eps, z_{t+1} = prior(g, z_t) + sd' eps'.
  float* zt = ws.z_next;  // [D][Sp], overwritten by z_{t+1} below
  for (int k = 0; k < D; ++k) {
    for (int s = 0; s < S; ++s) {
      const float eps = ws.noise_z[static_cast<size_t>(s) * D + k];
      zt[static_cast<size_t>(k) * Sp + s] = ws.z[k] + ws.z_sd[k] * eps;
    }
  }
  affine_vec(ws.g, G, w.prior1.w, w.prior1.in, w.prior1.b, w.prior1.out, shared);
  affine(zt, D, Sp, w.prior1.w + G, w.prior1.in, shared, w.prior1.out, ws.hidden);
  elu_inplace(ws.hidden, static_cast<size_t>(w.prior1.out) * Sp);
  affine(ws.hidden, w.prior1.out, Sp, w.prior2.w, w.prior2.in, w.prior2.b, 2 * D, ws.prior_out);
  for (int k = 0; k < D; ++k) {
    const float* __restrict mu = ws.prior_out + static_cast<size_t>(k) * Sp;
    const float* __restrict raw = ws.prior_out + static_cast<size_t>(D + k) * Sp;
    float* __restrict out = zt + static_cast<size_t>(k) * Sp;
    const float* __restrict noise = ws.noise_tr;
    for (int s = 0; s < S; ++s) {
      out[s] = mu[s] + (softplus_f(raw[s]) + kMinSd) * noise[static_cast<size_t>(s) * D + k];
    }
  }
  if (ws.scaled) {
    // The spread's centre (inference._predictive_mean): ref + sum_k pi_k loc_k + load . mean_s z.
    float* z_mean = ws.small_b;
    for (int k = 0; k < D; ++k) {
      float acc = 0.0f;
      for (int s = 0; s < S; ++s) acc += zt[static_cast<size_t>(k) * Sp + s];
      z_mean[k] = acc / static_cast<float>(S);
    }
    for (int n = 0; n < N; ++n) {
      float shift = 0.0f;
      for (int k = 0; k < D; ++k) shift += loads[static_cast<size_t>(k) * Np + n] * z_mean[k];
      ws.centre[n] = (ws.ref + ws.centre[n]) + shift;
    }
  }
  ws.sample_nan = (D == 4 && K == 3) ? sample_rows<4, 3>(ws, loads) : sample_rows<0, 0>(ws, loads);
}

double argmax(Workspace& ws, double rate) {
  const int S = ws.S, B = ws.B;
  const size_t total = static_cast<size_t>(S) * ws.P;
  const float* v = ws.log_x;
  const double overhead = ws.overhead;
  const double nan = __builtin_nan("");
  const double lo = ws.sample_lo, hi = ws.sample_hi;
  // A broken state (NaN or infinite samples) has no cutoff.
  if (ws.sample_nan || !(lo > -__builtin_inf()) || !(hi < __builtin_inf())) return nan;
  if (!(hi > lo)) return exp_d(hi);  // every sample equal: the one candidate

  // Bin b = clamp(ceil((v - lo) / width) - 1, 0, B - 1) in the reference; here floor((v - lo)
  // * (1 / width)) clamped to B - 1 (a division costs 4x, and the conversion truncates): the
  // two differ only where v is within an ulp of a bin edge (~1e-12 per sample), never at lo.
  const double inv_width = 1.0 / ((hi - lo) / B), top_bin = B - 1;
  int32_t* ids = ws.bin_of;
  auto bins_of = [lo, inv_width, top_bin](const float* __restrict x, int32_t* __restrict out,
                                          size_t n) {
    for (size_t i = 0; i < n; ++i) {
      double t = (static_cast<double>(x[i]) - lo) * inv_width;
      t = t < top_bin ? t : top_bin;
      out[i] = static_cast<int32_t>(t);
    }
  };
  Bin* bins = ws.bins;  // all empty: cleared at construction, and by the scan below after use
  const size_t chunk = static_cast<size_t>(ws.chunk);
  for (size_t start = 0; start < total; start += chunk) {
    const size_t n = total - start < chunk ? total - start : chunk;
    const float* part = v + start;
    bins_of(part, ids, n);
    for (size_t i = 0; i < n; ++i) {  // the scatter: scalar, one cache line per sample
      Bin& bin = bins[ids[i]];
      bin.count += 1;
      bin.top = part[i] > bin.top ? part[i] : bin.top;
    }
  }
  double* wide = ws.wide;
  for (size_t start = 0; start < static_cast<size_t>(S); start += chunk) {
    const size_t n = S - start < chunk ? S - start : chunk;
    bins_of(ws.row_max + start, ids, n);
    for (size_t i = 0; i < n; ++i) wide[i] = exp_d(static_cast<double>(ws.row_max[start + i]));
    for (size_t i = 0; i < n; ++i) {
      ws.max_count[ids[i]] += 1;
      ws.max_sum[ids[i]] += wide[i];
    }
  }

  // Prefix counts and sums at the non-empty bins, packed (an empty bin repeats the objective
  // of the one before it, and the argmax keeps the first maximum). Bins are monotone in v, so
  // a non-empty bin's largest sample is also the prefix max: the reference's candidate; and
  // every row maximum is a sample, so its bin is non-empty. The scan visits the non-empty
  // bins only (64 at a time by a bit mask) and clears them for the next step.
  int J = 0;
  int64_t below = 0, maxima_below = 0;
  double maxima_sum = 0.0;
  for (int base = 0; base < B; base += 64) {
    const int width = B - base < 64 ? B - base : 64;
    uint64_t mask = 0;
    for (int j = 0; j < width; ++j) mask |= static_cast<uint64_t>(bins[base + j].count != 0) << j;
    while (mask != 0) {
      const int b = base + __builtin_ctzll(mask);
      mask &= mask - 1;
      below += bins[b].count;
      if (ws.max_count[b] != 0) {  // S of the J bins at most: a branch, not a chain of adds
        maxima_below += ws.max_count[b];
        maxima_sum += ws.max_sum[b];
        ws.max_count[b] = 0;
        ws.max_sum[b] = 0.0;
      }
      ws.cand[J] = bins[b].top;
      ws.expected[J] = static_cast<double>(below);
      ws.rest[J] = static_cast<double>(S - maxima_below);
      ws.msum[J] = maxima_sum;
      bins[b] = Bin{-inf(), 0};
      ++J;
    }
  }
  // The objective at every candidate (vectorised), then the first maximum.
  double* __restrict c = ws.cand;
  double* __restrict value = ws.value;
  double* __restrict expected = ws.expected;
  const double* __restrict rest = ws.rest;
  const double* __restrict msum = ws.msum;
  const double samples = S;
  for (int j = 0; j < J; ++j) {
    c[j] = exp_d(c[j]);
    expected[j] = expected[j] / samples;
  }
  if (ws.objective == kObjectiveRatio) {
    for (int j = 0; j < J; ++j) value[j] = expected[j] / (c[j] + overhead);
  } else if (ws.objective == kObjectiveLambda && rate == rate) {
    for (int j = 0; j < J; ++j) {
      value[j] = expected[j] - rate * ((msum[j] + c[j] * rest[j]) / samples + overhead);
    }
  } else {
    for (int j = 0; j < J; ++j) {
      value[j] = expected[j] / ((msum[j] + c[j] * rest[j]) / samples + overhead);
    }
  }
  // torch.argmax: the first maximum, a NaN above everything.
  int best = 0;
  for (int j = 1; j < J; ++j) {
    if (value[best] != value[best]) break;
    if (value[j] > value[best] || value[j] != value[j]) best = j;
  }
  return c[best];
}

void draw_noise(Workspace& ws) {
  normals(ws, ws.noise_z, static_cast<size_t>(ws.S) * ws.D);
  normals(ws, ws.noise_tr, static_cast<size_t>(ws.S) * ws.D);
  uniforms(ws, ws.noise_u, static_cast<size_t>(ws.S) * ws.N);
  normals(ws, ws.noise_eps, static_cast<size_t>(ws.S) * ws.N);
}
}  // namespace

const KernelTable& kernels() {
  static const KernelTable table{
#if defined(__AVX2__)
      "avx2",
#else
      "baseline",
#endif
      filter, predict, argmax, draw_noise};
  return table;
}

}  // namespace HVDCUT_ISA
}  // namespace hvdcut
