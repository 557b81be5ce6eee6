// Fused softmax attention for XLA:CPU, called through jax.ffi (jssl/models/native_attention.py).
//
// Per (batch b, head h), on [B, L, H, D] float32 operands (q already scaled as the caller
// wants), with an optional attention mask M (hidden scores set to finfo(float32).min, as Flax
// does) and an optional dropout keep mask K with keep probability κ:
//   forward:   S = where(M, q·kᵀ, min),  m = rowmax(S),  ι = 1 / rowsum(exp(S − m)),
//              P = exp(S − m)·ι,  P̃ = where(K, P / κ, 0),  O = P̃·v
//   backward:  P recomputed from (m, ι),  dP = where(K, (dO·vᵀ) / κ, 0),  δ = rowsum(dO ⊙ O),
//              dS = where(M, P ⊙ (dP − δ), 0),  dq = dS·k,  dk = dSᵀ·q,  dv = P̃ᵀ·dO
// A few query rows at a time: the [L, L] scores never exist beyond R rows of L floats. The
// (b, h) pairs are spread over XLA's intra-op thread pool. D is 16, 32, 64 or 128 (a whole
// number of W-float vectors, W = 16 with AVX-512, else 8); an additive bias is left to XLA's
// attention on the Python side.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// W floats per vector: 16 (one zmm register) with AVX-512, else 8 (one ymm with AVX2, two
// NEON registers on ARM). GCC vector extensions: the same code for every target.
#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
using vf = float __attribute__((vector_size(4 * W)));
using vi = int32_t __attribute__((vector_size(4 * W)));

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }
using v4 = float __attribute__((vector_size(16)));

// Four lanes of v folded by halving (+ or max).
inline v4 Fold(vf v, bool max) {
  if constexpr (W == 16) {
    using v8 = float __attribute__((vector_size(32)));
    const v8 lo = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
    const v8 hi = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    const v8 a = max ? (lo > hi ? lo : hi) : lo + hi;
    const v4 l4 = __builtin_shufflevector(a, a, 0, 1, 2, 3);
    const v4 h4 = __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return max ? (l4 > h4 ? l4 : h4) : l4 + h4;
  } else {
    const v4 l4 = __builtin_shufflevector(v, v, 0, 1, 2, 3);
    const v4 h4 = __builtin_shufflevector(v, v, 4, 5, 6, 7);
    return max ? (l4 > h4 ? l4 : h4) : l4 + h4;
  }
}
inline float hsum(vf v) {
  const v4 b = Fold(v, false);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
inline float hmax(vf v) {
  const v4 b = Fold(v, true);
  return std::max(std::max(b[0], b[2]), std::max(b[1], b[3]));
}

// exp(x) for x <= 0 (up to rounding): Cephes' expf, x = n·ln2 + r with |r| <= ln2/2, exp(r)
// by a degree-6 polynomial (relative error ~2e-7), 2^n through the exponent bits; x is
// clamped at -87 (exp = 1.6e-38, below every softmax sum's rounding).
inline vf vexp(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  const vf t = x * 1.44269504088896341f - 0.5f;    // t <= -0.5 + tiny
  const vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf);  // ceil(t)
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct Work {
  std::atomic<int64_t> next{0}, done{0};
  int64_t n = 0;
  std::function<void(int64_t)> fn;
};

void Drain(const std::shared_ptr<Work>& w) {
  for (int64_t i; (i = w->next.fetch_add(1)) < w->n;) {
    w->fn(i);
    w->done.fetch_add(1);
  }
}

// Runs fn(0..n-1) on the caller and the pool's threads; the caller waits only for tasks
// another thread has already started, so it cannot deadlock when every pool thread is a caller.
void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  auto w = std::make_shared<Work>();
  w->n = n;
  w->fn = std::move(fn);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([w] { Drain(w); });
  Drain(w);
  while (w->done.load() < n) std::this_thread::yield();
}

struct Shape {
  int64_t B, L, H, D, Lp;  // Lp: L rounded up to W
  int64_t row() const { return H * D; }  // stride between tokens of one (b, h)
  int64_t base(int64_t bh) const { return (bh / H) * L * H * D + (bh % H) * D; }
};

