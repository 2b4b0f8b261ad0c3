// CPU kernels (OpenMP) for fedvox post-processing. See ops.h for semantics.
#include "ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace fedvox {
namespace {

// Flush denormals inside a parallel region: tiny bilateral/lattice weights
// times small values would otherwise hit the slow denormal path.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned int saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// ===========================================================================
// Connected components: run-based two-pass union-find.
//
// Each Z line is cut into runs of foreground; a run joins the runs of the
// already-visited neighbour lines it touches. Union by smaller index keeps
// every root at its component's first run (raster order), so one forward
// sweep over the parent array numbers components like scipy does. Lines are
// split into X slabs, one per thread; a slab only touches its own runs, and
// the few slab seams are joined afterwards on one thread.
// ===========================================================================

struct Run {
  int32_t s, e;  // first and last z of the run (inclusive)
};

inline int32_t uf_find(int32_t* parent, int32_t i) {
  while (parent[i] != i) {
    parent[i] = parent[parent[i]];  // path halving
    i = parent[i];
  }
  return i;
}

inline void uf_union(int32_t* parent, int32_t a, int32_t b) {
  a = uf_find(parent, a);
  b = uf_find(parent, b);
  if (a < b) parent[b] = a;
  else if (b < a) parent[a] = b;
}

// Join overlapping runs of two sorted run lists; ext = 1 lets runs that only
// touch diagonally along z (z +- 1) connect.
inline void join_lines(int32_t* parent, const Run* runs, int64_t a0, int64_t a1, int64_t b0,
                       int64_t b1, int ext) {
  int64_t i = a0, j = b0;
  while (i < a1 && j < b1) {
    const Run A = runs[i];
    const Run B = runs[j];
    if (A.s <= B.e + ext && B.s <= A.e + ext) uf_union(parent, (int32_t)i, (int32_t)j);
    // Advance the run that ends first: runs in a line are separated by >= 1
    // gap voxel, so it cannot reach the other list's next run. Branch-free,
    // since this comparison is a coin flip on noisy masks.
    const bool adv = A.e < B.e;
    i += adv;
    j += !adv;
  }
}

struct NeighbourLine {
  int dx, dy, ext;
};

// Foreground bits of one line (bit z of word z/64), bits past Z cleared.
inline void line_bits(const uint8_t* m, int64_t Z, uint64_t* bits) {
  const int64_t nw = (Z + 63) / 64;
  for (int64_t w = 0; w < nw; ++w) {
    const int64_t z0 = w * 64;
    uint64_t b = 0;
#if defined(__AVX2__)
    if (z0 + 64 <= Z) {
      const __m256i zero = _mm256_setzero_si256();
      const __m256i lo = _mm256_loadu_si256((const __m256i*)(m + z0));
      const __m256i hi = _mm256_loadu_si256((const __m256i*)(m + z0 + 32));
      const uint32_t zl = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, zero));
      const uint32_t zh = (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, zero));
      b = ~(((uint64_t)zh << 32) | zl);
      bits[w] = b;
      continue;
    }
#endif
    const int64_t n = std::min<int64_t>(64, Z - z0);
    for (int64_t k = 0; k < n; ++k) b |= (uint64_t)(m[z0 + k] != 0) << k;
    bits[w] = b;
  }
}

inline int64_t count_runs(const uint64_t* bits, int64_t nw) {
  int64_t c = 0;
  uint64_t carry = 0;  // last bit of the previous word
  for (int64_t w = 0; w < nw; ++w) {
    const uint64_t b = bits[w];
    c += __builtin_popcountll(b & ~((b << 1) | carry));  // run starts
    carry = b >> 63;
  }
  return c;
}

// Write the runs of one line; each bit change toggles in/out of a run.
inline void extract_runs(const uint64_t* bits, int64_t nw, int64_t Z, Run* out) {
  uint64_t carry = 0;
  int32_t s = 0;
  bool in_run = false;
  for (int64_t w = 0; w < nw; ++w) {
    const uint64_t b = bits[w];
    uint64_t t = b ^ ((b << 1) | carry);
    carry = b >> 63;
    while (t) {
      const int32_t z = (int32_t)(w * 64 + __builtin_ctzll(t));
      t &= t - 1;
      if (!in_run) {
        s = z;
      } else {
        *out++ = Run{s, z - 1};
      }
      in_run = !in_run;
    }
  }
  if (in_run) *out = Run{s, (int32_t)(Z - 1)};
}

}  // namespace

