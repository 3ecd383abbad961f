// This instruction set's table of passes.

#include "kernels/cpu/driver.h"

HOLOCRON_KERNELS_REGISTER(lars)
HOLOCRON_KERNELS_REGISTER(lamb)
HOLOCRON_KERNELS_REGISTER(tadam)
HOLOCRON_KERNELS_REGISTER(adabelief)
HOLOCRON_KERNELS_REGISTER(adamp)
HOLOCRON_KERNELS_REGISTER(adan)
HOLOCRON_KERNELS_REGISTER(ademamix)
HOLOCRON_KERNELS_REGISTER(wrappers)

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {

const PassTable& pass_table() {
  static const PassTable table = [] {
    PassTable t{};
    register_lars(t);
    register_lamb(t);
    register_tadam(t);
    register_adabelief(t);
    register_adamp(t);
    register_adan(t);
    register_ademamix(t);
    register_wrappers(t);
    return t;
  }();
  return table;
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
