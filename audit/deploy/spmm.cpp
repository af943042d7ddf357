// prune-audit sparse Linear kernel: y = x @ W^T + b for a CSR weight W (out x in).
//
// Layout (the research note in shared/research/sparse-kernels-cpu.md explains why):
//   * W is stored row-wise (CSR over output features): int32 row pointers, uint16 or
//     int32 column indices, fp32 values.
//   * The activations x (n tokens x in, row-major) are packed once per call into
//     feature-major panels of 32 tokens: xp[k][t] (16 x 16 register transposes). One
//     non-zero W[o,k] then multiplies a contiguous run of 32 tokens (2 AVX-512 vectors), so
//     the inner loop is vector FMAs that broadcast the weight: no gathers, and the
//     accumulators of one output feature stay in registers for the whole row (several
//     accumulator sets, to hide the FMA latency). A 32-token panel of a 768-feature input is
//     96 KiB and stays in L2 across all rows.
//   * Weights at least 20 % dense (50 % unstructured, 2:4) get 64-token panels instead: each
//     non-zero's index and broadcast then feed 4 FMAs, not 2. Such a panel would spill L1
//     badly, so the rows of a work item go through the input features in blocks (128+
//     features, about 32 non-zeros per row each, the slice of the panel 32 KiB): a block's
//     row segments come from precomputed bounds, partial sums add up in the row buffer.
//     At 128 tokens this took 50 % layers from 0.93-1.36x dense to 1.32-1.45x (one thread,
//     AMD EPYC Zen 4); sparser weights measured faster with plain 32-token panels.
//   * Output rows are computed in blocks of RB features into a small buffer and written
//     back token-major (16 x 16 register transposes), so the caller gets an ordinary
//     (n x out) result.
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
#include <immintrin.h>
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
#define WIDE_NV (64 / VW)                  // vectors per row in a wide (64-token) tile
#define WIDE_U (WIDE_NV >= 8 ? 1 : 8 / WIDE_NV)
#ifndef WIDE_DENSITY
#define WIDE_DENSITY 0.2  // wide tiles for weights at least this dense (measured)
#endif
#ifndef KB
#define KB 128  // input-feature block step for wide tiles
#endif
#ifndef BLOCK_NNZ
#define BLOCK_NNZ 32  // non-zeros per row per block wide tiles aim for
#endif
#define PANEL_CHUNK 8                      // panels packed at once (bounds the packing buffer)

static inline vf vload(const float* p) {
  vf v;
  memcpy(&v, p, sizeof(vf));
  return v;
}
static inline void vstore(float* p, vf v) { memcpy(p, &v, sizeof(vf)); }


// Rows [r0, r1) of W times one feature-major panel xp (in x NV*VW), into buf (rows x NV*VW),
// taking row o's non-zeros [lo[o - r0], hi[o - r0]) (all of the row, or one block of input
// features). U accumulator sets take consecutive non-zeros in turn, so U*NV independent FMA
// chains hide the FMA latency; they are summed at the end (a fixed order: deterministic)
// and stored into buf (`first`) or added to it (a later block of the same rows).
template <int NV, int U, bool BLOCKED, typename IDX>
static void rows_kernel(const int32_t* __restrict rp, const IDX* __restrict ci, const float* __restrict val,
                        const int32_t* __restrict lo, const int32_t* __restrict hi, const float* __restrict xp,
                        float* __restrict buf, int r0, int r1, bool first) {
  const int tt = NV * VW;
  for (int o = r0; o < r1; ++o) {
    vf acc[U][NV];
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) acc[u][v] = (vf){};
    const int32_t end = BLOCKED ? hi[o - r0] : rp[o + 1];
    int32_t j = BLOCKED ? lo[o - r0] : rp[o];
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
    if (!BLOCKED || first)
      for (int v = 0; v < NV; ++v) vstore(dst + v * VW, acc[0][v]);
    else
      for (int v = 0; v < NV; ++v) vstore(dst + v * VW, vload(dst + v * VW) + acc[0][v]);
  }
}