int64_t cc3d_cpu(const uint8_t* mask, int32_t* labels, int64_t X, int64_t Y, int64_t Z,
                 int connectivity, int threads) {
  threads = std::max(1, threads);
  const int64_t nlines = X * Y, nw = (Z + 63) / 64;
  std::vector<int64_t> start(nlines + 1, 0);
  // 1 bit per voxel: the mask is read once, run extraction works on words.
  std::vector<uint64_t> bits((size_t)nlines * nw);

  // Pass 1: bits and run counts per line.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 512)
  for (int64_t l = 0; l < nlines; ++l) {
    uint64_t* b = &bits[(size_t)l * nw];
    line_bits(mask + l * Z, Z, b);
    start[l + 1] = count_runs(b, nw);
  }
  for (int64_t l = 0; l < nlines; ++l) start[l + 1] += start[l];
  const int64_t nruns = start[nlines];
  if (nruns > (int64_t)std::numeric_limits<int32_t>::max()) return -1;

  std::vector<Run> runs(nruns);
  std::vector<int32_t> parent(nruns);
  Run* R = runs.data();
  int32_t* P = parent.data();

  // Already-visited neighbour lines (the backward half) per connectivity.
  std::vector<NeighbourLine> nbs;
  if (connectivity == 6) {
    nbs = {{0, -1, 0}, {-1, 0, 0}};
  } else if (connectivity == 18) {
    nbs = {{0, -1, 1}, {-1, 0, 1}, {-1, -1, 0}, {-1, 1, 0}};
  } else {
    nbs = {{0, -1, 1}, {-1, 0, 1}, {-1, -1, 1}, {-1, 1, 1}};
  }
  // Join every run of line (x, y) with the runs it touches in the neighbour
  // lines: one cursor per neighbour line, and the current run's root kept
  // in a register so most joins are a compare, not two finds.
  auto join_line = [&](int64_t x, int64_t y, bool seam) {
    const int64_t l = x * Y + y;
    if (start[l] == start[l + 1]) return;
    int64_t cur[4], end[4];
    int ext[4], k = 0;
    for (const NeighbourLine& nb : nbs) {
      // Seam pass does only the dx = -1 lines; slab pass skips them at x0.
      if (seam != (nb.dx == -1)) continue;
      const int64_t xx = x + nb.dx, yy = y + nb.dy;
      if (xx < 0 || yy < 0 || yy >= Y) continue;
      const int64_t m = xx * Y + yy;
      if (start[m] == start[m + 1]) continue;
      cur[k] = start[m];
      end[k] = start[m + 1];
      ext[k] = nb.ext;
      ++k;
    }
    for (int64_t i = start[l]; i < start[l + 1]; ++i) {
      const Run A = R[i];
      int32_t ri = uf_find(P, (int32_t)i);
      for (int n = 0; n < k; ++n) {
        int64_t j = cur[n];
        const int e = ext[n];
        while (j < end[n] && R[j].e + e < A.s) ++j;
        cur[n] = j;  // runs before j end too early for the next run too
        for (; j < end[n] && R[j].s <= A.e + e; ++j) {
          const int32_t rj = uf_find(P, (int32_t)j);
          if (rj < ri) {
            P[ri] = rj;
            ri = rj;
          } else if (rj > ri) {
            P[rj] = ri;
          }
        }
      }
    }
  };

  // Pass 2: per X slab extract each line's runs and join them with the
  // slab's earlier lines while they are still in cache; a slab only touches
  // its own runs. Then the seams, on one thread. A few slabs per thread,
  // handed out dynamically, so a thread that loses its core to another
  // process does not hold everyone up.
  const int nslab = threads == 1 ? 1 : (int)std::max<int64_t>(1, std::min<int64_t>(4 * threads, X));
  std::vector<int64_t> x0(nslab + 1);
  for (int s = 0; s <= nslab; ++s) x0[s] = X * s / nslab;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int s = 0; s < nslab; ++s) {
    for (int64_t x = x0[s]; x < x0[s + 1]; ++x)
      for (int64_t y = 0; y < Y; ++y) {
        const int64_t l = x * Y + y;
        extract_runs(&bits[(size_t)l * nw], nw, Z, R + start[l]);
        for (int64_t r = start[l]; r < start[l + 1]; ++r) P[r] = (int32_t)r;
        join_line(x, y, false);
        if (x != x0[s]) join_line(x, y, true);
      }
  }
  for (int s = 1; s < nslab; ++s)
    for (int64_t y = 0; y < Y; ++y) join_line(x0[s], y, true);

  // Flatten: parent[i] < i for non-roots, so parents are numbered first;
  // the array is overwritten with final labels as we go.
  int32_t count = 0;
  for (int64_t i = 0; i < nruns; ++i) P[i] = (P[i] == (int32_t)i) ? ++count : P[P[i]];

  // Pass 3: paint.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 512)
  for (int64_t l = 0; l < nlines; ++l) {
    int32_t* out = labels + l * Z;
    std::memset(out, 0, sizeof(int32_t) * Z);
    for (int64_t r = start[l]; r < start[l + 1]; ++r) {
      const int32_t lab = P[r];
      for (int32_t z = R[r].s; z <= R[r].e; ++z) out[z] = lab;
    }
  }
  return count;
}

