/* Online Mamba-style SSM kernels: the C twin of the numba kernels in nacz/models/ssm/.
 *
 * Every function here performs exactly the same floating-point operations, in the same
 * order, as its numba twin, so both give bit-identical results (tests/test_ssm_twins.py).
 * Rules (docs/design.md): build with -O3 -ffp-contract=off -fno-fast-math (no FMA contraction,
 * no reassociation), no -march=native, no threads. No libm transcendental is used: fexp
 * and flog are polynomials in IEEE basic operations; sqrtf is correctly rounded.
 * Reductions use explicit lanes combined in a fixed tree, so they vectorise without
 * reassociation. Indices are unsigned 64-bit like the twin's.
 *
 * Exported functions (ctypes signatures in nacz/native.py): ssm_abi_version, ssm_dim_names,
 * ssm_refresh, ssm_vlog, ssm_vexp, ssm_step, ssm_logprobs, ssm_train, ssm_adam.
 *
 * All sizes and offsets come from the int64 array `dims` built by nacz/models/ssm_layout.py
 * (Layout); the index names below must stay in the order of DIM_NAMES there (checked at
 * load time through ssm_dim_names()).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__FLT_EVAL_METHOD__) && __FLT_EVAL_METHOD__ != 0
#error "float expressions must be evaluated in float (x87 excess precision is not allowed)"
#endif
#if defined(__FAST_MATH__)
#error "nacz kernels must not be built with -ffast-math"
#endif

#define SSM_ABI_VERSION 1

#if defined(_WIN32)
#define SSM_API __declspec(dllexport)
#else
#define SSM_API __attribute__((visibility("default")))
#endif

typedef uint64_t u64;

/* Function multiversioning: on x86-64 glibc/ELF builds the exported kernels get an AVX2
 * clone besides the baseline (SSE2) one, picked at load time by an ifunc resolver. The
 * clones run the very same IEEE operations in the same order (no FMA: "avx2" does not
 * enable it and -ffp-contract=off forbids contraction anyway; explicit lanes, no
 * reassociation), so they give the same bits -- tests/test_ssm_twins.py compares a build
 * with -DNACZ_SSM_NO_CLONES against the default one. No -march flag is ever used. */
#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && \
    !defined(NACZ_SSM_NO_CLONES) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define HOT __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef HOT
#define HOT
#endif
/* Register blocking in the head loops uses GCC/clang vector extensions: element-wise IEEE
 * operations (no reassociation; with -ffp-contract=off no FMA), i.e. exactly the scalar
 * operations of the twin, eight at a time. Other compilers run plain loops with the same
 * per-element order. */
#if defined(__GNUC__) && !defined(NACZ_SSM_NO_VECTOR_EXT)
#define HAVE_V8 1
typedef float v8 __attribute__((vector_size(32)));
#define LD8(v, p) memcpy(&(v), (p), sizeof(v8)) /* unaligned load / store */
#define ST8(p, v) memcpy((p), &(v), sizeof(v8))
#else
#define HAVE_V8 0
#endif

/* big helpers are inlined into each (cloned) caller so they are compiled for its target */
#if defined(__GNUC__)
#define INL static inline __attribute__((always_inline))
#else
#define INL static inline
#endif

enum {
    X_D, X_DI, X_N, X_R, X_P, X_KC, X_L, X_T, X_V, X_CAP, X_KT,
    X_LSZ, X_O_G, X_O_WIN, X_O_CW, X_O_CB, X_O_WXP, X_O_WDT, X_O_BDT, X_O_ALOG, X_O_D,
    X_O_WOUT, X_O_GF, X_NCORE,
    X_ASZ, X_A_R, X_A_RS, X_A_N, X_A_Z, X_A_XC, X_A_U, X_A_DBC, X_A_DPRE, X_A_DEL, X_A_Y,
    X_A_GY, X_TSZ,
    X_B_DR, X_B_DY, X_B_DZ, X_B_DU, X_B_DDEL, X_B_DX, X_B_DBC, X_B_DH, X_B_DAN, X_B_DHT,
    X_B_GT, X_B_T1, X_B_T2, X_B_T3, X_BSZ,
    X_COUNT
};

static const char DIM_NAMES[] =
    "d,di,N,R,P,Kc,L,T,V,cap,KT,"
    "lsz,o_g,o_win,o_cw,o_cb,o_wxp,o_wdt,o_bdt,o_alog,o_D,o_wout,o_gf,ncore,"
    "asz,a_r,a_rs,a_n,a_z,a_xc,a_u,a_dbc,a_dpre,a_del,a_y,a_gy,tsz,"
    "b_dR,b_dY,b_dZ,b_dU,b_dDel,b_dX,b_dBC,b_dh,b_dAn,b_dHT,b_GT,b_t1,b_t2,b_t3,bsz";

SSM_API const char *ssm_dim_names(void) { return DIM_NAMES; }
SSM_API int ssm_abi_version(void) { return SSM_ABI_VERSION; }

