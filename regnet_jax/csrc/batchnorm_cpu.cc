// XLA FFI handlers: training-mode batch norm fused with the residual add and ReLU that follow it, forward and
// backward, on the CPU.
//
// Why: around the oneDNN convolutions, XLA:CPU spends as long again on batch norm: it splits each BN into
// several fusions (statistics, normalise, ReLU, their gradients), each one a full pass over an activation that
// has just left the cache, and most run on one core. Here the forward is one pass for the statistics and one
// that writes relu(bn(x) + residual); the backward is one pass for the two channel reductions (writing the
// residual's gradient on the way) and one for dx, all on every OpenMP thread (PyTorch's channels-last batch
// norm kernels work the same way, without the ReLU / residual fusion).
//
// Layout: x is (G, R, C), G independent normalisation groups (BatchNorm's num_groups) of R rows (batch x height x
// width), C contiguous; or, per side (attributes x_blocked / y_blocked), oneDNN's blocked nChw16c (see Layout),
// so that a BN can hand the blocked oneDNN convolutions their layout at no extra pass. Activations float32 or
// bfloat16 (computed in float32); statistics, scale, bias and their gradients float32. Statistics: shifted sums
// (shift = each channel's first value, which keeps the variance exact when |mean| >> std) accumulated in float
// over blocks of at most 64 rows and in double across blocks.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kBlock = 64;

