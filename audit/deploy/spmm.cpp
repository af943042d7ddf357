// prune-audit sparse Linear kernel: y = x @ W^T + b for a CSR weight W (out x in).
//
// Layout (the research note in shared/research/sparse-kernels-cpu.md explains why):
//   * W is stored row-wise (CSR over output features): int32 row pointers, uint16 or
//     int32 column indices, fp32 values.
//   * The activations x (n tokens x in, row-major) are packed once per call into
//     feature-major panels of 32 tokens: xp[k][t]. One non-zero W[o,k] then multiplies a
//     contiguous run of 32 tokens (2 AVX-512 vectors), so the inner loop is vector FMAs that
//     broadcast the weight: no gathers, and the accumulators of one output feature stay in
//     registers for the whole row (several accumulator sets, to hide the FMA latency).
//     A 32-token panel of a 768-feature input is 96 KiB and stays in L2 across all rows;
//     wider token tiles measured slower (they spill out of L2) and narrower ones waste lanes.
//   * Output rows are computed in blocks of RB features into a small buffer and written
//     back token-major, so the caller gets an ordinary (n x out) result.
//   * n == 1 (a single token) uses a plain CSR dot product per row instead.
// Vector code uses GCC/Clang vector extensions: the compiler maps them onto AVX-512,
// AVX2 or SSE registers depending on the -march it was given. Threads come from OpenMP
// (the process's libgomp, shared with torch); the caller passes the thread count.
// The summation order per output is fixed (row order of W), so results are deterministic.

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
typedef float vf __attribute__((vector_size(VW * 4)));

#define TOKEN_TILE 32                      // tokens per panel (measured best: fits L2 for in <= 2048)
#define NVMAX (TOKEN_TILE / VW)            // accumulator vectors per output row
#define UMAX (NVMAX >= 8 ? 1 : 8 / NVMAX)  // independent accumulator sets: 8 vector registers in flight
#define RB 32                              // output features per work item
#define PANEL_CHUNK 8                      // panels packed at once (bounds the packing buffer)

static inline vf vload(const float* p) {
  vf v;
  memcpy(&v, p, sizeof(vf));
  return v;
}
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof(vf)); }

// Vectors per token tile: 1 for a few tokens, else NVMAX (the kernels are instantiated for both).
static inline int tile_vectors(int n) { return n <= VW ? 1 : NVMAX; }

// Rows [r0, r1) of W times one feature-major panel xp (in x NV*VW), into buf (rows x NV*VW).
// U accumulator sets take consecutive non-zeros in turn, so U*NV independent FMA chains hide
// the FMA latency; they are summed at the end of the row (a fixed order: deterministic).
template <int NV, int U, typename IDX>
static void rows_kernel(const int32_t* __restrict rp, const IDX* __restrict ci, const float* __restrict val,
                        const float* __restrict xp, float* __restrict buf, int r0, int r1) {
  const int tt = NV * VW;
  for (int o = r0; o < r1; ++o) {
    vf acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[u][v] = (vf){};
    const int32_t end = rp[o + 1];
    int32_t j = rp[o];
    for (; j + U <= end; j += U) {
      for (int u = 0; u < U; ++u) {
        const vf w = val[j + u] - (vf){};
        const float* xr = xp + (size_t)ci[j + u] * tt;
        for (int v = 0; v < NV; ++v) acc[u][v] += w * vload(xr + v * VW);
      }
    }
    for (; j < end; ++j) {
      const vf w = val[j] - (vf){};
      const float* xr = xp + (size_t)ci[j] * tt;
      for (int v = 0; v < NV; ++v) acc[0][v] += w * vload(xr + v * VW);
    }
    for (int u = 1; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[0][v] += acc[u][v];
    float* dst = buf + (size_t)(o - r0) * tt;
    for (int v = 0; v < NV; ++v) vstore(dst + v * VW, acc[0][v]);
  }
}

template <typename IDX>
static void spmv(const int32_t* rp, const IDX* ci, const float* val, const float* bias, const float* x, float* y,
                 int out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int o = 0; o < out; ++o) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    int32_t j = rp[o];
    const int32_t end = rp[o + 1];
    for (; j + 4 <= end; j += 4) {
      s0 += val[j] * x[ci[j]];
      s1 += val[j + 1] * x[ci[j + 1]];
      s2 += val[j + 2] * x[ci[j + 2]];
      s3 += val[j + 3] * x[ci[j + 3]];
    }
    for (; j < end; ++j) s0 += val[j] * x[ci[j]];
    y[o] = ((s0 + s1) + (s2 + s3)) + (bias ? bias[o] : 0.f);
  }
}

