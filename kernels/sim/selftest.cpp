// kernels/sim/selftest.cpp - checks the simulator, its C ABI and the kernels through aiec_sim_launch only
// (as the Rust tests will). Build and run: kernels/sim/selftest.sh.
//   ./selftest          all checks; exit status = number of failed checks (0 = all passed)
//   ./selftest count    prints how many kernels are registered
//   ./selftest dynoob   launches a kernel that writes past its dynamic shared memory (the ASan build must die)
#include "sim_abi.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

static int g_pass = 0, g_fail = 0;
#define CHECK(cond, ...)                  \
  do {                                    \
    bool ok_ = (cond);                    \
    (ok_ ? g_pass : g_fail)++;            \
    printf("%s ", ok_ ? "PASS" : "FAIL"); \
    printf(__VA_ARGS__);                  \
    printf("\n");                         \
    fflush(stdout);                       \
  } while (0)

struct Res { int rc; std::string err; };
static Res launch(const char* name, unsigned grid, unsigned block, size_t dyn, std::vector<void*> args,
                  size_t err_len = 4096) {
  std::vector<char> err(err_len ? err_len : 1, 'x');
  int rc = aiec_sim_launch(name, grid, 1, 1, block, 1, 1, dyn, args.data(), args.size(), err_len ? err.data() : nullptr,
                           err_len);
  return {rc, err_len ? std::string(err.data()) : std::string()};
}
static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
__attribute__((format(printf, 1, 2))) static std::string strf(const char* f, ...) {
  char buf[256]; va_list ap; va_start(ap, f); vsnprintf(buf, sizeof buf, f, ap); va_end(ap);
  return buf;
}

// ---------------------------------------------------------------- independent reference conversions
static float ref_f16_to_f32(uint16_t h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }  // non-NaN only
static uint16_t ref_f32_to_f16(float f) { _Float16 v = (_Float16)f; uint16_t h; memcpy(&h, &v, 2); return h; }
static uint16_t ref_f32_to_bf16(float f) {  // non-NaN: round to nearest even with 8 significant bits, via double
  double v = f;
  if (v == 0 || std::isinf(v)) return (uint16_t)(fbits(f) >> 16);
  int e = std::max(std::ilogb(v), -126);
  double ulp = std::ldexp(1.0, e - 7), r = std::nearbyint(v / ulp) * ulp;
  if (std::fabs(r) >= std::ldexp(1.0, 128)) r = std::copysign(INFINITY, v);
  return (uint16_t)(fbits((float)r) >> 16);
}
// the `half` crate's NaN results (what the simulator documents)
static uint16_t half_nan_f32_to_f16(uint32_t x) { return (uint16_t)(((x >> 16) & 0x8000) | 0x7C00 | 0x200 | ((x & 0x7FFFFF) >> 13)); }
static uint32_t half_nan_f16_to_f32(uint16_t h) { return ((uint32_t)(h & 0x8000) << 16) | 0x7FC00000u | ((uint32_t)(h & 0x3FF) << 13); }
static uint16_t half_nan_f32_to_bf16(uint32_t x) { return (uint16_t)((x >> 16) | 0x40); }
static uint32_t half_nan_bf16_to_f32(uint16_t b) { return (uint32_t)(b | 0x40) << 16; }

// ---------------------------------------------------------------- TF32 rounding, mma.sync m16n8k8 (kernels/mma.cuh)
// Independent reference of cvt.rna.tf32.f32 for non-NaN x: round to nearest, ties away from zero (std::round), to
// 11 significant bits at x's binade (ulp 2^(e - 10), e >= -126 so subnormals share the smallest normal's ulp), via
// double; a result of magnitude 2^128 is inf.
static uint32_t ref_tf32(float f) {
  double v = f;
  if (v == 0 || std::isinf(v)) return fbits(f);
  const double ulp = std::ldexp(1.0, std::max(std::ilogb(v), -126) - 10), r = std::round(v / ulp) * ulp;
  return fbits(std::fabs(r) >= std::ldexp(1.0, 128) ? std::copysign(INFINITY, f) : (float)r);
}
static uint32_t tf32_nan_rule(uint32_t x) { return (x & 0xFFFFE000u) | 0x00400000u; }  // mma.cuh's NaN result

