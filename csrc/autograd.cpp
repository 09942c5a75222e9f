// The autograd of the two ops, registered at the Autograd dispatch key: a hand-written
// backward node in the style of torch's generated autograd code. Unlike a
// torch::autograd::Function it works under torch.func's transforms and compiled autograd, and
// costs no Python per call.
//
// forward:  records SigmoidDRLossBackward (saves logits, labels, stats; the node's input is the
//           gradient of the per-group losses), refuses forward-mode AD.
// backward: refuses forward-mode AD; its output carries an Error node when a gradient of the
//           gradient is asked for (double backward is not implemented).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <mutex>
#include <type_traits>
#include <utility>

#include "dr_loss_options.h"
#include "messages.h"

namespace drloss {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// Nodes are held by std::shared_ptr up to some torch release and by c10::intrusive_ptr after;
// Node::getptr() returns whichever this torch uses.
using NodePtr = decltype(std::declval<Node&>().getptr());

template <typename T, typename... Args>
NodePtr make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    // torch's deleteNode (found by argument-dependent lookup: it is gone where nodes are
    // intrusive) frees long chains of nodes without deep recursion.
    return std::shared_ptr<T>(new T(std::forward<Args>(args)...),
                              [](auto* node) { deleteNode(node); });
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                     double, double, double, double, int64_t);
using BackwardFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, double, double, double, double, double,
                              int64_t);

const c10::TypedOperatorHandle<ForwardFn>& forward_handle() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("drloss_cuda::sigmoid_dr_loss_forward", "")
                                 .typed<ForwardFn>();
  return handle;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_handle() {
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("drloss_cuda::sigmoid_dr_loss_backward", "")
                                 .typed<BackwardFn>();
  return handle;
}

// A tangent on an input would otherwise be dropped without a word (the outputs get none,
// which torch.func reads as zero).
void refuse_forward_mode(bool has_tangent) {
  DRLOSS_CHECK_NOT_IMPLEMENTED(!has_tangent, message::kForwardModeAD);
}

struct SigmoidDRLossBackward : public torch::autograd::TraceableFunction {
  std::string name() const override { return "SigmoidDRLossBackward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return {gradient(grads[0], logits_.unpack(), labels_.unpack(), stats_.unpack(), o,
                     task_should_compute_output(0))};
  }

  // The node's computation as a function of its saved state, which compiled autograd binds
  // to Python and traces (apply_with_saved).
  static at::Tensor gradient(const at::Tensor& grad_losses, const at::Tensor& logits,
                             const at::Tensor& labels, const at::Tensor& stats,
                             const LossOptions& o, bool wanted) {
    // An undefined incoming gradient (the losses unused) means zero: logits get none.
    if (!wanted || !grad_losses.defined()) return {};
    return backward_handle().call(grad_losses.contiguous(), logits, labels, stats, o.pos_lambda,
                                  o.neg_lambda, o.L, o.tau, o.margin, o.first_label);
  }

  static variable_list gradient_of_packed(const variable_list& grads,
                                          const std::vector<c10::IValue>& args) {
    const LossOptions o{args[3].toDouble(), args[4].toDouble(), args[5].toDouble(),
                        args[6].toDouble(), args[7].toDouble(), args[8].toInt()};
    return {gradient(grads[0], args[0].toTensor(), args[1].toTensor(), args[2].toTensor(), o,
                     args[9].toBool())};
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    logits_.reset_data();
    labels_.reset_data();
    stats_.reset_data();
  }

  // Compiled autograd: what identifies this node's graph, then apply() on swapped tensors.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(logits_, false);
    args.collect(labels_, false);
    args.collect(stats_, false);
    args.collect(o.pos_lambda);
    args.collect(o.neg_lambda);
    args.collect(o.L);
    args.collect(o.tau);
    args.collect(o.margin);
    args.collect(o.first_label);
  }

  variable_list apply_with_saved(const variable_list& inputs,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    namespace ca = torch::dynamo::autograd;
    saved.before(logits_);
    saved.before(labels_);
    saved.before(stats_);
    const std::vector<c10::IValue> args{logits_.unpack(), labels_.unpack(), stats_.unpack(),
                                        o.pos_lambda,     o.neg_lambda,     o.L,
                                        o.tau,            o.margin,         o.first_label,
                                        task_should_compute_output(0)};
    std::vector<at::TypePtr> schema;
    for (const auto& arg : args) {
      schema.push_back(arg.isTensor() ? at::TensorType::get() : arg.type());
    }
    const auto& python = ca::getPyCompilerInterface();
    const auto function = python->bind_function(saved.get_py_compiler(), name(),
                                                &SigmoidDRLossBackward::gradient_of_packed, schema);
    const auto output_metadata =
        ca::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
            ca::get_input_metadata(next_edges()));
    variable_list result = python->call_function(saved.get_py_compiler(), "apply_functional",
                                                 function, inputs, args, output_metadata);
    saved.after(logits_);
    saved.after(labels_);
    saved.after(stats_);
    return result;
  }

  SavedVariable logits_, labels_, stats_;
  LossOptions o{};
};

std::tuple<at::Tensor, at::Tensor> forward_autograd(c10::DispatchKeySet keys,
                                                    const at::Tensor& logits,
                                                    const at::Tensor& labels, double pos_lambda,
                                                    double neg_lambda, double L, double tau,
                                                    double margin, int64_t first_label) {
  refuse_forward_mode(torch::autograd::isFwGradDefined(logits));
  NodePtr node;
  if (torch::autograd::compute_requires_grad(logits)) {
    node = make_node<SigmoidDRLossBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(logits));
  }
  auto outputs = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_handle().redispatch(keys & c10::after_autograd_keyset, logits, labels,
                                       pos_lambda, neg_lambda, L, tau, margin, first_label);
  }();
  if (node) {
    auto& losses = std::get<0>(outputs);
    auto* backward = static_cast<SigmoidDRLossBackward*>(node.get());
    backward->logits_ = SavedVariable(logits, false);
    backward->labels_ = SavedVariable(labels, false);
    backward->stats_ = SavedVariable(std::get<1>(outputs), false);
    backward->o = {pos_lambda, neg_lambda, L, tau, margin, first_label};
    torch::autograd::set_history(losses, node);
  }
  return outputs;
}

at::Tensor backward_autograd(c10::DispatchKeySet keys, const at::Tensor& grad_losses,
                             const at::Tensor& logits, const at::Tensor& labels,
                             const at::Tensor& stats, double pos_lambda, double neg_lambda,
                             double L, double tau, double margin, int64_t first_label) {
  refuse_forward_mode(torch::autograd::isFwGradDefined(grad_losses) ||
                      torch::autograd::isFwGradDefined(logits));
  NodePtr node;
  if (torch::autograd::compute_requires_grad(grad_losses, logits)) {
    node = make_node<torch::autograd::Error>(
        message::kDoubleBackward, torch::autograd::collect_next_edges(grad_losses, logits));
  }
  auto grad_logits = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return backward_handle().redispatch(keys & c10::after_autograd_keyset, grad_losses, logits,
                                        labels, stats, pos_lambda, neg_lambda, L, tau, margin,
                                        first_label);
  }();
  if (node) torch::autograd::set_history(grad_logits, node);
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(drloss_cuda, Autograd, m) {
  m.impl("sigmoid_dr_loss_forward", &forward_autograd);
  m.impl("sigmoid_dr_loss_backward", &backward_autograd);
}

}  // namespace drloss