inline float Load(const float* p, int64_t i) { return p[i]; }
inline void Store(float* p, int64_t i, float v) { p[i] = v; }
inline float Load(const uint16_t* p, int64_t i) {
  uint32_t u = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even, like XLA's convert; NaN stays NaN. Branch-free: with an early return for NaN, GCC left
// the loops that store bfloat16 scalar (the dx pass of the backward ran 2.6x slower than in float32 on AVX2).
inline void Store(uint16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  const uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  p[i] = static_cast<uint16_t>((nan ? 0x7fc00000u : rounded) >> 16);
}

// scale / sqrt(var + eps) from the float32 variance the forward returns: the backward recomputes it bit for bit.
inline float Mul(float scale, float var, float eps) {
  return static_cast<float>(scale / std::sqrt(static_cast<double>(var) + eps));
}

// bn(x) before the residual and ReLU; one explicit fma so that forward and backward round it identically (the
// backward recomputes it for the ReLU mask instead of reading y).
inline float PreActivation(float x, float mean, float mul, float bias) { return std::fma(x - mean, mul, bias); }

// Rows [begin, end) of thread t out of T.
inline void Rows(int64_t r, int t, int T, int64_t* begin, int64_t* end) {
  int64_t chunk = (r + T - 1) / T;
  *begin = std::min<int64_t>(r, t * chunk);
  *end = std::min<int64_t>(r, *begin + chunk);
}

// Where element (row, channel) of one (R, C) group lives. Plain: row-major (R, C), C contiguous. Blocked:
// oneDNN's nChw16c, (batch, C / 16, H*W, 16), the layout of the grouped convolutions (regnet_jax/onednn.py),
// rows being (batch, H*W). The layouts are template parameters (kXB for x and dx, kYB for y, the residual, dy
// and the residual's gradient) so that the loops compile without layout branches; channels are walked in chunks
// of 16 when either side is blocked (contiguous in both layouts), else all C at once.
struct Layout {
  int64_t hw, c;
};

// Walks rows begin, begin + 1, ... keeping (image, pixel) = (i / hw, i % hw) by increments: a division per row
// would cost as much as the row's arithmetic. Offset<kBlocked>() is the row's start, chunk 0.
struct RowWalker {
  Layout l;
  int64_t i, n, p;
  RowWalker(const Layout& l, int64_t begin) : l(l), i(begin), n(begin / l.hw), p(begin % l.hw) {}
  template <bool kBlocked>
  int64_t Offset() const { return kBlocked ? n * l.hw * l.c + p * 16 : i * l.c; }
  void Next() {
    ++i;
    if (++p == l.hw) {
      p = 0;
      ++n;
    }
  }
};

// Offset of channel chunk k (width channels) from a row's start.
template <bool kBlocked>
inline int64_t ChunkOffset(const Layout& l, int64_t k, int64_t width) {
  return kBlocked ? k * l.hw * 16 : k * width;
}

// acc[j] and acc[c + j] = the sums over rows [begin, end) of the two quantities q(ax, ay, j, &q1, &q2) gives for
// channel j of the row (ax, ay: the element's offset on the x side and on the y side): float within kBlock-row
// blocks (vectorised over channels), double across them.
template <bool kXB, bool kYB, typename Q>
void SumRows(int64_t begin, int64_t end, int64_t off, const Layout l, double* acc, Q q) {
  const int64_t c = l.c, w = (kXB || kYB) ? 16 : l.c;
  std::fill(acc, acc + 2 * c, 0.0);
  if constexpr (kXB && kYB) {
    // Both blocked: one 16-channel block at a time over all the thread's rows, so that each (image, block)
    // plane of H*W x 16 values streams through in memory order, a run of pixels at a time.
    for (int64_t k = 0; k * 16 < c; ++k) {
      const int64_t c0 = k * 16;
      // Runs of pixels of one image; no closure here: q must stay a local whose pointers provably do not alias
      // the accumulators (through a captured reference GCC reloads them every element and does not vectorise).
      for (int64_t i = begin; i < end;) {
        const int64_t n = i / l.hw, p0 = i - n * l.hw, p1 = std::min(l.hw, p0 + (end - i));
        const int64_t base = off + n * l.hw * c + ChunkOffset<true>(l, k, 16);
        for (int64_t b0 = p0; b0 < p1; b0 += kBlock) {
          float a1[16] = {}, a2[16] = {};
          const int64_t b1 = std::min(p1, b0 + kBlock);
          for (int64_t p = b0; p < b1; ++p) {
            const int64_t at = base + p * 16;
#pragma omp simd  // across the 16 channels (left alone, GCC vectorises some instances across pixels instead)
            for (int64_t j = 0; j < 16; ++j) {
              float q1, q2;
              q(at + j, at + j, c0 + j, q1, q2);
              a1[j] += q1;
              a2[j] += q2;
            }
          }
          for (int64_t j = 0; j < 16; ++j) {
            acc[c0 + j] += a1[j];
            acc[c + c0 + j] += a2[j];
          }
        }
        i += p1 - p0;
      }
    }
    return;
  }
  std::vector<float> s1(c), s2(c);
  RowWalker r(l, begin);
  for (int64_t b0 = begin; b0 < end; b0 += kBlock) {
    std::fill(s1.begin(), s1.end(), 0.f);
    std::fill(s2.begin(), s2.end(), 0.f);
    for (int64_t i = b0; i < std::min(end, b0 + kBlock); ++i, r.Next()) {
      const int64_t rx = off + r.Offset<kXB>(), ry = off + r.Offset<kYB>();
      for (int64_t k = 0; k * w < c; ++k) {
        const int64_t cx = rx + ChunkOffset<kXB>(l, k, w), cy = ry + ChunkOffset<kYB>(l, k, w), c0 = k * w;
        float* __restrict a1 = s1.data() + c0;
        float* __restrict a2 = s2.data() + c0;
        for (int64_t j = 0; j < w; ++j) {
          float q1, q2;
          q(cx + j, cy + j, c0 + j, q1, q2);
          a1[j] += q1;
          a2[j] += q2;
        }
      }
    }
    for (int64_t j = 0; j < c; ++j) {
      acc[j] += s1[j];
      acc[c + j] += s2[j];
    }
  }
}

// Calls f(ax, ay, j) for every channel of rows [begin, end).
template <bool kXB, bool kYB, typename F>
void ForRows(int64_t begin, int64_t end, int64_t off, const Layout l, F f) {
  const int64_t c = l.c, w = (kXB || kYB) ? 16 : l.c;
  if constexpr (kXB && kYB) {  // memory order, as in SumRows
    for (int64_t k = 0; k * 16 < c; ++k) {
      const int64_t c0 = k * 16;
      for (int64_t i = begin; i < end;) {  // runs of pixels of one image, as in SumRows
        const int64_t n = i / l.hw, p0 = i - n * l.hw, p1 = std::min(l.hw, p0 + (end - i));
        const int64_t base = off + n * l.hw * c + ChunkOffset<true>(l, k, 16);
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t at = base + p * 16;
#pragma omp simd
          for (int64_t j = 0; j < 16; ++j) f(at + j, at + j, c0 + j);
        }
        i += p1 - p0;
      }
    }
    return;
  }
  RowWalker r(l, begin);
  for (int64_t i = begin; i < end; ++i, r.Next()) {
    const int64_t rx = off + r.Offset<kXB>(), ry = off + r.Offset<kYB>();
    for (int64_t k = 0; k * w < c; ++k) {
      const int64_t cx = rx + ChunkOffset<kXB>(l, k, w), cy = ry + ChunkOffset<kYB>(l, k, w), c0 = k * w;
      for (int64_t j = 0; j < w; ++j) f(cx + j, cy + j, c0 + j);
    }
  }
}