template <typename IDX>
static void spmm(const int32_t* rp, const IDX* ci, const float* val, const float* bias, const float* x, float* y,
                 int n, int in, int out, int nthreads, float* work) {
  if (n <= 0 || out <= 0) return;
  if (n == 1) {
    spmv<IDX>(rp, ci, val, bias, x, y, out, nthreads);
    return;
  }
  const int nv = tile_vectors(n);
  const int tt = nv * VW;
  const int npanels = (n + tt - 1) / tt;
  const int nrb = (out + RB - 1) / RB;
  const int nkb = (in + 15) / 16;
#pragma omp parallel num_threads(nthreads)
  {
    float buf[RB * TOKEN_TILE] __attribute__((aligned(64)));
    for (int p0 = 0; p0 < npanels; p0 += PANEL_CHUNK) {
      const int pc = (npanels - p0) < PANEL_CHUNK ? (npanels - p0) : PANEL_CHUNK;
      // pack: xp[k * tt + t] = x[(p * tt + t) * in + k], zero past the last token
#pragma omp for schedule(static)
      for (int item = 0; item < pc * nkb; ++item) {
        const int pl = item / nkb;
        const int k0 = (item % nkb) * 16;
        const int k1 = k0 + 16 < in ? k0 + 16 : in;
        const int p = p0 + pl;
        float* xp = work + (size_t)pl * in * tt;
        for (int t = 0; t < tt; ++t) {
          const int tok = p * tt + t;
          if (tok < n) {
            const float* src = x + (size_t)tok * in;
            for (int k = k0; k < k1; ++k) xp[(size_t)k * tt + t] = src[k];
          } else {
            for (int k = k0; k < k1; ++k) xp[(size_t)k * tt + t] = 0.f;
          }
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (int item = 0; item < pc * nrb; ++item) {
        const int pl = item / nrb;
        const int rb = item % nrb;
        const int p = p0 + pl;
        const float* xp = work + (size_t)pl * in * tt;
        const int r0 = rb * RB;
        const int r1 = r0 + RB < out ? r0 + RB : out;
        if (nv == 1)
          rows_kernel<1, 8, IDX>(rp, ci, val, xp, buf, r0, r1);
        else
          rows_kernel<NVMAX, UMAX, IDX>(rp, ci, val, xp, buf, r0, r1);
        const int t1 = (p + 1) * tt <= n ? tt : n - p * tt;
        for (int t = 0; t < t1; ++t) {
          float* yr = y + (size_t)(p * tt + t) * out;
          for (int o = r0; o < r1; ++o) yr[o] = buf[(size_t)(o - r0) * tt + t] + (bias ? bias[o] : 0.f);
        }
      }
    }
  }
}

#define PA_EXPORT __attribute__((visibility("default")))

extern "C" {

// Vector width in floats this build was compiled for (16 = AVX-512, 8 = AVX2, 4 = SSE).
PA_EXPORT int pa_simd_width(void) { return VW; }

// 1 when compiled with OpenMP (multi-threaded), else 0.
PA_EXPORT int pa_has_openmp(void) {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

// Floats of scratch memory pa_spmm_* needs for n tokens and in features (0 for n <= 1).
PA_EXPORT int64_t pa_work_floats(int n, int in) {
  if (n <= 1) return 0;
  const int64_t tt = (int64_t)tile_vectors(n) * VW;
  const int64_t npanels = (n + tt - 1) / tt;
  const int64_t pc = npanels < PANEL_CHUNK ? npanels : PANEL_CHUNK;
  return pc * (int64_t)in * tt;
}

PA_EXPORT void pa_spmm_u16(const int32_t* rp, const uint16_t* ci, const float* val, const float* bias, const float* x, float* y,
                 int n, int in, int out, int nthreads, float* work) {
  spmm<uint16_t>(rp, ci, val, bias, x, y, n, in, out, nthreads, work);
}

PA_EXPORT void pa_spmm_i32(const int32_t* rp, const int32_t* ci, const float* val, const float* bias, const float* x, float* y,
                 int n, int in, int out, int nthreads, float* work) {
  spmm<int32_t>(rp, ci, val, bias, x, y, n, in, out, nthreads, work);
}
}
