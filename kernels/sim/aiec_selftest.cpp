// kernels/sim/aiec_selftest.cpp - runs the fused AIEC training kernels (kernels/aiec_*.cu) in the CPU simulator,
// through aiec_sim_launch only, with the launch geometry their file comments document, and checks them against
// a plain C++ reference of docs/SPEC.md / the kernel contracts. Built and run by kernels/sim/selftest.sh.
//
// Each stage is judged from the kernel outputs of the stage before (so an argmax tie or NaN rule is tested on the
// logits the kernel really produced): y, keep, counters, mask, N and dx exactly; v, logits, ce, g, S, the losses,
// dv and dW within float tolerance. Every case runs under seeds 0,1,2 x workers 1,4 and every output must be
// bitwise identical to the first run. Exit status = number of failed checks.
#include "sim_abi.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

// The parameter structs (AiecShape, AiecGateStats, AiecLosses, AiecLossParams) and AIEC_POOL_* are the kernels'
// own (one definition, kernels/aiec_params.cuh); including it brings in the simulator header through common.cuh.
#include "../aiec_params.cuh"

typedef aiec::u64 u64;
typedef aiec::u32 u32;

static int g_pass = 0, g_fail = 0;
static void check(bool ok, const std::string& what) {
  (ok ? g_pass : g_fail)++;
  printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
  fflush(stdout);
}
static std::string launch(const char* name, unsigned gx, unsigned gy, unsigned block, std::vector<void*> args,
                          unsigned gz = 1) {
  char err[4096] = {0};
  int rc = aiec_sim_launch(name, gx, gy, gz, block, 1, 1, 0, args.data(), args.size(), err, sizeof err);
  return rc ? std::string(name) + ": rc " + std::to_string(rc) + ": " + err + "\n" : std::string();
}
static u64 cdiv(u64 a, u64 b) { return (a + b - 1) / b; }
static uint32_t fbits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bitsf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// ---------------------------------------------------------------- element types
enum Dt { F32, F16, BF16 };
static const char* dt_name[] = {"f32", "f16", "bf16"};
static size_t dt_size(Dt d) { return d == F32 ? 4 : 2; }
static float widen(Dt d, const unsigned char* p) {
  if (d == F32) { float f; memcpy(&f, p, 4); return f; }
  uint16_t h; memcpy(&h, p, 2);
  if (d == F16) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) return NAN;
    _Float16 v; memcpy(&v, &h, 2); return (float)v;
  }
  return bitsf((uint32_t)h << 16);
}
static void narrow(Dt d, float f, unsigned char* p) {  // round to nearest even (NaN: any NaN)
  if (d == F32) { memcpy(p, &f, 4); return; }
  uint16_t h;
  if (d == F16) { _Float16 v = (_Float16)f; memcpy(&h, &v, 2); }
  else if (std::isnan(f)) h = 0x7FC0;
  else { uint32_t x = fbits(f); h = (uint16_t)((x + 0x7FFF + ((x >> 16) & 1)) >> 16); }
  memcpy(p, &h, 2);
}

// ---------------------------------------------------------------- cases
struct Case {
  const char* pool_name; u32 pool; u64 B, P, C, K; Dt dt;
  bool special;       // x, dy with NaN/inf/random bits; else values k/8
  int misalign;       // element offset of x/y and dy/dx from 64-byte alignment (scalar path when != 0)
  bool one_class;     // every target the same class
  unsigned cap;       // != 0: cap grid.y (tokens, logits) / grid.x (hw, gate) to exercise the grid-stride loops
  bool update;
  float tau;
  bool fit;           // most targets = the argmax of exact logits (so that many rows count)
  int path;           // the projection GEMMs (aiec_gemm.cuh): 0 f32 SIMT, 1 3xTF32, 2 plain TF32, 3 and 4 the same
                      // with 128-row tiles
  unsigned kz = 1;    // the logits' grid.z: nz >= 2 splits their sums over C in nz (the tensor-core paths)
  unsigned dvs = 1;   // the slices of dv's sums over K (AIEC_FLAG_DV_SLICES_SHIFT), then aiec_bwd_sum_slices
  unsigned dws = 1;   // the slices of dW's sums over B (AIEC_FLAG_DW_SLICES_SHIFT), likewise
};
static const char* path_suffix[] = {"", "_tf32x3", "_tf32", "_tf32x3_m128", "_tf32_m128"};
static const char* path_name[] = {"f32", "3xtf32", "tf32", "3xtf32/m128", "tf32/m128"};
static bool plain_tf32(const Case& k) { return k.path == 2 || k.path == 4; }
static u64 tile_rows(const Case& k) { return k.path >= 3 ? 128 : 64; }
static u64 tile_cols(const Case& k) { return k.path == 4 ? 128 : 64; }  // plain TF32's 128 x 128 tile
static bool hw(const Case& k) { return k.pool == AIEC_POOL_AVG_HW; }
static u64 idx(const Case& k, u64 b, u64 c, u64 p) { return hw(k) ? (b * k.C + c) * k.P + p : (b * k.P + p) * k.C + c; }
// The keep-bit layout (aiec_params.cuh "Keep bits"): rows of L = C (tokens) or P (hw) elements, each from a word.
static u64 keep_nwords(const Case& k) { return aiec_k::keep_words(k.B, k.P, k.C, k.pool); }
static u64 keep_bit(const Case& k, u64 i) {  // flat element i -> bit index (word * 32 + bit)
  return aiec_k::keep_bit_index(i, aiec_k::keep_row_len(k.C, k.P, k.pool));
}