// Per-thread channel accumulators in double, summed into `out` (2 x C: first and second quantity).
struct Partials {
  int64_t c;
  std::vector<double> acc;  // T x 2 x C
  Partials(int T, int64_t c) : c(c), acc(static_cast<size_t>(T) * 2 * c, 0.0) {}
  double* Of(int t) { return acc.data() + static_cast<size_t>(t) * 2 * c; }
  // Channels split over threads; call between barriers.
  void Reduce(int t, int T, double* out) {
    int64_t begin, end;
    Rows(c, t, T, &begin, &end);
    for (int64_t j = begin; j < end; ++j) {
      double a = 0, b = 0;
      for (int u = 0; u < T; ++u) {
        a += Of(u)[j];
        b += Of(u)[c + j];
      }
      out[j] = a;
      out[c + j] = b;
    }
  }
};

// kRelu / kRes (and the layouts kXB / kYB) are template parameters so that the inner loops compile without
// branches and vectorise.
template <typename T, bool kRelu, bool kRes, bool kXB, bool kYB>
void Forward(const T* __restrict x, const float* scale, const float* bias, const T* __restrict res, T* __restrict y,
             float* mean_out, float* var_out, int64_t groups, int64_t r, int64_t c, float eps, const Layout l) {
  int nt = omp_get_max_threads();
  Partials part(nt, c);
  std::vector<double> sums(2 * c);
  std::vector<float> shift(c), mean(c), mul(c);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t off = g * r * c;
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), nthreads = omp_get_num_threads();
      int64_t begin, end;
      Rows(r, t, nthreads, &begin, &end);
#pragma omp single
      for (int64_t j = 0; j < c; ++j) {  // the group's first row
        shift[j] = Load(x, off + (kXB ? ChunkOffset<true>(l, j / 16, 16) + j % 16 : j));
      }
      const float* __restrict k = shift.data();
      const T* __restrict xs = x;
      SumRows<kXB, kXB>(begin, end, off, l, part.Of(t), [=](int64_t at, int64_t, int64_t j, float& q1, float& q2) {
        float d = Load(xs, at) - k[j];
        q1 = d;
        q2 = d * d;
      });
#pragma omp barrier
      part.Reduce(t, nthreads, sums.data());
#pragma omp barrier
#pragma omp single
      for (int64_t j = 0; j < c; ++j) {
        double m1 = sums[j] / r;
        mean[j] = static_cast<float>(shift[j] + m1);
        // Clamp rounding below zero; `v < 0 ? 0 : v` rather than std::max keeps a NaN (bad input) a NaN.
        double v = sums[c + j] / r - m1 * m1;
        var_out[g * c + j] = static_cast<float>(v < 0.0 ? 0.0 : v);
        mul[j] = Mul(scale[j], var_out[g * c + j], eps);
        mean_out[g * c + j] = mean[j];
      }
      // The single's implicit barrier publishes mean / mul before the normalising pass.
      const float* __restrict m = mean.data();
      const float* __restrict s = mul.data();
      const float* __restrict b = bias;
      const T* __restrict rs = res;
      T* __restrict ys = y;
      ForRows<kXB, kYB>(begin, end, off, l, [=](int64_t ax, int64_t ay, int64_t j) {
        float v = PreActivation(Load(xs, ax), m[j], s[j], b[j]);
        if (kRes) v += Load(rs, ay);
        if (kRelu) v = std::max(v, 0.f);
        Store(ys, ay, v);
      });
    }
  }
}