// d[j * ds + i] = s[i * ss + j] (+ add[i] when add is set), for i, j < 16: one 16 x 16 block
// of a transpose. The AVX-512 path shuffles in registers (pairs of rows, then groups of
// four, then 128-bit lanes); the portable path is the same copy element by element.
static inline void transpose16(const float* __restrict s, int64_t ss, float* __restrict d, int64_t ds,
                               const float* __restrict add) {
#if defined(__AVX512F__)
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(s + i * ss);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // r[4g + c], 128-bit lane L: column 4L + c of rows 4g .. 4g + 3
  for (int g = 0; g < 4; ++g) {
    r[4 * g] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  const __m512 a = add ? _mm512_loadu_ps(add) : _mm512_setzero_ps();
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512 v2 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
    _mm512_storeu_ps(d + (0 + c) * ds, _mm512_add_ps(_mm512_shuffle_f32x4(v0, v2, _MM_SHUFFLE(2, 0, 2, 0)), a));
    _mm512_storeu_ps(d + (4 + c) * ds, _mm512_add_ps(_mm512_shuffle_f32x4(v0, v2, _MM_SHUFFLE(3, 1, 3, 1)), a));
    _mm512_storeu_ps(d + (8 + c) * ds, _mm512_add_ps(_mm512_shuffle_f32x4(v1, v3, _MM_SHUFFLE(2, 0, 2, 0)), a));
    _mm512_storeu_ps(d + (12 + c) * ds, _mm512_add_ps(_mm512_shuffle_f32x4(v1, v3, _MM_SHUFFLE(3, 1, 3, 1)), a));
  }
#else
  for (int j = 0; j < 16; ++j)
    for (int i = 0; i < 16; ++i) d[j * ds + i] = s[i * ss + j] + (add ? add[i] : 0.f);
#endif
}

#if defined(__AVX512F__)
// Sum of the 16 lanes in the order of reduce16 below (lane j + lane j + 8, then + 4, + 2, + 1),
// in registers: the same result bit for bit, without the store and the scalar chain.
static inline float hsum16(__m512 v) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define PA_GATHER_SPMV 1
// 16 column indices from j, widened to int32 (uint16 or int32 storage).
static inline __m512i load_idx16(const uint16_t* p) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)); }
static inline __m512i load_idx16(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
static inline __m512i load_idx16_masked(const uint16_t* p, __mmask16 m) {
  return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
}
static inline __m512i load_idx16_masked(const int32_t* p, __mmask16 m) { return _mm512_maskz_loadu_epi32(m, p); }
#endif

#ifndef SPMV_PREFETCH
#define SPMV_PREFETCH 2048  // bytes ahead in the values stream that a single-token row prefetches
#endif

// One token: per output row a dot product of the row's non-zeros with x. The AVX-512 path
// gathers 16 inputs at a time (two accumulators, lane-tree sum); the portable path keeps
// four scalar sums. Both orders are fixed, so results are deterministic.
template <typename IDX>
static void spmv(const int32_t* rp, const IDX* ci, const float* val, const float* bias, const float* x, float* y,
                 int out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int o = 0; o < out; ++o) {
    int32_t j = rp[o];
    const int32_t end = rp[o + 1];
#if defined(PA_GATHER_SPMV)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; j + 32 <= end; j += 32) {
      _mm_prefetch((const char*)(val + j) + SPMV_PREFETCH, _MM_HINT_T0);
      _mm_prefetch((const char*)(val + j + 16) + SPMV_PREFETCH, _MM_HINT_T0);
      _mm_prefetch((const char*)(ci + j) + SPMV_PREFETCH * sizeof(IDX) / 4, _MM_HINT_T0);
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j), _mm512_i32gather_ps(load_idx16(ci + j), x, 4), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j + 16), _mm512_i32gather_ps(load_idx16(ci + j + 16), x, 4), a1);
    }
    for (; j < end; j += 16) {
      _mm_prefetch((const char*)(val + j) + SPMV_PREFETCH, _MM_HINT_T0);
      _mm_prefetch((const char*)(ci + j) + SPMV_PREFETCH * sizeof(IDX) / 4, _MM_HINT_T0);
      const int left = end - j;
      const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
      const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, load_idx16_masked(ci + j, m), x, 4);
      a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, val + j), xv, a0);
    }
    y[o] = hsum16(_mm512_add_ps(a0, a1)) + (bias ? bias[o] : 0.f);
