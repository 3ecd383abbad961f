// Must not compile: eps is left out.
#include "kernels/cpu/protocol.h"

namespace protocol = holocron::optim::kernels::cpu::protocol;

protocol::adamp::Constants constants(double b1, double b2) {
  return {.beta1 = b1, .beta2 = b2, .weight_decay = 0.0, .amsgrad = false, .nesterov = false, .caution = false};
}