#define DIM(i) ((u64)dims[(i)])

/* ------------------------------------------------------------------------------------- */
/* scalar functions                                                                       */
/* ------------------------------------------------------------------------------------- */

static inline float i2f(int32_t i) { float f; memcpy(&f, &i, 4); return f; }
static inline int32_t f2i(float f) { int32_t i; memcpy(&i, &f, 4); return i; }

#define EXP_LO (-87.0f)
#define EXP_HI (87.0f)
#define LOG2E 1.44269504088896341f
#define MAGIC 12582912.0f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define EP0 1.9875691500e-4f
#define EP1 1.3981999507e-3f
#define EP2 8.3334519073e-3f
#define EP3 4.1665795894e-2f
#define EP4 1.6666665459e-1f
#define EP5 5.0000001201e-1f
#define SQRT2F 1.41421356237f
#define LP0 7.0376836292e-2f
#define LP1 (-1.1514610310e-1f)
#define LP2 1.1676998740e-1f
#define LP3 (-1.2420140846e-1f)
#define LP4 1.4249322787e-1f
#define LP5 (-1.6668057665e-1f)
#define LP6 2.0000714765e-1f
#define LP7 (-2.4999993993e-1f)
#define LP8 3.3333331174e-1f
#define LOG_MIN 1.0e-30f
#define SP_HI 15.0f
#define SP_LO (-15.0f)
#define NORM_EPS 1e-5f
#define LOGIT_CLIP 50.0f

static inline float fexp(float x) {
    x = x > EXP_LO ? x : EXP_LO;
    x = x < EXP_HI ? x : EXP_HI;
    float fn = (x * LOG2E + MAGIC) - MAGIC;
    float r = x - fn * LN2_HI;
    r = r - fn * LN2_LO;
    float z = r * r;
    float p = EP0;
    p = p * r + EP1;
    p = p * r + EP2;
    p = p * r + EP3;
    p = p * r + EP4;
    p = p * r + EP5;
    p = p * z + r + 1.0f;
    int32_t n = (int32_t)fn;
    return p * i2f((int32_t)((uint32_t)(n + 127) << 23));
}

static inline float flog(float x) {
    x = x > LOG_MIN ? x : LOG_MIN;
    int32_t b = f2i(x);
    int32_t e = (b >> 23) - 127;
    float m = i2f((b & 0x7FFFFF) | 0x3F800000);
    int big = m > SQRT2F;
    m = big ? m * 0.5f : m;
    e = big ? e + 1 : e;
    float f = m - 1.0f;
    float z = f * f;
    float y = LP0;
    y = y * f + LP1;
    y = y * f + LP2;
    y = y * f + LP3;
    y = y * f + LP4;
    y = y * f + LP5;
    y = y * f + LP6;
    y = y * f + LP7;
    y = y * f + LP8;
    y = y * f * z;
    float fe = (float)e;
    y = y + fe * LN2_LO;
    y = y - 0.5f * z;
    float r = f + y;
    r = r + fe * LN2_HI;
    return r;
}

static inline float sigm(float x) { return 1.0f / (1.0f + fexp(-x)); }

static inline float softplus(float x) {
    float e = fexp(x);
    float r = flog(1.0f + e);
    r = x < SP_LO ? e : r;
    return x > SP_HI ? x : r;
}

/* sum a[k]*b[k], 8 lanes (lane l takes k = l mod 8), ((0+1)+(2+3))+((4+5)+(6+7)), tail */
static inline float dot8(const float *a, const float *b, u64 n) {
    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    u64 n8 = n - (n & 7u);
    for (u64 k = 0; k < n8; k += 8)
        for (u64 l = 0; l < 8; l++) s[l] += a[k + l] * b[k + l];
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (u64 k = n8; k < n; k++) t += a[k] * b[k];
    return t;
}

#define TREE16(s) ((((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + \
                   (((s[8] + s[9]) + (s[10] + s[11])) + ((s[12] + s[13]) + (s[14] + s[15]))))

/* sum x[k], 16 lanes, pairwise tree, then the tail */
static inline float sum16(const float *x, u64 n) {
    float s[16];
    for (int l = 0; l < 16; l++) s[l] = 0.0f;
    u64 n16 = n - (n & 15u);
    for (u64 k = 0; k < n16; k += 16)
        for (u64 l = 0; l < 16; l++) s[l] += x[k + l];
    float t = TREE16(s);
    for (u64 k = n16; k < n; k++) t += x[k];
    return t;
}

/* out[o] += sum_i x[i] * W[i * n_out + o] (o < n_out), accumulated in i order */
INL void vecmat_acc(float *out, const float *x, const float *W, u64 n_in, u64 n_out) {
    for (u64 i = 0; i < n_in; i++) {
        float w = x[i];
        const float *row = W + i * n_out;
        for (u64 o = 0; o < n_out; o++) out[o] += w * row[o];
    }
}

