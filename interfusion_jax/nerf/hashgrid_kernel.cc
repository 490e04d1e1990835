// interfusion_jax hash-grid kernels: same layout, hash and float ops as the
// pure-JAX path of interfusion_jax/nerf/hashgrid.py, which builds this file
// (package data) with the system C++ compiler on first use of the "ffi" backend.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr uint32_t kP1 = 2654435761u, kP2 = 805459861u;
constexpr int64_t kAhead = 16;

// Rows of the 8 corners and their coefficients: the trilinear weights w_c, or,
// with a direction h (non-null, zero on clamped coordinates), the derivative
// coefficients sum_d (R h_d) dw_c/dfrac_d in the same float order as
// _corner_coef in hashgrid.py.
inline void Corners(const float* x, const float* h, int32_t res, bool dense,
                    uint32_t mask, uint32_t* rows, float* w) {
  uint32_t t0[3], t1[3];
  float f0[3], f1[3];
  const uint32_t primes[3] = {1u, kP1, kP2};
  uint32_t stride = 1;
  for (int d = 0; d < 3; ++d) {
    float xc = std::min(std::max(x[d], 0.0f), 1.0f);
    float pos = xc * static_cast<float>(res);
    float cf = std::min(std::max(std::floor(pos), 0.0f), static_cast<float>(res - 1));
    float fr = pos - cf;
    uint32_t ci = static_cast<uint32_t>(cf);
    f0[d] = 1.0f - fr;
    f1[d] = fr;
    if (dense) {
      t0[d] = ci * stride;
      t1[d] = (ci + 1u) * stride;
      stride *= static_cast<uint32_t>(res + 1);
    } else {
      t0[d] = ci * primes[d];
      t1[d] = (ci + 1u) * primes[d];
    }
  }
  for (int c = 0; c < 8; ++c) {
    const int bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
    const uint32_t a = bx ? t1[0] : t0[0], b = by ? t1[1] : t0[1],
                   e = bz ? t1[2] : t0[2];
    rows[c] = dense ? a + b + e : ((a ^ b ^ e) & mask);
    const float wx = bx ? f1[0] : f0[0], wy = by ? f1[1] : f0[1], wz = bz ? f1[2] : f0[2];
    if (h == nullptr) {
      w[c] = (wx * wy) * wz;
    } else {
      const float r = static_cast<float>(res);
      const float hx = h[0] * r, hy = h[1] * r, hz = h[2] * r;
      w[c] = (bx ? hx : -hx) * (wy * wz) + (by ? hy : -hy) * (wx * wz) +
             (bz ? hz : -hz) * (wx * wy);
    }
  }
}

int NumThreads(int64_t work) {
  int hw = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* e = std::getenv("INTERFUSION_JAX_KERNEL_THREADS")) hw = std::atoi(e);
  int n = std::max(1, std::min(hw, 8));
  return work < 4096 ? 1 : n;
}

template <typename Fn>
void ParallelFor(int64_t n, int threads, Fn fn) {
  if (threads <= 1) { fn(0, n, 0); return; }
  std::vector<std::thread> pool;
  int64_t chunk = (n + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    int64_t lo = t * chunk, hi = std::min(n, lo + chunk);
    if (lo >= hi) break;
    pool.emplace_back(fn, lo, hi, t);
  }
  for (auto& th : pool) th.join();
}

}  // namespace

// out[l, n, f] = sum_c w_c table[off_l + row_c, f]  (level-major: one level's
// table stays cache-hot during its pass and every write is contiguous).
ffi::Error FwdImpl(ffi::Buffer<ffi::F32> table, ffi::Buffer<ffi::F32> x,
                   ffi::Buffer<ffi::S32> levels, ffi::ResultBuffer<ffi::F32> out,
                   int32_t log2_t) {
  const int64_t F = table.dimensions()[1];
  const int64_t N = x.dimensions()[0];
  const int64_t L = levels.dimensions()[0];
  const float* T = table.typed_data();
  const float* X = x.typed_data();
  const int32_t* lv = levels.typed_data();
  float* O = out->typed_data();
  const uint32_t mask = (1u << log2_t) - 1u;
  for (int64_t l = 0; l < L; ++l) {
    const int32_t res = lv[3 * l], dense = lv[3 * l + 1];
    const int64_t off = lv[3 * l + 2];
    float* Ol = O + l * N * F;
    ParallelFor(N, NumThreads(N), [&](int64_t lo, int64_t hi, int) {
      // Ring of corners computed kAhead points early, their rows prefetched.
      uint32_t ring_rows[kAhead][8];
      float ring_w[kAhead][8];
      for (int64_t n = lo; n < std::min(hi, lo + kAhead); ++n)
        Corners(X + 3 * n, nullptr, res, dense != 0, mask, ring_rows[n % kAhead], ring_w[n % kAhead]);
      for (int64_t n = lo; n < hi; ++n) {
        uint32_t rows[8];
        float w[8];
        std::memcpy(rows, ring_rows[n % kAhead], sizeof(rows));
        std::memcpy(w, ring_w[n % kAhead], sizeof(w));
        const int64_t m = n + kAhead;
        if (m < hi) {
          uint32_t* r = ring_rows[m % kAhead];
          Corners(X + 3 * m, nullptr, res, dense != 0, mask, r, ring_w[m % kAhead]);
          for (int c = 0; c < 8; ++c) __builtin_prefetch(T + (off + r[c]) * F, 0, 1);
        }
        for (int64_t f = 0; f < F; ++f) {
          float acc = 0.0f;
          for (int c = 0; c < 8; ++c) acc = acc + w[c] * T[(off + rows[c]) * F + f];
          Ol[n * F + f] = acc;
        }
      }
    });
  }
  return ffi::Error::Success();
}