// The optional attention mask (uint8 [Bm, Hm, L, L], Bm in {1, B}, Hm in {1, H}; 0 = the key
// is hidden) and dropout keep mask (uint8 [B, H, L, L]; 0 = dropped) of one (b, h).
struct Masks {
  const uint8_t* mask = nullptr;  // row i at mask + i * L
  const uint8_t* keep = nullptr;
  float keep_prob = 1.0f;
};

constexpr float kHidden = -3.40282347e38f;  // finfo(float32).min, the value Flax masks with

// W mask bytes from p as int32 lanes (n valid bytes; lanes past n are 0).
inline vi MaskLanes(const uint8_t* p, int64_t n) {
  using u8xW = uint8_t __attribute__((vector_size(W)));
  u8xW b = {};
  if (n >= W)
    std::memcpy(&b, p, W);  // one vector load
  else
    std::memcpy(&b, p, static_cast<size_t>(n));
  return __builtin_convertvector(b, vi);
}

// x [L, D] (row stride rs) -> xt [D, Lp], zero past column L
void Transpose(const float* x, const Shape& sh, float* xt) {
  std::fill(xt, xt + sh.D * sh.Lp, 0.0f);
  for (int64_t j = 0; j < sh.L; ++j)
    for (int64_t d = 0; d < sh.D; ++d) xt[d * sh.Lp + j] = x[j * sh.row() + d];
}

// s[r, 0..Lp) = a_r · bt for R rows a_r (D floats each)
template <int V, int R>
inline void RowsTimesT(const float* const* a, const float* bt, int64_t Lp, float* s) {
  for (int64_t jb = 0; jb < Lp; jb += W) {
    vf acc[R] = {};
    for (int d = 0; d < W * V; ++d) {
      const vf b = load(bt + d * Lp + jb);
      for (int r = 0; r < R; ++r) acc[r] += a[r][d] * b;
    }
    for (int r = 0; r < R; ++r) store(s + r * Lp + jb, acc[r]);
  }
}

