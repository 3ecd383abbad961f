// Compiles: every field named, in declaration order.
#include "kernels/cpu/protocol.h"

namespace protocol = holocron::optim::kernels::cpu::protocol;

protocol::adamp::Constants constants(double b1, double b2) {
  return {.beta1 = b1, .beta2 = b2, .eps = 1e-8, .weight_decay = 0.0, .amsgrad = false, .nesterov = false, .caution = false};
}
static_assert(protocol::slots<protocol::adabelief::Arrays>().max_exp_avg_sq == 4);
static_assert(protocol::slot_set(1, 3) == 0b1010u);
