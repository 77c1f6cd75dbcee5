// XLA FFI handlers: 2-D (grouped) convolution forward, data gradient and kernel gradient through oneDNN.
//
// Why: XLA:CPU's grouped, strided convolutions and their gradients run far below what the CPU can do (see
// regnet_jax/convs.py); oneDNN (the library PyTorch's CPU convolutions use) has direct NHWC kernels for all
// three. Layouts are the ones JAX hands over: activations NHWC, kernels HWIO (k, k, Cin / groups, Cout) with
// Cout group-major, exactly flax.linen.Conv(feature_group_count=groups). Symmetric padding (k - 1) / 2.
//
// Primitives are built once per (kind, shape, stride, groups, dtype) and cached; oneDNN picks its own
// kernel-weight layout (format `any`) and the handlers reorder the small HWIO kernel to or from it.
#include <omp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Kind { kFwd = 0, kBwdData = 1, kBwdWeights = 2, kInfer = 3 };

// Post-ops of the inference convolution (kInfer): conv(x, w) + bias [+ residual] [then ReLU], one pass over y.
enum Post { kPostRelu = 1, kPostResidual = 2 };

struct Geometry {
  int64_t n, h, w, cin, cout, k, stride, groups, ho, wo;
  bool blocked;  // activations in oneDNN's nChw16c, (N, C / 16, H, W, 16), instead of NHWC
};

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, bool, int>;

struct Plan {
  memory::desc src, dst, user_weights, weights;  // weights: the layout the primitive wants
  dnnl::primitive conv;
  dnnl::reorder to_prim, from_prim;  // user <-> primitive weight reorders (when the layouts differ)
  bool reorder = false;
  std::string impl;  // oneDNN's name of the convolution's implementation ("brgconv:avx512_core", "ref:any", ...)
};

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

memory::desc UserWeights(const Geometry& g, memory::data_type dt) {
  const int64_t ig = g.cin / g.groups, og = g.cout / g.groups, k = g.k;
  // HWIO with Cout = groups x og (group-major): w[kh][kw][i][g * og + o].
  if (g.groups == 1) return memory::desc({g.cout, g.cin, k, k}, dt, {1, g.cout, k * g.cin * g.cout, g.cin * g.cout});
  return memory::desc({g.groups, og, ig, k, k}, dt, {og, 1, g.cout, k * ig * g.cout, ig * g.cout});
}

// oneDNN 3.2's im2col-based (`gemm`) convolutions crash now and then on AVX2-only CPUs (a fault inside im2col_dt on
// small grouped strided convs; seen in CI, reproduced here with ONEDNN_MAX_CPU_ISA=AVX2), so another implementation
// is taken where oneDNN has one. With AVX-512 oneDNN does not pick them for RegNet's layers anyway.
bool IsGemm(const std::string& impl) {  // "gemm:jit", "x64:gemm:jit", ...; not brgemm-based "brgconv"
  return impl.rfind("gemm:", 0) == 0 || impl.find(":gemm:") != std::string::npos;
}

template <typename PrimitiveDesc>
PrimitiveDesc WithoutGemm(PrimitiveDesc pd) {
  while (IsGemm(pd.impl_info_str()) && pd.next_impl()) {
  }
  return pd;
}