static void test_tf32() {
  // hand-picked: (input, expected) f32 bits
  static const uint32_t cases[][2] = {
      {0x3F800000, 0x3F800000},  // 1
      {0x3F801000, 0x3F802000},  // 1 + 2^-11: a tie above an even TF32 -> away from zero (ties-to-even would stay)
      {0xBF801000, 0xBF802000},  // its negative
      {0x3F803000, 0x3F804000},  // a tie above an odd TF32
      {0x3F800FFF, 0x3F800000},  // just below a tie
      {0x3F801001, 0x3F802000},  // just above a tie
      {0xBF800FFF, 0xBF800000},
      {0x3FFFF000, 0x40000000},  // carry into the exponent
      {0x7F7FE000, 0x7F7FE000},  // largest TF32
      {0x7F7FEFFF, 0x7F7FE000},  // just below the midpoint above it
      {0x7F7FF000, 0x7F800000},  // the midpoint: -> inf
      {0x7F7FFFFF, 0x7F800000},  // largest f32 -> inf
      {0xFF7FFFFF, 0xFF800000},
      {0x00000001, 0x00000000},  // smallest subnormal -> +0
      {0x80000001, 0x80000000},  // -> -0
      {0x00001000, 0x00002000},  // subnormal tie -> away
      {0x00000FFF, 0x00000000},
      {0x00003000, 0x00004000},
      {0x007FFFFF, 0x00800000},  // largest subnormal -> smallest normal
      {0x807FF000, 0x80800000},
      {0x00000000, 0x00000000},
      {0x80000000, 0x80000000},  // -0 stays -0
      {0x7F800000, 0x7F800000},  // inf
      {0xFF800000, 0xFF800000},
      {0x7FC00000, 0x7FC00000},  // quiet NaN
      {0x7F800001, 0x7FC00000},  // signalling NaN, payload in the low bits only: a quiet NaN, not inf
      {0x7FA00000, 0x7FE00000},  // signalling NaN: quieted, top payload kept
      {0xFFFFFFFF, 0xFFFFE000},  // negative NaN
      {0x7FC01FFF, 0x7FC00000},
  };
  const size_t nc = sizeof cases / sizeof cases[0], nr = 4000000;
  std::vector<float> x(nc + nr);
  for (size_t i = 0; i < nc; ++i) x[i] = bitsf(cases[i][0]);
  std::mt19937_64 rng(77);
  for (size_t i = nc; i < x.size(); ++i) x[i] = bitsf((uint32_t)rng());
  const unsigned long long n = x.size();
  std::vector<float> t(n), hi(n), lo(n);
  const void* cx = x.data(); void *vt = t.data(), *vhi = hi.data(), *vlo = lo.data();
  Res r = launch("selftest_tf32_round_f32", 256, 256, 0, {&cx, &vt, &vhi, &vlo, (void*)&n});
  std::string first;
  int bad_cases = 0;
  for (size_t i = 0; i < nc; ++i)
    if (fbits(t[i]) != cases[i][1] || fbits(hi[i]) != cases[i][1]) {
      if (!bad_cases++) first = strf("0x%08X -> 0x%08X, expected 0x%08X", cases[i][0], fbits(t[i]), cases[i][1]);
    }
  CHECK(r.rc == 0 && bad_cases == 0, "to_tf32 / split_tf32's big on %zu hand-picked values (ties both ways, +-1 ulp, "
        "carries, largest finite, overflow to inf, subnormals, -0, inf, NaNs): %d wrong %s%s", nc, bad_cases,
        first.c_str(), r.err.c_str());

  size_t bad = 0, nan_bad = 0, lo_bad = 0, low_bits = 0, split_n = 0, split_bad = 0;
  double worst = 0;  // max |big + small - x| / |x| over 2^-115 <= |x| < 0x1.ffep127, in units of 2^-22
  first.clear();
  for (size_t i = 0; i < n; ++i) {
    const uint32_t xb = fbits(x[i]);
    const bool nan = std::isnan(x[i]);
    const uint32_t want = nan ? tf32_nan_rule(xb) : ref_tf32(x[i]);
    if (fbits(t[i]) != want || fbits(hi[i]) != want) {
      (nan ? nan_bad : bad)++;
      if (first.empty()) first = strf("first: 0x%08X -> 0x%08X, expected 0x%08X", xb, fbits(t[i]), want);
    }
    low_bits += ((fbits(t[i]) | fbits(lo[i])) & 0x1FFFu) != 0;
    if (!nan && !std::isinf(hi[i])) {
      const float resid = x[i] - hi[i];  // exact
      lo_bad += fbits(lo[i]) != ref_tf32(resid);
    }
    const double ax = std::fabs((double)x[i]);
    if (ax >= 0x1p-115 && ax < 0x1.ffep127) {  // below 2^-115 small may be a subnormal with a coarser ulp
      split_n++;
      const double e = std::fabs((double)hi[i] + (double)lo[i] - (double)x[i]) / ax / 0x1p-22;
      worst = std::max(worst, e);
      split_bad += !(e <= 1.0);
    }
  }
  CHECK(r.rc == 0 && bad == 0 && nan_bad == 0 && low_bits == 0, "to_tf32 on %llu random f32 bit patterns: %zu "
        "mismatches vs a double-based round-half-away reference, %zu NaNs not (x & 0xFFFFE000) | 0x00400000, %zu "
        "results with low 13 bits set %s", n - nc, bad, nan_bad, low_bits, first.c_str());
  CHECK(r.rc == 0 && lo_bad == 0 && split_bad == 0 && split_n > 1000000 && worst > 0.5, "split_tf32: small == "
        "to_tf32(x - big) exactly (%zu mismatches); |big + small - x| <= 2^-22 |x| for all %zu x with 2^-115 <= |x| "
        "< 0x1.ffep127 (%zu beyond; worst %.3f x 2^-22)", lo_bad, split_n, split_bad, worst);
}