// ===========================================================================
// Euclidean distance transform: 1-D exact pass along z (two sweeps), then
// Felzenszwalb-Huttenlocher lower envelopes of parabolas along y and x.
// Strided axes are done in blocks of 16 neighbouring lines so each gathered
// cache line is fully used.
// ===========================================================================
namespace {

constexpr int kBlock = 16;

// d[q] = min_p s2*(q-p)^2 + f[p] over finite f (FH 2012). v/zb: scratch n, n+1.
inline void fh_line(const double* f, double* d, int64_t n, double s2, int64_t* v, double* zb) {
  const double inf = std::numeric_limits<double>::infinity();
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] == inf) continue;
    if (k < 0) {
      k = 0;
      v[0] = q;
      zb[0] = -inf;
      zb[1] = inf;
      continue;
    }
    const double fq = f[q] + s2 * (double)q * (double)q;
    double s;
    for (;;) {  // zb[0] = -inf stops this at k = 0
      const int64_t p = v[k];
      s = (fq - (f[p] + s2 * (double)p * (double)p)) / (2.0 * s2 * (double)(q - p));
      if (s <= zb[k]) --k;
      else break;
    }
    ++k;
    v[k] = q;
    zb[k] = s;
    zb[k + 1] = inf;
  }
  if (k < 0) {
    for (int64_t q = 0; q < n; ++q) d[q] = inf;
    return;
  }
  int64_t j = 0;
  for (int64_t q = 0; q < n; ++q) {
    while (zb[j + 1] < (double)q) ++j;
    const double t = (double)(q - v[j]);
    d[q] = s2 * t * t + f[v[j]];
  }
}

// One FH pass over lines of length `len` (element stride ls) laid out as
// (outer, ..., inner) with inner contiguous: line (o, j) starts at
// o*os + j. take_sqrt: write distances instead of squared distances.
template <typename T>
void fh_pass(T* data, int64_t outer, int64_t os, int64_t inner, int64_t len, int64_t ls,
             double spacing, bool take_sqrt, int threads) {
  const double s2 = spacing * spacing;
  const int64_t nblk = (inner + kBlock - 1) / kBlock;
  const double inf = std::numeric_limits<double>::infinity();
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> f(kBlock * len), d(len), zb(len + 1);
    std::vector<int64_t> v(len);
#pragma omp for schedule(dynamic, 8)
    for (int64_t t = 0; t < outer * nblk; ++t) {
      const int64_t o = t / nblk, j0 = (t % nblk) * kBlock;
      const int64_t nb = std::min<int64_t>(kBlock, inner - j0);
      T* base = data + o * os + j0;
      for (int64_t i = 0; i < len; ++i) {
        const T* src = base + i * ls;
        for (int64_t b = 0; b < nb; ++b) f[b * len + i] = (double)src[b];
      }
      for (int64_t b = 0; b < nb; ++b) {
        const double* fl = &f[b * len];
        bool any = false;
        for (int64_t i = 0; i < len && !any; ++i) any = fl[i] != inf;
        if (!any) continue;  // whole line far from background: stays inf
        fh_line(fl, d.data(), len, s2, v.data(), zb.data());
        for (int64_t i = 0; i < len; ++i) base[i * ls + b] = (T)(take_sqrt ? std::sqrt(d[i]) : d[i]);
      }
    }
  }
}

template <typename T>
void edt_impl(const uint8_t* mask, T* out, int64_t X, int64_t Y, int64_t Z,
              const double* spacing, int threads) {
  threads = std::max(1, threads);
  const T inf = std::numeric_limits<T>::infinity();
  const double sz = spacing[2];
  // Pass z: voxel distance to the nearest zero in the line, then squared.
#pragma omp parallel for num_threads(threads) schedule(dynamic, 512)
  for (int64_t l = 0; l < X * Y; ++l) {
    const uint8_t* m = mask + l * Z;
    T* o = out + l * Z;
    int64_t last = -1;
    for (int64_t z = 0; z < Z; ++z) {
      if (m[z] == 0) {
        last = z;
        o[z] = 0;
      } else {
        o[z] = last < 0 ? inf : (T)(z - last);
      }
    }
    int64_t next = -1;
    for (int64_t z = Z - 1; z >= 0; --z) {
      if (m[z] == 0) {
        next = z;
      } else if (next >= 0) {
        const T dd = (T)(next - z);
        if (dd < o[z]) o[z] = dd;
      }
      if (o[z] != inf) {
        const double t = (double)o[z] * sz;
        o[z] = (T)(t * t);
      }
    }
  }
  // Pass y: lines (x, z), stride Z.
  fh_pass<T>(out, X, Y * Z, Z, Y, Z, spacing[1], false, threads);
  // Pass x: lines (y, z), stride Y*Z; writes the final distances.
  fh_pass<T>(out, 1, 0, Y * Z, X, Y * Z, spacing[0], true, threads);
}

}  // namespace

void edt_cpu_f32(const uint8_t* mask, float* out, int64_t X, int64_t Y, int64_t Z,
                 const double* spacing, int threads) {
  edt_impl<float>(mask, out, X, Y, Z, spacing, threads);
}
void edt_cpu_f64(const uint8_t* mask, double* out, int64_t X, int64_t Y, int64_t Z,
                 const double* spacing, int threads) {
  edt_impl<double>(mask, out, X, Y, Z, spacing, threads);
}