std::unique_ptr<Plan> MakePlan(int kind, const Geometry& g, memory::data_type dt, int post = 0) {
  auto& eng = Engine();
  auto plan = std::make_unique<Plan>();
  const auto layout = g.blocked ? memory::format_tag::nChw16c : memory::format_tag::nhwc;
  plan->src = memory::desc({g.n, g.cin, g.h, g.w}, dt, layout);
  plan->dst = memory::desc({g.n, g.cout, g.ho, g.wo}, dt, layout);
  plan->user_weights = UserWeights(g, dt);
  memory::desc any(plan->user_weights.get_dims(), dt, memory::format_tag::any);
  const int64_t p = (g.k - 1) / 2;
  memory::dims strides{g.stride, g.stride}, pad{p, p};
  if (kind == kInfer) {
    // The batch norm folded into the kernel and an f32 bias by the caller; the residual add and ReLU as
    // post-ops, so y is written once, accumulated in f32 and rounded once.
    dnnl::post_ops ops;
    if (post & kPostResidual) ops.append_binary(dnnl::algorithm::binary_add, plan->dst);
    if (post & kPostRelu) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    memory::desc bias({g.cout}, memory::data_type::f32, memory::format_tag::a);
    auto pd = WithoutGemm(dnnl::convolution_forward::primitive_desc(
        eng, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, plan->src, any, bias,
        plan->dst, strides, pad, pad, attr));
    plan->weights = pd.weights_desc();
    plan->conv = dnnl::convolution_forward(pd);
    plan->impl = pd.impl_info_str();
    plan->reorder = plan->weights != plan->user_weights;
    if (plan->reorder) {
      plan->to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->user_weights, eng, plan->weights));
    }
    return plan;
  }
  auto fwd = WithoutGemm(dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, plan->src, any, plan->dst,
      strides, pad, pad));
  if (kind == kFwd) {
    plan->weights = fwd.weights_desc();
    plan->conv = dnnl::convolution_forward(fwd);
    plan->impl = fwd.impl_info_str();
  } else if (kind == kBwdData) {
    auto pd = WithoutGemm(dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, plan->src, any, plan->dst, strides, pad, pad, fwd));
    plan->weights = pd.weights_desc();
    plan->conv = dnnl::convolution_backward_data(pd);
    plan->impl = pd.impl_info_str();
  } else {
    auto pd = WithoutGemm(dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, plan->src, any, plan->dst, strides, pad, pad, fwd));
    plan->weights = pd.diff_weights_desc();
    plan->conv = dnnl::convolution_backward_weights(pd);
    plan->impl = pd.impl_info_str();
  }
  plan->reorder = plan->weights != plan->user_weights;
  if (plan->reorder) {
    if (kind == kBwdWeights) {
      plan->from_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->weights, eng, plan->user_weights));
    } else {
      plan->to_prim = dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->user_weights, eng, plan->weights));
    }
  }
  return plan;
}

const Plan& GetPlan(int kind, const Geometry& g, memory::data_type dt, int post = 0) {
  static std::mutex mu;
  static auto* cache = new std::map<Key, std::unique_ptr<Plan>>();
  Key key{kind, g.n, g.h, g.w, g.cin, g.cout, g.k, g.stride, g.groups, static_cast<int>(dt), g.blocked, post};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, MakePlan(kind, g, dt, post)).first;
  return *it->second;
}

ffi::Error Check(const Geometry& g) {
  if (g.k % 2 == 0 || g.stride < 1 || g.groups < 1 || g.cin % g.groups || g.cout % g.groups) {
    return ffi::Error::InvalidArgument("regnet_jax oneDNN conv: bad geometry (odd square kernel, stride >= 1, "
                                       "groups dividing Cin and Cout required)");
  }
  if (g.blocked && (g.cin % 16 || g.cout % 16)) {
    return ffi::Error::InvalidArgument("regnet_jax oneDNN conv: the blocked layout needs channels % 16 == 0");
  }
  if (g.ho != (g.h - 1) / g.stride + 1 || g.wo != (g.w - 1) / g.stride + 1) {
    return ffi::Error::InvalidArgument("regnet_jax oneDNN conv: output size does not match input size and stride");
  }
  return ffi::Error::Success();
}

// x: (N, H, W, Cin), or (N, Cin / 16, H, W, 16) blocked; kernel: (k, k, Cin / groups, Cout); y: like x.
Geometry FromShapes(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, ffi::Span<const int64_t> y,
                    int64_t stride, int64_t groups, bool blocked) {
  if (blocked) {
    return Geometry{x[0], x[2], x[3], x[1] * x[4], kernel[3], kernel[0], stride, groups, y[2], y[3], true};
  }
  return Geometry{x[0], x[1], x[2], x[3], kernel[3], kernel[0], stride, groups, y[1], y[2], false};
}

template <typename T>
void* Ptr(T& buffer) {
  return const_cast<void*>(static_cast<const void*>(buffer.untyped_data()));
}

// Runs a kernel-weight reorder on the calling thread alone. The kernels are a few KB: on all OpenMP threads the
// reorder is mostly the parallel region's start and barrier (~60 us a call, 4-5 ms of a regnetx32 train step).
void ReorderOnOneThread(const dnnl::reorder& reorder, dnnl::stream& stream, memory& from, memory& to) {
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  reorder.execute(stream, from, to);
  omp_set_num_threads(threads);
}

// The HWIO kernel at `kernel` in the layout the plan's primitive wants (a reordered copy when they differ).
memory KernelForPrimitive(const Plan& plan, dnnl::stream& stream, void* kernel) {
  memory user(plan.user_weights, Engine(), kernel);
  if (!plan.reorder) return user;
  memory w(plan.weights, Engine());
  ReorderOnOneThread(plan.to_prim, stream, user, w);
  return w;
}