#else
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (; j + 4 <= end; j += 4) {
      s0 += val[j] * x[ci[j]];
      s1 += val[j + 1] * x[ci[j + 1]];
      s2 += val[j + 2] * x[ci[j + 2]];
      s3 += val[j + 3] * x[ci[j + 3]];
    }
    for (; j < end; ++j) s0 += val[j] * x[ci[j]];
    y[o] = ((s0 + s1) + (s2 + s3)) + (bias ? bias[o] : 0.f);
#endif
  }
}

// bounds[o * (nkc + 1) + c]: the first non-zero of row o at an input feature >= c * kb
// (columns are sorted within a row); bounds[o * (nkc + 1) + nkc] is the row's end.
template <typename IDX>
static void block_bounds(const int32_t* rp, const IDX* ci, int out, int kb, int nkc, int32_t* bounds) {
#pragma omp for schedule(static)
  for (int o = 0; o < out; ++o) {
    int32_t* bo = bounds + (size_t)o * (nkc + 1);
    int32_t j = rp[o];
    const int32_t end = rp[o + 1];
    for (int c = 0; c < nkc; ++c) {
      bo[c] = j;
      const int k1 = (c + 1) * kb;
      int32_t lo = j, hi = end;  // binary search: the first index in [j, end) with column >= k1
      while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if ((int)ci[mid] < k1)
          lo = mid + 1;
        else
          hi = mid;
      }
      j = lo;
    }
    bo[nkc] = end;
  }
}

// Token tile for n tokens of a weight with `density`: one vector for a few tokens; 64
// tokens (WIDE_NV vectors) with input-feature blocks for denser weights; else 32.
static inline int tile_for(int n, double density) {
  if (n <= VW) return 1;
  if (n > TOKEN_TILE && density >= WIDE_DENSITY) return WIDE_NV;
  return NVMAX;
}

