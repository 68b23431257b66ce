/* One-pass CPU step of ScheduleFreeAdamWV1 (sfperf/optim/schedule_free_v1.py).
 *
 * The per-parameter loop of that file runs eight torch ops, each a full pass
 * over memory that rounds its result to the stored dtype. This file does the
 * same arithmetic element by element in one pass, rounding wherever an op of
 * the loop stores a value: float32 ops round to float32, and the second
 * moment v rounds to bfloat16 after each op that writes it. Where torch's
 * CPU kernels use a fused multiply-add (lerp, add/sub with alpha, addcmul)
 * this code calls fmaf; everywhere else it multiplies and adds separately,
 * and it must be built with -ffp-contract=off so that the compiler adds no
 * other fused multiply-adds. The Python side tests the result against the
 * loop bit for bit before it is used, on inputs that include the rounding
 * ties where a fused and an unfused multiply-add store different v.
 *
 * One difference is left: a NaN is stored as the bfloat16 NaN 0x7fc0, where
 * torch stores 0xffff from its vectorized loops and 0x7fc0 from their
 * scalar tails; NaN stays NaN either way, and x and z get the same bits.
 *
 * Built on first use by sfperf/optim/native_build.py; no Python or torch
 * headers are needed. Tensors are float32 (p: the parameter, z, g: the
 * gradient) and bfloat16 bits (v), contiguous, one pointer per tensor.
 */
#include <math.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <string.h>

/* Fewer elements than this in one call are not worth waking threads for. */
#define PARALLEL_MIN 65536

static inline float bf16_to_float(uint16_t bits) {
  uint32_t wide = (uint32_t)bits << 16;
  float value;
  memcpy(&value, &wide, sizeof value);
  return value;
}