// The mma fragment layouts as the PTX ISA gives them (9.7.14.5.7, .tf32 A/B, .f32 C/D), written out again here so
// that a mistake in mma.cuh's a_row/a_col/... cannot hide itself: g = groupID, t = threadID_in_group.
struct LaneLayout { int ar[4], ac[4], br[2], bc[2], cr[4], cc[4]; };
static LaneLayout ptx_layout(int lane) {
  const int g = lane >> 2, t = lane % 4;
  return {{g, g + 8, g, g + 8}, {t, t, t + 4, t + 4}, {t, t + 4}, {g, g}, {g, g, g + 8, g + 8},
          {2 * t, 2 * t + 1, 2 * t, 2 * t + 1}};
}
// D = A B + C in the documented order: d = c, then d = fmaf(a_k, b_k, d) for k = 0..7, A and B truncated to TF32
static void ref_mma(const float* A, const float* B, const float* C, float* D) {
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float d = C[m * 8 + n];
      for (int k = 0; k < 8; ++k)
        d = fmaf(bitsf(fbits(A[m * 8 + k]) & 0xFFFFE000u), bitsf(fbits(B[k * 8 + n]) & 0xFFFFE000u), d);
      D[m * 8 + n] = d;
    }
}

// One launch of selftest_mma_layout_f32 over `warps` warps; checks every lane's fragments against ptx_layout and
// D against ref_mma bit for bit. Returns "" or the first problem.
static std::string mma_layout_case(const std::vector<float>& A, const std::vector<float>& B,
                                   const std::vector<float>& C, unsigned warps, unsigned block, uint32_t junk) {
  std::vector<float> D(128 * warps, -1.0f), dfr(128 * warps, -1.0f), ref(128);
  std::vector<uint32_t> fr(320 * warps, 0xDEADBEEFu);
  const void *ca = A.data(), *cb = B.data(), *cc = C.data();
  void *vd = D.data(), *vfr = fr.data(), *vdfr = dfr.data();
  Res r = launch("selftest_mma_layout_f32", warps * 32 / block, block, 0, {&ca, &cb, &cc, &vd, &vfr, &vdfr, &junk});
  if (r.rc != 0) return r.err;
  for (unsigned w = 0; w < warps; ++w) {
    const float *a = &A[128 * w], *b = &B[64 * w], *c = &C[128 * w];
    ref_mma(a, b, c, ref.data());
    for (int lane = 0; lane < 32; ++lane) {
      const LaneLayout L = ptx_layout(lane);
      const uint32_t* f = &fr[(w * 32 + lane) * 10];
      for (int i = 0; i < 4; ++i)
        if (f[i] != fbits(a[L.ar[i] * 8 + L.ac[i]]) || f[6 + i] != fbits(c[L.cr[i] * 8 + L.cc[i]]))
          return strf("warp %u lane %d: a%d/c%d is not A/C at the PTX layout's (row, col)", w, lane, i, i);
      for (int i = 0; i < 2; ++i)
        if (f[4 + i] != fbits(b[L.br[i] * 8 + L.bc[i]]))
          return strf("warp %u lane %d: b%d is not B(%d, %d)", w, lane, i, L.br[i], L.bc[i]);
      for (int i = 0; i < 4; ++i)
        if (fbits(dfr[(w * 32 + lane) * 4 + i]) != fbits(ref[L.cr[i] * 8 + L.cc[i]]))
          return strf("warp %u lane %d: d%d = %a, expected D(%d, %d) = %a", w, lane, i,
                         (double)dfr[(w * 32 + lane) * 4 + i], L.cr[i], L.cc[i], (double)ref[L.cr[i] * 8 + L.cc[i]]);
    }
    for (int e = 0; e < 128; ++e)
      if (fbits(D[128 * w + e]) != fbits(ref[e]))
        return strf("warp %u: D(%d, %d) = %a, expected %a", w, e / 8, e % 8, (double)D[128 * w + e], (double)ref[e]);
  }
  return "";
}

static void test_mma() {
  // distinct, exactly representable values: A (1 + 8m + k) (w + 1), B +-(1 + 8k + n) / 64, C 1000 + 8m + n; every
  // partial sum is a multiple of 2^-6 below 2^13, so D is exact whatever the order
  const unsigned warps = 6;
  std::vector<float> A(128 * warps), B(64 * warps), C(128 * warps);
  for (unsigned w = 0; w < warps; ++w) {
    for (int e = 0; e < 128; ++e) {
      A[128 * w + e] = (float)((1 + e) * (int)(w + 1));
      C[128 * w + e] = (float)(1000 + e);
    }
    for (int e = 0; e < 64; ++e) B[64 * w + e] = (w & 1 ? -1.0f : 1.0f) * (float)(1 + e) / 64.0f;
  }
  int bad_runs = 0;
  std::string why;
  for (uint64_t seed : {0, 1, 2})
    for (unsigned workers : {1u, 4u}) {
      aiec_sim_set_seed(seed);
      aiec_sim_set_workers(workers);
      for (uint32_t junk : {0u, 0x1FFFu, 0x0AAAu}) {
        std::string e = mma_layout_case(A, B, C, warps, 64, junk);
        if (!e.empty() && !bad_runs++) why = e;
      }
    }
  CHECK(bad_runs == 0, "mma_m16n8k8_tf32: every lane of %u warps passes exactly the A/B/C elements of the PTX "
        "fragment layout and gets D at the C layout, D == plain 16x8x8 product; junk in the 13 low A/B bits "
        "ignored; seeds 0,1,2 x workers 1,4: %d/18 runs right %s", warps, 18 - bad_runs, why.c_str());

  // the documented summation order: random TF32 values over 2^-12..2^12 with signs, whose sums depend on the order
  std::mt19937_64 rng(9);
  auto rnd = [&](int lo, int hi) {
    const double m = std::uniform_real_distribution<double>(1.0, 2.0)(rng) * ((rng() & 1) ? -1 : 1);
    return bitsf(ref_tf32((float)std::ldexp(m, lo + (int)(rng() % (unsigned)(hi - lo + 1)))));
  };
  for (auto& v : A) v = rnd(-12, 12);
  for (auto& v : B) v = rnd(-12, 12);
  for (auto& v : C) v = bitsf(fbits(rnd(-12, 12)) | (uint32_t)(rng() & 0x1FFF));  // C is full f32
  int order_sensitive = 0;
  for (unsigned w = 0; w < warps; ++w) {
    float ref[128];
    ref_mma(&A[128 * w], &B[64 * w], &C[128 * w], ref);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8; ++n) {
        double exact = C[128 * w + m * 8 + n];
        for (int k = 0; k < 8; ++k) exact += (double)A[128 * w + m * 8 + k] * B[64 * w + k * 8 + n];
        order_sensitive += fbits((float)exact) != fbits(ref[m * 8 + n]);
      }
  }
  aiec_sim_set_seed(1);
  why = mma_layout_case(A, B, C, warps, 32, 0);
  aiec_sim_set_seed(0);
  aiec_sim_set_workers(1);
  CHECK(why.empty() && order_sensitive > 50, "mma_m16n8k8_tf32 sums in the documented order (d = c, then d = "
        "fmaf(a_k, b_k, d) for k = 0..7): bit-exact on %u random tiles, in which %d of %u elements differ from the "
        "once-rounded exact sum %s", warps, order_sensitive, 128 * warps, why.c_str());
}