// ReLU mask: with a residual from y (> 0 where the output is), else recomputed from x (one stream fewer to read).
// The buffers are distinct (XLA aliases no output to an input here), hence __restrict.
// kTwo: y had two consumers (a block's output feeds the next block's conv and its shortcut), so its gradient is
// dy + dy2, summed here in float32 as it is read instead of in a separate XLA pass that writes the sum.
template <typename T, bool kRelu, bool kRes, bool kXB, bool kYB, bool kTwo>
void Backward(const T* __restrict x, const T* __restrict y, const T* __restrict dy, const T* __restrict dy2,
              const float* mean_in,
              const float* var_in, const float* scale, const float* bias, T* __restrict dx, T* __restrict dres,
              float* dscale, float* dbias, int64_t groups, int64_t r, int64_t c, float eps, const Layout l) {
  int nt = omp_get_max_threads();
  Partials part(nt, c);
  std::vector<double> sums(2 * c), total(2 * c, 0.0);
  std::vector<float> rstd(c), mul(c), k1(c), k2(c), k3(c);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t off = g * r * c;
    const float* mean = mean_in + g * c;
    for (int64_t j = 0; j < c; ++j) {
      rstd[j] = Mul(1.f, var_in[g * c + j], eps);
      mul[j] = Mul(scale[j], var_in[g * c + j], eps);
    }
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), nthreads = omp_get_num_threads();
      int64_t begin, end;
      Rows(r, t, nthreads, &begin, &end);
      const float* __restrict m = mean;
      const float* __restrict fs = mul.data();
      const float* __restrict fb = bias;
      // Thread-local copies: the shared parameters live in OpenMP's shared-data block, and with the dres store
      // in the loop GCC could not prove them loop-invariant (no vectorisation).
      const T* __restrict xs = x;
      const T* __restrict ys = y;
      const T* __restrict dys = dy;
      const T* __restrict dy2s = dy2;
      T* __restrict dress = dres;
      auto grad = [=](int64_t ax, int64_t ay, int64_t j) {  // dy through the ReLU
        float gj = Load(dys, ay);
        if constexpr (kTwo) gj += Load(dy2s, ay);
        if (kRelu) {
          bool on = kRes ? Load(ys, ay) > 0.f : PreActivation(Load(xs, ax), m[j], fs[j], fb[j]) > 0.f;
          gj = on ? gj : 0.f;  // a select, not a branch, so that the loop vectorises
        }
        return gj;
      };
      // Pass 1: g = dy masked by the ReLU (y > 0); sums of g and g * (x - mean); g is the residual's gradient.
      SumRows<kXB, kYB>(begin, end, off, l, part.Of(t), [=](int64_t ax, int64_t ay, int64_t j, float& q1, float& q2) {
        float gj = grad(ax, ay, j);
        if (kRes) Store(dress, ay, gj);
        q1 = gj;
        q2 = gj * (Load(xs, ax) - m[j]);
      });
#pragma omp barrier
      part.Reduce(t, nthreads, sums.data());
#pragma omp barrier
#pragma omp single
      for (int64_t j = 0; j < c; ++j) {
        // dx = scale * rstd * (g - mean(g) - xhat * mean(g * xhat)),  xhat = (x - mean) * rstd.
        double sg = sums[j], sgx = sums[c + j] * rstd[j];
        total[j] += sgx;
        total[c + j] += sg;
        // dx = k3 * (g - k1 - (x - mean) * k2)
        k1[j] = static_cast<float>(sg / r);
        k2[j] = static_cast<float>(sgx / r * rstd[j]);
        k3[j] = scale[j] * rstd[j];
      }
      const float* __restrict a = k1.data();
      const float* __restrict b = k2.data();
      const float* __restrict s = k3.data();
      T* __restrict dxs = dx;
      ForRows<kXB, kYB>(begin, end, off, l, [=](int64_t ax, int64_t ay, int64_t j) {
        float gj = kRes ? Load(dress, ay) : grad(ax, ay, j);
        Store(dxs, ax, s[j] * (gj - a[j] - (Load(xs, ax) - m[j]) * b[j]));
      });
    }
  }
  for (int64_t j = 0; j < c; ++j) {
    dscale[j] = static_cast<float>(total[j]);
    dbias[j] = static_cast<float>(total[c + j]);
  }
}

