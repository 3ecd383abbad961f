// Must not compile: beta2 named before beta1.
#include "kernels/cpu/protocol.h"

namespace protocol = holocron::optim::kernels::cpu::protocol;

protocol::adamp::Constants constants(double b1, double b2) {
  return {.beta2 = b2, .beta1 = b1, .eps = 1e-8, .weight_decay = 0.0, .amsgrad = false, .nesterov = false, .caution = false};
}