struct Bytes {  // a buffer with a 64-byte guard of 0xCD before and after, data at `off` elements
  std::vector<unsigned char> raw; size_t pad = 64, bytes;
  unsigned char* p;
  Bytes(size_t n, size_t es, size_t off = 0) : raw(n * es + off * es + 2 * 64 + 64, 0xCD), bytes(n * es) {
    unsigned char* base = raw.data() + 64;
    base += (64 - (reinterpret_cast<uintptr_t>(base) & 63)) & 63;
    p = base + off * es;
  }
  bool guards() const {
    for (const unsigned char* q = raw.data(); q < p; ++q) if (*q != 0xCD) return false;
    for (const unsigned char* q = p + bytes; q < raw.data() + raw.size(); ++q) if (*q != 0xCD) return false;
    return true;
  }
  template <class T> T* as() { return reinterpret_cast<T*>(p); }
};

struct Out {  // everything the kernels wrote, for the bitwise schedule comparison
  int correct = 0;  // samples the kernel's logits predict correctly (counted when verifying)
  std::vector<unsigned char> y, keep, v, logits, ce, g, act, inh, total, mask, stats, losses, dv, dw, dx, dxi;
};
template <class T> static std::vector<unsigned char> snap(const T* p, size_t n) {
  return std::vector<unsigned char>((const unsigned char*)p, (const unsigned char*)(p + n));
}

struct Checker {  // collects the first few mismatches of one case
  int bad = 0; std::string msg;
  void exact(bool ok, const char* what, u64 i) {
    if (ok) return;
    if (bad++ < 4) msg += std::string(" ") + what + "[" + std::to_string(i) + "]";
  }
  void close(double a, double r, double scale, const char* what, u64 i, double rel = 1e-5) {
    bool ok = std::isnan(r) ? std::isnan(a) : std::isinf(r) ? a == r : std::fabs(a - r) <= rel * scale + 1e-6;
    if (ok || bad++ >= 4) return;
    char b[160]; snprintf(b, sizeof b, " %s[%llu]=%.9g (ref %.9g)", what, i, a, r); msg += b;
  }
};

static void fill(const Case& k, unsigned char* p, u64 n, std::mt19937_64& rng) {
  const size_t es = dt_size(k.dt);
  for (u64 i = 0; i < n; ++i) {
    float f = (float)((int)(rng() % 17) - 8) / 8.0f;
    if (k.special) switch (rng() % 8) {
        case 0: f = k.tau; break;
        case 1: f = bitsf((uint32_t)rng()); break;
        case 2: f = (rng() & 1) ? NAN : -INFINITY; break;
        case 3: f = (rng() & 1) ? 0.0f : -0.0f; break;
        case 4: f = INFINITY; break;
        default: break;
      }
    narrow(k.dt, f, p + i * es);
    if (k.special && k.dt != F32 && rng() % 8 == 0) { uint16_t h = (uint16_t)rng(); memcpy(p + i * es, &h, 2); }
  }
}

