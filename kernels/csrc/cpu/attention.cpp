// Block-sparse attention on the CPU, forward and backward: softmax(Q K^T * scale + mask) V over only the (query block, key
// block) tiles a pattern keeps, with an online softmax so no score row is ever stored whole.
//
// The layout (built in Python from any mask predicate, hf_sparse/attention/layout.py) is CSR over query blocks of
// BQ rows: kv_ptr (nqb + 1) int32, kv_blocks (nnzb) int32 key-block indices of BK = 64 keys, and per stored tile
// mask_index (nnzb) int32: -1 when every (query, key) pair of the tile is allowed, else a row of `bits` (npartial,
// BQ) int64 holding one 64-bit key mask per query. Padding comes as an additive key bias (B, Skv) (0 or -inf).
// Per (batch, head) the keys are transposed once into (D, Skv) so every score tile is a small GEMM over contiguous
// rows; a query row that no key may attend gives a zero output and lse = -inf.
#include "../namespace.h"

#include <cmath>
#include <limits>

#include "simd.h"

namespace {

using hf_sparse_cpu::Vec;
using Vf = Vec<float>;
constexpr int64_t BK = 64;               // keys per block: one 64-bit mask word per query row
constexpr int64_t KW = BK / Vf::W;       // vectors per key-block row
constexpr float kMinExpArg = -87.0f;     // below this exp underflows; such entries (and -inf) give exactly 0

// exp(x) for a vector: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-7 Taylor polynomial (relative error
// below 1e-8 on that range), 2^n by building the exponent bits. Inputs below kMinExpArg give 0.
inline Vf::R exp_v(Vf::R x) {
#ifdef HF_SPARSE_AVX2
  const __m256 too_small = _mm256_cmp_ps(x, _mm256_set1_ps(kMinExpArg), _CMP_LT_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(kMinExpArg));
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 split in two for exactness
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(too_small, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
#else
  return x < kMinExpArg ? 0.0f : std::exp(x);
#endif
}

inline Vf::R max_v(Vf::R a, Vf::R b) {
#ifdef HF_SPARSE_AVX2
  return _mm256_max_ps(a, b);
#else
  return a > b ? a : b;
#endif
}

inline float hmax(Vf::R a) {
  alignas(32) float t[Vf::W];
  Vf::store(t, a);
  float m = t[0];
  for (int i = 1; i < Vf::W; ++i) m = std::max(m, t[i]);
  return m;
}

inline void scale_row(float* row, int64_t d, float factor) {
  const Vf::R f = Vf::set1(factor);
  for (int64_t c = 0; c < d; c += Vf::W) Vf::store(row + c, Vf::fma(Vf::load(row + c), f, Vf::zero()));
}

// S (RB rows x BK) = Qs (scaled) times the key block kt (D x BK, row stride ldk), two vectors of keys per pass:
// RB * 2 accumulators (12 for RB = 6 cover the FMA latency on two ports), each loaded key vector serves RB rows.
template <int RB>
inline void scores_rows(const float* qs, int64_t d, const float* kt, int64_t ldk, float* s, int64_t c0, int64_t c1) {
  for (int64_t c = c0; c < c1; c += 2) {
    Vf::R acc[RB][2];
    for (int r = 0; r < RB; ++r) acc[r][0] = acc[r][1] = Vf::zero();
    for (int64_t e = 0; e < d; ++e) {
      const Vf::R k0 = Vf::load(kt + e * ldk + c * Vf::W), k1 = Vf::load(kt + e * ldk + (c + 1) * Vf::W);
      for (int r = 0; r < RB; ++r) {
        const Vf::R qv = Vf::set1(qs[r * d + e]);
        acc[r][0] = Vf::fma(qv, k0, acc[r][0]);
        acc[r][1] = Vf::fma(qv, k1, acc[r][1]);
      }
    }
    for (int r = 0; r < RB; ++r) {
      Vf::store(s + r * BK + c * Vf::W, acc[r][0]);
      Vf::store(s + r * BK + (c + 1) * Vf::W, acc[r][1]);
    }
  }
}

// Key vectors [c0, c1) of the tile only (even bounds); the caller masks the others.
inline void scores_tile(const float* qs, int64_t rows, int64_t d, const float* kt, int64_t ldk, float* s,
                        int64_t c0 = 0, int64_t c1 = KW) {
  int64_t i = 0;
  for (; i + 6 <= rows; i += 6) scores_rows<6>(qs + i * d, d, kt, ldk, s + i * BK, c0, c1);
  for (; i + 2 <= rows; i += 2) scores_rows<2>(qs + i * d, d, kt, ldk, s + i * BK, c0, c1);
  for (; i < rows; ++i) scores_rows<1>(qs + i * d, d, kt, ldk, s + i * BK, c0, c1);
}

// The keys of a tile any of its rows may attend, as a range [j0, j1) rounded out to pairs of vectors: at a band's
// edge a partial tile often leaves whole groups of 16 keys unused by all its rows, and those are not computed.
inline void used_keys(const int64_t* mbits, int64_t rows, int64_t valid, int64_t& j0, int64_t& j1) {
  uint64_t used = valid >= BK ? ~uint64_t(0) : ((uint64_t(1) << valid) - 1);
  if (mbits != nullptr) {
    uint64_t any = 0;
    for (int64_t i = 0; i < rows; ++i) any |= static_cast<uint64_t>(mbits[i]);
    used &= any;
  }
  if (used == 0) {
    j0 = j1 = 0;
    return;
  }
  const int64_t step = 2 * Vf::W;
  j0 = static_cast<int64_t>(__builtin_ctzll(used)) / step * step;
  j1 = (BK - static_cast<int64_t>(__builtin_clzll(used)) + step - 1) / step * step;
}

// O (RB rows x D) += A (RB x n, row stride lda) times B (n x D, row stride ldb), two vectors of D per pass,
// accumulators in registers across the n inner steps. The forward's P V (n = 64 keys) and the backward's dQ, dK
// and dV products all have this shape.
template <int RB>
inline void acc_rows(const float* a, int64_t lda, int64_t n, const float* bm, int64_t ldb, int64_t d, float* o) {
  for (int64_t c = 0; c < d / Vf::W; c += 2) {
    Vf::R acc[RB][2];
    for (int r = 0; r < RB; ++r) {
      acc[r][0] = Vf::load(o + r * d + c * Vf::W);
      acc[r][1] = Vf::load(o + r * d + (c + 1) * Vf::W);
    }
    for (int64_t j = 0; j < n; ++j) {
      const Vf::R b0 = Vf::load(bm + j * ldb + c * Vf::W), b1 = Vf::load(bm + j * ldb + (c + 1) * Vf::W);
      for (int r = 0; r < RB; ++r) {
        const Vf::R av = Vf::set1(a[r * lda + j]);
        acc[r][0] = Vf::fma(av, b0, acc[r][0]);
        acc[r][1] = Vf::fma(av, b1, acc[r][1]);
      }
    }
    for (int r = 0; r < RB; ++r) {
      Vf::store(o + r * d + c * Vf::W, acc[r][0]);
      Vf::store(o + r * d + (c + 1) * Vf::W, acc[r][1]);
    }
  }
}

// O (rows x D) += A (rows x n) B (n x D).
inline void acc_tile(const float* a, int64_t lda, int64_t rows, int64_t n, const float* bm, int64_t ldb, int64_t d,
                     float* o) {
  int64_t i = 0;
  for (; i + 6 <= rows; i += 6) acc_rows<6>(a + i * lda, lda, n, bm, ldb, d, o + i * d);
  for (; i + 2 <= rows; i += 2) acc_rows<2>(a + i * lda, lda, n, bm, ldb, d, o + i * d);
  for (; i < rows; ++i) acc_rows<1>(a + i * lda, lda, n, bm, ldb, d, o + i * d);
}

// Scores of one tile made final: keys outside the tile's mask word, past the end, or padded get -inf; the bias
// (0 or -inf per key) is added. A wholly allowed tile without bias is left as it is.
inline void mask_scores(float* s, int64_t rows, const int64_t* mbits, int64_t valid, const float* bias) {
  if (mbits == nullptr && valid == BK && bias == nullptr) return;
  const float ninf = -std::numeric_limits<float>::infinity();
  // Keys past the end are masked through the word, so the vector path needs no bounds.
  const uint64_t tail = valid >= BK ? ~uint64_t(0) : ((uint64_t(1) << valid) - 1);
  for (int64_t i = 0; i < rows; ++i) {
    float* si = s + i * BK;
    const uint64_t word = (mbits != nullptr ? static_cast<uint64_t>(mbits[i]) : ~uint64_t(0)) & tail;
#ifdef HF_SPARSE_AVX2
    // Eight keys at a time: their 8 mask bits against one bit per lane, then a blend with -inf. (The bias of the
    // last, partial key block is read one key at a time below: it ends at the sequence.)
    if (bias == nullptr || valid == BK) {
      const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
      const __m256 neg = _mm256_set1_ps(ninf);
      for (int64_t c = 0; c < KW; ++c) {
        const __m256i b8 = _mm256_set1_epi32(static_cast<int>((word >> (8 * c)) & 0xFFu));
        const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b8, lane_bit), lane_bit));
        __m256 x = _mm256_loadu_ps(si + 8 * c);
        if (bias != nullptr) x = _mm256_add_ps(x, _mm256_loadu_ps(bias + 8 * c));
        _mm256_storeu_ps(si + 8 * c, _mm256_blendv_ps(neg, x, keep));
      }
      continue;
    }
#endif
    for (int64_t j = 0; j < BK; ++j) {
      const bool keep = (word >> j) & 1u;
      si[j] = keep ? (bias != nullptr ? si[j] + bias[j] : si[j]) : ninf;
    }
  }
}

