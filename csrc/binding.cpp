// Thin torch binding: registers the kernels as torch.ops.fedvox.* .
//
// torch/library.h instead of torch/extension.h (no pybind11, no Python
// headers): this file compiles in ~4 s instead of ~26 s. Outputs are
// allocated by the Python faces, which also do all user-facing validation;
// the TORCH_CHECKs here only guard the raw-pointer contract.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "ops.h"

#ifdef FEDVOX_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace {

using at::Tensor;

void check_volume(const Tensor& t, const char* name, c10::ScalarType dtype, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "fedvox ops: ", name, " must have ", dim, " dims, got ", t.dim());
  TORCH_CHECK(t.scalar_type() == dtype, "fedvox ops: ", name, " has dtype ", t.scalar_type(),
              ", expected ", dtype);
  TORCH_CHECK(t.is_contiguous(), "fedvox ops: ", name, " must be contiguous");
}

void check_same_grid(const Tensor& a, const Tensor& b, int64_t skip_a, int64_t skip_b) {
  TORCH_CHECK(a.dim() - skip_a == 3 && b.dim() - skip_b == 3, "fedvox ops: expected 3-D grids");
  for (int64_t k = 0; k < 3; ++k)
    TORCH_CHECK(a.size(skip_a + k) == b.size(skip_b + k), "fedvox ops: grid sizes differ");
}

// mask (X,Y,Z) uint8 -> labels (X,Y,Z) int32; returns the component count.
int64_t cc3d(const Tensor& mask, Tensor labels, int64_t connectivity, int64_t threads) {
  check_volume(mask, "mask", at::kByte, 3);
  check_volume(labels, "labels", at::kInt, 3);
  check_same_grid(mask, labels, 0, 0);
  TORCH_CHECK(mask.device().is_cpu() && labels.device().is_cpu(), "fedvox ops: cc3d is CPU");
  TORCH_CHECK(connectivity == 6 || connectivity == 18 || connectivity == 26,
              "fedvox ops: connectivity must be 6, 18 or 26");
  const int64_t n = fedvox::cc3d_cpu(mask.data_ptr<uint8_t>(), labels.data_ptr<int32_t>(),
                                     mask.size(0), mask.size(1), mask.size(2),
                                     (int)connectivity, (int)threads);
  TORCH_CHECK(n >= 0, "fedvox ops: volume too large for int32 run indices");
  return n;
}

void edt(const Tensor& mask, Tensor out, c10::ArrayRef<double> spacing, int64_t threads) {
  check_volume(mask, "mask", at::kByte, 3);
  TORCH_CHECK(out.dim() == 3 && out.is_contiguous(), "fedvox ops: bad EDT output");
  check_same_grid(mask, out, 0, 0);
  TORCH_CHECK(spacing.size() == 3, "fedvox ops: spacing needs 3 values");
  TORCH_CHECK(mask.device().is_cpu() && out.device().is_cpu(), "fedvox ops: edt is CPU");
  if (out.scalar_type() == at::kFloat) {
    fedvox::edt_cpu_f32(mask.data_ptr<uint8_t>(), out.data_ptr<float>(), mask.size(0),
                        mask.size(1), mask.size(2), spacing.data(), (int)threads);
  } else {
    TORCH_CHECK(out.scalar_type() == at::kDouble, "fedvox ops: EDT output float32/float64");
    fedvox::edt_cpu_f64(mask.data_ptr<uint8_t>(), out.data_ptr<double>(), mask.size(0),
                        mask.size(1), mask.size(2), spacing.data(), (int)threads);
  }
}

struct BilateralArgs {
  int radius[3];
  float acoef[3];
};

BilateralArgs bilateral_args(c10::ArrayRef<int64_t> radius, c10::ArrayRef<double> acoef) {
  TORCH_CHECK(radius.size() == 3 && acoef.size() == 3, "fedvox ops: need 3 radii/coefficients");
  BilateralArgs a;
  for (int k = 0; k < 3; ++k) {
    TORCH_CHECK(radius[k] >= 0, "fedvox ops: negative radius");
    a.radius[k] = (int)radius[k];
    a.acoef[k] = (float)acoef[k];
  }
  return a;
}