// ===========================================================================
// Exact bilateral filter. For each output row (x, y) and each window offset
// (dx, dy, dz) the inner loop runs over z with contiguous loads, so it
// vectorises; exp is a branch-free polynomial that vectorises too.
// ===========================================================================
namespace {

// exp(x) for x <= 0 (Cephes expf polynomial, ~1e-7 relative). Weights below
// exp(-80) are set to 0: they are < 1e-34 of the centre weight.
#pragma omp declare simd
inline float exp_neg(float x) {
  const bool tiny = x < -80.0f;
  x = tiny ? -80.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return tiny ? 0.0f : p * scale;
}

}  // namespace

void bilateral_cpu(const float* guide, int cg, const float* val, int cv, float* out, int64_t X,
                   int64_t Y, int64_t Z, const int* radius, const float* acoef, float bcoef,
                   bool exclude_center, int threads) {
  threads = std::max(1, threads);
  const int64_t N = X * Y * Z;
  const int rx = radius[0], ry = radius[1], rz = radius[2];
  const bool self = (guide == val && cg == 1 && cv == 1);
  std::vector<float> dz2(2 * rz + 1);
  for (int k = -rz; k <= rz; ++k) dz2[k + rz] = acoef[2] * (float)(k * k);

#pragma omp parallel num_threads(threads)
  {
    FlushDenormals ftz;
    std::vector<float> num((size_t)cv * Z), den(Z), wb(Z);
#pragma omp for collapse(2) schedule(dynamic, 8)
    for (int64_t x = 0; x < X; ++x) {
      for (int64_t y = 0; y < Y; ++y) {
        const int64_t row = (x * Y + y) * Z;
        std::fill(num.begin(), num.end(), 0.0f);
        std::fill(den.begin(), den.end(), 0.0f);
        float* __restrict nm = num.data();
        float* __restrict dn = den.data();
        float* __restrict w = wb.data();
        for (int dx = -rx; dx <= rx; ++dx) {
          if (x + dx < 0 || x + dx >= X) continue;
          for (int dy = -ry; dy <= ry; ++dy) {
            if (y + dy < 0 || y + dy >= Y) continue;
            const float sxy = acoef[0] * (float)(dx * dx) + acoef[1] * (float)(dy * dy);
            const int64_t qrow = ((x + dx) * Y + (y + dy)) * Z;
            for (int dz = -rz; dz <= rz; ++dz) {
              if (exclude_center && dx == 0 && dy == 0 && dz == 0) continue;
              const float st = sxy + dz2[dz + rz];
              const int64_t zlo = std::max<int64_t>(0, -dz), zhi = std::min<int64_t>(Z, Z - dz);
              if (self) {
                const float* __restrict gp = guide + row;
                const float* __restrict gq = guide + qrow + dz;
#pragma omp simd
                for (int64_t z = zlo; z < zhi; ++z) {
                  const float d = gq[z] - gp[z];
                  const float wt = exp_neg(-(st + bcoef * d * d));
                  dn[z] += wt;
                  nm[z] += wt * gq[z];
                }
                continue;
              }
              // General case: range distance over guide channels, then
              // accumulate every value channel with the same weight.
              for (int64_t z = zlo; z < zhi; ++z) w[z] = st;
              for (int c = 0; c < cg; ++c) {
                const float* __restrict gp = guide + c * N + row;
                const float* __restrict gq = guide + c * N + qrow + dz;
#pragma omp simd
                for (int64_t z = zlo; z < zhi; ++z) {
                  const float d = gq[z] - gp[z];
                  w[z] += bcoef * d * d;
                }
              }
#pragma omp simd
              for (int64_t z = zlo; z < zhi; ++z) {
                w[z] = exp_neg(-w[z]);
                dn[z] += w[z];
              }
              for (int c = 0; c < cv; ++c) {
                const float* __restrict vq = val + c * N + qrow + dz;
                float* __restrict nc = nm + (int64_t)c * Z;
#pragma omp simd
                for (int64_t z = zlo; z < zhi; ++z) nc[z] += w[z] * vq[z];
              }
            }
          }
        }
        for (int c = 0; c < cv; ++c) {
          const float* vp = val + c * N + row;
          float* o = out + c * N + row;
          const float* nc = nm + (int64_t)c * Z;
          for (int64_t z = 0; z < Z; ++z) o[z] = dn[z] > 0.0f ? nc[z] / dn[z] : vp[z];
        }
      }
    }
  }
}

// ===========================================================================
// Separable normalised Gaussian (exact: a box-truncated 3-D Gaussian is the
// product of its 1-D factors, and so is its in-volume normaliser).
// ===========================================================================
namespace {

// View data as (outer, len, inner); blur along len.
void blur_axis(const float* in, float* out, int64_t outer, int64_t len, int64_t inner, int r,
               double acoef, int threads) {
  std::vector<float> w(2 * r + 1);
  for (int k = -r; k <= r; ++k) w[k + r] = (float)std::exp(-acoef * (double)k * (double)k);
  std::vector<float> inv(len);
  for (int64_t i = 0; i < len; ++i) {
    double s = 0;
    for (int k = -r; k <= r; ++k)
      if (i + k >= 0 && i + k < len) s += w[k + r];
    inv[i] = (float)(1.0 / s);
  }
  if (inner == 1) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 64)
    for (int64_t o = 0; o < outer; ++o) {
      const float* src = in + o * len;
      float* dst = out + o * len;
      for (int64_t i = 0; i < len; ++i) dst[i] = 0.0f;
      for (int k = -r; k <= r; ++k) {
        const int64_t lo = std::max<int64_t>(0, -k), hi = std::min<int64_t>(len, len - k);
        const float wk = w[k + r];
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) dst[i] += wk * src[i + k];
      }
      for (int64_t i = 0; i < len; ++i) dst[i] *= inv[i];
    }
    return;
  }