// Keys (rows x D, row-major, `count` of them) into kt (D x ld): the score tiles then read contiguous key rows.
inline void transpose_keys(const float* k, int64_t count, int64_t d, float* kt, int64_t ld) {
  for (int64_t j = 0; j < count; ++j)
    for (int64_t e = 0; e < d; ++e) kt[e * ld + j] = k[j * d + e];
}

// The layout: lengths and dtypes, kv_ptr from 0 to nnz and monotone, every key block and mask row in range. O(nnz),
// before the kernel reads any tile.
void check_layout(const at::Tensor& kv_ptr, const at::Tensor& kv_blocks, const at::Tensor& mask_index,
                  const at::Tensor& bits, int64_t nqb, int64_t nkb, int64_t bq, const char* op) {
  hf_sparse_cpu::check_cpu(op, {{"kv_ptr", &kv_ptr}, {"kv_blocks", &kv_blocks}, {"mask_index", &mask_index},
                                {"bits", &bits}});
  TORCH_CHECK_VALUE(kv_ptr.scalar_type() == at::kInt && kv_ptr.dim() == 1 && kv_ptr.numel() == nqb + 1,
                    "hf_sparse::", op, ": kv_ptr must be int32 of length (query blocks + 1) = ", nqb + 1,
                    ", got ", kv_ptr.scalar_type(), " ", kv_ptr.sizes());
  TORCH_CHECK_VALUE(kv_blocks.scalar_type() == at::kInt && kv_blocks.dim() == 1 &&
                        mask_index.scalar_type() == at::kInt && mask_index.sizes() == kv_blocks.sizes(),
                    "hf_sparse::", op, ": kv_blocks and mask_index must be 1-D int32 of equal length, got ",
                    kv_blocks.scalar_type(), " ", kv_blocks.sizes(), " and ", mask_index.scalar_type(), " ",
                    mask_index.sizes());
  TORCH_CHECK_VALUE(bits.scalar_type() == at::kLong && bits.dim() == 2 && bits.size(1) == bq,
                    "hf_sparse::", op, ": bits must be int64 (partial tiles, block_q=", bq, "), got ",
                    bits.scalar_type(), " ", bits.sizes());
  const int32_t* ptr = kv_ptr.data_ptr<int32_t>();
  const int64_t nnz = kv_blocks.numel();
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[nqb] == nnz, "hf_sparse::", op, ": kv_ptr must start at 0 and end at ",
                    nnz, " (the length of kv_blocks), got ", ptr[0], " and ", ptr[nqb]);
  for (int64_t i = 0; i < nqb; ++i)
    TORCH_CHECK_VALUE(ptr[i] <= ptr[i + 1], "hf_sparse::", op, ": kv_ptr is not monotone at ", i, " (", ptr[i],
                      " > ", ptr[i + 1], ")");
  const int32_t* kb = kv_blocks.data_ptr<int32_t>();
  const int32_t* mi = mask_index.data_ptr<int32_t>();
  for (int64_t p = 0; p < nnz; ++p) {
    TORCH_CHECK_VALUE(kb[p] >= 0 && kb[p] < nkb, "hf_sparse::", op, ": kv_blocks[", p, "]=", kb[p],
                      " is out of range [0, ", nkb, ")");
    TORCH_CHECK_VALUE(mi[p] >= -1 && mi[p] < bits.size(0), "hf_sparse::", op, ": mask_index[", p, "]=",
                      mi[p], " is out of range [-1, ", bits.size(0), ")");
  }
  // Key blocks strictly increase within a query block (as the layout builder writes them): a tile listed twice
  // would count its keys twice in the softmax, a silently wrong result rather than an error.
  for (int64_t i = 0; i < nqb; ++i)
    for (int64_t p = ptr[i] + 1; p < ptr[i + 1]; ++p)
      TORCH_CHECK_VALUE(kb[p - 1] < kb[p], "hf_sparse::", op, ": kv_blocks must strictly increase within a query "
                        "block, got kv_blocks[", p - 1, "]=", kb[p - 1], " and kv_blocks[", p, "]=", kb[p],
                        " in query block ", i);
}