// C = A B^T with mma_tile_abt_3xtf32 (selftest_mma_tile_f32) against a double reference, error relative to
// sum_k |a b|; a TF32-only product (big * big) would be ~100 times worse, which the check shows too.
static void test_mma_tile() {
  const int M = 37, N = 21, K = 203;
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> A(M * K), B(N * K), C(M * N);
  for (auto& v : A) v = u(rng);
  for (auto& v : B) v = u(rng);
  double tol = 1e-6, err3 = 0, err1 = 0;
  std::vector<double> ref(M * N), mag(M * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double s = 0, a = 0, s1 = 0;
      for (int k = 0; k < K; ++k) {
        const double p = (double)A[m * K + k] * B[n * K + k];
        s += p; a += std::fabs(p);
        s1 += (double)bitsf(ref_tf32(A[m * K + k])) * bitsf(ref_tf32(B[n * K + k]));
      }
      ref[m * N + n] = s; mag[m * N + n] = a;
      err1 = std::max(err1, std::fabs(s1 - s) / a);
    }
  const unsigned tiles = ((M + 15) / 16) * ((N + 7) / 8), block = 64, grid = (tiles * 32 + block - 1) / block;
  std::vector<float> first;
  int bad_runs = 0;
  std::string errs;
  for (uint64_t seed : {0, 1, 2})
    for (unsigned workers : {1u, 4u}) {
      aiec_sim_set_seed(seed);
      aiec_sim_set_workers(workers);
      std::fill(C.begin(), C.end(), NAN);
      const void *ca = A.data(), *cb = B.data(); void* vc = C.data();
      int m = M, n = N, k = K;
      Res r = launch("selftest_mma_tile_f32", grid, block, 0, {&ca, &cb, &vc, &m, &n, &k});
      double e = 0;
      for (int i = 0; i < M * N; ++i) e = std::max(e, std::isnan(C[i]) ? INFINITY : std::fabs(C[i] - ref[i]) / mag[i]);
      if (first.empty()) first = C;
      const bool ok = r.rc == 0 && e <= tol && memcmp(first.data(), C.data(), C.size() * 4) == 0;
      err3 = std::max(err3, e);
      bad_runs += !ok;
      if (!ok) errs += r.err;
    }
  aiec_sim_set_seed(0);
  aiec_sim_set_workers(1);
  CHECK(bad_runs == 0 && err1 > 50 * tol, "mma_tile_abt_3xtf32: C [%d, %d] = A [%d, %d] B^T, seeds 0,1,2 x workers "
        "1,4: %d/6 runs bit-identical with max |c - ref| / sum|a b| = %.2e <= %.0e (TF32 alone: %.2e) %s", M, N, M, K,
        6 - bad_runs, err3, tol, err1, errs.c_str());
}