/* G[i * n_out + o] += x[i] * g[o]: the gradient of vecmat_acc's W */
INL void outer_acc(float *G, const float *x, const float *g, u64 n_in, u64 n_out) {
    for (u64 i = 0; i < n_in; i++) {
        float w = x[i];
        float *row = G + i * n_out;
        for (u64 o = 0; o < n_out; o++) row[o] += w * g[o];
    }
}

/* out = RMSNorm(r) * g over d values; the reciprocal rms goes to *rs_at */
INL void rms_norm(const float *r, const float *g, float *rs_at, float *out, u64 d) {
    float ss = dot8(r, r, d);
    float rs = 1.0f / sqrtf(ss / (float)d + NORM_EPS);
    *rs_at = rs;
    for (u64 i = 0; i < d; i++) out[i] = (r[i] * rs) * g[i];
}

/* ------------------------------------------------------------------------------------- */
/* forward                                                                                */
/* ------------------------------------------------------------------------------------- */

/* One token through one Mamba block (see layer_fwd in nacz/models/ssm/forward.py). */
INL void layer_fwd(const float *P, u64 lb, const int64_t *dims, const float *An,
                      float *act, u64 ro, float *xw, u64 xo, const float *hp, float *ho,
                      float *dA, float *tmp) {
    const u64 d = DIM(X_D), di = DIM(X_DI), N = DIM(X_N), R = DIM(X_R), Pp = DIM(X_P);
    const u64 Kc = DIM(X_KC), di2 = 2 * di;
    const float *g = P + lb + DIM(X_O_G);
    const float *Win = P + lb + DIM(X_O_WIN);
    const float *cw = P + lb + DIM(X_O_CW);
    const float *cb = P + lb + DIM(X_O_CB);
    const float *Wxp = P + lb + DIM(X_O_WXP);
    const float *Wdt = P + lb + DIM(X_O_WDT);
    const float *bdt = P + lb + DIM(X_O_BDT);
    const float *Dv = P + lb + DIM(X_O_D);
    const float *Wout = P + lb + DIM(X_O_WOUT);
    float *r = act + ro + DIM(X_A_R);
    float *nrm = act + ro + DIM(X_A_N);
    float *z = act + ro + DIM(X_A_Z);
    float *xc = act + ro + DIM(X_A_XC);
    float *u = act + ro + DIM(X_A_U);
    float *dbc = act + ro + DIM(X_A_DBC);
    float *dpre = act + ro + DIM(X_A_DPRE);
    float *dl = act + ro + DIM(X_A_DEL);
    float *y = act + ro + DIM(X_A_Y);
    float *gy = act + ro + DIM(X_A_GY);
    float *nxt = act + ro + DIM(X_ASZ);
    rms_norm(r, g, act + ro + DIM(X_A_RS), nrm, d);
    /* in-projection */
    for (u64 o = 0; o < di2; o++) tmp[o] = 0.0f;
    vecmat_acc(tmp, nrm, Win, d, di2);
    float *xl = xw + xo + (Kc - 1) * di;
    for (u64 c = 0; c < di; c++) {
        xl[c] = tmp[c];
        z[c] = tmp[di + c];
    }
    /* causal depthwise conv + SiLU */
    for (u64 c = 0; c < di; c++) xc[c] = cb[c];
    for (u64 k = 0; k < Kc; k++) {
        const float *wk = cw + k * di;
        const float *xk = xw + xo + k * di;
        for (u64 c = 0; c < di; c++) xc[c] += wk[c] * xk[c];
    }
    for (u64 c = 0; c < di; c++) {
        float v = xc[c];
        u[c] = v * sigm(v);
    }
    /* x-projection */
    for (u64 o = 0; o < Pp; o++) dbc[o] = 0.0f;
    vecmat_acc(dbc, u, Wxp, di, Pp);
    /* delta */
    for (u64 c = 0; c < di; c++) dpre[c] = bdt[c];
    vecmat_acc(dpre, dbc, Wdt, R, di);
    for (u64 c = 0; c < di; c++) dl[c] = softplus(dpre[c]);
    /* selective scan */
    for (u64 c = 0; c < di; c++) y[c] = 0.0f;
    for (u64 s = 0; s < N; s++) {
        float Bs = dbc[R + s];
        float Cs = dbc[R + N + s];
        const float *An_s = An + s * di;
        const float *hp_s = hp + s * di;
        float *ho_s = ho + s * di;
        float *dA_s = dA + s * di;
        for (u64 c = 0; c < di; c++) dA_s[c] = fexp(dl[c] * An_s[c]);
        for (u64 c = 0; c < di; c++) {
            float h = dA_s[c] * hp_s[c] + (dl[c] * u[c]) * Bs;
            ho_s[c] = h;
            y[c] += h * Cs;
        }
    }
    for (u64 c = 0; c < di; c++) y[c] = y[c] + Dv[c] * u[c];
    /* gate and out-projection with residual */
    for (u64 c = 0; c < di; c++) {
        float zc = z[c];
        gy[c] = y[c] * (zc * sigm(zc));
    }
    for (u64 j = 0; j < d; j++) nxt[j] = 0.0f;
    vecmat_acc(nxt, gy, Wout, di, d);
    for (u64 j = 0; j < d; j++) nxt[j] = r[j] + nxt[j];
}