bool IsBf16(const ffi::AnyBuffer& b) { return b.element_type() == ffi::DataType::BF16; }

template <typename T>
T* Data(const ffi::AnyBuffer& b) {
  return static_cast<T*>(const_cast<void*>(static_cast<const void*>(b.untyped_data())));
}

// The call's attributes: eps, relu, and the layouts of the x side (x, dx) and the y side (y, residual, dy, its
// gradient), each plain or blocked (nChw16c with H*W = hw, see Layout).
struct Attrs {
  float eps;
  bool relu, x_blocked, y_blocked;
  int64_t hw;
};

ffi::Error Dims(const ffi::AnyBuffer& x, const Attrs& a, int64_t* g, int64_t* r, int64_t* c, Layout* l) {
  auto d = x.dimensions();
  if (d.size() != 3) return ffi::Error::InvalidArgument("regnet_jax batch norm: x must be (groups, rows, C)");
  if (x.element_type() != ffi::DataType::F32 && x.element_type() != ffi::DataType::BF16) {
    return ffi::Error::InvalidArgument("regnet_jax batch norm: float32 or bfloat16 activations only");
  }
  *g = d[0];
  *r = d[1];
  *c = d[2];
  if (*r < 1) return ffi::Error::InvalidArgument("regnet_jax batch norm: no rows to normalise");
  const bool blocked = a.x_blocked || a.y_blocked;
  if (blocked && (*c % 16 || a.hw < 1 || *r % a.hw)) {
    return ffi::Error::InvalidArgument("regnet_jax batch norm: the blocked layout needs C % 16 == 0 and rows a "
                                       "multiple of H*W");
  }
  *l = Layout{blocked ? a.hw : 1, *c};
  return ffi::Error::Success();
}

// The kernel instantiation for the runtime flags (relu, residual, x blocked, y blocked): Fn<kRelu, kRes, kXB,
// kYB>{} is handed to `run`, which calls it.
template <template <bool, bool, bool, bool> class Fn, typename Run>
void Pick(Run run, bool relu, bool res, bool xb, bool yb) {
  auto layouts = [&](auto relu_c, auto res_c) {
    constexpr bool kRelu = decltype(relu_c)::value, kRes = decltype(res_c)::value;
    if (xb && yb) {
      run(Fn<kRelu, kRes, true, true>{});
    } else if (xb) {
      run(Fn<kRelu, kRes, true, false>{});
    } else if (yb) {
      run(Fn<kRelu, kRes, false, true>{});
    } else {
      run(Fn<kRelu, kRes, false, false>{});
    }
  };
  auto flags = [&](auto relu_c) { res ? layouts(relu_c, std::true_type{}) : layouts(relu_c, std::false_type{}); };
  relu ? flags(std::true_type{}) : flags(std::false_type{});
}

template <typename T>
struct Kernels {
  template <bool kRelu, bool kRes, bool kXB, bool kYB>
  struct Fwd {
    template <typename... A>
    void operator()(A... args) const { Forward<T, kRelu, kRes, kXB, kYB>(args...); }
  };
  template <bool kRelu, bool kRes, bool kXB, bool kYB>
  struct Bwd {
    template <typename... A>
    void operator()(A... args) const { Backward<T, kRelu, kRes, kXB, kYB, false>(args...); }
  };
  template <bool kRelu, bool kRes, bool kXB, bool kYB>
  struct Bwd2 {
    template <typename... A>
    void operator()(A... args) const { Backward<T, kRelu, kRes, kXB, kYB, true>(args...); }
  };
};

template <typename T>
void ForwardDispatch(const T* x, const float* scale, const float* bias, const T* res, T* y, float* mean, float* var,
                     int64_t g, int64_t r, int64_t c, const Attrs& a, const Layout& l) {
  auto run = [&](auto kernel) { kernel(x, scale, bias, res, y, mean, var, g, r, c, a.eps, l); };
  Pick<Kernels<T>::template Fwd>(run, a.relu, res, a.x_blocked, a.y_blocked);
}

