// CUDA kernels for fedvox post-processing; same semantics as ops_cpu.cpp.
// Torch-free (raw pointers + a cudaStream_t) so nvcc can compile this file to
// an object on a machine without a GPU or torch headers.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "ops.h"

namespace fedvox {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

// ---------------------------------------------------------------------------
// Connected components: voxel union-find with atomicMin (the root is always
// the smallest index, so the host numbers components in raster order like
// the CPU path).
// ---------------------------------------------------------------------------

__device__ int32_t cc_find(const int32_t* P, int32_t i) {
  int32_t p = P[i];
  while (p != i) {
    i = p;
    p = P[i];
  }
  return i;
}

__device__ void cc_unite(int32_t* P, int32_t a, int32_t b) {
  // Link the larger root under the smaller one; a lost race (the root moved
  // under another one meanwhile) retries from the value atomicMin saw.
  bool done = false;
  while (!done) {
    a = cc_find(P, a);
    b = cc_find(P, b);
    if (a < b) {
      const int32_t old = atomicMin(&P[b], a);
      done = (old == b);
      b = old;
    } else if (b < a) {
      const int32_t old = atomicMin(&P[a], b);
      done = (old == a);
      a = old;
    } else {
      done = true;
    }
  }
}

__global__ void cc_init(const uint8_t* mask, int32_t* P, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) P[i] = mask[i] ? (int32_t)i : -1;
}

__global__ void cc_merge(const uint8_t* mask, int32_t* P, int64_t X, int64_t Y, int64_t Z,
                         int maxsum) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= X * Y * Z || !mask[i]) return;
  const int64_t x = i / (Y * Z), y = (i / Z) % Y, z = i % Z;
  // Backward half of the neighbourhood (lexicographically before i).
  for (int dx = -1; dx <= 0; ++dx)
    for (int dy = -1; dy <= 1; ++dy)
      for (int dz = -1; dz <= 1; ++dz) {
        if (dx == 0 && (dy > 0 || (dy == 0 && dz >= 0))) continue;
        if (abs(dx) + abs(dy) + abs(dz) > maxsum) continue;
        const int64_t xx = x + dx, yy = y + dy, zz = z + dz;
        if (xx < 0 || yy < 0 || yy >= Y || zz < 0 || zz >= Z) continue;
        const int64_t j = (xx * Y + yy) * Z + zz;
        if (mask[j]) cc_unite(P, (int32_t)i, (int32_t)j);
      }
}

__global__ void cc_compress(int32_t* P, int64_t n) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && P[i] >= 0) P[i] = cc_find(P, (int32_t)i);
}

// ---------------------------------------------------------------------------
// EDT: z pass by two sweeps (thread per line), then Felzenszwalb-Huttenlocher
// along y and x with one thread per line; neighbouring threads own
// neighbouring z, so global loads coalesce. Per-line scratch is interleaved
// by line for the same reason.
// ---------------------------------------------------------------------------

template <typename T>
__global__ void edt_z(const uint8_t* mask, T* out, int64_t lines, int64_t Z, double sz) {
  const int64_t l = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (l >= lines) return;
  const uint8_t* m = mask + l * Z;
  T* o = out + l * Z;
  const double inf = INFINITY;
  int64_t last = -1;
  for (int64_t z = 0; z < Z; ++z) {
    if (m[z] == 0) last = z;
    o[z] = (T)(m[z] == 0 ? 0.0 : (last < 0 ? inf : (double)(z - last)));
  }
  int64_t next = -1;
  for (int64_t z = Z - 1; z >= 0; --z) {
    double d = (double)o[z];
    if (m[z] == 0) next = z;
    else if (next >= 0 && (double)(next - z) < d) d = (double)(next - z);
    o[z] = (T)(d == inf ? inf : (d * sz) * (d * sz));
  }
}

// Lines: line index l = o * inner + j (j < inner), element i at
// base(o, j) + i * ls where base = o * os + j.
template <typename T>
__global__ void edt_fh(T* data, int64_t outer, int64_t os, int64_t inner, int64_t len, int64_t ls,
                       double s2, bool take_sqrt, double* fbuf, int32_t* vbuf, double* zbuf) {
  const int64_t l = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t lines = outer * inner;
  if (l >= lines) return;
  T* line = data + (l / inner) * os + (l % inner);
  const double inf = INFINITY;
  // Scratch element i of this line lives at i * lines + l.
  int64_t k = -1;
  for (int64_t q = 0; q < len; ++q) {
    const double fq0 = (double)line[q * ls];
    fbuf[q * lines + l] = fq0;
    if (fq0 == inf) continue;
    if (k < 0) {
      k = 0;
      vbuf[l] = (int32_t)q;
      zbuf[l] = -inf;
      zbuf[lines + l] = inf;
      continue;
    }
    const double fq = fq0 + s2 * (double)q * (double)q;
    double s;
    for (;;) {
      const int64_t p = vbuf[k * lines + l];
      const double fp = fbuf[p * lines + l];
      s = (fq - (fp + s2 * (double)p * (double)p)) / (2.0 * s2 * (double)(q - p));
      if (s <= zbuf[k * lines + l]) --k;
      else break;
    }
    ++k;
    vbuf[k * lines + l] = (int32_t)q;
    zbuf[k * lines + l] = s;
    zbuf[(k + 1) * lines + l] = inf;
  }
  if (k < 0) return;  // no finite value: the line stays inf
  int64_t j = 0;
  for (int64_t q = 0; q < len; ++q) {
    while (zbuf[(j + 1) * lines + l] < (double)q) ++j;
    const int64_t p = vbuf[j * lines + l];
    const double t = (double)(q - p);
    const double d = s2 * t * t + fbuf[p * lines + l];
    line[q * ls] = (T)(take_sqrt ? sqrt(d) : d);
  }
}