static std::string run_case(const Case& k, uint64_t data_seed, Out& o, bool verify) {
  const u64 B = k.B, P = k.P, C = k.C, K = k.K, n = B * P * C, nw = keep_nwords(k);
  const Dt dt = k.dt;
  const size_t es = dt_size(dt), V = 16 / es;
  std::mt19937_64 rng(data_seed);
  Bytes x(n, es, k.misalign), y(n, es, k.misalign), keep(nw, 4), v(B * C, 4), w(K * C, 4), tg(B, 8);
  Bytes logits(B * K, 4), ce(B, 4), g(B * K, 4), act(K * C, 8), inh(K * C, 8), total(K, 8), mask(B * C, 1);
  fill(k, x.p, n, rng);
  memset(keep.p, 0xAA, nw * 4);
  float* W = w.as<float>();
  for (u64 i = 0; i < K * C; ++i) W[i] = (float)((int)(rng() % 17) - 8) / 16.0f;
  if (K > 2) memcpy(W + 2 * C, W + C, C * 4);  // classes 1 and 2 tie on every row
  long long* T = tg.as<long long>();
  const long long one = (long long)(rng() % K);
  for (u64 b = 0; b < B; ++b) T[b] = k.one_class ? one : (long long)(rng() % K);
  for (u64 b = 0; k.fit && b < B; ++b) {  // rows b % 4 != 3: the target the logits (in double) predict
    std::vector<double> vr(C, 0.0);
    const bool avg = k.pool == 1 || k.pool == 2;
    for (u64 c = 0; c < C; ++c)
      for (u64 p = 0; p < (avg ? P : 1); ++p) {
        const float e = widen(dt, x.p + idx(k, b, c, p) * es);
        vr[c] += !(e <= k.tau) ? e : 0.0f;
      }
    u64 best = 0;
    double bz = -INFINITY;
    for (u64 kk = 0; kk < K; ++kk) {
      double z = 0;
      for (u64 c = 0; c < C; ++c) z += vr[c] * W[kk * C + c];
      if (z > bz) { bz = z; best = kk; }
    }
    if (b % 4 != 3) T[b] = (long long)best;
  }
  long long *A = act.as<long long>(), *I = inh.as<long long>(), *TT = total.as<long long>();
  for (u64 i = 0; i < K * C; ++i) { A[i] = (long long)(rng() % 3); I[i] = (long long)(rng() % 3); }
  for (u64 i = 0; i < K; ++i) TT[i] = 1 + (long long)(rng() % 5);
  std::vector<long long> A0(A, A + K * C), I0(I, I + K * C), TT0(TT, TT + K);
  AiecShape s{B, P, C, K, k.pool, k.update ? 1u : 0u, k.tau, 0};
  std::string err;
  Checker ck;

  // 1. forward x pass
  {
    // no targets check here (tests/aiec.rs covers it): targets, status and device_error are null
    const void* cx = x.p; void *vy = y.p, *vk = keep.p, *vv = v.p, *none = nullptr;
    std::string name = std::string(hw(k) ? "aiec_fwd_x_hw_" : "aiec_fwd_x_tokens_") + dt_name[dt];
    unsigned gx = hw(k) ? (unsigned)cdiv(B * C, 8) : (unsigned)cdiv(C, 32 * V), gy = hw(k) ? 1 : (unsigned)B;
    if (k.cap) (hw(k) ? gx : gy) = std::min(hw(k) ? gx : gy, k.cap);
    err += launch(name.c_str(), gx, gy, 256, {&cx, &vy, &vk, &vv, &none, &none, &none, &s});
  }
  const float* Vk = v.as<float>();
  if (verify) {
    const u32* kw = keep.as<u32>();
    for (u64 i = 0; i < n; ++i) {
      const bool kp = !(widen(dt, x.p + i * es) <= k.tau);
      static const unsigned char zero[4] = {0, 0, 0, 0};
      ck.exact(memcmp(y.p + i * es, kp ? x.p + i * es : zero, es) == 0, "y", i);
      const u64 kb = keep_bit(k, i);
      ck.exact(((kw[kb / 32] >> (kb % 32)) & 1) == (u32)kp, "keep", i);
    }
    std::vector<bool> used(nw * 32, false);  // every bit that is no element's is 0 (row padding)
    for (u64 i = 0; i < n; ++i) used[keep_bit(k, i)] = true;
    for (u64 j = 0; j < nw * 32; ++j) ck.exact(used[j] || ((kw[j / 32] >> (j % 32)) & 1) == 0, "keep-padding", j);
    for (u64 b = 0; b < B; ++b)
      for (u64 c = 0; c < C; ++c) {
        const bool avg = k.pool == 1 || k.pool == 2;
        double r = 0, mag = 0;
        for (u64 p = 0; p < (avg ? P : 1); ++p) { double e = widen(dt, y.p + idx(k, b, c, p) * es); r += e; mag += std::fabs(e); }
        if (avg) { r /= (double)P; mag /= (double)P; }
        if (std::isinf(mag) || mag > 1e37) continue;  // float sum may overflow where double does not
        ck.close(Vk[b * C + c], r, mag, "v", b * C + c);
      }
  }

  // 2. logits and the tiles' row statistics: grid (class tiles of 64, sample groups of 64), 128 threads; then CE,
  // softmax gradient, counters: aiec_fwd_softmax, one block per item (counting: 64 rows x 128 channels; rows: 4)
  const double gemm_rel = plain_tf32(k) ? 3e-3 : 1e-5;  // plain TF32 rounds the operands to 10 mantissa bits
  const u64 groups = cdiv(B, 64), tiles = cdiv(K, 64), lgroups = cdiv(B, tile_rows(k));
  Bytes part(std::max<u64>(B * tiles, 1), 16);
  Bytes tickets(std::max<u64>(groups * tiles, 1), 4);  // zero once; the logits leave them zero
  memset(tickets.p, 0, tickets.bytes);
  Bytes slices(std::max<u64>(k.kz > 2 ? (k.kz - 2) * B * K : 0, 1), 4);  // slices 2 and on: partials, any content
  const void* no_status = nullptr;  // targets are all valid here; no device-side step (s.update decides)
  const unsigned lx = (unsigned)std::min<u64>(cdiv(K, tile_cols(k)), k.cap ? k.cap : 1u << 30);  // capped: loops
  const unsigned ly = (unsigned)std::min<u64>(lgroups, k.cap ? k.cap : 65535);
  err += launch((std::string("aiec_fwd_logits") + path_suffix[k.path]).c_str(), lx, ly, 128,
                {(void*)&Vk, &W, &logits.p, &g.p, &part.p, &tickets.p, &slices.p, &s}, k.kz);
  for (u64 i = 0; i < groups * tiles; ++i) ck.exact(tickets.as<u32>()[i] == 0, "tickets left zero", i);
  const u64 items = groups * std::max<u64>(cdiv(C, 128), 1) + cdiv(B, 4);
  const unsigned sx = (unsigned)std::min<u64>(std::max<u64>(items, 1), k.cap ? k.cap : 1u << 30);
  err += launch("aiec_fwd_softmax", sx, 1, 128,
                {(void*)&Vk, &T, &no_status, &no_status, &logits.p, &part.p, &ce.p, &g.p, &act.p, &inh.p, &total.p, &s});
  const float *Z = logits.as<float>(), *CE = ce.as<float>(), *G = g.as<float>();
  if (verify) {
    for (u64 b = 0; b < B; ++b) {
      bool huge = false;
      for (u64 c = 0; c < C; ++c) huge |= !(std::fabs(Vk[b * C + c]) < 1e30f);
      for (u64 kk = 0; kk < K && !huge; ++kk) {
        double r = 0, mag = 0;
        for (u64 c = 0; c < C; ++c) { r += (double)Vk[b * C + c] * W[kk * C + c]; mag += std::fabs((double)Vk[b * C + c] * W[kk * C + c]); }
        ck.close(Z[b * K + kk], r, mag, "logits", b * K + kk, gemm_rel);
      }
      const float* z = Z + b * K;
      u64 pred = 0;  // argmax on the kernel's logits: lowest index among equal maxima, first NaN wins
      for (u64 kk = 1; kk < K; ++kk) if ((std::isnan(z[kk]) && !std::isnan(z[pred])) || z[kk] > z[pred]) pred = kk;
      const float m = z[pred];
      double se = 0;
      for (u64 kk = 0; kk < K; ++kk) se += expf(z[kk] - m);
      const u64 t = (u64)T[b];
      ck.close(CE[b], (double)m + std::log(se) - z[t], std::fabs(m) + std::fabs(std::log(se)) + std::fabs(z[t]), "ce", b);
      for (u64 kk = 0; kk < K; ++kk) ck.close(G[b * K + kk], expf(z[kk] - m) / se - (kk == t), 1.0, "g", b * K + kk);
      o.correct += pred == t;
      if (k.update && pred == t) {
        for (u64 c = 0; c < C; ++c) {
          const float val = Vk[b * C + c];
          A0[t * C + c] += val > 0; I0[t * C + c] += val == 0;
        }
        TT0[t] += 1;
      }
    }
    for (u64 i = 0; i < K * C; ++i) { ck.exact(A[i] == A0[i], "act", i); ck.exact(I[i] == I0[i], "inh", i); }
    for (u64 i = 0; i < K; ++i) ck.exact(TT[i] == TT0[i], "total", i);
  }

  // 3. gate mask and statistics (twice: `done` must be left at 0)
  // grid: 64-channel chunks x 256-class groups (capped: the block rows loop over the groups)
  const unsigned gx = (unsigned)cdiv(C, 64), gy = (unsigned)std::min<u64>(cdiv(K, 256), k.cap ? k.cap : 65535);
  const unsigned gg = gx * gy;
  Bytes bss(gg, 4), bcnt(gg, 8), done(1, 4), stats(1, 16);
  memset(done.p, 0, 4);
  for (int rep = 0; rep < 2; ++rep) {
    memset(stats.p, 0xEE, 16);
    err += launch("aiec_fwd_gate", gx, gy, 256,
                  {(void*)&Vk, &W, &T, &act.p, &inh.p, &mask.p, &bss.p, &bcnt.p, &done.p, &stats.p, &s});
  }
  const AiecGateStats st = *stats.as<AiecGateStats>();
  if (verify) {
    double S = 0, mag = 0; u64 N = 0;
    for (u64 b = 0; b < B; ++b)
      for (u64 c = 0; c < C; ++c) {
        const u64 kc = (u64)T[b] * C + c;
        const bool m = A[kc] <= I[kc] && W[kc] <= 0.0f;
        ck.exact(mask.p[b * C + c] == (unsigned char)m, "mask", b * C + c);
        if (m) { const double e = Vk[b * C + c]; S += e * e; mag += e * e; N++; }
      }
    ck.exact(st.count == N && st.pad0 == 0 && *done.as<u32>() == 0, "stats.count/pad0/done", st.count);
    if (!(mag > 1e37)) ck.close(st.sum_sq, S, mag, "stats.sum_sq", 0);
  }

  // 4. losses of two layers (this one, twice)
  Bytes losses(1, 32);
  AiecLossParams lp;
  memset(&lp, 0, sizeof lp);
  lp.ce[0] = lp.ce[1] = (u64)(uintptr_t)ce.p;
  lp.stats[0] = lp.stats[1] = (u64)(uintptr_t)stats.p;
  lp.out = (u64)(uintptr_t)losses.p; lp.layers = 2; lp.batch = B; lp.aux_coef = 1.0f; lp.gate_coef = 200.0f;
  err += launch("aiec_loss", 1, 1, 256, {&lp});
  const AiecLosses L = *losses.as<AiecLosses>();
  if (verify) {
    double sce = 0, mag = 0;
    for (u64 b = 0; b < B; ++b) { sce += 2.0 * CE[b]; mag += 2.0 * std::fabs(CE[b]); }
    const double rows = 2.0 * B, S2 = 2.0 * st.sum_sq; const u64 N2 = 2 * st.count;
    ck.close(L.aux, rows ? sce / rows : 0, rows ? mag / rows : 0, "loss.aux", 0);
    ck.close(L.sum_sq, S2, std::fabs(S2), "loss.sum_sq", 0);
    ck.close(L.gate, N2 ? S2 / N2 : 0, N2 ? std::fabs(S2 / N2) : 0, "loss.gate", 0);
    ck.close(L.aux_scale, rows ? 1.0 / rows : 0, rows ? 1.0 / rows : 0, "loss.aux_scale", 0);
    ck.close(L.gate_scale, N2 ? 400.0 / N2 : 0, N2 ? 400.0 / N2 : 0, "loss.gate_scale", 0);
    ck.exact(L.count == N2 && L.pad0 == 0, "loss.count", L.count);
  }
  // 4b. the gate over W = 3 ranks (gpu::dp): aiec_loss_count writes this process's n as (n >> 20, n & 0xFFFFF);
  //     summed as if three ranks held it, aiec_loss reads N = 3n and scales by W (bit for bit the kernel's formula)
  {
    u32 all[2] = {0xEEEEEEEEu, 0xEEEEEEEEu};
    Bytes losses3(1, 32);
    AiecLossParams lq = lp;
    lq.count_all = (u64)(uintptr_t)all; lq.world = 3; lq.out = (u64)(uintptr_t)losses3.p;
    err += launch("aiec_loss_count", 1, 1, 256, {&lq});
    const u64 n = 2 * st.count;
    ck.exact(all[0] == (u32)(n >> 20) && all[1] == (u32)(n & 0xFFFFF), "loss_count parts", n);
    all[0] *= 3; all[1] *= 3;
    err += launch("aiec_loss", 1, 1, 256, {&lq});
    const AiecLosses L3 = *losses3.as<AiecLosses>();
    const float f3 = (float)(3 * n);
    ck.exact(L3.count == 3 * n, "loss.count over 3 ranks", L3.count);
    auto same = [](float a, float b) { return memcmp(&a, &b, sizeof a) == 0; };  // bits: NaN in the special cases
    ck.exact(same(L3.gate, n ? 3.0f * L.sum_sq / f3 : 0.0f) && same(L3.gate_scale, n ? 400.0f * 3.0f / f3 : 0.0f) &&
                 same(L3.aux, L.aux) && same(L3.aux_scale, L.aux_scale) && same(L3.sum_sq, L.sum_sq),
             "loss.gate over 3 ranks", L3.count);
  }

  // 5. dv, dW (dv in k.dvs slices of B C values, then dW's slices past the first, K C values each, in the same
  // scratch; aiec_bwd_sum_slices adds dv's into the first and dW's onto dw)
  const u64 scratch = k.dvs * B * C + (k.dws - 1) * K * C;
  Bytes dv(scratch, 4), dw(K * C, 4);
  const void* no_scale = nullptr;  // uniform aux_scale
  memset(dw.p, 0xFF, K * C * 4);
  memset(dv.p, 0xFF, scratch * 4);
  AiecShape sd = s;
  sd.flags |= (k.dvs - 1) << AIEC_FLAG_DV_SLICES_SHIFT | (k.dws - 1) << AIEC_FLAG_DW_SLICES_SHIFT;
  // capped: the blocks loop over the tiles
  const u64 dvdw_tiles =
      (k.dvs * cdiv(B, tile_rows(k)) + k.dws * cdiv(K, tile_rows(k))) * cdiv(C, tile_cols(k));
  err += launch((std::string("aiec_bwd_dv_dw") + path_suffix[k.path]).c_str(),
                (unsigned)std::min<u64>(dvdw_tiles, k.cap ? k.cap : 1u << 30), 1, 128,
                {(void*)&Vk, &W, &g.p, &mask.p, &losses.p, &no_scale, &dv.p, &dw.p, &sd});
  if (k.dvs > 1 || k.dws > 1)  // 2 blocks: the grid-stride loop
    err += launch("aiec_bwd_sum_slices", 2, 1, 256, {&dv.p, &dw.p, &sd});
  const float *DV = dv.as<float>(), *DW = dw.as<float>();
  if (verify) {
    for (u64 b = 0; b < B; ++b)
      for (u64 c = 0; c < C; ++c) {
        double r = 0, mag = 0;
        for (u64 kk = 0; kk < K; ++kk) { const double e = (double)(L.aux_scale * G[b * K + kk]) * W[kk * C + c]; r += e; mag += std::fabs(e); }
        if (mask.p[b * C + c]) { const double e = (double)L.gate_scale * Vk[b * C + c]; r += e; mag += std::fabs(e); }
        ck.close(DV[b * C + c], r, mag, "dv", b * C + c, gemm_rel);
      }
    for (u64 kk = 0; kk < K; ++kk)
      for (u64 c = 0; c < C; ++c) {
        double r = 0, mag = 0;
        for (u64 b = 0; b < B; ++b) { const double e = (double)(L.aux_scale * G[b * K + kk]) * Vk[b * C + c]; r += e; mag += std::fabs(e); }
        if (!(mag > 1e37)) ck.close(DW[kk * C + c], r, mag, "dw", kk * C + c, gemm_rel);
      }
  }

  // 6. dx, out of place and in place
  Bytes dy(n, es, k.misalign), dx(n, es, k.misalign), dyi(n, es, k.misalign);
  fill(k, dy.p, n, rng);
  memcpy(dyi.p, dy.p, n * es);
  {
    std::string name = std::string(hw(k) ? "aiec_bwd_x_hw_" : "aiec_bwd_x_tokens_") + dt_name[dt];
    unsigned gx = hw(k) ? (unsigned)cdiv(B * C, 8) : (unsigned)cdiv(C, 32 * V), gy = hw(k) ? 1 : (unsigned)B;
    if (k.cap) (hw(k) ? gx : gy) = std::min(hw(k) ? gx : gy, k.cap);
    const void *cdy = dy.p, *ck_ = keep.p, *cdv = dv.p, *cdyi = dyi.p; void *vdx = dx.p, *vdyi = dyi.p;
    err += launch(name.c_str(), gx, gy, 256, {&cdy, &ck_, &cdv, &vdx, &s});
    err += launch(name.c_str(), gx, gy, 256, {&cdyi, &ck_, &cdv, &vdyi, &s});
  }
  if (verify) {
    const u32* kw = keep.as<u32>();
    for (u64 b = 0; b < B; ++b)
      for (u64 c = 0; c < C; ++c)
        for (u64 p = 0; p < P; ++p) {
          const u64 i = idx(k, b, c, p);
          unsigned char e[4] = {0, 0, 0, 0};
          bool nan = false;
          if ((kw[keep_bit(k, i) / 32] >> (keep_bit(k, i) % 32)) & 1) {
            if (k.pool == 0 && p != 0) memcpy(e, dy.p + i * es, es);
            else {
              const float u = k.pool == 0 || k.pool == 3 ? DV[b * C + c] : DV[b * C + c] / (float)P;
              const float f = widen(dt, dy.p + i * es) + u;
              nan = std::isnan(f);
              narrow(dt, f, e);
            }
          }
          for (const Bytes* q : {&dx, &dyi}) {
            const bool ok = nan ? std::isnan(widen(dt, q->p + i * es)) : memcmp(q->p + i * es, e, es) == 0;
            ck.exact(ok, q == &dx ? "dx" : "dx(in place)", i);
          }
        }
    for (const Bytes* q : {&x, &y, &keep, &v, &logits, &ce, &g, &act, &inh, &total, &part, &slices, &mask, &dv, &dw, &dx, &dyi,
                           &losses, &stats})
      ck.exact(q->guards(), "guard bytes", 0);
  }
  o.y = snap(y.p, n * es); o.keep = snap(keep.p, nw * 4); o.v = snap(v.p, B * C * 4);
  o.logits = snap(logits.p, B * K * 4); o.ce = snap(ce.p, B * 4); o.g = snap(g.p, B * K * 4);
  o.act = snap(act.p, K * C * 8); o.inh = snap(inh.p, K * C * 8); o.total = snap(total.p, K * 8);
  o.mask = snap(mask.p, B * C); o.stats = snap(stats.p, 16); o.losses = snap(losses.p, 32);
  o.dv = snap(dv.p, B * C * 4); o.dw = snap(dw.p, K * C * 4); o.dx = snap(dx.p, n * es); o.dxi = snap(dyi.p, n * es);
  if (ck.bad) err += "mismatches (" + std::to_string(ck.bad) + "):" + ck.msg;
  return err;
}

