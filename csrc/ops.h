// fedvox post-processing kernels: plain C++/CUDA on raw pointers.
//
// No torch headers here on purpose: the kernels compile in seconds and the
// CUDA file can be compiled to an object with nvcc alone (CI has no GPU).
// binding.cpp is the only file that sees torch.
//
// Volumes are C-ordered (X, Y, Z) with Z contiguous; multi-channel data is
// (C, X, Y, Z). Callers (the Python faces) validate shapes, dtypes, devices
// and values before any of these run.
#pragma once
#include <cstdint>

namespace fedvox {

// ---- CPU (ops_cpu.cpp, OpenMP) ------------------------------------------

// Connected components of mask != 0. labels get 1..count in raster order of
// each component's first voxel (the same numbering as scipy.ndimage.label),
// 0 for background. connectivity: 6, 18 or 26. Returns count, or -1 when the
// volume has more runs than int32 can index.
int64_t cc3d_cpu(const uint8_t* mask, int32_t* labels, int64_t X, int64_t Y, int64_t Z,
                 int connectivity, int threads);

// Exact Euclidean distance of every nonzero voxel to the nearest zero voxel,
// physical units given spacing[3]; zero voxels get 0, +inf when the volume
// has no zero voxel at all.
void edt_cpu_f32(const uint8_t* mask, float* out, int64_t X, int64_t Y, int64_t Z,
                 const double* spacing, int threads);
void edt_cpu_f64(const uint8_t* mask, double* out, int64_t X, int64_t Y, int64_t Z,
                 const double* spacing, int threads);

// Exact (box-windowed) joint bilateral filter: out[c,p] =
//   sum_q w(p,q) val[c,q] / sum_q w(p,q),
//   w = exp(-sum_k acoef[k]*d_k^2 - bcoef*|guide[:,p]-guide[:,q]|^2),
// q over the box |d_k| <= radius[k] clipped to the volume (no padding), the
// centre left out when exclude_center (then a voxel with no neighbour keeps
// its own value). guide: (cg, X,Y,Z), val/out: (cv, X,Y,Z); out != val.
void bilateral_cpu(const float* guide, int cg, const float* val, int cv, float* out,
                   int64_t X, int64_t Y, int64_t Z, const int* radius, const float* acoef,
                   float bcoef, bool exclude_center, int threads);

// Normalised, box-truncated separable Gaussian of (C, X,Y,Z) data, in place:
// along axis k the weights are exp(-acoef[k]*d^2) for |d| <= radius[k].
void gauss_blur_cpu(float* data, int C, int64_t X, int64_t Y, int64_t Z, const int* radius,
                    const double* acoef, int threads);

struct CrfParams {
  double spacing[3];
  double bilateral_weight, gaussian_weight;
  double bilateral_spatial_sigma, bilateral_color_sigma, gaussian_spatial_sigma;
  int iterations;
  bool lattice;  // true: permutohedral lattice; false: exact windowed filter
};

// Mean-field CRF for one volume. unary: (L, X,Y,Z) log-probabilities, image:
// (C, X,Y,Z), compat: (L, L) label compatibility mu, q: (L, X,Y,Z) output
// marginals.
void crf_cpu(const float* unary, int L, const float* image, int C, const float* compat,
             float* q, int64_t X, int64_t Y, int64_t Z, const CrfParams& p, int threads);

// ---- CUDA (ops_cuda.cu); stream is a cudaStream_t ------------------------

// Union-find pass: parent gets, for each foreground voxel, the linear index
// of its component's smallest voxel (the root); -1 for background. The
// binding turns roots into 1..count with a prefix sum, like the CPU order.
void cc3d_cuda(const uint8_t* mask, int32_t* parent, int64_t X, int64_t Y, int64_t Z,
               int connectivity, void* stream);
// Same semantics as edt_cpu_*; scratch is device memory of at least
// edt_cuda_scratch_bytes(X, Y, Z, f64) bytes.
int64_t edt_cuda_scratch_bytes(int64_t X, int64_t Y, int64_t Z, bool f64);
void edt_cuda_f32(const uint8_t* mask, float* out, void* scratch, int64_t X, int64_t Y,
                  int64_t Z, const double* spacing, void* stream);
void edt_cuda_f64(const uint8_t* mask, double* out, void* scratch, int64_t X, int64_t Y,
                  int64_t Z, const double* spacing, void* stream);
// Same semantics as bilateral_cpu; cv <= 16.
void bilateral_cuda(const float* guide, int cg, const float* val, int cv, float* out,
                    int64_t X, int64_t Y, int64_t Z, const int* radius, const float* acoef,
                    float bcoef, bool exclude_center, void* stream);

}  // namespace fedvox