template <typename IDX>
static void spmm(const int32_t* rp, const IDX* ci, const float* val, const float* bias, const float* x, float* y,
                 int n, int in, int out, int nthreads, float* work) {
  if (n <= 0 || out <= 0) return;
  if (n == 1) {
    spmv<IDX>(rp, ci, val, bias, x, y, out, nthreads);
    return;
  }
  const double density = in > 0 ? (double)rp[out] / ((double)out * in) : 0.0;
  const int nv = tile_for(n, density);
  const int tt = nv * VW;
  const int npanels = (n + tt - 1) / tt;
  const int nrb = (out + RB - 1) / RB;
  const int nkb = (in + 15) / 16;
  // Wide tiles read a panel of 64 tokens x in features (192 KiB at in = 768: past L1 and
  // much of L2), so they go through the input features in blocks of kb: a block's slice of
  // the panel (kb x 64 floats) stays in L1 while all rows of a work item take their
  // non-zeros in it. kb grows until a row holds about BLOCK_NNZ non-zeros per block.
  int kb = in, nkc = 1;
  int32_t* bounds = NULL;
  if (nv == WIDE_NV) {
    kb = KB;
    while (kb < in && kb * density < BLOCK_NNZ) kb += KB;
    nkc = (in + kb - 1) / kb;
    if (nkc > 1) bounds = (int32_t*)malloc(sizeof(int32_t) * (size_t)out * (nkc + 1));
    if (bounds == NULL) kb = in, nkc = 1;
  }
#pragma omp parallel num_threads(nthreads)
  {
    float buf[RB * WIDE_NV * VW] __attribute__((aligned(64)));
    if (bounds) block_bounds<IDX>(rp, ci, out, kb, nkc, bounds);  // ends with a barrier
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
        int t = 0;
        if (k1 - k0 == 16)  // full blocks of 16 tokens x 16 features: a register transpose
          for (; t + 16 <= tt && p * tt + t + 16 <= n; t += 16)
            transpose16(x + (size_t)(p * tt + t) * in + k0, in, xp + (size_t)k0 * tt + t, tt, NULL);
        for (; t < tt; ++t) {
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
        if (bounds) {  // wide tiles, the input features in nkc blocks
          int32_t lo[RB], hi[RB];
          for (int c = 0; c < nkc; ++c) {
            for (int o = r0; o < r1; ++o) {
              lo[o - r0] = bounds[(size_t)o * (nkc + 1) + c];
              hi[o - r0] = bounds[(size_t)o * (nkc + 1) + c + 1];
            }
            rows_kernel<WIDE_NV, WIDE_U, true, IDX>(rp, ci, val, lo, hi, xp, buf, r0, r1, c == 0);
          }
        } else if (nv == 1) {
          rows_kernel<1, 8, false, IDX>(rp, ci, val, NULL, NULL, xp, buf, r0, r1, true);
        } else if (nv == WIDE_NV) {
          rows_kernel<WIDE_NV, WIDE_U, false, IDX>(rp, ci, val, NULL, NULL, xp, buf, r0, r1, true);
        } else {
          rows_kernel<NVMAX, UMAX, false, IDX>(rp, ci, val, NULL, NULL, xp, buf, r0, r1, true);
        }
        // write back token-major (+ bias): 16 x 16 register transposes, then the ragged edges
        const int t1 = (p + 1) * tt <= n ? tt : n - p * tt;
        const int o16 = r0 + ((r1 - r0) / 16) * 16, t16 = (t1 / 16) * 16;
        for (int o = r0; o < o16; o += 16)
          for (int t = 0; t < t16; t += 16)
            transpose16(buf + (size_t)(o - r0) * tt + t, tt, y + (size_t)(p * tt + t) * out + o, out,
                        bias ? bias + o : NULL);
        for (int t = 0; t < t1; ++t) {
          float* yr = y + (size_t)(p * tt + t) * out;
          for (int o = (t < t16 ? o16 : r0); o < r1; ++o) yr[o] = buf[(size_t)(o - r0) * tt + t] + (bias ? bias[o] : 0.f);
        }
      }
    }
  }
  free(bounds);
}


// ---- compact formats: bitmap and 2:4 (nm24) -------------------------------------------
// Both store, per row, one uint16 mask per 16 inputs (bit j of mask w: input 16w + j is
// kept) and the kept fp32 values packed in input order. `bitmap` has int32 row pointers
// into the values (any sparsity: 2.125 B per weight at 50 %); `nm24` has exactly 2 value
// slots per group of 4 inputs (8 per full mask), so block w of row o starts at
// o * (in / 2) + 8 w: no row pointers and no popcount chain (a group with fewer than 2
// non-zeros stores explicit zeros). The values array ends with 16 floats of padding (the
// vector path's loads may run past the last row). Per row the products go into 4 x 16 lane accumulators
// (block w into accumulator w % 4, lane j), summed as ((a0 + a1) + (a2 + a3)) and then
// lane-halves (8, 4, 2, 1): the AVX-512 path (vexpandps puts the packed values into
// their lanes, FMA with the masked x) and the scalar path (fmaf, the same order) give
// identical results, and every token of a batch gets the same order as a single token.