// guide (Cg,X,Y,Z), val (Cv,X,Y,Z) -> out (Cv,X,Y,Z), all float32.
void bilateral(const Tensor& guide, const Tensor& val, Tensor out, c10::ArrayRef<int64_t> radius,
               c10::ArrayRef<double> acoef, double bcoef, bool exclude_center, int64_t threads) {
  check_volume(guide, "guide", at::kFloat, 4);
  check_volume(val, "val", at::kFloat, 4);
  check_volume(out, "out", at::kFloat, 4);
  check_same_grid(guide, val, 1, 1);
  check_same_grid(val, out, 1, 1);
  TORCH_CHECK(out.size(0) == val.size(0), "fedvox ops: out/val channels differ");
  TORCH_CHECK(guide.device().is_cpu(), "fedvox ops: bilateral is CPU");
  const BilateralArgs a = bilateral_args(radius, acoef);
  const float* g = guide.data_ptr<float>();
  const float* v = val.data_ptr<float>();
  fedvox::bilateral_cpu(g, (int)guide.size(0), v, (int)val.size(0), out.data_ptr<float>(),
                        guide.size(1), guide.size(2), guide.size(3), a.radius, a.acoef,
                        (float)bcoef, exclude_center, (int)threads);
}

void gauss_blur(Tensor data, c10::ArrayRef<int64_t> radius, c10::ArrayRef<double> acoef,
                int64_t threads) {
  check_volume(data, "data", at::kFloat, 4);
  TORCH_CHECK(data.device().is_cpu(), "fedvox ops: gauss_blur is CPU");
  TORCH_CHECK(radius.size() == 3 && acoef.size() == 3, "fedvox ops: need 3 radii/coefficients");
  int r[3];
  double c[3];
  for (int k = 0; k < 3; ++k) {
    r[k] = (int)radius[k];
    c[k] = acoef[k];
  }
  fedvox::gauss_blur_cpu(data.data_ptr<float>(), (int)data.size(0), data.size(1), data.size(2),
                         data.size(3), r, c, (int)threads);
}

// params: bilateral_weight, gaussian_weight, bilateral_spatial_sigma,
// bilateral_color_sigma, gaussian_spatial_sigma.
void crf(const Tensor& unary, const Tensor& image, const Tensor& compat, Tensor q,
         c10::ArrayRef<double> spacing, c10::ArrayRef<double> params, int64_t iterations,
         bool lattice, int64_t threads) {
  check_volume(unary, "unary", at::kFloat, 4);
  check_volume(image, "image", at::kFloat, 4);
  check_volume(compat, "compat", at::kFloat, 2);
  check_volume(q, "q", at::kFloat, 4);
  check_same_grid(unary, image, 1, 1);
  check_same_grid(unary, q, 1, 1);
  const int64_t L = unary.size(0);
  TORCH_CHECK(L >= 1 && L <= 32 && q.size(0) == L, "fedvox ops: 1..32 labels");
  TORCH_CHECK(compat.size(0) == L && compat.size(1) == L, "fedvox ops: compat must be LxL");
  TORCH_CHECK(spacing.size() == 3 && params.size() == 5, "fedvox ops: bad CRF parameters");
  TORCH_CHECK(unary.device().is_cpu(), "fedvox ops: crf is CPU");
  fedvox::CrfParams p;
  for (int k = 0; k < 3; ++k) p.spacing[k] = spacing[k];
  p.bilateral_weight = params[0];
  p.gaussian_weight = params[1];
  p.bilateral_spatial_sigma = params[2];
  p.bilateral_color_sigma = params[3];
  p.gaussian_spatial_sigma = params[4];
  p.iterations = (int)iterations;
  p.lattice = lattice;
  fedvox::crf_cpu(unary.data_ptr<float>(), (int)L, image.data_ptr<float>(), (int)image.size(0),
                  compat.data_ptr<float>(), q.data_ptr<float>(), unary.size(1), unary.size(2),
                  unary.size(3), p, (int)threads);
}