ffi::Error Run(int kind, const Geometry& g, memory::data_type dt, void* a, void* b, void* out) {
  ffi::Error ok = Check(g);
  if (ok.failure()) return ok;
  try {
    const Plan& plan = GetPlan(kind, g, dt);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    if (kind == kFwd) {  // a = x, b = kernel, out = y
      memory src(plan.src, eng, a), dst(plan.dst, eng, out);
      memory w = KernelForPrimitive(plan, stream, b);
      plan.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, dst}});
    } else if (kind == kBwdData) {  // a = dy, b = kernel, out = dx
      memory diff_dst(plan.dst, eng, a), diff_src(plan.src, eng, out);
      memory w = KernelForPrimitive(plan, stream, b);
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, diff_src}});
    } else {  // a = x, b = dy, out = dkernel
      memory src(plan.src, eng, a), diff_dst(plan.dst, eng, b), user_dw(plan.user_weights, eng, out);
      memory dw = plan.reorder ? memory(plan.weights, eng) : user_dw;
      plan.conv.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, dw}});
      if (plan.reorder) ReorderOnOneThread(plan.from_prim, stream, dw, user_dw);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("regnet_jax oneDNN conv failed: ") + e.what());
  }
  return ffi::Error::Success();
}

memory::data_type DataType(ffi::DataType t) {
  return t == ffi::DataType::BF16 ? memory::data_type::bf16 : memory::data_type::f32;
}