INL void final_norm(const float *P, const int64_t *dims, float *fin) {
    const u64 d = DIM(X_D);
    const float *gf = P + DIM(X_O_GF);
    rms_norm(fin, gf, fin + d, fin + d + 1, d);
}

SSM_API HOT void ssm_refresh(const int64_t *dims, const float *P, float *An) {
    const u64 L = DIM(X_L), nd = DIM(X_N) * DIM(X_DI);
    for (u64 l = 0; l < L; l++) {
        const float *a = P + l * DIM(X_LSZ) + DIM(X_O_ALOG);
        float *o = An + l * nd;
        for (u64 i = 0; i < nd; i++) o[i] = -fexp(a[i]);
    }
}

SSM_API void ssm_vlog(int64_t n, const float *x, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = flog(x[i]);
}

SSM_API void ssm_vexp(int64_t n, const float *x, float *out) {
    for (int64_t i = 0; i < n; i++) out[i] = fexp(x[i]);
}

SSM_API HOT void ssm_step(int64_t A_, int64_t S_, int64_t pos_, const int32_t *inputs,
                          const int64_t *dims, const float *P, const float *An,
                          const float *emb, float *conv, float *ssm, float *hf, float *act,
                          float *dAw, float *tmp) {
    const u64 A = (u64)A_, S = (u64)S_, pos = (u64)pos_;
    const u64 d = DIM(X_D), di = DIM(X_DI), nd = DIM(X_N) * di, Kc = DIM(X_KC), L = DIM(X_L);
    const u64 asz = DIM(X_ASZ), lsz = DIM(X_LSZ);
    for (u64 a = 0; a < A; a++) {
        const float *e = emb + (u64)inputs[pos * S + a] * d;
        for (u64 i = 0; i < d; i++) act[i] = e[i];
        for (u64 l = 0; l < L; l++) {
            u64 xo = (a * L + l) * Kc * di;
            float *h = ssm + (a * L + l) * nd;
            layer_fwd(P, l * lsz, dims, An + l * nd, act, l * asz, conv, xo, h, h, dAw, tmp);
            for (u64 i = 0; i < (Kc - 1) * di; i++) conv[xo + i] = conv[xo + di + i];
        }
        float *fin = act + L * asz;
        final_norm(P, dims, fin);
        for (u64 i = 0; i < d; i++) hf[a * d + i] = fin[d + 1 + i];
    }
}

/* Lb[r, k] = clamp((Whf[d, k] + pr[k]) + sum_j H[r*hs + ho + j] * Whf[j, k]) for k < c1:
 * per element bias + prior first, then j = 0, 1, ... in order (as in the twin). */
INL float clampl(float v) {
    v = v > -LOGIT_CLIP ? v : -LOGIT_CLIP;
    return v < LOGIT_CLIP ? v : LOGIT_CLIP;
}

INL void head_fwd(const float *Whf, const float *pr, const int64_t *dims, u64 c1, u64 nrows,
                  const float *H, u64 hs, u64 ho, float *Lb) {
    const u64 d = DIM(X_D), cap = DIM(X_CAP), KT = DIM(X_KT);
    const float *b = Whf + d * cap;
    for (u64 k0 = 0; k0 < c1; k0 += KT) {
        const u64 k1 = k0 + KT < c1 ? k0 + KT : c1;
        u64 kb = k0;
#if HAVE_V8
        kb = k0 + ((k1 - k0) & ~(u64)15);
        for (u64 r = 0; r < nrows; r++) {
            float *row = Lb + r * cap;
            const float *h = H + r * hs + ho;
            for (u64 k = k0; k < kb; k += 16) {
                v8 a0, a1, x0, x1;
                LD8(a0, b + k);
                LD8(a1, b + k + 8);
                LD8(x0, pr + k);
                LD8(x1, pr + k + 8);
                a0 += x0;
                a1 += x1;
                for (u64 j = 0; j < d; j++) {
                    const float w = h[j];
                    const float *wr = Whf + j * cap + k;
                    LD8(x0, wr);
                    LD8(x1, wr + 8);
                    a0 += w * x0;
                    a1 += w * x1;
                }
                ST8(row + k, a0);
                ST8(row + k + 8, a1);
            }
        }
#endif
        for (u64 r = 0; r < nrows; r++) {
            float *row = Lb + r * cap;
            const float *h = H + r * hs + ho;
            for (u64 k = kb; k < k1; k++) row[k] = b[k] + pr[k];
            for (u64 j = 0; j < d; j++) {
                const float w = h[j];
                const float *wr = Whf + j * cap;
                for (u64 k = kb; k < k1; k++) row[k] += w * wr[k];
            }
            for (u64 k = k0; k < k1; k++) row[k] = clampl(row[k]);
        }
    }
}