// ---------------------------------------------------------------- threshold
struct Dt { const char* name; size_t size; };
static const Dt kDts[] = {{"f32", 4}, {"f16", 2}, {"bf16", 2}};
static float widen(const Dt& d, const unsigned char* p) {
  if (d.size == 4) { float f; memcpy(&f, p, 4); return f; }
  uint16_t h; memcpy(&h, p, 2);
  if (!strcmp(d.name, "f16")) return (h & 0x7C00) == 0x7C00 && (h & 0x3FF) ? NAN : ref_f16_to_f32(h);
  return bitsf((uint32_t)h << 16);
}
static void random_elems(const Dt& d, unsigned char* p, size_t n, std::mt19937_64& rng, float tau) {
  for (size_t i = 0; i < n; ++i) {
    float f;
    switch (rng() % 8) {
      case 0: f = tau; break;                                  // x == tau -> dropped
      case 1: f = bitsf((uint32_t)rng()); break;               // anything: NaN payloads, inf, subnormals
      case 2: f = (rng() & 1) ? NAN : -INFINITY; break;
      case 3: f = (rng() & 1) ? 0.0f : -0.0f; break;
      default: f = std::uniform_real_distribution<float>(-2.0f, 2.0f)(rng);
    }
    if (d.size == 4) memcpy(p + 4 * i, &f, 4);
    else {
      uint16_t h = (uint16_t)rng();  // random bit pattern half the time, else the rounded f
      if (rng() & 1) h = !strcmp(d.name, "f16") ? ref_f32_to_f16(std::isnan(f) ? 1.0f : f)
                                                : (uint16_t)(std::isnan(f) ? 0x7FC1 : ref_f32_to_bf16(f));
      if (f == tau && (rng() & 1)) {  // exactly tau after widening, where representable
        const uint16_t t = !strcmp(d.name, "f16") ? ref_f32_to_f16(tau) : ref_f32_to_bf16(tau);
        unsigned char tb[4] = {0, 0, 0, 0};
        memcpy(tb, &t, 2);
        if (widen(d, tb) == tau) h = t;
      }
      memcpy(p + 2 * i, &h, 2);
    }
  }
}

// One fwd, one bwd, one in-place bwd launch; outputs compared bit for bit; guard bytes around outputs untouched.
static bool threshold_case(const Dt& d, size_t n, size_t offx, size_t offy, unsigned grid, unsigned block, float tau,
                           uint64_t data_seed, std::string* why) {
  const size_t es = d.size, pad = 64;
  const size_t bytes = (n + 16) * es + 2 * pad;
  auto alloc = [&] { return static_cast<unsigned char*>(aligned_alloc(64, (bytes + 63) / 64 * 64)); };
  unsigned char *bx = alloc(), *by = alloc(), *bg = alloc(), *bd = alloc();
  memset(by, 0xCD, bytes); memset(bg, 0xCD, bytes); memset(bd, 0xCD, bytes);
  unsigned char *x = bx + pad + offx * es, *y = by + pad + offy * es, *g = bg + pad + offy * es, *dx = bd + pad + offx * es;
  std::mt19937_64 rng(data_seed);
  random_elems(d, x, n, rng, tau);
  random_elems(d, g, n, rng, tau);
  std::vector<unsigned char> g0(g, g + n * es);
  unsigned long long nn = n;
  std::string fwd = std::string("threshold_fwd_") + d.name, bwd = std::string("threshold_bwd_") + d.name;
  const void* cx = x; void* vy = y; const void* cg = g; void* vdx = dx; void* vg = g;
  Res r1 = launch(fwd.c_str(), grid, block, 0, {&cx, &vy, &tau, &nn});
  Res r2 = launch(bwd.c_str(), grid, block, 0, {&cx, &cg, &vdx, &tau, &nn});
  Res r3 = launch(bwd.c_str(), grid, block, 0, {&cx, &cg, &vg, &tau, &nn});  // dx aliases dy
  bool ok = r1.rc == 0 && r2.rc == 0 && r3.rc == 0;
  if (!ok) *why = r1.err + r2.err + r3.err;
  for (size_t i = 0; ok && i < n; ++i) {
    const bool keep = !(widen(d, x + i * es) <= tau);
    static const unsigned char zero[4] = {0, 0, 0, 0};
    const unsigned char* ey = keep ? x + i * es : zero;
    const unsigned char* eg = keep ? g0.data() + i * es : zero;
    if (memcmp(y + i * es, ey, es) || memcmp(dx + i * es, eg, es) || memcmp(g + i * es, eg, es)) {
      ok = false;
      *why = "mismatch at element " + std::to_string(i);
    }
  }
  auto guards_ok = [&](unsigned char* base, unsigned char* p) {
    for (unsigned char* q = base; q < p; ++q) if (*q != 0xCD) return false;
    for (unsigned char* q = p + n * es; q < base + bytes; ++q) if (*q != 0xCD) return false;
    return true;
  };
  if (ok && !(guards_ok(by, y) && guards_ok(bd, dx) && guards_ok(bg, g))) { ok = false; *why = "wrote outside [0, n)"; }
  free(bx); free(by); free(bg); free(bd);
  return ok;
}