ffi::Error Shapes(size_t x_rank, size_t y_rank, bool blocked) {
  const size_t want = blocked ? 5 : 4;
  if (x_rank != want || y_rank != want) {
    return ffi::Error::InvalidArgument(blocked ? "regnet_jax oneDNN conv: blocked activations are (N, C/16, H, W, 16)"
                                               : "regnet_jax oneDNN conv: activations are (N, H, W, C)");
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> y, int64_t stride,
                   int64_t groups, bool blocked) {
  if (auto e = Shapes(x.dimensions().size(), y->dimensions().size(), blocked); e.failure()) return e;
  Geometry g = FromShapes(x.dimensions(), kernel.dimensions(), y->dimensions(), stride, groups, blocked);
  return Run(kFwd, g, DataType(x.element_type()), Ptr(x), Ptr(kernel), y->untyped_data());
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer kernel, ffi::Result<ffi::AnyBuffer> dx, int64_t stride,
                       int64_t groups, bool blocked) {
  if (auto e = Shapes(dx->dimensions().size(), dy.dimensions().size(), blocked); e.failure()) return e;
  Geometry g = FromShapes(dx->dimensions(), kernel.dimensions(), dy.dimensions(), stride, groups, blocked);
  return Run(kBwdData, g, DataType(dy.element_type()), Ptr(dy), Ptr(kernel), dx->untyped_data());
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dkernel, int64_t stride,
                          int64_t groups, bool blocked) {
  if (auto e = Shapes(x.dimensions().size(), dy.dimensions().size(), blocked); e.failure()) return e;
  Geometry g = FromShapes(x.dimensions(), dkernel->dimensions(), dy.dimensions(), stride, groups, blocked);
  return Run(kBwdWeights, g, DataType(x.element_type()), Ptr(x), Ptr(dy), dkernel->untyped_data());
}

// y = [relu](conv(x, kernel) + bias [+ residual]); kernel with the batch norm folded in, bias f32 (Cout).
ffi::Error Infer(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer bias, const ffi::AnyBuffer* residual,
                 ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t groups, bool relu) {
  if (auto e = Shapes(x.dimensions().size(), y->dimensions().size(), false); e.failure()) return e;
  Geometry g = FromShapes(x.dimensions(), kernel.dimensions(), y->dimensions(), stride, groups, false);
  ffi::Error ok = Check(g);
  if (ok.failure()) return ok;
  if (bias.element_type() != ffi::DataType::F32 || bias.element_count() != static_cast<size_t>(g.cout)) {
    return ffi::Error::InvalidArgument("regnet_jax oneDNN inference conv: the bias must be float32 of Cout values");
  }
  if (residual && residual->element_count() != y->element_count()) {
    return ffi::Error::InvalidArgument("regnet_jax oneDNN inference conv: the residual must have the output's shape");
  }
  const int post = (relu ? kPostRelu : 0) | (residual ? kPostResidual : 0);
  try {
    const memory::data_type dt = DataType(x.element_type());
    const Plan& plan = GetPlan(kInfer, g, dt, post);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    memory src(plan.src, eng, Ptr(x)), dst(plan.dst, eng, y->untyped_data());
    memory b(memory::desc({g.cout}, memory::data_type::f32, memory::format_tag::a), eng, Ptr(bias));
    memory w = KernelForPrimitive(plan, stream, Ptr(kernel));
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b},
                                         {DNNL_ARG_DST, dst}};
    if (residual) {
      args.insert({DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, memory(plan.dst, eng, Ptr(*residual))});
    }
    plan.conv.execute(stream, args);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("regnet_jax oneDNN inference conv failed: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvInfer(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                     int64_t stride, int64_t groups, bool relu) {
  return Infer(x, kernel, bias, nullptr, y, stride, groups, relu);
}

ffi::Error ConvInferResidual(ffi::AnyBuffer x, ffi::AnyBuffer kernel, ffi::AnyBuffer bias, ffi::AnyBuffer residual,
                             ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t groups, bool relu) {
  return Infer(x, kernel, bias, &residual, y, stride, groups, relu);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetConvInfer, ConvInfer,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Attr<int64_t>("stride").Attr<int64_t>("groups")
                                  .Attr<bool>("relu"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetConvInferResidual, ConvInferResidual,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<int64_t>("stride")
                                  .Attr<int64_t>("groups").Attr<bool>("relu"));

#define REGNET_CONV_BINDING                                                                          \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Attr<int64_t>("stride") \
      .Attr<int64_t>("groups").Attr<bool>("blocked")

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetConvFwd, ConvFwd, REGNET_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetConvBwdData, ConvBwdData, REGNET_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetConvBwdWeights, ConvBwdWeights, REGNET_CONV_BINDING);

// What this CPU's oneDNN offers for `dtype` (0 f32, 1 bf16) in NHWC (`blocked` 0) or nChw16c (1), probed on a
// RegNet-like grouped 3x3 (groups of 16 channels) and a 1x1 conv, all three directions: 0 = no primitive at all
// (bf16 needs AVX-512 or AVX2-VNNI-2), 1 = only reference code for some (nChw16c without AVX-512: 100x slower),
// 2 = optimised kernels throughout. The Python side asks before it traces a call (onednn.probe).
extern "C" int RegnetOnednnProbe(int dtype, int blocked) {
  const auto dt = dtype == 1 ? memory::data_type::bf16 : memory::data_type::f32;
  int result = 2;
  try {
    for (const Geometry& g : {Geometry{2, 16, 16, 32, 32, 3, 2, 2, 8, 8, blocked != 0},
                              Geometry{2, 16, 16, 32, 64, 1, 1, 1, 16, 16, blocked != 0}}) {
      for (int kind : {kFwd, kBwdData, kBwdWeights}) {
        if (std::string(MakePlan(kind, g, dt)->impl).rfind("ref", 0) == 0) result = 1;
      }
    }
  } catch (const dnnl::error&) {
    return 0;
  }
  return result;
}

// Whether oneDNN has only reference code for this layer (1) in any direction the network may run (training
// forward, both gradients, and the inference forward with each post-op set), 0 if optimised throughout, -1 if it
// creates no primitive. The probe above covers typical shapes; some (small groups on AVX2-only CPUs, where the
// im2col kernels are skipped, see IsGemm) have nothing but reference loops, 100-300x slower: the Python side asks
// per layer at trace time and gives such a layer to XLA (onednn.layer_fast).
extern "C" int RegnetOnednnLayerIsRef(int dtype, int blocked, int64_t n, int64_t h, int64_t w, int64_t cin,
                                      int64_t cout, int64_t k, int64_t stride, int64_t groups) {
  const auto dt = dtype == 1 ? memory::data_type::bf16 : memory::data_type::f32;
  const Geometry g{n, h, w, cin, cout, k, stride, groups, (h - 1) / stride + 1, (w - 1) / stride + 1, blocked != 0};
  try {
    for (int kind : {kFwd, kBwdData, kBwdWeights}) {
      if (std::string(MakePlan(kind, g, dt)->impl).rfind("ref", 0) == 0) return 1;
    }
    for (int post : {0, static_cast<int>(kPostRelu), kPostResidual | kPostRelu}) {
      if (std::string(MakePlan(kInfer, g, dt, post)->impl).rfind("ref", 0) == 0) return 1;
    }
  } catch (const dnnl::error&) {
    return -1;
  }
  return 0;
}

extern "C" const char* RegnetOnednnVersion() {
  static std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
  }();
  return v.c_str();
}