// Sizes every loop below runs over: bounded (their products index the tensors), and a head dimension of at least one
// vector pair, so each (batch, kv head) task's key loops are bounded by elements k actually holds.
void check_sizes(const at::Tensor& q, const at::Tensor& k, const char* op) {
  for (int d = 0; d < 4; ++d) {
    hf_sparse_cpu::check_size(q.size(d), op, "q's sizes");
    hf_sparse_cpu::check_size(k.size(d), op, "k's sizes");
  }
  TORCH_CHECK_VALUE(q.size(3) > 0, "hf_sparse::", op, ": head_dim must be positive, got q ", q.sizes());
}

std::tuple<at::Tensor, at::Tensor> sparse_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v, const at::Tensor& kv_ptr,
                                                         const at::Tensor& kv_blocks, const at::Tensor& mask_index,
                                                         const at::Tensor& bits, const at::Tensor& key_bias,
                                                         double scale, int64_t block_q) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "hf_sparse::sparse_attention: q, k, v must be 4-D "
                    "(batch, heads, length, head_dim)");
  hf_sparse_cpu::check_cpu("sparse_attention", {{"q", &q}, {"k", &k}, {"v", &v}, {"key_bias", &key_bias}});
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
                    "hf_sparse::sparse_attention: q, k, v must be float32, got ", q.scalar_type(), ", ",
                    k.scalar_type(), ", ", v.scalar_type());
  check_sizes(q, k, "sparse_attention");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Skv = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == Skv && k.size(3) == D &&
                        v.size(3) == D && Hkv > 0 && H % Hkv == 0,
                    "hf_sparse::sparse_attention: shapes do not match: q ", q.sizes(), ", k ", k.sizes(), ", v ",
                    v.sizes(), " (heads must be a multiple of key/value heads)");
  TORCH_CHECK_VALUE(D % (2 * Vf::W) == 0, "hf_sparse::sparse_attention: head_dim must be a multiple of ", 2 * Vf::W,
                    ", got ", D);
  TORCH_CHECK_VALUE(block_q > 0 && block_q <= 256, "hf_sparse::sparse_attention: block_q must be in [1, 256], got ",
                    block_q);
  const int64_t nqb = (Sq + block_q - 1) / block_q, nkb = (Skv + BK - 1) / BK;
  auto ptr_c = kv_ptr.contiguous();
  auto kb_c = kv_blocks.contiguous();
  auto mi_c = mask_index.contiguous();
  auto bits_c = bits.contiguous();
  check_layout(ptr_c, kb_c, mi_c, bits_c, nqb, nkb, block_q, "sparse_attention");
  const bool has_bias = key_bias.numel() > 0;
  if (has_bias)
    TORCH_CHECK_VALUE(key_bias.scalar_type() == at::kFloat && key_bias.dim() == 2 && key_bias.size(0) == B &&
                          key_bias.size(1) == Skv,
                      "hf_sparse::sparse_attention: key_bias must be float32 (batch, kv_length) = (", B, ", ", Skv,
                      "), got ", key_bias.scalar_type(), " ", key_bias.sizes());
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  auto bias_c = has_bias ? key_bias.contiguous() : key_bias;
  auto out = hf_sparse_cpu::allocate("sparse_attention", "output", [&] { return at::zeros({B, H, Sq, D}, q.options()); });
  auto lse = hf_sparse_cpu::allocate("sparse_attention", "lse", [&] { return at::empty({B, H, Sq}, q.options()); });
  const float* qp = qc.data_ptr<float>();
  const float* kp = kc.data_ptr<float>();
  const float* vp = vc.data_ptr<float>();
  const float* biasp = has_bias ? bias_c.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  float* lp = lse.data_ptr<float>();
  const int32_t* ptr = ptr_c.data_ptr<int32_t>();
  const int32_t* kbl = kb_c.data_ptr<int32_t>();
  const int32_t* mip = mi_c.data_ptr<int32_t>();
  const int64_t* bitp = bits_c.data_ptr<int64_t>();
  const float fscale = static_cast<float>(scale);
  const int64_t ldk = nkb * BK;  // transposed keys, padded to whole blocks (the padding is zero and masked)
  const int64_t group = H / Hkv;
  const float ninf = -std::numeric_limits<float>::infinity();
  // One task per (batch, kv head): its transposed keys serve every query head of the group.
  at::parallel_for(0, B * Hkv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kt(static_cast<size_t>(D * ldk)), vpad(static_cast<size_t>(BK * D));
    std::vector<float> qs(static_cast<size_t>(block_q * D)), s(static_cast<size_t>(block_q * BK));
    std::vector<float> m(block_q), l(block_q);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Hkv, hk = t % Hkv;
      const float* kbh = kp + (b * Hkv + hk) * Skv * D;
      const float* vbh = vp + (b * Hkv + hk) * Skv * D;
      std::fill(kt.begin(), kt.end(), 0.f);
      transpose_keys(kbh, Skv, D, kt.data(), ldk);
      const float* bias = has_bias ? biasp + b * Skv : nullptr;
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const float* qbh = qp + (b * H + h) * Sq * D;
        float* obh = op + (b * H + h) * Sq * D;
        float* lbh = lp + (b * H + h) * Sq;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * block_q, rows = std::min(block_q, Sq - i0);
          for (int64_t i = 0; i < rows * D; ++i) qs[i] = qbh[i0 * D + i] * fscale;
          std::fill(m.begin(), m.end(), ninf);
          std::fill(l.begin(), l.end(), 0.f);
          float* o = obh + i0 * D;  // accumulated in place (out starts at zero)
          for (int32_t p = ptr[qb]; p < ptr[qb + 1]; ++p) {
            const int64_t j0 = static_cast<int64_t>(kbl[p]) * BK;
            const int64_t valid = std::min(BK, Skv - j0);
            const int64_t* mbits = mip[p] >= 0 ? bitp + static_cast<int64_t>(mip[p]) * block_q : nullptr;
            int64_t u0, u1;
            used_keys(mbits, rows, valid, u0, u1);
            if (u1 == u0) continue;  // no row of this tile may attend any of its keys
            const int64_t c0 = u0 / Vf::W, c1 = u1 / Vf::W;
            scores_tile(qs.data(), rows, D, kt.data() + j0, ldk, s.data(), c0, c1);
            const float* vb = vbh + j0 * D;
            if (valid < BK) {  // the last key block: copy it zero-padded so the P V tile reads whole rows
              std::fill(vpad.begin(), vpad.end(), 0.f);
              std::copy(vb, vb + valid * D, vpad.begin());
              vb = vpad.data();
            }
            mask_scores(s.data(), rows, mbits, valid, bias != nullptr ? bias + j0 : nullptr);
            for (int64_t i = 0; i < rows; ++i) {
              float* si = s.data() + i * BK;
              // Only the used keys [u0, u1): the P V product reads no others.
              Vf::R mx = Vf::set1(ninf);
              for (int64_t c = c0; c < c1; ++c) mx = max_v(mx, Vf::load(si + c * Vf::W));
              const float mnew = std::max(m[i], hmax(mx));
              if (mnew == ninf) {  // nothing allowed in this row so far
                for (int64_t j = u0; j < u1; ++j) si[j] = 0.f;
                continue;
              }
              const float alpha = m[i] == ninf ? 0.f : std::exp(m[i] - mnew);
              const Vf::R negm = Vf::set1(-mnew);
              Vf::R sum = Vf::zero();
              for (int64_t c = c0; c < c1; ++c) {
                const Vf::R e = exp_v(Vf::add(Vf::load(si + c * Vf::W), negm));
                Vf::store(si + c * Vf::W, e);
                sum = Vf::add(sum, e);
              }
              l[i] = l[i] * alpha + Vf::sum(sum);
              m[i] = mnew;
              if (alpha != 1.f) scale_row(o + i * D, D, alpha);
            }
            acc_tile(s.data() + u0, BK, rows, u1 - u0, vb + u0 * D, D, D, o);
          }
          for (int64_t i = 0; i < rows; ++i) {
            if (l[i] > 0.f) {
              scale_row(o + i * D, D, 1.f / l[i]);
              lbh[i0 + i] = m[i] + std::log(l[i]);
            } else {
              for (int64_t e = 0; e < D; ++e) o[i * D + e] = 0.f;
              lbh[i0 + i] = ninf;
            }
          }
        }
      }
    }
  });
  return {out, lse};
}