// grad[off_l + row_c, f] += coef_c g[l, n, f] with coef_c the trilinear weight
// (H null) or the derivative coefficient along H[n] (see Corners); levels own
// disjoint rows, so threads split the levels and never race.
// With J [L, N, F, 3] (the Jacobian's cotangent) every corner row also
// receives sum_d D_cd J[l, n, f, d], D_cd = R dw_c/dfrac_d (zero on clamped
// axes): the features' and the Jacobian's cotangents in one pass.
ffi::Error SplatImpl(const float* G, const float* X, const float* H, const float* J,
                     ffi::Buffer<ffi::S32> levels, ffi::ResultBuffer<ffi::F32> out,
                     int64_t N, int32_t log2_t) {
  const int64_t L = levels.dimensions()[0];
  const int64_t F = out->dimensions()[1];
  const int64_t R = out->dimensions()[0];
  const int32_t* lv = levels.typed_data();
  float* O = out->typed_data();
  std::memset(O, 0, sizeof(float) * R * F);
  const uint32_t mask = (1u << log2_t) - 1u;
  const int threads = static_cast<int>(std::min<int64_t>(NumThreads(N), L));
  ParallelFor(threads, threads, [&](int64_t t0, int64_t, int) {
    uint32_t rows[8];
    float w[8];
    for (int64_t l = t0; l < L; l += threads) {
      const int32_t res = lv[3 * l], dense = lv[3 * l + 1];
      const int64_t off = lv[3 * l + 2];
      const float* Gl = G + l * N * F;
      uint32_t ring_rows[kAhead][8];
      float ring_w[kAhead][8];
      for (int64_t n = 0; n < std::min<int64_t>(N, kAhead); ++n)
        Corners(X + 3 * n, H ? H + 3 * n : nullptr, res, dense != 0, mask,
                ring_rows[n % kAhead], ring_w[n % kAhead]);
      for (int64_t n = 0; n < N; ++n) {
        std::memcpy(rows, ring_rows[n % kAhead], sizeof(rows));
        std::memcpy(w, ring_w[n % kAhead], sizeof(w));
        const int64_t m = n + kAhead;
        if (m < N) {
          uint32_t* r = ring_rows[m % kAhead];
          Corners(X + 3 * m, H ? H + 3 * m : nullptr, res, dense != 0, mask, r,
                  ring_w[m % kAhead]);
          for (int c = 0; c < 8; ++c) __builtin_prefetch(O + (off + r[c]) * F, 1, 1);
        }
        const float* gn = Gl + n * F;
        if (J == nullptr) {
          for (int c = 0; c < 8; ++c) {
            float* o = O + (off + rows[c]) * F;
            for (int64_t f = 0; f < F; ++f) o[f] += w[c] * gn[f];
          }
        } else {
          float dc[8][3];
          for (int d = 0; d < 3; ++d) {
            float e[3] = {0.0f, 0.0f, 0.0f};
            e[d] = 1.0f;
            uint32_t unused[8];
            const bool inside = X[3 * n + d] >= 0.0f && X[3 * n + d] <= 1.0f;
            float col[8];
            Corners(X + 3 * n, e, res, dense != 0, mask, unused, col);
            for (int c = 0; c < 8; ++c) dc[c][d] = inside ? col[c] : 0.0f;
          }
          const float* jn = J + (l * N + n) * F * 3;
          for (int c = 0; c < 8; ++c) {
            float* o = O + (off + rows[c]) * F;
            for (int64_t f = 0; f < F; ++f)
              o[f] += w[c] * gn[f] + dc[c][0] * jn[3 * f] + dc[c][1] * jn[3 * f + 1] +
                      dc[c][2] * jn[3 * f + 2];
          }
        }
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error BwdImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                   ffi::Buffer<ffi::S32> levels, ffi::ResultBuffer<ffi::F32> out,
                   int32_t log2_t) {
  return SplatImpl(g.typed_data(), x.typed_data(), nullptr, nullptr, levels, out,
                   x.dimensions()[0], log2_t);
}

// h [N, 3]: the direction (already zero on clamped coordinates).
ffi::Error BwdDirImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::S32> levels,
                      ffi::ResultBuffer<ffi::F32> out, int32_t log2_t) {
  return SplatImpl(g.typed_data(), x.typed_data(), h.typed_data(), nullptr, levels, out,
                   x.dimensions()[0], log2_t);
}

// j [L, N, F, 3]: the Jacobian's cotangent, splatted with g in one pass.
ffi::Error BwdJacImpl(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                      ffi::Buffer<ffi::F32> j, ffi::Buffer<ffi::S32> levels,
                      ffi::ResultBuffer<ffi::F32> out, int32_t log2_t) {
  return SplatImpl(g.typed_data(), x.typed_data(), nullptr, j.typed_data(), levels, out,
                   x.dimensions()[0], log2_t);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(IfjHashgridFwd, FwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("log2_t"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IfjHashgridBwd, BwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("log2_t"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IfjHashgridBwdDir, BwdDirImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("log2_t"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(IfjHashgridBwdJac, BwdJacImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int32_t>("log2_t"));