static inline float reduce16(float* s) {
  for (int h = 8; h >= 1; h >>= 1)
    for (int j = 0; j < h; ++j) s[j] += s[j + h];
  return s[0];
}

// One output: row o of the compact weight times one input vector x (in floats).
static inline float compact_row_scalar(const uint16_t* __restrict mk, const float* __restrict val, int64_t off,
                                       bool fixed, const float* __restrict x, int nb) {
  float acc[4][16];
  for (int a = 0; a < 4; ++a)
    for (int j = 0; j < 16; ++j) acc[a][j] = 0.f;
  for (int w = 0; w < nb; ++w) {
    const unsigned m = mk[w];
    int64_t p = fixed ? off + 8 * (int64_t)w : off;
    float* ac = acc[w & 3];
    for (int j = 0; j < 16; ++j)
      if (m >> j & 1u) {
        ac[j] = __builtin_fmaf(val[p], x[16 * w + j], ac[j]);
        ++p;
      }
    if (!fixed) off = p;
  }
  float s[16];
  for (int j = 0; j < 16; ++j) s[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
  return reduce16(s);
}

#ifndef COMPACT_PREFETCH
#define COMPACT_PREFETCH 2048  // bytes ahead in the values stream prefetched per 4 blocks
#endif

#if defined(__AVX512F__)
// Values are read 16 (bitmap) or 8 (nm24) floats at a time from the block's first value and
// expanded into the mask's lanes in registers (faster than vexpandps from memory on Zen 4),
// so a load may run up to 16 floats past the row: the values array carries 16 floats of padding.
static inline __m512 compact_values(const float* p, __mmask16 m, bool fixed) {
  return fixed ? _mm512_maskz_expand_ps(m, _mm512_castps256_ps512(_mm256_loadu_ps(p)))
               : _mm512_maskz_expand_ps(m, _mm512_loadu_ps(p));
}

// T tokens at once (x: T rows of `in` floats, results into s[T]): each block's values are
// expanded once and multiplied with every token's input; per token the order of operations
// is that of T = 1, so a token's result does not depend on the batch.
template <int T>
static inline void compact_rows_avx512(const uint16_t* __restrict mk, const float* __restrict val, int64_t off,
                                       bool fixed, const float* __restrict x, int64_t in, int nb, float* res) {
  __m512 acc[T][4];
  for (int t = 0; t < T; ++t)
    for (int a = 0; a < 4; ++a) acc[t][a] = _mm512_setzero_ps();
  const float* p = val + off;
  int w = 0;
  for (; w + 4 <= nb; w += 4) {
    _mm_prefetch((const char*)p + COMPACT_PREFETCH, _MM_HINT_T0);
    _mm_prefetch((const char*)p + COMPACT_PREFETCH + 64, _MM_HINT_T0);
    const __mmask16 m0 = mk[w], m1 = mk[w + 1], m2 = mk[w + 2], m3 = mk[w + 3];
    // the four blocks' value offsets from their popcounts (short dependency chain)
    const float* p1 = fixed ? p + 8 : p + __builtin_popcount(m0);
    const float* p2 = fixed ? p + 16 : p1 + __builtin_popcount(m1);
    const float* p3 = fixed ? p + 24 : p2 + __builtin_popcount(m2);
    const __m512 v0 = compact_values(p, m0, fixed), v1 = compact_values(p1, m1, fixed);
    const __m512 v2 = compact_values(p2, m2, fixed), v3 = compact_values(p3, m3, fixed);
    for (int t = 0; t < T; ++t) {
      const float* xw = x + t * in + 16 * (int64_t)w;
      acc[t][0] = _mm512_fmadd_ps(v0, _mm512_maskz_loadu_ps(m0, xw), acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(v1, _mm512_maskz_loadu_ps(m1, xw + 16), acc[t][1]);
      acc[t][2] = _mm512_fmadd_ps(v2, _mm512_maskz_loadu_ps(m2, xw + 32), acc[t][2]);
      acc[t][3] = _mm512_fmadd_ps(v3, _mm512_maskz_loadu_ps(m3, xw + 48), acc[t][3]);
    }
    p = fixed ? p + 32 : p3 + __builtin_popcount(m3);
  }
  for (int k = 0; w < nb; ++w, ++k) {  // at most 3 blocks left: accumulators 0, 1, 2 (block w -> w % 4)
    const __mmask16 m = mk[w];
    const __m512 v = compact_values(p, m, fixed);
    for (int t = 0; t < T; ++t)
      acc[t][k] = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, x + t * in + 16 * (int64_t)w), acc[t][k]);
    p += fixed ? 8 : __builtin_popcount(m);
  }
  for (int t = 0; t < T; ++t) {
    res[t] = hsum16(_mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), _mm512_add_ps(acc[t][2], acc[t][3])));
  }
}
#endif