// Rows i0..i0+R of the forward: s holds R rows of scores, then of (dropped) probabilities.
template <int V, int R>
void ForwardRows(const Shape& sh, int64_t i0, const float* q, const float* kt, const float* vc,
                 const Masks& mk, float* o, float* row_max, float* row_inv, float* s) {
  const int64_t L = sh.L, Lp = sh.Lp, rs = sh.row();
  const float* qr[R];
  for (int r = 0; r < R; ++r) qr[r] = q + (i0 + r) * rs;
  RowsTimesT<V, R>(qr, kt, Lp, s);
  for (int r = 0; r < R; ++r) {
    float* sr = s + r * Lp;
    if (mk.mask)
      for (int64_t jb = 0; jb < Lp; jb += W) {
        const vi m = MaskLanes(mk.mask + (i0 + r) * L + jb, L - jb);
        store(sr + jb, m != 0 ? load(sr + jb) : splat(kHidden));
      }
    for (int64_t j = L; j < Lp; ++j) sr[j] = -INFINITY;
    vf m = load(sr);
    for (int64_t jb = W; jb < Lp; jb += W) {
      const vf x = load(sr + jb);
      m = x > m ? x : m;
    }
    const float mr = hmax(m);
    vf total = {};
    for (int64_t jb = 0; jb < Lp; jb += W) {
      const vf e = vexp(load(sr + jb) - mr);
      store(sr + jb, e);
      total += e;
    }
    const float inv = 1.0f / hsum(total);
    for (int64_t jb = 0; jb < Lp; jb += W) {
      vf p = load(sr + jb) * inv;
      if (mk.keep) {
        const vi k = MaskLanes(mk.keep + (i0 + r) * L + jb, L - jb);
        p = k != 0 ? p / mk.keep_prob : splat(0.0f);
      }
      store(sr + jb, p);
    }
    row_max[i0 + r] = mr;
    row_inv[i0 + r] = inv;
  }
  vf acc[R][V] = {};
  for (int64_t j = 0; j < L; ++j) {
    vf vv[V];
    for (int c = 0; c < V; ++c) vv[c] = load(vc + j * W * V + W * c);
    for (int r = 0; r < R; ++r) {
      const float p = s[r * Lp + j];
      for (int c = 0; c < V; ++c) acc[r][c] += p * vv[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < V; ++c) store(o + (i0 + r) * rs + W * c, acc[r][c]);
}

template <int V, int R>
void ForwardPair(const Shape& sh, int64_t bh, const float* q, const float* k, const float* v,
                 const Masks& mk, float* o, float* stats, std::vector<float>& buf) {
  const int64_t L = sh.L, D = sh.D, Lp = sh.Lp, off = sh.base(bh);
  buf.resize(D * Lp + L * D + R * Lp);
  float* kt = buf.data();
  float* vc = kt + D * Lp;
  float* s = vc + L * D;
  Transpose(k + off, sh, kt);
  for (int64_t j = 0; j < L; ++j) std::memcpy(vc + j * D, v + off + j * sh.row(), D * 4);
  float* row_max = stats + bh * 2 * L;
  float* row_inv = row_max + L;
  int64_t i = 0;
  for (; i + R <= L; i += R)
    ForwardRows<V, R>(sh, i, q + off, kt, vc, mk, o + off, row_max, row_inv, s);
  for (; i < L; ++i) ForwardRows<V, 1>(sh, i, q + off, kt, vc, mk, o + off, row_max, row_inv, s);
}

// Rows i0..i0+R of the backward: p gets the dropped probabilities P̃, ds the score gradients.
template <int V, int R>
void BackwardRows(const Shape& sh, int64_t i0, const float* q, const float* o, const float* g,
                  const float* row_max, const float* row_inv, const float* kt, const float* vt,
                  const float* kc, const Masks& mk, float* dq, float* dkc, float* dvc, float* p,
                  float* ds) {
  const int64_t L = sh.L, Lp = sh.Lp, rs = sh.row();
  const float *qr[R], *gr[R];
  for (int r = 0; r < R; ++r) {
    qr[r] = q + (i0 + r) * rs;
    gr[r] = g + (i0 + r) * rs;
  }
  RowsTimesT<V, R>(qr, kt, Lp, p);   // S
  RowsTimesT<V, R>(gr, vt, Lp, ds);  // dP̃ = dO·vᵀ
  for (int r = 0; r < R; ++r) {
    vf dot = {};
    for (int c = 0; c < V; ++c) dot += load(gr[r] + W * c) * load(o + (i0 + r) * rs + W * c);
    const float delta = hsum(dot), mr = row_max[i0 + r], inv = row_inv[i0 + r];
    float *pr = p + r * Lp, *dr = ds + r * Lp;
    for (int64_t jb = 0; jb < Lp; jb += W) {
      const vi m = mk.mask ? MaskLanes(mk.mask + (i0 + r) * L + jb, L - jb) : vi{} + 1;
      const vf prob = vexp((m != 0 ? load(pr + jb) : splat(kHidden)) - mr) * inv;
      vf dprob = load(dr + jb), dropped = prob;
      if (mk.keep) {
        const vi k = MaskLanes(mk.keep + (i0 + r) * L + jb, L - jb);
        dprob = k != 0 ? dprob / mk.keep_prob : splat(0.0f);
        dropped = k != 0 ? prob / mk.keep_prob : splat(0.0f);
      }
      const vf dscore = prob * (dprob - delta);
      store(pr + jb, dropped);
      store(dr + jb, m != 0 ? dscore : splat(0.0f));  // hidden scores are constants
    }
  }
  // dq = dS·k and dk += dSᵀ·q
  vf a[R][V] = {}, qv[R][V];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < V; ++c) qv[r][c] = load(qr[r] + W * c);
  for (int64_t j = 0; j < L; ++j) {
    vf kv[V], dk[V];
    for (int c = 0; c < V; ++c) {
      kv[c] = load(kc + j * W * V + W * c);
      dk[c] = load(dkc + j * W * V + W * c);
    }
    for (int r = 0; r < R; ++r) {
      const float x = ds[r * Lp + j];
      for (int c = 0; c < V; ++c) {
        a[r][c] += x * kv[c];
        dk[c] += x * qv[r][c];
      }
    }
    for (int c = 0; c < V; ++c) store(dkc + j * W * V + W * c, dk[c]);
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < V; ++c) store(dq + (i0 + r) * rs + W * c, a[r][c]);
  // dv += P̃ᵀ·dO
  vf gv[R][V];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < V; ++c) gv[r][c] = load(gr[r] + W * c);
  for (int64_t j = 0; j < L; ++j) {
    vf dv[V];
    for (int c = 0; c < V; ++c) dv[c] = load(dvc + j * W * V + W * c);
    for (int r = 0; r < R; ++r) {
      const float x = p[r * Lp + j];
      for (int c = 0; c < V; ++c) dv[c] += x * gv[r][c];
    }
    for (int c = 0; c < V; ++c) store(dvc + j * W * V + W * c, dv[c]);
  }
}

