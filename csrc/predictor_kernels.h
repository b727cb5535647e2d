// The predictor's kernels (predictor_kernels.cc), compiled once per instruction set (the
// x86-64 baseline, and AVX2) and chosen at run time, as PyTorch dispatches its CPU kernels:
// plain structs of pointers in and out, so that the kernels' translation units share no
// inline or template code with the rest of the module (the linker keeps one copy of each,
// and an AVX2 copy must never run on a machine without it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace hvdcut {

// nn.Linear in PyTorch's layout: w [out][in], b [out].
struct LinearView {
  int in = 0, out = 0;
  const float* w = nullptr;
  const float* b = nullptr;
};

// nn.GRUCell, gates in PyTorch's order (r, z, n).
struct GruView {
  LinearView ih, hh;
};

struct WeightsView {
  LinearView embed1, embed2;  // worker_embed: [features, h] -> E
  LinearView post1, post2;    // posterior_net: [g, z, pooled, stats] -> 2D
  LinearView prior1, prior2;  // prior_net: [g, z] -> 2D
  LinearView emit1, emit2;    // emission_net: [h, g] -> 3K + D
  GruView worker, global;     // worker_cell: [features, z, g]; global_cell: [pooled, stats, z]
};

// Independent generator streams drawn side by side (the loop over them vectorises): a fixed
// number, so that every instruction set draws the same noise.
constexpr int kRngStreams = 8;

// One histogram bin of the grid argmax.
struct Bin {
  float top;      // the largest log sample in it
  int32_t count;  // samples in it
};

// Everything a step reads and writes. Per-worker and per-sample arrays are feature-major,
// [feature][Np] or [feature][Sp], with Np, Sp = N, S rounded up to a multiple of 8 (padding
// zero; see predictor.cc's stride()); the noise and the log samples are dense row-major.
struct Workspace {
  int N = 0, S = 0, B = 0, Np = 0, Sp = 0;
  int H = 0, G = 0, D = 0, K = 0, E = 0;
  int objective = 0;  // Objective
  double overhead = 0;

  // The recurrent state: h is rows 3.. of feat (after the features, one input of embed1).
  float* feat = nullptr;  // [3 + H][Np]: normalised log time, censored, present; then h
  float *g = nullptr, *z = nullptr, *z_sd = nullptr;  // [G], [D], [D]
  float ref = 0;          // the features' reference, then (predict) the updated state's
  float spread = 1;       // the calibration's factor about each worker's predictive mean
  bool scaled = false;    // spread != 1 (as the reference tests it, in float64)

  // This step's observation, summarised by the caller.
  int P = 0;                    // present workers
  const int* present = nullptr;  // their indices
  float y_sum = 0, c_sum = 0;   // sum of normalised log times (present), of censored flags

  // Noise: z, transition [S][D]; uniform, normal [S][N]. Drawn by draw_noise.
  float *noise_z = nullptr, *noise_tr = nullptr, *noise_u = nullptr, *noise_eps = nullptr;
  uint64_t* rng = nullptr;  // kRngStreams xoshiro256** states, word-major: [4][kRngStreams]
  int noise_chunk = 0;      // random words per pass of the draw (a multiple of kRngStreams);
  uint64_t* noise_bits = nullptr;  // scratch of that size,
  float *noise_cos = nullptr, *noise_sin = nullptr;  // and of the normals drawn from it

  // Scratch of the network.
  float *hidden = nullptr, *embed = nullptr;   // [width][max(Np, Sp)], [E][Np]
  float *gates_i = nullptr, *gates_h = nullptr;  // [3 max(H, G)][Np]
  float *small_a = nullptr, *small_b = nullptr, *small_c = nullptr;  // [longest]
  float *zg = nullptr, *pooled_stats = nullptr;  // [D + G], [E + 3]
  float* emit_out = nullptr;                   // [3K + D][Np]
  float *cum = nullptr, *loc = nullptr, *scale = nullptr;  // [K][Np]
  float *z_next = nullptr, *prior_out = nullptr;           // [D][Sp], [2D][Sp]
  float* centre = nullptr;   // [Np] predictive mean log time per worker (when scaled)

  // The samples and the argmax.
  float* row = nullptr;      // [N] one sample's log times when some are absent
  float* log_x = nullptr;    // [S][P] log samples of present workers
  float* row_max = nullptr;  // [S]
  float sample_lo = 0, sample_hi = 0;
  bool sample_nan = false;
  int chunk = 0;             // samples binned per pass
  int32_t* bin_of = nullptr;  // [chunk]
  double* wide = nullptr;     // [chunk]
  Bin* bins = nullptr;        // [B]
  int32_t* max_count = nullptr;  // [B]
  double* max_sum = nullptr;     // [B]
  double *cand = nullptr, *expected = nullptr, *rest = nullptr, *msum = nullptr,
         *value = nullptr;  // [B + 1]
};

struct KernelTable {
  const char* isa;
  // The network's filter step: embeddings, posterior, worker and global cells. Reads the
  // features and h from feat; updates h (present workers), g, z, z_sd.
  void (*filter)(const WeightsView& w, Workspace& ws);
  // Emission, S latent draws and the S x P log samples (with their range and row maxima).
  void (*predict)(const WeightsView& w, Workspace& ws);
  // The grid argmax over the log samples: the cutoff in seconds (NaN for a broken state).
  double (*argmax)(Workspace& ws, double rate);
  void (*draw_noise)(Workspace& ws);
};

namespace baseline {
const KernelTable& kernels();
}
namespace avx2 {
const KernelTable& kernels();
}

}  // namespace hvdcut