#pragma omp parallel for collapse(2) num_threads(threads) schedule(dynamic, 16)
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < len; ++i) {
      float* dst = out + (o * len + i) * inner;
      for (int64_t j = 0; j < inner; ++j) dst[j] = 0.0f;
      for (int k = -r; k <= r; ++k) {
        if (i + k < 0 || i + k >= len) continue;
        const float* src = in + (o * len + i + k) * inner;
        const float wk = w[k + r];
#pragma omp simd
        for (int64_t j = 0; j < inner; ++j) dst[j] += wk * src[j];
      }
      const float s = inv[i];
      for (int64_t j = 0; j < inner; ++j) dst[j] *= s;
    }
  }
}

}  // namespace

void gauss_blur_cpu(float* data, int C, int64_t X, int64_t Y, int64_t Z, const int* radius,
                    const double* acoef, int threads) {
  threads = std::max(1, threads);
  const int64_t N = X * Y * Z;
  std::vector<float> tmp(N);
  for (int c = 0; c < C; ++c) {
    float* d = data + c * N;
    blur_axis(d, tmp.data(), X * Y, Z, 1, radius[2], acoef[2], threads);
    blur_axis(tmp.data(), d, X, Y, Z, radius[1], acoef[1], threads);
    blur_axis(d, tmp.data(), 1, X, Y * Z, radius[0], acoef[0], threads);
    std::memcpy(d, tmp.data(), sizeof(float) * N);
  }
}

// ===========================================================================
// Permutohedral lattice (Adams, Baek & Davis 2010) for the CRF's bilateral
// messages: splat each point onto the d+1 vertices of its enclosing simplex,
// blur with [1 2 1]/4 along the d+1 lattice directions, slice back. Cost is
// O(N (d+1)) per channel whatever the sigmas, which is what makes 5 dense
// mean-field iterations cheap. It approximates the Gaussian kernel; the
// exact windowed filter stays available (CrfParams::lattice = false).
// ===========================================================================
namespace {

constexpr int kMaxLabels = 32;  // the Python face enforces it

class Lattice {
 public:
  // feat: n x d features already divided by their sigmas.
  Lattice(const float* feat, int64_t n, int d) : n_(n), d_(d) {
    const int d1 = d + 1;
    std::vector<double> scale(d);
    // Embedding scale so the blur approximates a unit-variance Gaussian.
    const double inv_std = std::sqrt(2.0 / 3.0) * d1;
    for (int i = 0; i < d; ++i) scale[i] = inv_std / std::sqrt((double)(i + 1) * (i + 2));
    // canonical[k][i]: the k-th vertex of the canonical simplex.
    std::vector<int> canonical(d1 * d1);
    for (int k = 0; k < d1; ++k)
      for (int i = 0; i < d1; ++i) canonical[k * d1 + i] = (i <= d - k) ? k : k - d1;

    size_t cap = 1024;  // grows on demand: vertices are usually << n (d+1)
    while (cap < (size_t)n / 2) cap <<= 1;
    table_.assign(cap, -1);
    mask_ = cap - 1;
    vertex_.resize((size_t)n * d1);
    weight_.resize((size_t)n * d1);

    std::vector<double> el(d1), bary(d1 + 1);
    std::vector<int> greedy(d1), rank(d1), key(d);
    for (int64_t p = 0; p < n; ++p) {
      const float* f = feat + p * d;
      // Elevate onto the hyperplane sum(x) = 0 in R^{d+1}.
      double sm = 0;
      for (int i = d; i > 0; --i) {
        const double cf = f[i - 1] * scale[i - 1];
        el[i] = sm - i * cf;
        sm += cf;
      }
      el[0] = sm;
      // Nearest remainder-0 point, then sort the differential by rank.
      int sum = 0;
      for (int i = 0; i < d1; ++i) {
        const int rd = (int)std::lround(el[i] / d1);
        greedy[i] = rd * d1;
        sum += rd;
        rank[i] = 0;
      }
      for (int i = 0; i < d; ++i)
        for (int j = i + 1; j < d1; ++j) {
          if (el[i] - greedy[i] < el[j] - greedy[j]) ++rank[i];
          else ++rank[j];
        }
      if (sum > 0) {
        for (int i = 0; i < d1; ++i) {
          if (rank[i] >= d1 - sum) {
            greedy[i] -= d1;
            rank[i] += sum - d1;
          } else {
            rank[i] += sum;
          }
        }
      } else if (sum < 0) {
        for (int i = 0; i < d1; ++i) {
          if (rank[i] < -sum) {
            greedy[i] += d1;
            rank[i] += d1 + sum;
          } else {
            rank[i] += sum;
          }
        }
      }
      // Barycentric coordinates within the simplex.
      std::fill(bary.begin(), bary.end(), 0.0);
      for (int i = 0; i < d1; ++i) {
        const double delta = (el[i] - greedy[i]) / d1;
        bary[d - rank[i]] += delta;
        bary[d1 - rank[i]] -= delta;
      }
      bary[0] += 1.0 + bary[d1];
      for (int k = 0; k < d1; ++k) {
        for (int i = 0; i < d; ++i) key[i] = greedy[i] + canonical[k * d1 + rank[i]];
        vertex_[p * d1 + k] = insert(key.data());
        weight_[p * d1 + k] = (float)bary[k];
      }
    }
    m_ = (int64_t)keys_.size() / d;
    // Blur neighbours along each lattice direction j: key -/+ (1,..,1) with
    // coordinate j moved by +/- d instead (coordinate d is implicit).
    nbr_.assign((size_t)m_ * d1 * 2, -1);
    std::vector<int> k1(d), k2(d);
    for (int64_t v = 0; v < m_; ++v) {
      const int* kv = &keys_[v * d];
      for (int j = 0; j < d1; ++j) {
        for (int i = 0; i < d; ++i) {
          k1[i] = kv[i] - 1;
          k2[i] = kv[i] + 1;
        }
        if (j < d) {
          k1[j] = kv[j] + d;
          k2[j] = kv[j] - d;
        }
        nbr_[(v * d1 + j) * 2] = lookup(k1.data());
        nbr_[(v * d1 + j) * 2 + 1] = lookup(k2.data());
      }
    }
    table_.clear();
    table_.shrink_to_fit();
    finish();
  }