static void test_threshold() {
  const size_t sizes[] = {1, 7, 1023, 4097};
  struct Geo { unsigned grid, block; } geos[] = {{1, 32}, {3, 64}, {0, 256}};  // grid 0: enough blocks for one step
  const size_t offs[][2] = {{0, 0}, {1, 1}, {3, 3}, {0, 1}, {2, 0}};  // (x, y) element offsets from 64-aligned
  for (uint64_t seed : {0, 1, 2})
    for (unsigned workers : {1u, 4u}) {
      aiec_sim_set_seed(seed);
      aiec_sim_set_workers(workers);
      int cases = 0, bad = 0;
      std::string first;
      for (const Dt& d : kDts)
        for (size_t n : sizes)
          for (auto& o : offs)
            for (auto& geo : geos)
              for (float tau : {0.0f, 0.3f, -1.5f}) {
                unsigned grid = geo.grid ? geo.grid : (unsigned)((n + 255) / 256);
                std::string why;
                ++cases;
                if (!threshold_case(d, n, o[0], o[1], grid, geo.block, tau, seed * 1000 + n + o[0] * 7 + o[1], &why)) {
                  if (!bad++)
                    first = std::string(d.name) + " n=" + std::to_string(n) + " off=(" + std::to_string(o[0]) + "," +
                            std::to_string(o[1]) + ") grid=" + std::to_string(grid) + " block=" +
                            std::to_string(geo.block) + ": " + why;
                }
              }
      CHECK(bad == 0, "threshold fwd/bwd/in-place bwd, f32/f16/bf16, n in {1,7,1023,4097}, 5 (x,y) misalignments, "
            "3 geometries, 3 taus, seed %" PRIu64 ", workers %u: %d/%d cases bit-exact%s%s", seed, workers,
            cases - bad, cases, bad ? "; first failure: " : "", first.c_str());
    }
  aiec_sim_set_seed(0);
  aiec_sim_set_workers(1);

  // concurrent launches from several OS threads (Rust runs tests in parallel)
  int bad = 0;
  std::vector<std::thread> ts;
  std::vector<int> okv(4, 0);
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      std::string why;
      int ok = 1;
      for (int k = 0; k < 20; ++k) ok &= threshold_case(kDts[k % 3], 1023 + t, t % 2, t % 2, 2, 64, 0.3f, t * 100 + k, &why);
      okv[t] = ok;
    });
  for (auto& th : ts) th.join();
  for (int v : okv) bad += !v;
  CHECK(bad == 0, "threshold from 4 OS threads at once (20 launches each): %d/4 threads all bit-exact", 4 - bad);
}

// ---------------------------------------------------------------- conversions
static void test_convert() {
  const unsigned long long N = 65536;
  std::vector<uint16_t> all(N);
  for (uint32_t i = 0; i < N; ++i) all[i] = (uint16_t)i;
  std::vector<float> out(N);
  const void* cx = all.data(); void* vy = out.data(); unsigned long long n = N;
  int bad = 0, nan_bad = 0;
  Res r = launch("convert_to_f32_f16", 64, 256, 0, {&cx, &vy, &n});
  for (uint32_t i = 0; i < N; ++i) {
    const bool nan = (i & 0x7C00) == 0x7C00 && (i & 0x3FF);
    if (nan) nan_bad += fbits(out[i]) != half_nan_f16_to_f32((uint16_t)i);
    else bad += fbits(out[i]) != fbits(ref_f16_to_f32((uint16_t)i));
  }
  CHECK(r.rc == 0 && bad == 0 && nan_bad == 0, "convert_to_f32_f16 on all 65536 f16 patterns: %d mismatches vs "
        "_Float16, %d NaNs differ from the half crate's payload rule %s", bad, nan_bad, r.err.c_str());

  bad = nan_bad = 0;
  r = launch("convert_to_f32_bf16", 64, 256, 0, {&cx, &vy, &n});
  for (uint32_t i = 0; i < N; ++i) {
    const bool nan = (i & 0x7FFF) > 0x7F80;
    if (nan) nan_bad += fbits(out[i]) != half_nan_bf16_to_f32((uint16_t)i);
    else bad += fbits(out[i]) != (i << 16);
  }
  CHECK(r.rc == 0 && bad == 0 && nan_bad == 0, "convert_to_f32_bf16 on all 65536 bf16 patterns: %d mismatches, %d "
        "NaN payload mismatches %s", bad, nan_bad, r.err.c_str());

  // f32 -> f16/bf16: every f16/bf16 value, every midpoint (ties) and its f32 neighbours, specials, random bits
  std::vector<float> in;
  for (uint32_t i = 0; i < N; ++i) {
    for (int fmt = 0; fmt < 2; ++fmt) {
      float v = fmt ? bitsf(i << 16) : ((i & 0x7C00) == 0x7C00 ? NAN : ref_f16_to_f32((uint16_t)i));
      float w = fmt ? bitsf(((i + 1) & 0xFFFF) << 16) : ((((i + 1) & 0x7C00) == 0x7C00) ? v : ref_f16_to_f32((uint16_t)(i + 1)));
      in.push_back(v);
      if (std::isfinite(v) && std::isfinite(w) && std::signbit(v) == std::signbit(w)) {
        float mid = (float)(((double)v + (double)w) / 2);
        in.push_back(mid); in.push_back(std::nextafter(mid, INFINITY)); in.push_back(std::nextafter(mid, -INFINITY));
      }
    }
  }
  for (uint32_t s : {0x7F800001u, 0xFF800001u, 0x7F801FFFu, 0x7FC00000u, 0x7FFFFFFFu, 0xFFC12345u, 0x7F802000u,
                     0x477FE000u, 0x477FEFFFu, 0x477FF000u, 0x477FF001u, 0x33000000u, 0x33000001u, 0xB3000000u,
                     0x32FFFFFFu, 0x7F7FFFFFu, 0x7F7F8000u, 0x00000001u, 0x80000001u, 0x387FC000u, 0x387FE000u})
    in.push_back(bitsf(s));
  std::mt19937_64 rng(42);
  for (int k = 0; k < 2000000; ++k) in.push_back(bitsf((uint32_t)rng()));
  std::vector<uint16_t> h(in.size());
  const void* cin = in.data(); void* vh = h.data(); unsigned long long m = in.size();
  for (int fmt = 0; fmt < 2; ++fmt) {
    bad = nan_bad = 0;
    int first = -1;
    r = launch(fmt ? "convert_from_f32_bf16" : "convert_from_f32_f16", 256, 256, 0, {&cin, &vh, &m});
    for (size_t i = 0; i < in.size(); ++i) {
      const uint32_t x = fbits(in[i]);
      if (std::isnan(in[i])) nan_bad += h[i] != (fmt ? half_nan_f32_to_bf16(x) : half_nan_f32_to_f16(x));
      else if (h[i] != (fmt ? ref_f32_to_bf16(in[i]) : ref_f32_to_f16(in[i]))) { if (first < 0) first = (int)i; bad++; }
    }
    CHECK(r.rc == 0 && bad == 0 && nan_bad == 0, "%s on %zu floats (all %s values, midpoints +-1 ulp, specials, 2M "
          "random): %d mismatches vs %s, %d NaN payload mismatches vs the half crate %s%s",
          fmt ? "convert_from_f32_bf16" : "convert_from_f32_f16", in.size(), fmt ? "bf16" : "f16", bad,
          fmt ? "double-based RNE" : "_Float16", nan_bad, first >= 0 ? std::to_string(fbits(in[first])).c_str() : "",
          r.err.c_str());
  }
}