// B == 0: aiec_loss writes zeros, aiec_bwd_dv_dw still runs and writes dW = 0.
static void test_empty() {
  const u64 C = 300, K = 20;
  AiecShape s{0, 1, C, K, 3, 1, 0.0f, 0};
  std::vector<float> w(K * C, 0.5f), dw(K * C, NAN), dummy(1, NAN);
  std::vector<unsigned char> mask(1, 1);
  AiecGateStats st{0.0f, 0, 0};
  AiecLosses L;
  memset(&L, 0xEE, sizeof L);
  AiecLossParams lp;
  memset(&lp, 0, sizeof lp);
  lp.ce[0] = (u64)(uintptr_t)dummy.data(); lp.stats[0] = (u64)(uintptr_t)&st; lp.out = (u64)(uintptr_t)&L;
  lp.layers = 1; lp.batch = 0; lp.aux_coef = 1.0f; lp.gate_coef = 200.0f;
  std::string err = launch("aiec_loss", 1, 1, 256, {&lp});
  const bool loss_ok = L.aux == 0 && L.gate == 0 && L.sum_sq == 0 && L.aux_scale == 0 && L.gate_scale == 0 &&
                       L.pad0 == 0 && L.count == 0;
  void *pv = dummy.data(), *pw = w.data(), *pg = dummy.data(), *pm = mask.data(), *pl = &L, *pdv = dummy.data(),
       *pdw = dw.data(), *prs = nullptr;
  int nonzero = 0;
  for (int path = 0; path < 5; ++path) {  // every projection path and tile
    std::fill(dw.begin(), dw.end(), NAN);
    err += launch((std::string("aiec_bwd_dv_dw") + path_suffix[path]).c_str(),
                  (unsigned)(cdiv(K, path >= 3 ? 128 : 64) * cdiv(C, path == 4 ? 128 : 64)),
                  1, 128, {&pv, &pw, &pg, &pm, &pl, &prs, &pdv, &pdw, &s});
    for (float f : dw) nonzero += fbits(f) != 0;
  }
  check(err.empty() && loss_ok && nonzero == 0 && std::isnan(dummy[0]),
        "B == 0: aiec_loss writes all zeros, aiec_bwd_dv_dw (f32, 3xTF32, TF32, both tiles) writes dW = +0 (" +
            std::to_string(nonzero) + " nonzero) and reads no row " + err);
}