  int64_t vertices() const { return m_; }

  // The three steps of one filtering, for use inside a parallel region
  // (orphaned omp for). Values are vertex-major: A[v * vc + c].
  // Splat as a gather over each vertex's contributions: no write conflicts.
  void splat(const float* in, int vc, float* A) const {
#pragma omp for schedule(dynamic, 1024)
    for (int64_t v = 0; v < m_; ++v) {
      float acc[kMaxLabels] = {0.0f};
      for (int64_t e = vstart_[v]; e < vstart_[v + 1]; ++e) {
        const int64_t p = vpts_[e];
        const float wt = vwts_[e];
        for (int c = 0; c < vc; ++c) acc[c] += wt * in[c * n_ + p];
      }
      for (int c = 0; c < vc; ++c) A[v * vc + c] = acc[c];
    }
  }

  // [1 2 1]/4 along each lattice direction; cur/oth are the calling thread's
  // own pointers (every thread swaps them the same way), result in cur.
  void blur(float*& cur, float*& oth, int vc) const {
    const int d1 = d_ + 1;
    for (int j = 0; j < d1; ++j) {
#pragma omp for schedule(dynamic, 2048)
      for (int64_t v = 0; v < m_; ++v) {
        const int32_t n1 = nbr_[(v * d1 + j) * 2], n2 = nbr_[(v * d1 + j) * 2 + 1];
        for (int c = 0; c < vc; ++c) {
          float s = 0.5f * cur[v * vc + c];
          if (n1 >= 0) s += 0.25f * cur[(int64_t)n1 * vc + c];
          if (n2 >= 0) s += 0.25f * cur[(int64_t)n2 * vc + c];
          oth[v * vc + c] = s;
        }
      }
      std::swap(cur, oth);
    }
  }

  // Normalised value at point p: sum of barycentric-weighted vertex values
  // over the lattice's response to a constant 1 (precomputed).
  void slice(int64_t p, const float* A, int vc, float* out) const {
    const int d1 = d_ + 1;
    for (int c = 0; c < vc; ++c) out[c] = 0.0f;
    for (int k = 0; k < d1; ++k) {
      const float* src = A + (int64_t)vertex_[p * d1 + k] * vc;
      const float wt = weight_[p * d1 + k];
      for (int c = 0; c < vc; ++c) out[c] += wt * src[c];
    }
    for (int c = 0; c < vc; ++c) out[c] *= norm_[p];
  }

 private:
  // Vertex -> contributing points (a transpose of vertex_), and the
  // normaliser 1 / filter(1), which is the same every mean-field iteration.
  void finish() {
    const int d1 = d_ + 1;
    vstart_.assign(m_ + 1, 0);
    for (int64_t e = 0; e < n_ * d1; ++e) ++vstart_[vertex_[e] + 1];
    for (int64_t v = 0; v < m_; ++v) vstart_[v + 1] += vstart_[v];
    vpts_.resize(n_ * d1);
    vwts_.resize(n_ * d1);
    std::vector<int64_t> fill(vstart_.begin(), vstart_.end() - 1);
    for (int64_t p = 0; p < n_; ++p)
      for (int k = 0; k < d1; ++k) {
        const int64_t e = fill[vertex_[p * d1 + k]]++;
        vpts_[e] = (int32_t)p;
        vwts_[e] = weight_[p * d1 + k];
      }
    std::vector<float> a(m_), b(m_);
    for (int64_t v = 0; v < m_; ++v) {
      float s = 0.0f;
      for (int64_t e = vstart_[v]; e < vstart_[v + 1]; ++e) s += vwts_[e];
      a[v] = s;
    }
    float* cur = a.data();
    float* oth = b.data();
    blur(cur, oth, 1);  // outside a parallel region the omp for runs serially
    norm_.resize(n_);
    for (int64_t p = 0; p < n_; ++p) {
      float s = 0.0f;
      for (int k = 0; k < d1; ++k) s += weight_[p * d1 + k] * cur[vertex_[p * d1 + k]];
      norm_[p] = s > 0.0f ? 1.0f / s : 0.0f;
    }
  }