// ---------------------------------------------------------------- simulator features and errors
static void test_reduce() {
  const unsigned grid = 8, block = 128;
  const unsigned long long n = 100003;
  std::mt19937_64 rng(5);
  for (const Dt& d : kDts) {
    std::vector<unsigned char> x(n * d.size);
    for (size_t i = 0; i < n; ++i) {
      float f = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
      if (d.size == 4) memcpy(&x[4 * i], &f, 4);
      else { uint16_t b = !strcmp(d.name, "f16") ? ref_f32_to_f16(f) : ref_f32_to_bf16(f); memcpy(&x[2 * i], &b, 2); }
    }
    std::vector<double> ref(grid, 0.0), mag(grid, 0.0);
    unsigned long long pos = 0;
    for (size_t i = 0; i < n; ++i) {
      float v = widen(d, &x[i * d.size]);
      ref[(i / block) % grid] += v; mag[(i / block) % grid] += std::fabs(v); pos += v > 0;
    }
    std::vector<float> first;
    int bad_runs = 0;
    std::string errs;
    for (uint64_t seed : {0, 1, 2})
      for (unsigned workers : {1u, 4u}) {
        aiec_sim_set_seed(seed);
        aiec_sim_set_workers(workers);
        std::vector<float> sums(grid, -1.0f);
        unsigned long long counts[2] = {0, 0};
        uint32_t bits[2] = {0, 0xFFFFFFFFu};
        int cas = 0;
        const void* cx = x.data(); void* vs = sums.data(); void* vc = counts; void* vb = bits; void* vcas = &cas;
        Res r = launch((std::string("selftest_reduce_") + d.name).c_str(), grid, block, block * 4,
                       {&cx, (void*)&n, &vs, &vc, &vb, &vcas});
        bool ok = r.rc == 0 && counts[0] == pos && counts[1] == pos && bits[0] == 0xFFFFFFFFu &&
                  bits[1] == 0xFFFFFF00u && cas == (int)(grid * block);
        for (unsigned b = 0; b < grid; ++b) ok &= std::fabs(sums[b] - ref[b]) <= 1e-5 * mag[b] + 1e-6;
        if (first.empty()) first = sums;
        ok &= memcmp(first.data(), sums.data(), grid * 4) == 0;  // barriers fix the order: bit-identical
        bad_runs += !ok;
        if (!ok) errs += r.err;
      }
    CHECK(bad_runs == 0, "selftest_reduce_%s (dynamic smem, shuffles, __syncthreads_count, ballot/popc, 64-bit "
          "atomicAdd, atomicOr/And, atomicCAS loop), seeds 0,1,2 x workers 1,4: %d/6 runs correct and bit-identical %s",
          d.name, 6 - bad_runs, errs.c_str());
  }
  aiec_sim_set_seed(0);
  aiec_sim_set_workers(1);
}

