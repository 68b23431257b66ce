// The one-pass CPU step of schedule_free_adamw_v1 (schedule_free_jax.py) as
// an XLA FFI handler, so that a jitted JAX update calls it like any other
// operation. The arithmetic is schedule_free_v1_cpu.c's, with the parameter
// holding x (JAX keeps x; PyTorch's closure form hands the kernel y).
//
// Operands: x, z (float32), v (bfloat16), g (float32), all of one shape, and
// the step's scalars (float32[3]: -step_size, -step_size * weight_decay,
// averaging weight), computed by the jitted JAX code. Results: new x, z, v,
// aliased to the operands when they are donated. Built on first use by
// sfperf/optim/xla_kernel.py against the headers jaxlib ships.
#include <cstdint>
#include <cstring>

#define restrict __restrict__
extern "C" {
#include "schedule_free_v1_cpu.c"
}
#undef restrict

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Copies an operand into its result unless XLA already aliased the two.
template <typename T>
T *Into(const T *operand, T *result, int64_t count) {
  if (result != operand) std::memcpy(result, operand, count * sizeof(T));
  return result;
}

ffi::Error Update(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> z,
                  ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::F32> g,
                  ffi::Buffer<ffi::F32> scalars, float beta2,
                  float one_minus_beta2, float eps, int64_t threads,
                  ffi::ResultBuffer<ffi::F32> x_out,
                  ffi::ResultBuffer<ffi::F32> z_out,
                  ffi::ResultBuffer<ffi::BF16> v_out) {
  const int64_t count = static_cast<int64_t>(x.element_count());
  if (z.element_count() != x.element_count() ||
      v.element_count() != x.element_count() ||
      g.element_count() != x.element_count()) {
    return ffi::Error::InvalidArgument(
        "schedule_free_v1 update: x, z, v and g must have the same size");
  }
  if (scalars.element_count() != 3) {
    return ffi::Error::InvalidArgument(
        "schedule_free_v1 update: scalars must be float32[3]");
  }
  float *x_new = Into(x.typed_data(), x_out->typed_data(), count);
  float *z_new = Into(z.typed_data(), z_out->typed_data(), count);
  uint16_t *v_new = Into(v.typed_data(), v_out->typed_data(), count);
  const float *step = scalars.typed_data();
  const float *grad = g.typed_data();
  sf_v1_update(1, &count, &x_new, &z_new, &grad, &v_new, /*back_to_x=*/0.0f,
               beta2, one_minus_beta2, eps, step[0], step[1], step[2],
               /*from_y=*/0, static_cast<int>(threads));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SfV1Update, Update,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("beta2")
                                  .Attr<float>("one_minus_beta2")
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("threads")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());