SSM_API HOT void ssm_logprobs(int64_t A_, int64_t K_, const int64_t *dims, const float *Whf,
                              const float *pr, const float *hf, float *Lb, float *scr,
                              const int32_t *type_of, double *out, int64_t out_stride) {
    const u64 A = (u64)A_, K = (u64)K_;
    const u64 d = DIM(X_D), cap = DIM(X_CAP), V = DIM(X_V);
    const u64 lo = K >= V ? 1 : 0;
    head_fwd(Whf, pr, dims, K + 1, A, hf, d, 0, Lb);
    for (u64 a = 0; a < A; a++) {
        const float *row = Lb + a * cap;
        double *o = out + a * (u64)out_stride;
        for (u64 k = lo; k < K + 1; k++) scr[k] = fexp(row[k]);
        float s = sum16(scr + lo, K + 1 - lo);
        float ls = flog(s);
        if (K < V) {
            double fill = (double)((row[0] - ls) - flog((float)(V - K)));
            for (u64 v = 0; v < V; v++) o[v] = fill;
        }
        for (u64 k = 1; k < K + 1; k++) o[(u64)type_of[k]] = (double)(row[k] - ls);
    }
}

/* ------------------------------------------------------------------------------------- */
/* backward                                                                               */
/* ------------------------------------------------------------------------------------- */