// y (n x out) = x (n x in) @ W^T + b for a compact weight; rp == NULL: nm24 (fixed stride).
static void compact_mm(const int32_t* rp, const uint16_t* masks, const float* val, const float* bias, const float* x,
                       float* y, int n, int in, int out, int nthreads, int scalar) {
  if (n <= 0 || out <= 0) return;
  const int nb = (in + 15) / 16;
  const bool fixed = rp == nullptr;
  const int64_t half = in / 2;
#if !defined(__AVX512F__)
  scalar = 1;
#endif
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int o = 0; o < out; ++o) {
    const uint16_t* mk = masks + (size_t)o * nb;
    const int64_t off = fixed ? (int64_t)o * half : (int64_t)rp[o];
    const float b = bias ? bias[o] : 0.f;
    int t = 0;
#if defined(__AVX512F__)
    if (!scalar) {
      float s[4];
      for (; t + 4 <= n; t += 4) {
        compact_rows_avx512<4>(mk, val, off, fixed, x + (size_t)t * in, in, nb, s);
        for (int u = 0; u < 4; ++u) y[(size_t)(t + u) * out + o] = s[u] + b;
      }
      for (; t < n; ++t) {
        compact_rows_avx512<1>(mk, val, off, fixed, x + (size_t)t * in, in, nb, s);
        y[(size_t)t * out + o] = s[0] + b;
      }
    }
#endif
    for (; t < n; ++t) y[(size_t)t * out + o] = compact_row_scalar(mk, val, off, fixed, x + (size_t)t * in, nb) + b;
  }
}

#define PA_EXPORT __attribute__((visibility("default")))

// Activation-sparse Linear (TEAL / CATS): y = x @ Wt + b for a dense, input-major weight Wt
// (in x out), reading only the rows of Wt whose input x[r, i] is non-zero: the weight columns
// of switched-off activations are never loaded. Each token's non-zero inputs are listed once
// (idx: n x in scratch, cnt: n). The outputs are split into chunks of NV vectors (at most
// ACT_NV, at least as many chunks as threads, so both threads stream); a chunk's accumulators
// stay in registers across the token's active inputs, so every active row of Wt is read once
// per token in contiguous runs. The last out % VW outputs are done in scalar code. Inputs are
// taken in index order: deterministic.
#define ACT_NV 16
template <int NV>
static inline void act_chunk(const float* __restrict wt, const float* __restrict bias, const float* __restrict xr,
                             const int32_t* __restrict ir, int k, float* __restrict yr, int out, int o0) {
  vf acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = bias ? vload(bias + o0 + v * VW) : (vf){};
  for (int j = 0; j < k; ++j) {
    const int i = ir[j];
    const vf a = (vf){} + xr[i];
    const float* wr = wt + (int64_t)i * out + o0;
    for (int v = 0; v < NV; ++v) acc[v] += a * vload(wr + v * VW);
  }
  for (int v = 0; v < NV; ++v) vstore(yr + o0 + v * VW, acc[v]);
}