template <typename T>
void edt_launch(const uint8_t* mask, T* out, void* scratch, int64_t X, int64_t Y, int64_t Z,
                const double* sp, cudaStream_t st) {
  edt_z<T><<<blocks_for(X * Y), kThreads, 0, st>>>(mask, out, X * Y, Z, sp[2]);
  auto pass = [&](int64_t outer, int64_t os, int64_t inner, int64_t len, int64_t ls, double s,
                  bool take_sqrt) {
    const int64_t lines = outer * inner;
    double* fbuf = (double*)scratch;
    double* zbuf = fbuf + lines * len;
    int32_t* vbuf = (int32_t*)(zbuf + lines * (len + 1));
    edt_fh<T><<<blocks_for(lines), kThreads, 0, st>>>(out, outer, os, inner, len, ls, s * s,
                                                      take_sqrt, fbuf, vbuf, zbuf);
  };
  pass(X, Y * Z, Z, Y, Z, sp[1], false);
  pass(1, 0, Y * Z, X, Y * Z, sp[0], true);
}

// ---------------------------------------------------------------------------
// Exact bilateral: one thread per output voxel, loops over the box window.
// ---------------------------------------------------------------------------
constexpr int kMaxValChannels = 16;

__global__ void bilateral_kernel(const float* __restrict__ guide, int cg,
                                 const float* __restrict__ val, int cv, float* __restrict__ out,
                                 int64_t X, int64_t Y, int64_t Z, int rx, int ry, int rz,
                                 float ax, float ay, float az, float bcoef, bool exclude_center) {
  const int64_t N = X * Y * Z;
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const int64_t x = i / (Y * Z), y = (i / Z) % Y, z = i % Z;
  float num[kMaxValChannels];
  for (int c = 0; c < cv; ++c) num[c] = 0.0f;
  float den = 0.0f;
  for (int dx = -rx; dx <= rx; ++dx) {
    const int64_t xx = x + dx;
    if (xx < 0 || xx >= X) continue;
    for (int dy = -ry; dy <= ry; ++dy) {
      const int64_t yy = y + dy;
      if (yy < 0 || yy >= Y) continue;
      const float sxy = ax * (float)(dx * dx) + ay * (float)(dy * dy);
      for (int dz = -rz; dz <= rz; ++dz) {
        const int64_t zz = z + dz;
        if (zz < 0 || zz >= Z) continue;
        if (exclude_center && dx == 0 && dy == 0 && dz == 0) continue;
        const int64_t j = (xx * Y + yy) * Z + zz;
        float t = sxy + az * (float)(dz * dz);
        for (int c = 0; c < cg; ++c) {
          const float d = guide[c * N + j] - guide[c * N + i];
          t += bcoef * d * d;
        }
        const float w = t > 80.0f ? 0.0f : expf(-t);
        den += w;
        for (int c = 0; c < cv; ++c) num[c] += w * val[c * N + j];
      }
    }
  }
  for (int c = 0; c < cv; ++c) out[c * N + i] = den > 0.0f ? num[c] / den : val[c * N + i];
}

}  // namespace

void cc3d_cuda(const uint8_t* mask, int32_t* parent, int64_t X, int64_t Y, int64_t Z,
               int connectivity, void* stream) {
  cudaStream_t st = (cudaStream_t)stream;
  const int64_t n = X * Y * Z;
  const int maxsum = connectivity == 6 ? 1 : (connectivity == 18 ? 2 : 3);
  cc_init<<<blocks_for(n), kThreads, 0, st>>>(mask, parent, n);
  cc_merge<<<blocks_for(n), kThreads, 0, st>>>(mask, parent, X, Y, Z, maxsum);
  cc_compress<<<blocks_for(n), kThreads, 0, st>>>(parent, n);
}

int64_t edt_cuda_scratch_bytes(int64_t X, int64_t Y, int64_t Z, bool /*f64*/) {
  // Per line of length len: f (double), zb (double, len+1), v (int32).
  auto need = [](int64_t lines, int64_t len) {
    return lines * (len * 8 + (len + 1) * 8 + len * 4);
  };
  const int64_t a = need(X * Z, Y), b = need(Y * Z, X);
  return a > b ? a : b;
}

void edt_cuda_f32(const uint8_t* mask, float* out, void* scratch, int64_t X, int64_t Y, int64_t Z,
                  const double* spacing, void* stream) {
  edt_launch<float>(mask, out, scratch, X, Y, Z, spacing, (cudaStream_t)stream);
}

void edt_cuda_f64(const uint8_t* mask, double* out, void* scratch, int64_t X, int64_t Y,
                  int64_t Z, const double* spacing, void* stream) {
  edt_launch<double>(mask, out, scratch, X, Y, Z, spacing, (cudaStream_t)stream);
}

void bilateral_cuda(const float* guide, int cg, const float* val, int cv, float* out, int64_t X,
                    int64_t Y, int64_t Z, const int* radius, const float* acoef, float bcoef,
                    bool exclude_center, void* stream) {
  const int64_t n = X * Y * Z;
  bilateral_kernel<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(
      guide, cg, val, cv, out, X, Y, Z, radius[0], radius[1], radius[2], acoef[0], acoef[1],
      acoef[2], bcoef, exclude_center);
}

}  // namespace fedvox