INL void layer_bwd(const float *P, float *gP, u64 l, const int64_t *dims, const float *An,
                      const float *act, const float *xs, const float *hs, const float *dAs,
                      float *bw) {
    const u64 d = DIM(X_D), di = DIM(X_DI), N = DIM(X_N), R = DIM(X_R), Pp = DIM(X_P);
    const u64 Kc = DIM(X_KC), T = DIM(X_T), asz = DIM(X_ASZ), tsz = DIM(X_TSZ);
    const u64 nd = N * di, di2 = 2 * di, N2 = 2 * N;
    const u64 lb = l * DIM(X_LSZ);
    const float *g = P + lb + DIM(X_O_G), *Win = P + lb + DIM(X_O_WIN);
    const float *cw = P + lb + DIM(X_O_CW), *Wxp = P + lb + DIM(X_O_WXP);
    const float *Wdt = P + lb + DIM(X_O_WDT), *Dv = P + lb + DIM(X_O_D);
    const float *Wout = P + lb + DIM(X_O_WOUT);
    float *gg = gP + lb + DIM(X_O_G), *gWin = gP + lb + DIM(X_O_WIN);
    float *gcw = gP + lb + DIM(X_O_CW), *gcb = gP + lb + DIM(X_O_CB);
    float *gWxp = gP + lb + DIM(X_O_WXP), *gWdt = gP + lb + DIM(X_O_WDT);
    float *gbdt = gP + lb + DIM(X_O_BDT), *gAlog = gP + lb + DIM(X_O_ALOG);
    float *gD = gP + lb + DIM(X_O_D), *gWout = gP + lb + DIM(X_O_WOUT);
    const u64 aR = DIM(X_A_R), aRS = DIM(X_A_RS), aN = DIM(X_A_N), aZ = DIM(X_A_Z);
    const u64 aXC = DIM(X_A_XC), aU = DIM(X_A_U), aDBC = DIM(X_A_DBC), aDPRE = DIM(X_A_DPRE);
    const u64 aDEL = DIM(X_A_DEL), aY = DIM(X_A_Y), aGY = DIM(X_A_GY);
    float *dR = bw + DIM(X_B_DR), *dY = bw + DIM(X_B_DY), *dZ = bw + DIM(X_B_DZ);
    float *dU = bw + DIM(X_B_DU), *dDel = bw + DIM(X_B_DDEL), *dX = bw + DIM(X_B_DX);
    float *dBC = bw + DIM(X_B_DBC), *dh = bw + DIM(X_B_DH), *dAn = bw + DIM(X_B_DAN);
    float *t1 = bw + DIM(X_B_T1), *t2 = bw + DIM(X_B_T2), *t3 = bw + DIM(X_B_T3);

    /* phase A: out-projection, gate, D skip */
    for (u64 t = 0; t < T; t++) {
        const float *rec = act + t * tsz + l * asz;
        const float *dO = dR + t * d;
        float *dy = dY + t * di, *dz = dZ + t * di, *du = dU + t * di;
        outer_acc(gWout, rec + aGY, dO, di, d);
        for (u64 c = 0; c < di; c++) dy[c] = dot8(Wout + c * d, dO, d);
        for (u64 c = 0; c < di; c++) {
            float zc = rec[aZ + c];
            float sz = sigm(zc);
            float dg = dy[c];
            dy[c] = dg * (zc * sz);
            dz[c] = (dg * rec[aY + c]) * (sz * (1.0f + zc * (1.0f - sz)));
        }
        for (u64 c = 0; c < di; c++) {
            gD[c] += dy[c] * rec[aU + c];
            du[c] = dy[c] * Dv[c];
        }
    }
    /* phase B: selective scan backwards in time */
    for (u64 i = 0; i < nd; i++) {
        dh[i] = 0.0f;
        dAn[i] = 0.0f;
    }
    for (int64_t ti = (int64_t)T - 1; ti >= 0; ti--) {
        const u64 t = (u64)ti;
        const float *rec = act + t * tsz + l * asz;
        const float *u = rec + aU, *dl = rec + aDEL, *dbc = rec + aDBC;
        const float *hcur = hs + (t + 1) * nd, *hprv = hs + t * nd, *dAt = dAs + t * nd;
        const float *dy = dY + t * di;
        float *du = dU + t * di, *ddel = dDel + t * di, *dbct = dBC + t * N2;
        for (u64 s = 0; s < N; s++) {
            float Cs = dbc[R + N + s];
            float *dh_s = dh + s * di;
            for (u64 c = 0; c < di; c++) dh_s[c] += dy[c] * Cs;
        }
        for (u64 s = 0; s < N; s++) dbct[N + s] = dot8(hcur + s * di, dy, di);
        for (u64 c = 0; c < di; c++) t1[c] = dl[c] * u[c];
        for (u64 s = 0; s < N; s++) dbct[s] = dot8(dh + s * di, t1, di);
        for (u64 c = 0; c < di; c++) ddel[c] = 0.0f;
        for (u64 s = 0; s < N; s++) {
            float Bs = dbc[R + s];
            float *dh_s = dh + s * di;
            const float *hp_s = hprv + s * di, *dA_s = dAt + s * di, *An_s = An + s * di;
            float *dAn_s = dAn + s * di;
            for (u64 c = 0; c < di; c++) {
                float gh = dh_s[c];
                float q = (gh * hp_s[c]) * dA_s[c];
                ddel[c] += q * An_s[c];
                dAn_s[c] += q * dl[c];
                float gb = gh * Bs;
                ddel[c] += gb * u[c];
                du[c] += gb * dl[c];
                dh_s[c] = gh * dA_s[c];
            }
        }
    }
    for (u64 i = 0; i < nd; i++) gAlog[i] += dAn[i] * An[i];
    /* phase C: softplus, dt- and x-projections, SiLU */
    for (u64 t = 0; t < T; t++) {
        const float *rec = act + t * tsz + l * asz;
        const float *xc = rec + aXC, *u = rec + aU, *dbc = rec + aDBC, *dpre = rec + aDPRE;
        float *du = dU + t * di, *ddel = dDel + t * di;
        const float *dbct = dBC + t * N2;
        for (u64 c = 0; c < di; c++) {
            ddel[c] = ddel[c] * sigm(dpre[c]);
            gbdt[c] += ddel[c];
        }
        outer_acc(gWdt, dbc, ddel, R, di);
        for (u64 q = 0; q < R; q++) t2[q] = dot8(Wdt + q * di, ddel, di);
        for (u64 s = 0; s < N2; s++) t2[R + s] = dbct[s];
        outer_acc(gWxp, u, t2, di, Pp);
        for (u64 c = 0; c < di; c++) du[c] += dot8(Wxp + c * Pp, t2, Pp);
        for (u64 c = 0; c < di; c++) {
            float xv = xc[c];
            float sg = sigm(xv);
            du[c] = du[c] * (sg * (1.0f + xv * (1.0f - sg)));
        }
    }
    /* phase D: causal conv (contributions to x from before the chunk are dropped) */
    for (u64 i = 0; i < T * di; i++) dX[i] = 0.0f;
    for (u64 t = 0; t < T; t++) {
        const float *dxc = dU + t * di;
        for (u64 c = 0; c < di; c++) gcb[c] += dxc[c];
        for (u64 k = 0; k < Kc; k++) {
            const float *xk = xs + (t + k) * di;
            float *gw = gcw + k * di;
            for (u64 c = 0; c < di; c++) gw[c] += dxc[c] * xk[c];
            if (t + k + 1 >= Kc) {
                float *dx = dX + (t + k + 1 - Kc) * di;
                const float *wk = cw + k * di;
                for (u64 c = 0; c < di; c++) dx[c] += dxc[c] * wk[c];
            }
        }
    }
    /* phase E: in-projection and RMSNorm, into the residual gradient */
    for (u64 t = 0; t < T; t++) {
        const float *rec = act + t * tsz + l * asz;
        float rs = rec[aRS];
        const float *dx = dX + t * di, *dz = dZ + t * di;
        for (u64 c = 0; c < di; c++) {
            t1[c] = dx[c];
            t1[di + c] = dz[c];
        }
        outer_acc(gWin, rec + aN, t1, d, di2);
        for (u64 i = 0; i < d; i++) t2[i] = dot8(Win + i * di2, t1, di2);
        for (u64 i = 0; i < d; i++) {
            t3[i] = rec[aR + i] * rs;
            gg[i] += t2[i] * t3[i];
            t2[i] = t2[i] * g[i];
        }
        float q = dot8(t2, t3, d) / (float)d;
        float *dr = dR + t * d;
        for (u64 i = 0; i < d; i++) dr[i] = dr[i] + rs * (t2[i] - t3[i] * q);
    }
}

