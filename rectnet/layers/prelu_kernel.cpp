// PReLU forward and backward, one pass over memory each (rectnet/layers/fused.py says why and what; native.py builds it).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

using bf16 = uint16_t;  // bfloat16 storage: the high half of a float32

inline float load(const float* p, int64_t i) { return p[i]; }
inline double load(const double* p, int64_t i) { return p[i]; }
inline float load(const bf16* p, int64_t i) {
  uint32_t bits = uint32_t(p[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(double* p, int64_t i, double v) { p[i] = v; }
inline void store(bf16* p, int64_t i, float v) {
  // c10::BFloat16's rounding (to nearest, ties to even; NaN to its quiet NaN): F.prelu's results bit for bit
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  p[i] = v != v ? bf16(0x7FC0) : bf16(rounded);
}

template <class T>
using Compute = decltype(load(static_cast<const T*>(nullptr), 0));  // float for float and bf16

// `when ? first : second` as a blend of bits. Written as a select, compilers sink an operand's load into it
// and vectorize that as a masked load (vmaskmovps), which on AMD Zen made the backward 3.5x slower; the
// blend needs both operands, so a[c] is loaded plainly. y > 0 ? g : a·g is then g · (y > 0 ? 1 : a), the same
// bits (g · 1 is g).
template <class F>
inline F blend(bool when, F first, F second) {
  using U = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
  U a, b, mask = when ? ~U(0) : U(0);
  std::memcpy(&a, &first, sizeof a);
  std::memcpy(&b, &second, sizeof b);
  U mixed = (mask & a) | (~mask & b);
  F out;
  std::memcpy(&out, &mixed, sizeof out);
  return out;
}

constexpr int64_t kBlock = 16384;  // elements per unit of work: per-thread work and the slope sums' blocks

// body(first, last) over units [0, units), split in contiguous ranges over `threads` of PyTorch's OpenMP pool,
// no more threads than blocks of kBlock elements (waking a thread costs more than a small tensor's work).
// A unit's result never depends on which thread runs it, so the sums are the same at any thread count.
template <class Body>
void parallel_units(int64_t units, int64_t numel, int threads, const Body& body) {
#ifdef _OPENMP
  const int64_t useful = std::min<int64_t>({int64_t(threads), units, (numel + kBlock - 1) / kBlock});
  if (useful > 1) {
#pragma omp parallel num_threads(int(useful))
    {
      int64_t n = omp_get_num_threads(), t = omp_get_thread_num();
      body(units * t / n, units * (t + 1) / n);
    }
    return;
  }
#else
  (void)numel, (void)threads;  // built without OpenMP: one thread
#endif
  body(0, units);
}

// The loops below are written so that compilers vectorize them (built with -fno-trapping-math, see native.py;
// a scalar loop has a mispredicted branch per element, 5x slower): the range functions take __restrict
// pointers (a lambda's captures would lose that, and with it the proof that out, y and a do not overlap),
// `omp simd` says the iterations are independent, and selects are `blend`s.

// Channels innermost: element (m, c) at m * C + c (channels_last tensors, [N, C] matrices).
template <class T>
void forward_rows_range(const T* __restrict y, const Compute<T>* __restrict a, T* __restrict out, int64_t first,
                        int64_t last, int64_t C) {
  for (int64_t m = first; m < last; ++m)
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const Compute<T> v = load(y, m * C + c);
      store(out, m * C + c, v * blend(v > 0, Compute<T>(1), a[c]));
    }
}

// The slope gradient sums in two levels: products and sums of up to kFlush terms in the compute type (float for
// float and bf16 inputs: 4x the lanes of double on 128-bit units; PyTorch sums float products in float too),
// those sums in double. `block`: C scratch values.
constexpr int64_t kFlush = 32;

template <class T>
void backward_rows_range(const T* __restrict y, const T* __restrict g, const Compute<T>* __restrict a,
                         T* __restrict gy, Compute<T>* __restrict block, double* __restrict acc, int64_t first,
                         int64_t last, int64_t C) {
  for (int64_t start = first; start < last; start += kFlush) {
    std::fill(block, block + C, Compute<T>(0));
    for (int64_t m = start, end = std::min(last, start + kFlush); m < end; ++m)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const Compute<T> yv = load(y, m * C + c), gv = load(g, m * C + c);
        const bool positive = yv > 0;
        store(gy, m * C + c, gv * blend(positive, Compute<T>(1), a[c]));
        block[c] += blend(positive, Compute<T>(0), gv * yv);
      }
    for (int64_t c = 0; c < C; ++c) acc[c] += block[c];
  }
}

template <class T>
void forward_rows(const T* y, const Compute<T>* a, T* out, int64_t rows, int64_t C, int threads) {
  const int64_t per_unit = std::max<int64_t>(1, kBlock / C), units = (rows + per_unit - 1) / per_unit;
  parallel_units(units, rows * C, threads, [=](int64_t first, int64_t last) {
    forward_rows_range(y, a, out, first * per_unit, std::min(rows, last * per_unit), C);
  });
}

// The slope gradient: one row of C partial sums per unit of rows, added up in unit order afterwards.
template <class T>
void backward_rows(const T* y, const T* g, const Compute<T>* a, T* gy, double* ga, int64_t rows, int64_t C,
                   int threads) {
  const int64_t per_unit = std::max<int64_t>(1, kBlock / C), units = (rows + per_unit - 1) / per_unit;
  std::vector<double> partial(units * C, 0.0);
  std::vector<Compute<T>> scratch(units * C);
  double* sums = partial.data();
  Compute<T>* blocks = scratch.data();
  parallel_units(units, rows * C, threads, [=](int64_t first, int64_t last) {
    for (int64_t u = first; u < last; ++u)
      backward_rows_range(y, g, a, gy, blocks + u * C, sums + u * C, u * per_unit, std::min(rows, (u + 1) * per_unit),
                          C);
  });
  std::fill(ga, ga + C, 0.0);
  for (int64_t u = 0; u < units; ++u)
    for (int64_t c = 0; c < C; ++c) ga[c] += sums[u * C + c];
}

// Channels outermost: planes of S contiguous elements, plane p with slope a[p % C] (NCHW: p = n * C + c;
// one shared slope: C = 1 and the dense tensor cut into planes, the last one ending at `numel`).
template <class T>
void forward_plane(const T* __restrict y, Compute<T> slope, T* __restrict out, int64_t first, int64_t last) {
#pragma omp simd
  for (int64_t i = first; i < last; ++i) {
    const Compute<T> v = load(y, i);
    store(out, i, v * blend(v > 0, Compute<T>(1), slope));
  }
}

template <class T>
double backward_plane(const T* __restrict y, const T* __restrict g, Compute<T> slope, T* __restrict gy,
                      int64_t first, int64_t last) {
  double acc = 0.0;
  for (int64_t start = first; start < last; start += kFlush * 8) {  // 8 lanes of kFlush terms
    Compute<T> block = 0;
#pragma omp simd reduction(+ : block)
    for (int64_t i = start; i < std::min(last, start + kFlush * 8); ++i) {
      const Compute<T> yv = load(y, i), gv = load(g, i);
      const bool positive = yv > 0;
      store(gy, i, gv * blend(positive, Compute<T>(1), slope));
      block += blend(positive, Compute<T>(0), gv * yv);
    }
    acc += block;
  }
  return acc;
}

template <class T>
void forward_planes(const T* y, const Compute<T>* a, T* out, int64_t planes, int64_t C, int64_t S, int64_t numel,
                    int threads) {
  parallel_units(planes, numel, threads, [=](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p) forward_plane(y, a[p % C], out, p * S, std::min(numel, (p + 1) * S));
  });
}