template <typename T>
void BackwardDispatch(const T* x, const T* y, const T* dy, const T* dy2, const float* mean, const float* var,
                      const float* scale, const float* bias, T* dx, T* dres, float* dscale, float* dbias, int64_t g,
                      int64_t r, int64_t c, const Attrs& a, const Layout& l) {
  auto run = [&](auto kernel) {
    kernel(x, y, dy, dy2, mean, var, scale, bias, dx, dres, dscale, dbias, g, r, c, a.eps, l);
  };
  if (dy2) {
    Pick<Kernels<T>::template Bwd2>(run, a.relu, dres, a.x_blocked, a.y_blocked);
  } else {
    Pick<Kernels<T>::template Bwd>(run, a.relu, dres, a.x_blocked, a.y_blocked);
  }
}

using F32 = ffi::Buffer<ffi::F32>;

// Runs fn(T{}) with T the activations' storage type: float, or uint16_t holding bfloat16.
template <typename Fn>
void WithStorageType(const ffi::AnyBuffer& x, Fn fn) {
  if (IsBf16(x)) {
    fn(uint16_t{});
  } else {
    fn(float{});
  }
}

ffi::Error Fwd(ffi::AnyBuffer x, F32 scale, F32 bias, const ffi::AnyBuffer* res, ffi::Result<ffi::AnyBuffer> y,
               ffi::Result<F32> mean, ffi::Result<F32> var, const Attrs& a) {
  int64_t g, r, c;
  Layout l;
  if (auto e = Dims(x, a, &g, &r, &c, &l); e.failure()) return e;
  WithStorageType(x, [&](auto tag) {
    using T = decltype(tag);
    ForwardDispatch(Data<T>(x), scale.typed_data(), bias.typed_data(), res ? Data<T>(*res) : nullptr, Data<T>(*y),
                    mean->typed_data(), var->typed_data(), g, r, c, a, l);
  });
  return ffi::Error::Success();
}

ffi::Error Bwd(ffi::AnyBuffer x, const ffi::AnyBuffer* y, ffi::AnyBuffer dy, const ffi::AnyBuffer* dy2, F32 mean,
               F32 var, F32 scale, const float* bias, ffi::Result<ffi::AnyBuffer> dx, ffi::Result<F32> dscale,
               ffi::Result<F32> dbias, ffi::AnyBuffer* dres, const Attrs& a) {
  int64_t g, r, c;
  Layout l;
  if (auto e = Dims(x, a, &g, &r, &c, &l); e.failure()) return e;
  if (dy2 && (dy2->element_type() != dy.element_type() || dy2->element_count() != dy.element_count())) {
    return ffi::Error::InvalidArgument("regnet_jax batch norm: dy2 must have dy's dtype and shape");
  }
  WithStorageType(x, [&](auto tag) {
    using T = decltype(tag);
    BackwardDispatch(Data<T>(x), y ? Data<T>(*y) : nullptr, Data<T>(dy), dy2 ? Data<T>(*dy2) : nullptr,
                     mean.typed_data(), var.typed_data(),
                     scale.typed_data(), bias, Data<T>(*dx), dres ? Data<T>(*dres) : nullptr, dscale->typed_data(),
                     dbias->typed_data(), g, r, c, a, l);
  });
  return ffi::Error::Success();
}

ffi::Error BnFwd(ffi::AnyBuffer x, F32 scale, F32 bias, ffi::Result<ffi::AnyBuffer> y, ffi::Result<F32> mean,
                 ffi::Result<F32> var, float eps, bool relu, bool x_blocked, bool y_blocked, int64_t hw) {
  return Fwd(x, scale, bias, nullptr, y, mean, var, Attrs{eps, relu, x_blocked, y_blocked, hw});
}

ffi::Error BnFwdResidual(ffi::AnyBuffer x, F32 scale, F32 bias, ffi::AnyBuffer res, ffi::Result<ffi::AnyBuffer> y,
                         ffi::Result<F32> mean, ffi::Result<F32> var, float eps, bool relu, bool x_blocked,
                         bool y_blocked, int64_t hw) {
  return Fwd(x, scale, bias, &res, y, mean, var, Attrs{eps, relu, x_blocked, y_blocked, hw});
}