static bool same(const Out& a, const Out& b, std::string* which) {
  const std::vector<unsigned char> Out::*f[] = {&Out::y, &Out::keep, &Out::v, &Out::logits, &Out::ce, &Out::g,
    &Out::act, &Out::inh, &Out::total, &Out::mask, &Out::stats, &Out::losses, &Out::dv, &Out::dw, &Out::dx, &Out::dxi};
  const char* names[] = {"y", "keep", "v", "logits", "ce", "g", "act", "inh", "total", "mask", "stats", "losses",
                         "dv", "dw", "dx", "dx(in place)"};
  for (size_t i = 0; i < sizeof f / sizeof f[0]; ++i)
    if (a.*f[i] != b.*f[i]) { *which = names[i]; return false; }
  return true;
}

int main() {
  std::vector<Case> cases;
  auto add = [&](const char* pn, u32 pool, u64 B, u64 P, u64 C, u64 K, bool special, int mis, bool one, unsigned cap,
                 bool update, float tau, bool fit = false) {
    // the activation types cycle over the projection paths: each shape runs the GEMMs on f32 SIMT, on 3xTF32
    // with 64-row tiles and the logits' sums split in two, and on 3xTF32 with 128-row tiles
    for (Dt d : {F32, F16, BF16})
      cases.push_back({pn, pool, B, P, C, K, d, special, mis, one, cap, update, tau, fit, d == F16 ? 0 : d == F32 ? 1 : 3,
                       d == F32 ? 2u : 1u});
  };
  add("token", 0, 2, 5, 64, 3, false, 0, false, 0, true, 0.0f);
  add("token", 0, 3, 3, 40, 5, false, 0, false, 0, true, 0.25f);  // C % V == 0 (f32/16-bit) but C % 32 != 0
  add("token", 0, 5, 9, 35, 4, true, 0, false, 2, true, 0.0f);    // ragged C, special values, grid.y capped
  add("avg_token", 1, 3, 7, 35, 4, false, 0, false, 0, true, 0.0f);
  add("avg_token", 1, 2, 197, 96, 6, false, 0, false, 0, true, 0.0f);
  add("avg_token", 1, 2, 37, 64, 3, false, 1, false, 0, true, 0.25f);  // misaligned x/y/dy/dx: scalar path
  add("avg_token", 1, 4, 13, 35, 3, true, 3, false, 0, true, 0.3f);
  add("token", 0, 3, 20, 512, 7, false, 0, false, 0, true, 0.0f);   // several channel blocks, fast keep path
  add("avg_hw", 2, 2, 7, 3, 5, false, 0, false, 0, true, 0.0f);
  add("avg_hw", 2, 2, 1056, 3, 2, false, 0, false, 0, true, 0.0f);  // fast keep path, partial unrolled chunks
  add("avg_hw", 2, 12, 64, 5, 3, false, 0, false, 0, true, 0.0f, true);
  add("avg_hw", 2, 3, 49, 4, 2, true, 0, false, 1, true, 0.0f);  // one block, grid-stride over rows
  add("avg_hw", 2, 2, 600, 3, 2, false, 1, false, 0, true, 0.0f);
  add("avg_hw", 2, 1, 1, 1, 1, false, 0, false, 0, true, 0.0f);
  add("avg_hw", 2, 2, 196, 3, 2, false, 0, false, 0, true, 0.0f);  // 14x14: 8-byte vectors for 16-bit types
  add("avg_hw", 2, 2, 196, 2, 2, true, 2, false, 0, true, 0.0f);   // 14x14, 2 elements off: narrower vectors
  add("avg_hw", 2, 1, 784, 2, 2, false, 0, false, 0, true, 0.0f);  // 28x28
  add("avg_hw", 2, 1, 3136, 1, 2, false, 0, false, 0, true, 0.0f);  // 56x56
  add("token", 0, 3, 7, 33, 3, false, 0, false, 0, true, 0.0f);    // odd C: one element per access
  add("none", 3, 1, 1, 1, 1, false, 0, false, 0, true, 0.0f);     // B = C = K = P = 1
  add("none", 3, 5, 1, 1, 1, false, 0, false, 0, true, 0.0f);
  add("none", 3, 3, 1, 35, 1000, false, 0, false, 0, true, 0.0f, true);  // K = 1000, B = 3
  add("none", 3, 8, 1, 35, 3, false, 0, true, 0, true, 0.0f);      // all classes in one block, one class
  add("none", 3, 19, 1, 70, 5, false, 0, false, 0, true, 0.0f, true);  // B not a multiple of 8 or 16
  add("avg_token", 1, 16, 3, 40, 4, false, 0, false, 0, true, 0.0f, true);  // all classes in each block of 8
  add("none", 3, 9, 1, 300, 2, false, 0, false, 2, true, 0.0f);    // gate over 2 capped blocks
  add("none", 3, 20, 1, 70, 300, false, 0, false, 2, true, 0.0f, true);  // 5 class tiles on 2 blocks per group
  add("none", 3, 6, 1, 600, 3, false, 0, false, 0, false, 0.0f);   // no counter update, C > 512 (2 tiles)
  add("none", 3, 12, 1, 70, 600, false, 0, false, 1, true, 0.0f, true);  // 3 gate class groups on 1 block row
  add("none", 3, 4, 1, 33, 2, true, 0, false, 0, true, 0.0f);      // NaN / inf in v and logits
  add("none", 3, 130, 1, 67, 70, false, 0, false, 0, true, 0.0f, true);  // GEMM edges: 3 x 2 tiles, odd C (4-byte loads)
  add("none", 3, 65, 1, 96, 129, false, 0, false, 3, true, 0.0f, true);  // C % 16 == 0 (float4), K = 2 * 64 + 1, capped
  // plain TF32 (opt-in): judged at 3e-3
  cases.push_back({"none", 3, 70, 1, 40, 9, F32, false, 0, false, 0, true, 0.0f, true, 2});
  cases.push_back({"avg_token", 1, 5, 3, 130, 65, BF16, false, 0, false, 0, true, 0.0f, true, 2});
  // 128 x 128 on a z = 2 grid (that tile does not split: every block sums the whole, a tile written twice alike)
  cases.push_back({"none", 3, 130, 1, 67, 70, F32, false, 0, false, 0, true, 0.0f, true, 4, 2});
  // 128 x 128: K = 129 (the last block tile's second half past K), C = 200 (16-byte copies, a ragged second column
  // tile), capped grid; C = 130 (4-byte copies), bf16
  cases.push_back({"none", 3, 200, 1, 200, 129, F32, false, 0, false, 1, true, 0.0f, true, 4});
  cases.push_back({"avg_token", 1, 5, 3, 130, 65, BF16, false, 0, false, 0, true, 0.0f, true, 4});
  cases.push_back({"none", 3, 200, 1, 96, 129, F32, false, 0, false, 3, true, 0.0f, true, 3, 2});  // capped, split
  // The logits' sums in more slices than two (slices 2 and on meet in `slices`): C = 200 in 3 slices of 96, 96 and 8
  // (3xTF32, special values: the NaN fix-up after the meeting); C = 384 in 5 of 96, 96, 96, 96 and 0
  // (an empty slice still meets), 128-row tiles, capped grid, bf16; C = 1024 in 8 of 128 on plain TF32's 64-row
  // tile, K = 68 (the meeting's 16-byte reads; the others read 4 bytes)
  cases.push_back({"none", 3, 70, 1, 200, 129, F32, true, 0, false, 0, true, 0.0f, false, 1, 3});
  cases.push_back({"avg_token", 1, 130, 3, 384, 70, BF16, false, 0, false, 2, true, 0.0f, true, 3, 5});
  cases.push_back({"none", 3, 20, 1, 1024, 68, F32, false, 0, false, 0, true, 0.0f, true, 2, 8});
  // dv's sums in slices of K (aiec_bwd_sum_slices after): K = 300 in 3 slices of 128, 128 and 44 classes, C = 67 (4-byte
  // copies, the sum's one-value path), 3xTF32; 2 slices on the f32 path, C % 4 == 0 (float4 sums), capped grid, bf16;
  // 8 slices of 64 on plain TF32's 128 x 128 tile, the last 3 empty (they write zeros that the sum adds)
  cases.push_back({"none", 3, 20, 1, 67, 300, F32, false, 0, false, 0, true, 0.0f, true, 1, 1, 3});
  cases.push_back({"avg_token", 1, 9, 3, 96, 300, BF16, false, 0, false, 3, true, 0.0f, true, 0, 1, 2});
  cases.push_back({"none", 3, 20, 1, 130, 300, F32, false, 0, false, 0, true, 0.0f, true, 4, 1, 8});
  // dW's sums in slices of B (aiec_bwd_sum_slices after): B = 300 in 3 slices of 128, 128 and 44 samples, C = 67
  // (the sum's one-value path), 3xTF32; 2 of 160 and 140 beside 2 slices of dv on the f32 path, capped grid, bf16;
  // 8 slices of 64 on plain TF32's 128 x 128 tile, the last 3 empty
  cases.push_back({"none", 3, 300, 1, 67, 21, F32, false, 0, false, 0, true, 0.0f, true, 1, 1, 1, 3});
  cases.push_back({"avg_token", 1, 300, 3, 96, 300, BF16, false, 0, false, 3, true, 0.0f, true, 0, 1, 2, 2});
  cases.push_back({"none", 3, 300, 1, 130, 20, F32, false, 0, false, 0, true, 0.0f, true, 4, 1, 1, 8});
  const uint64_t seeds[] = {0, 1, 2};
  const unsigned workers[] = {1, 4};
  int idx = 0;
  for (const Case& k : cases) {
    Out first;
    std::string err, why;
    int runs = 0, identical = 0;
    for (uint64_t sd : seeds)
      for (unsigned wk : workers) {
        aiec_sim_set_seed(sd);
        aiec_sim_set_workers(wk);
        Out o;
        const bool verify = true;
        std::string e = run_case(k, 1000 + idx, o, verify);
        if (!e.empty() && err.empty()) err = "seed " + std::to_string(sd) + " workers " + std::to_string(wk) + ": " + e;
        if (runs++ == 0) first = o;
        else if (same(first, o, &why)) identical++;
        else if (err.empty()) err = "seed " + std::to_string(sd) + " workers " + std::to_string(wk) + ": " + why + " differs from seed 0 workers 1";
      }
    char what[320];
    snprintf(what, sizeof what, "aiec %-9s %-4s %-11s%s B=%llu P=%llu C=%llu K=%llu%s%s%s%s%s: "
             "6 schedules correct (%d/%llu rows predicted right), %d/5 bitwise identical to the first", k.pool_name,
             dt_name[k.dt], path_name[k.path], k.kz > 1 ? " split-k" : k.dvs > 1 && k.dws > 1 ? " dv+dw-slices" : k.dvs > 1 ? " dv-slices" : k.dws > 1 ? " dw-slices" : "", k.B, k.P, k.C, k.K, k.special ? " special" : "", k.misalign ? " misaligned" : "",
             k.one_class ? " one-class" : "", k.cap ? " capped-grid" : "", k.update ? "" : " no-update", first.correct,
             k.B, identical);
    check(err.empty(), std::string(what) + (err.empty() ? "" : "\n     " + err));
    ++idx;
  }
  aiec_sim_set_seed(0);
  aiec_sim_set_workers(1);
  test_empty();
  printf("%d passed, %d failed\n", g_pass, g_fail);
  return g_fail;
}