// The slope gradient: one partial sum per plane, added up in plane order afterwards.
template <class T>
void backward_planes(const T* y, const T* g, const Compute<T>* a, T* gy, double* ga, int64_t planes, int64_t C,
                     int64_t S, int64_t numel, int threads) {
  std::vector<double> partial(planes, 0.0);
  double* sums = partial.data();
  parallel_units(planes, numel, threads, [=](int64_t first, int64_t last) {
    for (int64_t p = first; p < last; ++p)
      sums[p] = backward_plane(y, g, a[p % C], gy, p * S, std::min(numel, (p + 1) * S));
  });
  std::fill(ga, ga + C, 0.0);
  for (int64_t p = 0; p < planes; ++p) ga[p % C] += sums[p];
}

enum Layout { kRows = 0, kPlanes = 1 };

template <class T>
void forward(int layout, const void* y, const void* a, void* out, int64_t outer, int64_t C, int64_t S,
             int64_t numel, int threads) {
  auto yt = static_cast<const T*>(y);
  auto at = static_cast<const Compute<T>*>(a);
  if (layout == kRows) forward_rows(yt, at, static_cast<T*>(out), outer, C, threads);
  else forward_planes(yt, at, static_cast<T*>(out), outer, C, S, numel, threads);
}

template <class T>
void backward(int layout, const void* y, const void* g, const void* a, void* gy, double* ga, int64_t outer,
              int64_t C, int64_t S, int64_t numel, int threads) {
  auto yt = static_cast<const T*>(y), gt = static_cast<const T*>(g);
  auto at = static_cast<const Compute<T>*>(a);
  if (layout == kRows) backward_rows(yt, gt, at, static_cast<T*>(gy), ga, outer, C, threads);
  else backward_planes(yt, gt, at, static_cast<T*>(gy), ga, outer, C, S, numel, threads);
}

}  // namespace

// dtype: 0 float32, 1 float64, 2 bfloat16 (slopes a: float64 for float64, else float32).
// Returns 0, or 1 for an unknown dtype, 2 when the slope sums' scratch memory cannot be had.
extern "C" int rectnet_prelu_forward(int dtype, int layout, const void* y, const void* a, void* out,
                                     int64_t outer, int64_t C, int64_t S, int64_t numel, int threads) {
  switch (dtype) {
    case 0: forward<float>(layout, y, a, out, outer, C, S, numel, threads); return 0;
    case 1: forward<double>(layout, y, a, out, outer, C, S, numel, threads); return 0;
    case 2: forward<bf16>(layout, y, a, out, outer, C, S, numel, threads); return 0;
  }
  return 1;
}

extern "C" int rectnet_prelu_backward(int dtype, int layout, const void* y, const void* g, const void* a,
                                      void* gy, double* ga, int64_t outer, int64_t C, int64_t S, int64_t numel,
                                      int threads) {
  try {
    switch (dtype) {
      case 0: backward<float>(layout, y, g, a, gy, ga, outer, C, S, numel, threads); return 0;
      case 1: backward<double>(layout, y, g, a, gy, ga, outer, C, S, numel, threads); return 0;
      case 2: backward<bf16>(layout, y, g, a, gy, ga, outer, C, S, numel, threads); return 0;
    }
    return 1;
  } catch (const std::bad_alloc&) {
    return 2;
  }
}