  uint64_t hash(const int* key) const {
    uint64_t h = 0;
    for (int i = 0; i < d_; ++i) h = (h + (uint64_t)(int64_t)key[i]) * 2531011ULL;
    return h ^ (h >> 29);
  }
  int32_t insert(const int* key) {
    size_t h = hash(key) & mask_;
    for (;;) {
      const int32_t e = table_[h];
      if (e < 0) {
        const int32_t id = (int32_t)(keys_.size() / d_);
        keys_.insert(keys_.end(), key, key + d_);
        table_[h] = id;
        if (2 * (size_t)(id + 1) > table_.size()) grow();
        return id;
      }
      if (std::equal(key, key + d_, &keys_[(size_t)e * d_])) return e;
      h = (h + 1) & mask_;
    }
  }
  void grow() {
    table_.assign(table_.size() * 2, -1);
    mask_ = table_.size() - 1;
    const int32_t m = (int32_t)(keys_.size() / d_);
    for (int32_t id = 0; id < m; ++id) {
      size_t h = hash(&keys_[(size_t)id * d_]) & mask_;
      while (table_[h] >= 0) h = (h + 1) & mask_;
      table_[h] = id;
    }
  }
  int32_t lookup(const int* key) const {
    size_t h = hash(key) & mask_;
    for (;;) {
      const int32_t e = table_[h];
      if (e < 0) return -1;
      if (std::equal(key, key + d_, &keys_[(size_t)e * d_])) return e;
      h = (h + 1) & mask_;
    }
  }

  int64_t n_;
  int d_;
  int64_t m_ = 0;
  size_t mask_ = 0;
  std::vector<int32_t> table_, vertex_, nbr_, vpts_;
  std::vector<int64_t> vstart_;
  std::vector<int> keys_;
  std::vector<float> weight_, vwts_, norm_;
};

}  // namespace

void crf_cpu(const float* unary, int L, const float* image, int C, const float* compat, float* q,
             int64_t X, int64_t Y, int64_t Z, const CrfParams& p, int threads) {
  threads = std::max(1, threads);
  const int64_t N = X * Y * Z, P = Y * Z;
  const double* sp = p.spacing;

  // Gaussian kernel: 1-D weights and inverse in-volume weight sums per axis
  // (the box-truncated 3-D Gaussian and its normaliser are separable).
  struct Axis {
    int r;
    std::vector<float> w, inv;
  };
  auto make_axis = [&](int k, int64_t len) {
    Axis a;
    const double sg = p.gaussian_spatial_sigma;
    a.r = (int)std::ceil(3.0 * sg / sp[k] - 1e-9);
    for (int d = -a.r; d <= a.r; ++d)
      a.w.push_back((float)std::exp(-(d * sp[k]) * (d * sp[k]) / (2.0 * sg * sg)));
    for (int64_t i = 0; i < len; ++i) {
      double s = 0.0;
      for (int d = -a.r; d <= a.r; ++d)
        if (i + d >= 0 && i + d < len) s += a.w[d + a.r];
      a.inv.push_back((float)(1.0 / s));
    }
    return a;
  };
  const Axis ax = make_axis(0, X), ay = make_axis(1, Y), az = make_axis(2, Z);

  // Bilateral kernel: lattice over (position / sigma_s, image / sigma_c),
  // or the exact windowed filter.
  std::unique_ptr<Lattice> lat;
  int brad[3];
  float bcoef_sp[3];
  const float bcoef = (float)(1.0 / (2.0 * p.bilateral_color_sigma * p.bilateral_color_sigma));
  if (p.lattice) {
    const int d = 3 + C;
    std::vector<float> feat((size_t)N * d);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4096)
    for (int64_t i = 0; i < N; ++i) {
      const int64_t x = i / P, y = (i / Z) % Y, z = i % Z;
      float* f = &feat[(size_t)i * d];
      f[0] = (float)(x * sp[0] / p.bilateral_spatial_sigma);
      f[1] = (float)(y * sp[1] / p.bilateral_spatial_sigma);
      f[2] = (float)(z * sp[2] / p.bilateral_spatial_sigma);
      for (int c = 0; c < C; ++c) f[3 + c] = (float)(image[c * N + i] / p.bilateral_color_sigma);
    }
    lat.reset(new Lattice(feat.data(), N, d));
  } else {
    for (int k = 0; k < 3; ++k) {
      brad[k] = (int)std::ceil(3.0 * p.bilateral_spatial_sigma / sp[k] - 1e-9);
      bcoef_sp[k] = (float)(sp[k] * sp[k] /
                            (2.0 * p.bilateral_spatial_sigma * p.bilateral_spatial_sigma));
    }
  }

  // Q_0 = softmax(unary).
  auto update = [&](int64_t i, const float* pen) {
    float lg[kMaxLabels];
    float mx = -std::numeric_limits<float>::infinity();
    for (int l = 0; l < L; ++l) {
      lg[l] = unary[l * N + i] - (pen ? pen[l] : 0.0f);
      mx = std::max(mx, lg[l]);
    }
    float s = 0.0f;
    for (int l = 0; l < L; ++l) {
      lg[l] = std::exp(lg[l] - mx);
      s += lg[l];
    }
    for (int l = 0; l < L; ++l) q[l * N + i] = lg[l] / s;
  };
