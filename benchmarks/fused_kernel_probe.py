"""Probe: how much faster would compiled (fused) window kernels be than the torch operations fit_columns uses?

Not part of the package: a measurement behind the note that the single-image 20x target needs a fused kernel.
It JIT-compiles two plain C++ loops with ``torch.utils.cpp_extension.load_inline`` (needs a C++ compiler and
``pip install ninja``; ~1 min to compile) — the model render (outer products of 1-D profiles added into the image)
and the 3x3 window moments of the gradient — checks them against ``stemquant.quant._model`` and prints the median
time of each (caches evicted between runs, as inside a fit) next to the torch version, 400 columns, one thread.

    OMP_NUM_THREADS=1 python benchmarks/fused_kernel_probe.py
"""
import time

import numpy as np
import torch
from torch.utils.cpp_extension import load_inline

from stemquant.quant import _model as M

SRC = r'''
#include <torch/extension.h>
// model on a padded image: out[f] = zeta + sum_n eta_n gy_n(a) gx_n(b) over each window (i0+a, j0+b)
torch::Tensor render(torch::Tensor gy, torch::Tensor gx, torch::Tensor eta, torch::Tensor i0, torch::Tensor j0,
                     int64_t Hp, int64_t Wp, double zeta) {
  auto out = torch::full({Hp * Wp}, zeta, gy.options());
  int64_t N = gy.size(0), P = gy.size(1);
  auto o = out.data_ptr<double>(); auto y = gy.data_ptr<double>(); auto x = gx.data_ptr<double>();
  auto e = eta.data_ptr<double>(); auto ii = i0.data_ptr<int64_t>(); auto jj = j0.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    const double* yn = y + n * P; const double* xn = x + n * P;
    for (int64_t a = 0; a < P; ++a) {
      double w = e[n] * yn[a];
      double* row = o + (ii[n] + a) * Wp + jj[n];
      for (int64_t b = 0; b < P; ++b) row[b] += w * xn[b];
    }
  }
  return out;
}
// 3x3 moments M[s,t] = sum_ab R(i0+a, j0+b) vy[s,a] vx[t,b]
torch::Tensor moments(torch::Tensor R, torch::Tensor vy, torch::Tensor vx, torch::Tensor i0, torch::Tensor j0,
                      int64_t Wp) {
  int64_t N = vy.size(0), P = vy.size(2);
  auto out = torch::zeros({N, 3, 3}, vy.options());
  auto r = R.data_ptr<float>(); auto y = vy.data_ptr<float>(); auto x = vx.data_ptr<float>();
  auto o = out.data_ptr<float>();
  auto ii = i0.data_ptr<int64_t>(); auto jj = j0.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) {
    float m[9] = {0};
    const float* yn = y + n * 3 * P; const float* xn = x + n * 3 * P;
    for (int64_t a = 0; a < P; ++a) {
      const float* row = r + (ii[n] + a) * Wp + jj[n];
      float s0 = 0, s1 = 0, s2 = 0;
      for (int64_t b = 0; b < P; ++b) {
        float v = row[b];
        s0 += v * xn[b]; s1 += v * xn[P + b]; s2 += v * xn[2 * P + b];
      }
      for (int s = 0; s < 3; ++s) {
        float ys = yn[s * P + a];
        m[3 * s] += ys * s0; m[3 * s + 1] += ys * s1; m[3 * s + 2] += ys * s2;
      }
    }
    for (int k = 0; k < 9; ++k) o[n * 9 + k] = m[k];
  }
  return out;
}
'''


def median_ms(f, n=30):
    """Median time [ms] of ``f`` with the caches evicted before each run (fit_speed.best_of takes the minimum of
    warm runs; inside a fit the windows are cold)."""
    f()
    ts = []
    for _ in range(n):
        torch.empty(3_000_000).fill_(1.0)
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main():
    torch.set_num_threads(1)
    t0 = time.time()
    mod = load_inline("fusedk", cpp_sources=SRC, functions=["render", "moments"],
                      extra_cflags=["-O3", "-march=native"])
    print(f"compiled in {time.time() - t0:.0f} s")
    N, H, W, h, pad = 400, 294, 294, 12, 37  # the 400-column image of fit_speed.py: rho = 2.86 px, h = 4 rho
    g = np.arange(20) * 14 + 14.0
    X, Y = np.meshgrid(g, g)
    c = torch.tensor(np.c_[X.ravel(), Y.ravel()] + np.random.default_rng(0).normal(0, 0.3, (N, 2)))[None]
    rho = torch.full((1, N), 2.86, dtype=torch.float64)
    eta = torch.ones(1, N, dtype=torch.float64)
    zeta = torch.zeros(1, dtype=torch.float64)
    geom = M.make_geometry(c[..., 0], c[..., 1], h, (H, W), pad)
    prof = M.profiles(geom, c[..., 0], c[..., 1], rho)
    Hp, Wp = geom.padded_shape
    mask = torch.nn.functional.pad(torch.ones(1, H, W, dtype=torch.float64), (pad,) * 4)
    gy, gx = prof.vy[0, :, 0].contiguous(), prof.vx[0, :, 0].contiguous()
    i0, j0 = (geom.i0[0] + pad).contiguous(), (geom.j0[0] + pad).contiguous()

    def torch_render():
        return M.render(geom, prof, eta, zeta, mask)

    def fused_render():
        return mod.render(gy, gx, eta[0], i0, j0, Hp, Wp, 0.0)

    diff = float(((fused_render() - torch_render()) * mask.reshape(-1)).abs().max())
    t_t, t_f = median_ms(torch_render), median_ms(fused_render)
    print(f"render (float64): torch {t_t:.3f} ms, fused {t_f:.3f} ms -> {t_t / t_f:.1f}x; max difference {diff:.1e}")
    R = torch.rand(Hp * Wp, dtype=torch.float32)
    pf = M.Profiles(prof.vx.float(), prof.vy.float())
    vy, vx = pf.vy[0].contiguous(), pf.vx[0].contiguous()

    def torch_moments():
        return (pf.vy @ M.gather_patches(R, geom)) @ pf.vx.transpose(-1, -2)

    def fused_moments():
        return mod.moments(R, vy, vx, i0, j0, Wp)

    ref = torch_moments()[0]
    rel = float((fused_moments() - ref).abs().max() / ref.abs().max())
    t_t, t_f = median_ms(torch_moments), median_ms(fused_moments)
    print(f"3x3 window moments (float32): torch {t_t:.3f} ms, fused {t_f:.3f} ms -> {t_t / t_f:.1f}x; "
          f"relative difference {rel:.1e}")


if __name__ == "__main__":
    main()