template <int V, int R>
void BackwardPair(const Shape& sh, int64_t bh, const float* q, const float* k, const float* v,
                  const float* o, const float* stats, const float* g, const Masks& mk,
                  float* dq, float* dk, float* dv, std::vector<float>& buf) {
  const int64_t L = sh.L, D = sh.D, Lp = sh.Lp, rs = sh.row(), off = sh.base(bh);
  buf.resize(2 * D * Lp + 3 * L * D + 2 * R * Lp);
  float* kt = buf.data();
  float* vt = kt + D * Lp;
  float* kc = vt + D * Lp;
  float* dkc = kc + L * D;
  float* dvc = dkc + L * D;
  float* p = dvc + L * D;
  float* ds = p + R * Lp;
  Transpose(k + off, sh, kt);
  Transpose(v + off, sh, vt);
  for (int64_t j = 0; j < L; ++j) std::memcpy(kc + j * D, k + off + j * rs, D * 4);
  std::fill(dkc, dkc + 2 * L * D, 0.0f);
  const float* row_max = stats + bh * 2 * L;
  const float* row_inv = row_max + L;
  int64_t i = 0;
  for (; i + R <= L; i += R)
    BackwardRows<V, R>(sh, i, q + off, o + off, g + off, row_max, row_inv, kt, vt, kc, mk,
                       dq + off, dkc, dvc, p, ds);
  for (; i < L; ++i)
    BackwardRows<V, 1>(sh, i, q + off, o + off, g + off, row_max, row_inv, kt, vt, kc, mk,
                       dq + off, dkc, dvc, p, ds);
  for (int64_t j = 0; j < L; ++j) {
    std::memcpy(dk + off + j * rs, dkc + j * D, D * 4);
    std::memcpy(dv + off + j * rs, dvc + j * D, D * 4);
  }
}

// Spreads the (b, h) pairs over the pool in tasks of several pairs each.
template <typename F>
void ForPairs(ffi::ThreadPool& pool, int64_t pairs, F one) {
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t chunk = std::max<int64_t>(1, pairs / (8 * threads));
  const int64_t tasks = (pairs + chunk - 1) / chunk;
  ParallelFor(pool, tasks, [=](int64_t t) {
    std::vector<float> buf;
    for (int64_t bh = t * chunk; bh < std::min(pairs, (t + 1) * chunk); ++bh) one(bh, buf);
  });
}

Shape ShapeOf(ffi::Buffer<ffi::F32>& x) {
  auto d = x.dimensions();
  return {d[0], d[1], d[2], d[3], (d[1] + W - 1) / W * W};
}

// Query rows per block for D = W·V: at most 8 vector accumulators (R·V), up to 4 rows.
template <int V>
constexpr int Rows() { return V >= 8 ? 1 : std::min(4, 8 / V); }

// run(std::integral_constant<int, D / W>) for the head dims the kernel is compiled for.
template <typename F>
ffi::Error ForHeadDim(int64_t D, F run) {
  switch (D) {
    case 16: run(std::integral_constant<int, 16 / W>{}); break;
    case 32: run(std::integral_constant<int, 32 / W>{}); break;
    case 64: run(std::integral_constant<int, 64 / W>{}); break;
    case 128: run(std::integral_constant<int, 128 / W>{}); break;
    default:
      return ffi::Error::InvalidArgument("jssl attention: head dim must be 16, 32, 64 or 128");
  }
  return ffi::Error::Success();
}