typedef void (*act_chunk_fn)(const float*, const float*, const float*, const int32_t*, int, float*, int, int);
static const act_chunk_fn ACT_CHUNKS[ACT_NV + 1] = {
    nullptr,        act_chunk<1>,  act_chunk<2>,  act_chunk<3>,  act_chunk<4>,  act_chunk<5>,
    act_chunk<6>,   act_chunk<7>,  act_chunk<8>,  act_chunk<9>,  act_chunk<10>, act_chunk<11>,
    act_chunk<12>,  act_chunk<13>, act_chunk<14>, act_chunk<15>, act_chunk<16>};

static void act_mm(const float* __restrict wt, const float* __restrict bias, const float* __restrict x,
                   float* __restrict y, int n, int in, int out, int nthreads, int32_t* __restrict idx,
                   int32_t* __restrict cnt) {
  for (int r = 0; r < n; ++r) {
    const float* xr = x + (int64_t)r * in;
    int32_t* ir = idx + (int64_t)r * in;
    int k = 0;
    for (int i = 0; i < in; ++i)
      if (xr[i] != 0.0f) ir[k++] = i;
    cnt[r] = k;
  }
  const int nvec = out / VW;  // whole vectors of outputs
  const int threads = nthreads < 1 ? 1 : nthreads;
  int nch = (nvec + ACT_NV - 1) / ACT_NV;
  if (nch < threads) nch = threads < nvec ? threads : (nvec > 0 ? nvec : 1);
  else nch = ((nch + threads - 1) / threads) * threads;
  const int per = nvec > 0 ? (nvec + nch - 1) / nch : 0;  // vectors per chunk (<= ACT_NV)
  const int64_t items = (int64_t)nch * n;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (items > 1)
#endif
  for (int64_t it = 0; it < items; ++it) {
    const int r = (int)(it / nch), c = (int)(it % nch);
    const float* xr = x + (int64_t)r * in;
    const int32_t* ir = idx + (int64_t)r * in;
    float* yr = y + (int64_t)r * out;
    const int v0 = c * per;
    const int nv = nvec - v0 < per ? nvec - v0 : per;
    if (nv > 0) ACT_CHUNKS[nv](wt, bias, xr, ir, cnt[r], yr, out, v0 * VW);
    if (c == nch - 1) {  // the scalar tail of outputs
      for (int o = nvec * VW; o < out; ++o) {
        float acc = bias ? bias[o] : 0.0f;
        for (int j = 0; j < cnt[r]; ++j) acc += xr[ir[j]] * wt[(int64_t)ir[j] * out + o];
        yr[o] = acc;
      }
    }
  }
}

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
  const int64_t tt = (int64_t)(n <= VW ? 1 : n > TOKEN_TILE ? WIDE_NV : NVMAX) * VW;  // the widest tile_for picks
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

// Compact formats (see compact_mm): rp == NULL selects nm24; scalar != 0 forces the
// portable path (the AVX-512 path is used when compiled in and scalar == 0).
PA_EXPORT void pa_compact_mm(const int32_t* rp, const uint16_t* masks, const float* val, const float* bias,
                             const float* x, float* y, int n, int in, int out, int nthreads, int scalar) {
  compact_mm(rp, masks, val, bias, x, y, n, in, out, nthreads, scalar);
}

// 1 when the compact formats' AVX-512 path is compiled in.
PA_EXPORT int pa_compact_avx512(void) {
#if defined(__AVX512F__)
  return 1;
#else
  return 0;
#endif
}

// Activation-sparse Linear (see act_mm): idx is n x in int32 scratch, cnt n int32 scratch.
PA_EXPORT void pa_act_mm(const float* wt, const float* bias, const float* x, float* y, int n, int in, int out,
                         int nthreads, int32_t* idx, int32_t* cnt) {
  act_mm(wt, bias, x, y, n, in, out, nthreads, idx, cnt);
}
}