static void test_errors() {
  float y[256];
  void* vy = y;
  Res r = launch("threshold_fwd_f64", 1, 32, 0, {&vy});
  CHECK(r.rc == 1 && r.err.find("unknown kernel 'threshold_fwd_f64'") != std::string::npos,
        "unknown kernel name -> rc %d: %.90s...", r.rc, r.err.c_str());
  r = launch("threshold_fwd_f32", 1, 32, 0, {&vy, &vy});
  CHECK(r.rc == 2 && r.err == "kernel 'threshold_fwd_f32' takes 4 parameters, got 2", "argument count mismatch -> rc %d: %s",
        r.rc, r.err.c_str());
  r = launch("threshold_fwd_f32", 1, 32, 0, {&vy, &vy, nullptr, &vy});
  CHECK(r.rc == 3, "NULL args[2] -> rc %d: %s", r.rc, r.err.c_str());
  r = launch("selftest_early_exit_f32", 1, 2048, 0, {&vy});
  CHECK(r.rc == 4, "block of 2048 threads -> rc %d: %s", r.rc, r.err.c_str());
  r = launch("selftest_early_exit_f32", 1, 64, 300000, {&vy});
  CHECK(r.rc == 4, "300000 bytes of dynamic shared memory -> rc %d: %s", r.rc, r.err.c_str());
  r = launch("selftest_early_exit_f32", 2, 64, 0, {&vy});
  CHECK(r.rc == 5 && r.err.find("deadlock") != std::string::npos, "early exit before __syncthreads -> rc %d: %s", r.rc,
        r.err.c_str());
  r = launch("selftest_divergent_barrier_f32", 1, 64, 0, {&vy});
  CHECK(r.rc == 5 && r.err.find("divergent __syncthreads") != std::string::npos, "divergent barriers -> rc %d: %s", r.rc,
        r.err.c_str());
  r = launch("selftest_half_warp_shfl_f32", 1, 32, 0, {&vy});
  CHECK(r.rc == 5 && r.err.find("never arrived") != std::string::npos, "shuffle reached by half a warp -> rc %d: %s",
        r.rc, r.err.c_str());
  r = launch("selftest_half_warp_mma_f32", 1, 32, 0, {&vy});
  CHECK(r.rc == 5 && r.err.find("lanes 0xffff0000 never arrived") != std::string::npos,
        "mma reached by half a warp -> rc %d: %s", r.rc, r.err.c_str());
  r = launch("selftest_half_warp_mma_f32", 1, 16, 0, {&vy});
  CHECK(r.rc == 5 && r.err.find("which has only 16 threads") != std::string::npos,
        "mma in a block of 16 threads (a partial warp) -> rc %d: %s", r.rc, r.err.c_str());
  r = launch("selftest_divergent_mma_f32", 1, 64, 0, {&vy});
  CHECK(r.rc == 5 && r.err.find("divergent mma.sync") != std::string::npos,
        "mma called from two source lines by the two half warps -> rc %d: %s", r.rc, r.err.c_str());
#ifndef __SANITIZE_ADDRESS__
  r = launch("selftest_dyn_overflow_f32", 1, 32, 128, {&vy});
  CHECK(r.rc == 5 && r.err.find("past the end of its 128 bytes of dynamic shared memory") != std::string::npos,
        "write past dynamic shared memory -> rc %d: %s", r.rc, r.err.c_str());
#endif
  r = launch("selftest_divergent_barrier_f32", 1, 64, 0, {&vy}, 8);
  CHECK(r.rc == 5 && r.err.size() == 7, "message truncated to err_len 8 (NUL-terminated): \"%s\"", r.err.c_str());
  r = launch("selftest_divergent_barrier_f32", 1, 64, 0, {&vy}, 0);
  CHECK(r.rc == 5, "err = NULL accepted -> rc %d", r.rc);
  float x[5] = {1, -1, 0.5f, NAN, 0.3f};
  const void* cx = x; unsigned long long n = 5; float tau = 0.3f;
  r = launch("threshold_fwd_f32", 1, 32, 0, {&cx, &vy, &tau, &n});
  CHECK(r.rc == 0 && y[0] == 1 && y[1] == 0 && y[2] == 0.5f && std::isnan(y[3]) && y[4] == 0,
        "a good launch after the failures works: y = [%g %g %g %g %g]", y[0], y[1], y[2], y[3], y[4]);
}

int main(int argc, char** argv) {
  if (argc > 1 && !strcmp(argv[1], "count")) {
    printf("%zu kernels registered\n", aiec_sim_kernel_count());
    return 0;
  }
  if (argc > 1 && !strcmp(argv[1], "dynoob")) {
    float y[32];
    void* vy = y;
    Res r = launch("selftest_dyn_overflow_f32", 1, 32, 128, {&vy});
    printf("dynoob: rc %d: %s\n", r.rc, r.err.c_str());
    return r.rc == 0 ? 0 : 3;
  }
  std::string names;
  for (size_t i = 0; i < aiec_sim_kernel_count(); ++i) names += std::string(aiec_sim_kernel_name(i)) + " ";
  // the 24 kernels of threshold.cu, convert.cu and selftest_kernels.cu; the archive may hold more kernel files
  int known = 0;
  for (const char* op : {"threshold_fwd_", "threshold_bwd_", "convert_to_f32_", "convert_from_f32_", "selftest_reduce_"})
    for (const char* dt : {"f32", "f16", "bf16"}) known += names.find(std::string(op) + dt + " ") != std::string::npos;
  for (const char* k : {"selftest_early_exit_f32", "selftest_divergent_barrier_f32", "selftest_half_warp_shfl_f32",
                        "selftest_dyn_overflow_f32", "selftest_tf32_round_f32", "selftest_mma_layout_f32",
                        "selftest_mma_tile_f32", "selftest_half_warp_mma_f32", "selftest_divergent_mma_f32"})
    known += names.find(std::string(k) + " ") != std::string::npos;
  const size_t count = aiec_sim_kernel_count();
  CHECK(known == 24 && count >= 24 && aiec_sim_kernel_name(count) == nullptr, "%zu kernels registered (%d of the 24 "
        "expected ones): %s", count, known, names.c_str());
  test_errors();
  test_tf32();
  test_mma();
  test_mma_tile();
  test_reduce();
  test_convert();
  test_threshold();
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail;
}