// The masks of pair bh from the uint8 buffers (nullptr when absent).
Masks MasksOf(const Shape& sh, int64_t bh, ffi::Buffer<ffi::U8>& mask, ffi::Buffer<ffi::U8>& keep,
              int32_t has_mask, int32_t has_keep, float keep_prob) {
  Masks mk;
  const int64_t b = bh / sh.H, h = bh % sh.H, LL = sh.L * sh.L;
  if (has_mask) {
    auto d = mask.dimensions();
    mk.mask = mask.typed_data() + ((d[0] == 1 ? 0 : b) * d[1] + (d[1] == 1 ? 0 : h)) * LL;
  }
  if (has_keep) {
    mk.keep = keep.typed_data() + bh * LL;
    mk.keep_prob = keep_prob;
  }
  return mk;
}

// pair(V, bh, masks, buf) for every (b, h) pair, spread over the pool, V = D / W as a type.
template <typename F>
ffi::Error ForEachPair(ffi::ThreadPool& pool, const Shape& sh, ffi::Buffer<ffi::U8>& mask,
                       ffi::Buffer<ffi::U8>& keep, int32_t has_mask, int32_t has_keep,
                       float keep_prob, F pair) {
  return ForHeadDim(sh.D, [&](auto vtag) {
    ForPairs(pool, sh.B * sh.H, [&, vtag](int64_t bh, std::vector<float>& buf) {
      pair(vtag, bh, MasksOf(sh, bh, mask, keep, has_mask, has_keep, keep_prob), buf);
    });
  });
}

// q, k, v [B, L, H, D], mask, keep -> o [B, L, H, D], stats [B, H, 2, L] (row max, 1 / row sum)
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U8> mask, ffi::Buffer<ffi::U8> keep,
                   ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> stats,
                   int32_t has_mask, int32_t has_keep, float keep_prob) {
  const Shape sh = ShapeOf(q);
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *sp = stats->typed_data();
  return ForEachPair(pool, sh, mask, keep, has_mask, has_keep, keep_prob,
                     [=](auto vtag, int64_t bh, const Masks& mk, std::vector<float>& buf) {
                       constexpr int V = decltype(vtag)::value;
                       ForwardPair<V, Rows<V>()>(sh, bh, qp, kp, vp, mk, op, sp, buf);
                     });
}

// q, k, v, o, stats, dO (q as the forward saw it) -> dq, dk, dv
ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::U8> mask,
                    ffi::Buffer<ffi::U8> keep, ffi::Buffer<ffi::F32> o,
                    ffi::Buffer<ffi::F32> stats, ffi::Buffer<ffi::F32> dout,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv, int32_t has_mask, int32_t has_keep,
                    float keep_prob) {
  const Shape sh = ShapeOf(q);
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const float *opp = o.typed_data(), *sp = stats.typed_data(), *gp = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  return ForEachPair(pool, sh, mask, keep, has_mask, has_keep, keep_prob,
                     [=](auto vtag, int64_t bh, const Masks& mk, std::vector<float>& buf) {
                       constexpr int V = decltype(vtag)::value;
                       BackwardPair<V, Rows<V>()>(sh, bh, qp, kp, vp, opp, sp, gp, mk, dqp,
                                                  dkp, dvp, buf);
                     });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsslAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::U8>>()   // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // keep
                                  .Ret<ffi::Buffer<ffi::F32>>()  // o
                                  .Ret<ffi::Buffer<ffi::F32>>()  // stats
                                  .Attr<int32_t>("has_mask")
                                  .Attr<int32_t>("has_keep")
                                  .Attr<float>("keep_prob"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JsslAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // q
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k
                                  .Arg<ffi::Buffer<ffi::F32>>()  // v
                                  .Arg<ffi::Buffer<ffi::U8>>()   // mask
                                  .Arg<ffi::Buffer<ffi::U8>>()   // keep
                                  .Arg<ffi::Buffer<ffi::F32>>()  // o
                                  .Arg<ffi::Buffer<ffi::F32>>()  // stats
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dO
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dq
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dv
                                  .Attr<int32_t>("has_mask")
                                  .Attr<int32_t>("has_keep")
                                  .Attr<float>("keep_prob"));