/* Round to nearest even, as torch's float -> bfloat16 conversion. */
static inline uint16_t float_to_bf16(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  if (value != value) return 0x7fc0; /* NaN stays NaN */
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

static inline float round_bf16(float value) {
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  if (value != value) rounded = 0x7fc00000u;
  float result;
  memcpy(&result, &rounded, sizeof result);
  return result;
}

/* torch.lerp: from start by weight towards end; the formula is mirrored
 * around weight 0.5 for accuracy, as torch does. */
static inline float lerp(float start, float end, float weight, int small) {
  return small ? fmaf(weight, end - start, start)
               : fmaf(weight - 1.0f, end - start, end);
}

static inline int lerp_weight_small(float weight) {
  return fabsf(weight) < 0.5f;
}

/* p <- lerp(p, z, weight) over n elements: the move from x to y. */
static void lerp_range(int64_t n, float *restrict p, const float *restrict z,
                       float weight) {
  const int small = lerp_weight_small(weight);
  for (int64_t i = 0; i < n; ++i) p[i] = lerp(p[i], z[i], weight, small);
}

typedef struct {
  float back_to_x, beta2, one_minus_beta2, eps, minus_step_size,
      minus_decay, averaging_weight;
  int from_y; /* p holds y (PyTorch) rather than x (JAX) on entry */
} update_scalars;

/* The update of _update_loop, element by element; p holds y (from_y) or x
 * on entry, and x on return. Inlined with from_y a constant, so that each
 * caller gets a loop without the branch. */
static inline __attribute__((always_inline)) void update_elements(
    int64_t n, float *restrict p, float *restrict z, const float *restrict g,
    uint16_t *restrict v, const update_scalars *s, const int from_y,
    const int back_small, const int average_small) {
  /* torch adds a Python scalar to a bfloat16 tensor after rounding the
   * scalar to bfloat16 (1e-8 becomes 1.00117e-8); so does the loop. */
  const float eps = round_bf16(s->eps);
  for (int64_t i = 0; i < n; ++i) {
    const float grad = g[i];
    const float x =
        from_y ? lerp(p[i], z[i], s->back_to_x, back_small) : p[i];

    const float decayed = round_bf16(bf16_to_float(v[i]) * s->beta2);
    const float v_wide =
        round_bf16(fmaf(s->one_minus_beta2 * grad, grad, decayed));
    float denominator = round_bf16(sqrtf(v_wide));
    denominator = round_bf16(denominator + eps);

    float z_new = z[i] + s->minus_step_size * grad / denominator;
    z_new = fmaf(x, s->minus_decay, z_new);

    p[i] = lerp(x, z_new, s->averaging_weight, average_small);
    z[i] = z_new;
    uint32_t v_bits;
    memcpy(&v_bits, &v_wide, sizeof v_bits);
    v[i] = (uint16_t)(v_bits >> 16);
  }
}

static void update_range(int64_t n, float *restrict p, float *restrict z,
                         const float *restrict g, uint16_t *restrict v,
                         const update_scalars *s) {
  const int b = lerp_weight_small(s->back_to_x);
  const int a = lerp_weight_small(s->averaging_weight);
  if (s->from_y) {
    if (b && a) update_elements(n, p, z, g, v, s, 1, 1, 1);
    else if (b) update_elements(n, p, z, g, v, s, 1, 1, 0);
    else if (a) update_elements(n, p, z, g, v, s, 1, 0, 1);
    else update_elements(n, p, z, g, v, s, 1, 0, 0);
  } else {
    if (a) update_elements(n, p, z, g, v, s, 0, 1, 1);
    else update_elements(n, p, z, g, v, s, 0, 1, 0);
  }
}

/* The range of elements [*begin, *end), numbered across all tensors one
 * after another, that this thread of the current parallel region updates:
 * an equal share of `total`. */
static void my_share(int64_t total, int64_t *begin, int64_t *end) {
#ifdef _OPENMP
  const int64_t threads = omp_get_num_threads();
  const int64_t me = omp_get_thread_num();
#else
  const int64_t threads = 1, me = 0;
#endif
  *begin = total / threads * me + (me < total % threads ? me : total % threads);
  *end = *begin + total / threads + (me < total % threads ? 1 : 0);
}

static int64_t total_size(int64_t count, const int64_t *sizes) {
  int64_t total = 0;
  for (int64_t t = 0; t < count; ++t) total += sizes[t];
  return total;
}

/* Calls `body` on the part [start, stop) of every tensor t that falls in
 * this thread's share. A macro, so that each caller's loop inlines. */
#define FOR_MY_PART(count, sizes, total, body)                            \
  do {                                                                     \
    int64_t begin_, end_, offset_ = 0;                                     \
    my_share((total), &begin_, &end_);                                     \
    for (int64_t t = 0; t < (count) && offset_ < end_; ++t) {              \
      const int64_t first_ = offset_, last_ = offset_ + (sizes)[t];       \
      offset_ = last_;                                                     \
      if (last_ <= begin_) continue;                                       \
      const int64_t start = (begin_ > first_ ? begin_ : first_) - first_; \
      const int64_t stop = (end_ < last_ ? end_ : last_) - first_;        \
      body;                                                                \
    }                                                                      \
  } while (0)

/* Each call is one parallel region in which every thread takes an equal
 * share of all elements, whatever the tensors' sizes. An element's result
 * does not depend on the thread that computes it. */
void sf_v1_lerp(int64_t count, const int64_t *sizes, float *const *p,
                float *const *z, float weight, int threads) {
  const int64_t total = total_size(count, sizes);
#pragma omp parallel num_threads(threads) if (total > PARALLEL_MIN)
  FOR_MY_PART(count, sizes, total,
              lerp_range(stop - start, p[t] + start, z[t] + start, weight));
}

/* The update of `count` tensors: p holds y (PyTorch's closure form) when
 * from_y is 1, x (JAX) when it is 0. */
void sf_v1_update(int64_t count, const int64_t *sizes, float *const *p,
                  float *const *z, const float *const *g, uint16_t *const *v,
                  float back_to_x, float beta2, float one_minus_beta2,
                  float eps, float minus_step_size, float minus_decay,
                  float averaging_weight, int from_y, int threads) {
  const update_scalars s = {back_to_x,       beta2,       one_minus_beta2,
                            eps,             minus_step_size, minus_decay,
                            averaging_weight, from_y};
  const int64_t total = total_size(count, sizes);
#pragma omp parallel num_threads(threads) if (total > PARALLEL_MIN)
  FOR_MY_PART(count, sizes, total,
              update_range(stop - start, p[t] + start, z[t] + start,
                           g[t] + start, v[t] + start, &s));
}