SSM_API HOT double ssm_train(int64_t a_, int64_t S_, const int64_t *dims,
                             const int32_t *inputs, const int32_t *tgt, const int32_t *Kt,
                             const float *conv0, const float *ssm0, const float *P,
                             const float *An, const float *emb, const float *Whf,
                             const float *pr, float *gP, float *gWh, float *gemb, float *act,
                             float *xs, float *hs, float *dAs, float *Lb, float *bw) {
    const u64 a = (u64)a_, S = (u64)S_;
    const u64 d = DIM(X_D), di = DIM(X_DI), nd = DIM(X_N) * di, Kc = DIM(X_KC), L = DIM(X_L);
    const u64 T = DIM(X_T), V = DIM(X_V), cap = DIM(X_CAP), KT = DIM(X_KT);
    const u64 asz = DIM(X_ASZ), tsz = DIM(X_TSZ), lsz = DIM(X_LSZ);
    const u64 xr = T + Kc - 1, T1 = T + 1;
    /* start state */
    for (u64 l = 0; l < L; l++) {
        const float *src = conv0 + (a * L + l) * Kc * di;
        for (u64 i = 0; i < (Kc - 1) * di; i++) xs[l * xr * di + i] = src[i];
        src = ssm0 + (a * L + l) * nd;
        for (u64 i = 0; i < nd; i++) hs[l * T1 * nd + i] = src[i];
    }
    float *tmp = bw + DIM(X_B_T1);
    /* forward over the chunk, keeping activations */
    for (u64 t = 0; t < T; t++) {
        const float *e = emb + (u64)inputs[t * S + a] * d;
        u64 rec0 = t * tsz;
        for (u64 i = 0; i < d; i++) act[rec0 + i] = e[i];
        for (u64 l = 0; l < L; l++) {
            u64 hb = l * T1 * nd;
            layer_fwd(P, l * lsz, dims, An + l * nd, act, rec0 + l * asz, xs,
                      (l * xr + t) * di, hs + hb + t * nd, hs + hb + (t + 1) * nd,
                      dAs + (l * T + t) * nd, tmp);
        }
        final_norm(P, dims, act + rec0 + L * asz);
    }
    /* head: logits, softmax, loss, G = (p - onehot) / T in place */
    u64 Kmax = 0;
    for (u64 t = 0; t < T; t++)
        if ((u64)Kt[t] > Kmax) Kmax = (u64)Kt[t];
    const u64 hof = L * asz + d + 1;
    head_fwd(Whf, pr, dims, Kmax + 1, T, act, tsz, hof, Lb);
    const float scale = 1.0f / (float)T;
    double loss = 0.0;
    for (u64 t = 0; t < T; t++) {
        const u64 K = (u64)Kt[t];
        const u64 lo = K >= V ? 1 : 0;
        float *row = Lb + t * cap;
        const u64 y = (u64)tgt[t * S + a];
        float ly = row[y];
        for (u64 k = lo; k < K + 1; k++) row[k] = fexp(row[k]);
        float s = sum16(row + lo, K + 1 - lo);
        float ls = flog(s);
        loss += (double)(ls - ly);
        float inv = 1.0f / s;
        for (u64 k = lo; k < K + 1; k++) row[k] = (row[k] * inv) * scale;
        row[y] = row[y] - scale;
        for (u64 k = 0; k < lo; k++) row[k] = 0.0f;
        for (u64 k = K + 1; k < Kmax + 1; k++) row[k] = 0.0f;
    }
    /* head gradients: gWh[j, k] += sum_t h[t, j] G[t, k] (t in order) and
     * dHT[j, t] = sum_k Whf[j, k] G[t, k] (k in order), as in the twin */
    float *dHT = bw + DIM(X_B_DHT), *GT = bw + DIM(X_B_GT);
    for (u64 i = 0; i < d * T; i++) dHT[i] = 0.0f;
    for (u64 k0 = 0; k0 < Kmax + 1; k0 += KT) {
        const u64 k1 = k0 + KT < Kmax + 1 ? k0 + KT : Kmax + 1;
        u64 kb = k0;
#if HAVE_V8
        kb = k0 + ((k1 - k0) & ~(u64)15);
        for (u64 j = 0; j < d; j++) {
            float *gw = gWh + j * cap;
            for (u64 k = k0; k < kb; k += 16) {
                v8 a0, a1, x0, x1;
                LD8(a0, gw + k);
                LD8(a1, gw + k + 8);
                for (u64 t = 0; t < T; t++) {
                    const float w = act[t * tsz + hof + j];
                    const float *G = Lb + t * cap + k;
                    LD8(x0, G);
                    LD8(x1, G + 8);
                    a0 += w * x0;
                    a1 += w * x1;
                }
                ST8(gw + k, a0);
                ST8(gw + k + 8, a1);
            }
        }
#endif
        for (u64 t = 0; t < T; t++) {
            const float *G = Lb + t * cap;
            for (u64 j = 0; j < d; j++) {
                const float w = act[t * tsz + hof + j];
                float *gw = gWh + j * cap;
                for (u64 k = kb; k < k1; k++) gw[k] += w * G[k];
            }
            float *gb = gWh + d * cap;
            for (u64 k = k0; k < k1; k++) gb[k] += G[k];
            for (u64 k = k0; k < k1; k++) GT[(k - k0) * T + t] = G[k];
        }
        for (u64 j = 0; j < d; j++) {
            float *dh = dHT + j * T;
            const float *wr = Whf + j * cap;
            u64 tb = 0;
#if HAVE_V8
            tb = T - (T & 7u);
            for (u64 t0 = 0; t0 < tb; t0 += 8) {
                v8 acc, x;
                LD8(acc, dh + t0);
                for (u64 k = k0; k < k1; k++) {
                    LD8(x, GT + (k - k0) * T + t0);
                    acc += wr[k] * x;
                }
                ST8(dh + t0, acc);
            }
#endif
            for (u64 k = k0; k < k1; k++) {
                const float w = wr[k];
                const float *gt = GT + (k - k0) * T;
                for (u64 t = tb; t < T; t++) dh[t] += w * gt[t];
            }
        }
    }
    /* final RMSNorm backward -> dR */
    const float *gf = P + DIM(X_O_GF);
    float *ggf = gP + DIM(X_O_GF);
    float *dR = bw + DIM(X_B_DR), *t2 = bw + DIM(X_B_T2), *t3 = bw + DIM(X_B_T3);
    for (u64 t = 0; t < T; t++) {
        const float *fin = act + t * tsz + L * asz;
        float rs = fin[d];
        for (u64 i = 0; i < d; i++) {
            t3[i] = fin[i] * rs;
            float dhi = dHT[i * T + t];
            ggf[i] += dhi * t3[i];
            t2[i] = dhi * gf[i];
        }
        float q = dot8(t2, t3, d) / (float)d;
        float *dr = dR + t * d;
        for (u64 i = 0; i < d; i++) dr[i] = rs * (t2[i] - t3[i] * q);
    }
    for (int64_t li = (int64_t)L - 1; li >= 0; li--) {
        const u64 l = (u64)li;
        layer_bwd(P, gP, l, dims, An + l * nd, act, xs + l * xr * di, hs + l * T1 * nd,
                  dAs + l * T * nd, bw);
    }
    for (u64 t = 0; t < T; t++) {
        float *ge = gemb + (u64)inputs[t * S + a] * d;
        const float *dr = dR + t * d;
        for (u64 i = 0; i < d; i++) ge[i] += dr[i];
    }
    return loss / (double)T;
}