#pragma omp parallel for num_threads(threads) schedule(dynamic, 4096)
  for (int64_t i = 0; i < N; ++i) update(i, nullptr);

  // One parallel region per iteration with few barriers (a waiting OpenMP
  // thread spins, which costs a lot on a busy machine):
  //   A: Gaussian z and y passes per x plane (-> T), lattice splat of Q
  //   B: lattice blur (one barrier per lattice direction)
  //   C: per x plane: Gaussian x pass, slice, compatibility, softmax -> Q
  std::vector<float> T((size_t)L * N), bm(p.lattice ? 0 : (size_t)L * N);
  const int64_t m = lat ? lat->vertices() : 0;
  std::vector<float> va((size_t)m * L), vb((size_t)m * L);
  const float wg = (float)p.gaussian_weight, wb = (float)p.bilateral_weight;
  for (int it = 0; it < p.iterations; ++it) {
    if (!lat) bilateral_cpu(image, C, q, L, bm.data(), X, Y, Z, brad, bcoef_sp, bcoef, false, threads);
#pragma omp parallel num_threads(threads)
    {
      FlushDenormals ftz;
      std::vector<float> plane(P), acc((size_t)L * P);
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t x = 0; x < X; ++x) {
        for (int l = 0; l < L; ++l) {
          const float* src = q + l * N + x * P;
          float* dst = T.data() + l * N + x * P;
          for (int64_t y = 0; y < Y; ++y) {  // z pass, row by row
            const float* row = src + y * Z;
            float* o = plane.data() + y * Z;
            for (int64_t z = 0; z < Z; ++z) o[z] = 0.0f;
            for (int d = -az.r; d <= az.r; ++d) {
              const int64_t lo = std::max<int64_t>(0, -d), hi = std::min<int64_t>(Z, Z - d);
              const float wk = az.w[d + az.r];
#pragma omp simd
              for (int64_t z = lo; z < hi; ++z) o[z] += wk * row[z + d];
            }
            for (int64_t z = 0; z < Z; ++z) o[z] *= az.inv[z];
          }
          for (int64_t y = 0; y < Y; ++y) {  // y pass, whole rows at a time
            float* o = dst + y * Z;
            for (int64_t z = 0; z < Z; ++z) o[z] = 0.0f;
            for (int d = -ay.r; d <= ay.r; ++d) {
              if (y + d < 0 || y + d >= Y) continue;
              const float* row = plane.data() + (y + d) * Z;
              const float wk = ay.w[d + ay.r];
#pragma omp simd
              for (int64_t z = 0; z < Z; ++z) o[z] += wk * row[z];
            }
            const float s = ay.inv[y];
            for (int64_t z = 0; z < Z; ++z) o[z] *= s;
          }
        }
      }
      float* cur = va.data();
      float* oth = vb.data();
      if (lat) {
        lat->splat(q, L, cur);  // reads Q only; its barrier also closes A
        lat->blur(cur, oth, L);
      } else {
#pragma omp barrier
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t x = 0; x < X; ++x) {
        for (size_t k = 0; k < acc.size(); ++k) acc[k] = 0.0f;
        for (int d = -ax.r; d <= ax.r; ++d) {  // x pass
          if (x + d < 0 || x + d >= X) continue;
          const float wk = ax.w[d + ax.r];
          for (int l = 0; l < L; ++l) {
            const float* src = T.data() + l * N + (x + d) * P;
            float* o = acc.data() + (int64_t)l * P;
#pragma omp simd
            for (int64_t j = 0; j < P; ++j) o[j] += wk * src[j];
          }
        }
        const float sx = ax.inv[x];
        for (int64_t j = 0; j < P; ++j) {
          const int64_t i = x * P + j;
          float kb[kMaxLabels], msg[kMaxLabels], pen[kMaxLabels];
          if (lat) {
            lat->slice(i, cur, L, kb);
          } else {
            for (int l = 0; l < L; ++l) kb[l] = bm[l * N + i];
          }
          for (int l = 0; l < L; ++l) msg[l] = wg * sx * acc[(int64_t)l * P + j] + wb * kb[l];
          for (int l = 0; l < L; ++l) {
            float s = 0.0f;
            for (int k = 0; k < L; ++k) s += compat[l * L + k] * msg[k];
            pen[l] = s;
          }
          update(i, pen);
        }
      }
    }
  }
}

}  // namespace fedvox