#ifdef FEDVOX_WITH_CUDA
void* stream_of(const Tensor& t) {
  return (void*)c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// parent gets each component's smallest linear index (-1 background);
// the Python face numbers the roots.
void cc3d_roots_cuda(const Tensor& mask, Tensor parent, int64_t connectivity) {
  check_volume(mask, "mask", at::kByte, 3);
  check_volume(parent, "parent", at::kInt, 3);
  check_same_grid(mask, parent, 0, 0);
  TORCH_CHECK(mask.is_cuda() && parent.is_cuda(), "fedvox ops: CUDA tensors expected");
  TORCH_CHECK(mask.numel() < (int64_t)1 << 31, "fedvox ops: volume too large for int32 labels");
  c10::cuda::CUDAGuard guard(mask.device());
  fedvox::cc3d_cuda(mask.data_ptr<uint8_t>(), parent.data_ptr<int32_t>(), mask.size(0),
                    mask.size(1), mask.size(2), (int)connectivity, stream_of(mask));
}

int64_t edt_scratch_bytes_cuda(int64_t X, int64_t Y, int64_t Z, bool f64) {
  return fedvox::edt_cuda_scratch_bytes(X, Y, Z, f64);
}

void edt_cuda(const Tensor& mask, Tensor out, Tensor scratch, c10::ArrayRef<double> spacing) {
  check_volume(mask, "mask", at::kByte, 3);
  check_same_grid(mask, out, 0, 0);
  TORCH_CHECK(out.is_contiguous() && scratch.is_contiguous(), "fedvox ops: contiguous buffers");
  TORCH_CHECK(mask.is_cuda() && out.is_cuda() && scratch.is_cuda(), "fedvox ops: CUDA tensors");
  TORCH_CHECK(spacing.size() == 3, "fedvox ops: spacing needs 3 values");
  const bool f64 = out.scalar_type() == at::kDouble;
  TORCH_CHECK(f64 || out.scalar_type() == at::kFloat, "fedvox ops: EDT output float32/float64");
  TORCH_CHECK(scratch.numel() * scratch.element_size() >=
                  fedvox::edt_cuda_scratch_bytes(mask.size(0), mask.size(1), mask.size(2), f64),
              "fedvox ops: EDT scratch too small");
  c10::cuda::CUDAGuard guard(mask.device());
  if (f64)
    fedvox::edt_cuda_f64(mask.data_ptr<uint8_t>(), out.data_ptr<double>(), scratch.data_ptr(),
                         mask.size(0), mask.size(1), mask.size(2), spacing.data(),
                         stream_of(mask));
  else
    fedvox::edt_cuda_f32(mask.data_ptr<uint8_t>(), out.data_ptr<float>(), scratch.data_ptr(),
                         mask.size(0), mask.size(1), mask.size(2), spacing.data(),
                         stream_of(mask));
}

void bilateral_cuda(const Tensor& guide, const Tensor& val, Tensor out,
                    c10::ArrayRef<int64_t> radius, c10::ArrayRef<double> acoef, double bcoef,
                    bool exclude_center) {
  check_volume(guide, "guide", at::kFloat, 4);
  check_volume(val, "val", at::kFloat, 4);
  check_volume(out, "out", at::kFloat, 4);
  check_same_grid(guide, val, 1, 1);
  check_same_grid(val, out, 1, 1);
  TORCH_CHECK(guide.is_cuda() && val.is_cuda() && out.is_cuda(), "fedvox ops: CUDA tensors");
  TORCH_CHECK(val.size(0) <= 16, "fedvox ops: CUDA bilateral takes at most 16 value channels");
  const BilateralArgs a = bilateral_args(radius, acoef);
  c10::cuda::CUDAGuard guard(guide.device());
  fedvox::bilateral_cuda(guide.data_ptr<float>(), (int)guide.size(0), val.data_ptr<float>(),
                         (int)val.size(0), out.data_ptr<float>(), guide.size(1), guide.size(2),
                         guide.size(3), a.radius, a.acoef, (float)bcoef, exclude_center,
                         stream_of(guide));
}
#endif

}  // namespace

TORCH_LIBRARY(fedvox, m) {
  m.def("cc3d(Tensor mask, Tensor(a!) labels, int connectivity, int threads) -> int", &cc3d);
  m.def("edt(Tensor mask, Tensor(a!) out, float[] spacing, int threads) -> ()", &edt);
  m.def("bilateral(Tensor guide, Tensor val, Tensor(a!) out, int[] radius, float[] acoef, "
        "float bcoef, bool exclude_center, int threads) -> ()",
        &bilateral);
  m.def("gauss_blur(Tensor(a!) data, int[] radius, float[] acoef, int threads) -> ()",
        &gauss_blur);
  m.def("crf(Tensor unary, Tensor image, Tensor compat, Tensor(a!) q, float[] spacing, "
        "float[] params, int iterations, bool lattice, int threads) -> ()",
        &crf);
  m.def("has_cuda() -> bool", []() -> bool {
#ifdef FEDVOX_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
#ifdef FEDVOX_WITH_CUDA
  m.def("cc3d_roots_cuda(Tensor mask, Tensor(a!) parent, int connectivity) -> ()",
        &cc3d_roots_cuda);
  m.def("edt_scratch_bytes_cuda(int X, int Y, int Z, bool f64) -> int", &edt_scratch_bytes_cuda);
  m.def("edt_cuda(Tensor mask, Tensor(a!) out, Tensor(b!) scratch, float[] spacing) -> ()",
        &edt_cuda);
  m.def("bilateral_cuda(Tensor guide, Tensor val, Tensor(a!) out, int[] radius, float[] acoef, "
        "float bcoef, bool exclude_center) -> ()",
        &bilateral_cuda);
#endif
}