// The backward pass over the same tiles (FlashAttention-2's, on the CPU): per tile, recompute S, then
// P = exp(S - lse) (0 where masked), dP = dO V^T, dS = P (dP - rowsum(dO O)); accumulate dV += P^T dO,
// dK += dS^T (scale Q), dQ += dS K (scaled at the end). One task per (batch, kv head) owns that head's dK and dV and
// its query heads' dQ, so no two threads write the same row.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& kv_ptr, const at::Tensor& kv_blocks, const at::Tensor& mask_index,
    const at::Tensor& bits, const at::Tensor& key_bias, double scale, int64_t block_q) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && grad_out.sizes() == q.sizes() &&
                        out.sizes() == q.sizes(),
                    "hf_sparse::sparse_attention_backward: grad_out and out must have q's shape ", q.sizes());
  for (const auto* t : {&grad_out, &q, &k, &v, &out, &lse})
    TORCH_CHECK_VALUE(t->scalar_type() == at::kFloat,
                      "hf_sparse::sparse_attention_backward: grad_out, q, k, v, out and lse must be float32, got ",
                      t->scalar_type());
  hf_sparse_cpu::check_cpu("sparse_attention_backward", {{"grad_out", &grad_out}, {"q", &q}, {"k", &k}, {"v", &v},
                                                         {"out", &out}, {"lse", &lse}, {"key_bias", &key_bias}});
  check_sizes(q, k, "sparse_attention_backward");
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), Skv = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B && v.sizes() == k.sizes() && k.size(3) == D && Hkv > 0 && H % Hkv == 0,
                    "hf_sparse::sparse_attention_backward: shapes do not match: q ", q.sizes(), ", k ", k.sizes(),
                    ", v ", v.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == B && lse.size(1) == H && lse.size(2) == Sq,
                    "hf_sparse::sparse_attention_backward: lse must be (", B, ", ", H, ", ", Sq, "), got ", lse.sizes());
  TORCH_CHECK_VALUE(D % (2 * Vf::W) == 0, "hf_sparse::sparse_attention_backward: head_dim must be a multiple of ",
                    2 * Vf::W, ", got ", D);
  TORCH_CHECK_VALUE(block_q > 0 && block_q <= 256,
                    "hf_sparse::sparse_attention_backward: block_q must be in [1, 256], got ", block_q);
  const int64_t nqb = (Sq + block_q - 1) / block_q, nkb = (Skv + BK - 1) / BK;
  auto ptr_c = kv_ptr.contiguous();
  auto kb_c = kv_blocks.contiguous();
  auto mi_c = mask_index.contiguous();
  auto bits_c = bits.contiguous();
  check_layout(ptr_c, kb_c, mi_c, bits_c, nqb, nkb, block_q, "sparse_attention_backward");
  const bool has_bias = key_bias.numel() > 0;
  if (has_bias)
    TORCH_CHECK_VALUE(key_bias.scalar_type() == at::kFloat && key_bias.dim() == 2 && key_bias.size(0) == B &&
                          key_bias.size(1) == Skv,
                      "hf_sparse::sparse_attention_backward: key_bias must be float32 (", B, ", ", Skv, "), got ",
                      key_bias.scalar_type(), " ", key_bias.sizes());
  auto qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), oc = out.contiguous();
  auto gc = grad_out.contiguous(), lc = lse.contiguous();
  auto bias_c = has_bias ? key_bias.contiguous() : key_bias;
  auto dq = at::zeros_like(qc), dk = at::zeros_like(kc), dv = at::zeros_like(vc);
  const float *qp = qc.data_ptr<float>(), *kp = kc.data_ptr<float>(), *vp = vc.data_ptr<float>();
  const float *opp = oc.data_ptr<float>(), *gp = gc.data_ptr<float>(), *lp = lc.data_ptr<float>();
  const float* biasp = has_bias ? bias_c.data_ptr<float>() : nullptr;
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const int32_t* ptr = ptr_c.data_ptr<int32_t>();
  const int32_t* kbl = kb_c.data_ptr<int32_t>();
  const int32_t* mip = mi_c.data_ptr<int32_t>();
  const int64_t* bitp = bits_c.data_ptr<int64_t>();
  const float fscale = static_cast<float>(scale);
  const int64_t ldk = nkb * BK, group = H / Hkv;
  const float ninf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * Hkv, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> kt(static_cast<size_t>(D * ldk)), vt(static_cast<size_t>(D * ldk));
    std::vector<float> kpad(static_cast<size_t>(nkb * BK * D));  // keys, zero-padded to whole blocks
    std::vector<float> dkpad(static_cast<size_t>(nkb * BK * D)), dvpad(static_cast<size_t>(nkb * BK * D));
    std::vector<float> qs(static_cast<size_t>(block_q * D)), s(static_cast<size_t>(block_q * BK));
    std::vector<float> dp(static_cast<size_t>(block_q * BK)), pt(static_cast<size_t>(BK * block_q));
    std::vector<float> dst(static_cast<size_t>(BK * block_q)), di(block_q);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / Hkv, hk = t % Hkv;
      const float* kbh = kp + (b * Hkv + hk) * Skv * D;
      const float* vbh = vp + (b * Hkv + hk) * Skv * D;
      std::fill(kt.begin(), kt.end(), 0.f);
      std::fill(vt.begin(), vt.end(), 0.f);
      transpose_keys(kbh, Skv, D, kt.data(), ldk);
      transpose_keys(vbh, Skv, D, vt.data(), ldk);
      std::fill(kpad.begin(), kpad.end(), 0.f);
      std::copy(kbh, kbh + Skv * D, kpad.begin());
      std::fill(dkpad.begin(), dkpad.end(), 0.f);
      std::fill(dvpad.begin(), dvpad.end(), 0.f);
      const float* bias = has_bias ? biasp + b * Skv : nullptr;
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        const int64_t off = (b * H + h) * Sq * D;
        for (int64_t qb = 0; qb < nqb; ++qb) {
          const int64_t i0 = qb * block_q, rows = std::min(block_q, Sq - i0);
          const float* go = gp + off + i0 * D;
          const float* lrow = lp + (b * H + h) * Sq + i0;
          for (int64_t i = 0; i < rows * D; ++i) qs[i] = qp[off + i0 * D + i] * fscale;
          for (int64_t i = 0; i < rows; ++i) {
            float acc = 0.f;
            for (int64_t e = 0; e < D; ++e) acc += go[i * D + e] * opp[off + (i0 + i) * D + e];
            di[i] = acc;
          }
          float* dqrow = dqp + off + i0 * D;
          for (int32_t p = ptr[qb]; p < ptr[qb + 1]; ++p) {
            const int64_t j0 = static_cast<int64_t>(kbl[p]) * BK;
            const int64_t valid = std::min(BK, Skv - j0);
            const int64_t* mbits = mip[p] >= 0 ? bitp + static_cast<int64_t>(mip[p]) * block_q : nullptr;
            scores_tile(qs.data(), rows, D, kt.data() + j0, ldk, s.data());
            mask_scores(s.data(), rows, mbits, valid, bias != nullptr ? bias + j0 : nullptr);
            scores_tile(go, rows, D, vt.data() + j0, ldk, dp.data());  // dP = dO V^T
            for (int64_t i = 0; i < rows; ++i) {
              float* si = s.data() + i * BK;
              float* dpi = dp.data() + i * BK;
              if (lrow[i] == ninf) {  // a row that attends nothing has no gradient
                std::fill(si, si + BK, 0.f);
                std::fill(dpi, dpi + BK, 0.f);
                continue;
              }
              const Vf::R negl = Vf::set1(-lrow[i]), dv_i = Vf::set1(di[i]);
              for (int64_t c = 0; c < KW; ++c) {
                const Vf::R pv = exp_v(Vf::add(Vf::load(si + c * Vf::W), negl));  // P
                Vf::store(si + c * Vf::W, pv);
                const Vf::R d = Vf::add(Vf::load(dpi + c * Vf::W), Vf::fma(dv_i, Vf::set1(-1.f), Vf::zero()));
                Vf::store(dpi + c * Vf::W, Vf::fma(pv, d, Vf::zero()));  // dS
              }
            }
            // P^T and dS^T (BK x rows) so the key-side products read rows.
            for (int64_t i = 0; i < rows; ++i)
              for (int64_t j = 0; j < BK; ++j) {
                pt[j * block_q + i] = s[i * BK + j];
                dst[j * block_q + i] = dp[i * BK + j];
              }
            acc_tile(pt.data(), block_q, BK, rows, go, D, D, dvpad.data() + j0 * D);          // dV += P^T dO
            acc_tile(dst.data(), block_q, BK, rows, qs.data(), D, D, dkpad.data() + j0 * D);  // dK += dS^T (sQ)
            acc_tile(dp.data(), BK, rows, BK, kpad.data() + j0 * D, D, D, dqrow);              // dQ += dS K
          }
          for (int64_t i = 0; i < rows * D; ++i) dqrow[i] *= fscale;
        }
      }
      std::copy(dkpad.begin(), dkpad.begin() + Skv * D, dkp + (b * Hkv + hk) * Skv * D);
      std::copy(dvpad.begin(), dvpad.begin() + Skv * D, dvp + (b * Hkv + hk) * Skv * D);
    }
  });
  return {dq, dk, dv};
}

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CPU, m) {
  m.impl("sparse_attention", &sparse_attention_cpu);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cpu);
}