/* ------------------------------------------------------------------------------------- */
/* Adam                                                                                   */
/* ------------------------------------------------------------------------------------- */

INL void adam_vec(float *p, float *g, float *m, float *v, u64 n, const float *hp) {
    const float lr = hp[0], b1 = hp[1], omb1 = hp[2], b2 = hp[3], omb2 = hp[4], eps = hp[5];
    const float clip = hp[6];
    for (u64 i = 0; i < n; i++) {
        float gi = g[i];
        gi = gi > clip ? clip : gi; /* branch-free clip; NaN -> 0 */
        gi = gi < -clip ? -clip : gi;
        gi = gi == gi ? gi : 0.0f;
        g[i] = 0.0f;
        float mi = b1 * m[i] + omb1 * gi;
        float vi = b2 * v[i] + omb2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] - (lr * mi) / (sqrtf(vi) + eps);
    }
}

SSM_API HOT void ssm_adam(const int64_t *dims, int64_t K_, const int32_t *rows, int64_t nrows,
              const float *hp, float *P, float *gP, float *mP, float *vP, float *Whf,
              float *gWh, float *mWh, float *vWh, float *emb, float *gemb, float *memb,
              float *vemb, float *An) {
    const u64 K = (u64)K_, d = DIM(X_D), cap = DIM(X_CAP);
    adam_vec(P, gP, mP, vP, DIM(X_NCORE), hp);
    for (u64 j = 0; j < d + 1; j++)
        adam_vec(Whf + j * cap, gWh + j * cap, mWh + j * cap, vWh + j * cap, K + 1, hp);
    for (int64_t i = 0; i < nrows; i++) {
        u64 o = (u64)rows[i] * d;
        adam_vec(emb + o, gemb + o, memb + o, vemb + o, d, hp);
    }
    ssm_refresh(dims, P, An);
}