ffi::Error BnBwd(ffi::AnyBuffer x, ffi::AnyBuffer dy, F32 mean, F32 var, F32 scale, F32 bias,
                 ffi::Result<ffi::AnyBuffer> dx, ffi::Result<F32> dscale, ffi::Result<F32> dbias, float eps,
                 bool relu, bool x_blocked, bool y_blocked, int64_t hw) {
  return Bwd(x, nullptr, dy, nullptr, mean, var, scale, bias.typed_data(), dx, dscale, dbias, nullptr,
             Attrs{eps, relu, x_blocked, y_blocked, hw});
}

ffi::Error BnBwd2(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer dy2, F32 mean, F32 var, F32 scale, F32 bias,
                  ffi::Result<ffi::AnyBuffer> dx, ffi::Result<F32> dscale, ffi::Result<F32> dbias, float eps,
                  bool relu, bool x_blocked, bool y_blocked, int64_t hw) {
  return Bwd(x, nullptr, dy, &dy2, mean, var, scale, bias.typed_data(), dx, dscale, dbias, nullptr,
             Attrs{eps, relu, x_blocked, y_blocked, hw});
}

ffi::Error BnBwdResidual(ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer dy, F32 mean, F32 var, F32 scale,
                         ffi::Result<ffi::AnyBuffer> dx, ffi::Result<F32> dscale, ffi::Result<F32> dbias,
                         ffi::Result<ffi::AnyBuffer> dres, float eps, bool relu, bool x_blocked, bool y_blocked,
                         int64_t hw) {
  return Bwd(x, &y, dy, nullptr, mean, var, scale, nullptr, dx, dscale, dbias, &(*dres),
             Attrs{eps, relu, x_blocked, y_blocked, hw});
}

ffi::Error BnBwdResidual2(ffi::AnyBuffer x, ffi::AnyBuffer y, ffi::AnyBuffer dy, ffi::AnyBuffer dy2, F32 mean,
                          F32 var, F32 scale, ffi::Result<ffi::AnyBuffer> dx, ffi::Result<F32> dscale,
                          ffi::Result<F32> dbias, ffi::Result<ffi::AnyBuffer> dres, float eps, bool relu,
                          bool x_blocked, bool y_blocked, int64_t hw) {
  return Bwd(x, &y, dy, &dy2, mean, var, scale, nullptr, dx, dscale, dbias, &(*dres),
             Attrs{eps, relu, x_blocked, y_blocked, hw});
}

}  // namespace

using ffi::AnyBuffer;

#define REGNET_BN_ATTRS \
  Attr<float>("eps").Attr<bool>("relu").Attr<bool>("x_blocked").Attr<bool>("y_blocked").Attr<int64_t>("hw")

// Arguments and results in the order of the handlers above; eps, relu and the layouts are attributes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetBnFwd, BnFwd,
    ffi::Ffi::Bind().Arg<AnyBuffer>().Arg<F32>().Arg<F32>().Ret<AnyBuffer>().Ret<F32>().Ret<F32>().REGNET_BN_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetBnFwdResidual, BnFwdResidual,
    ffi::Ffi::Bind().Arg<AnyBuffer>().Arg<F32>().Arg<F32>().Arg<AnyBuffer>().Ret<AnyBuffer>().Ret<F32>().Ret<F32>()
        .REGNET_BN_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetBnBwd, BnBwd,
    ffi::Ffi::Bind().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<AnyBuffer>().Ret<F32>().Ret<F32>().REGNET_BN_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetBnBwdResidual, BnBwdResidual,
    ffi::Ffi::Bind().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<AnyBuffer>().Ret<F32>().Ret<F32>().Ret<AnyBuffer>().REGNET_BN_ATTRS);
// The same with y's gradient in two parts (dy + dy2), see Backward's kTwo.
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetBnBwd2, BnBwd2,
    ffi::Ffi::Bind().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
        .Ret<AnyBuffer>().Ret<F32>().Ret<F32>().REGNET_BN_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetBnBwdResidual2, BnBwdResidual2,
    ffi::Ffi::Bind().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<AnyBuffer>().Arg<F32>().Arg<F32>()
        .Arg<F32>().Ret<AnyBuffer>().Ret<F32>().Ret<F32>().Ret<AnyBuffer>().REGNET_BN_ATTRS);
