// This instruction set's table of passes: every kernel file's, listed by CMake
// (kernels/cpu/kernel_files.inc, one HOLOCRON_KERNEL_FILE(name) per
// src/kernels/cpu/<name>.cpp, whose register_<name> adds its passes).

#include "kernels/cpu/driver.h"

#define HOLOCRON_KERNEL_FILE(name) HOLOCRON_KERNELS_REGISTER(name)
#include "kernels/cpu/kernel_files.inc"
#undef HOLOCRON_KERNEL_FILE

namespace holocron::optim::kernels::cpu {
inline namespace CPU_CAPABILITY {

const PassTable& pass_table() {
  static const PassTable table = [] {
    PassTable t{};
#define HOLOCRON_KERNEL_FILE(name) register_##name(t);
#include "kernels/cpu/kernel_files.inc"
#undef HOLOCRON_KERNEL_FILE
    return t;
  }();
  return table;
}

}  // namespace CPU_CAPABILITY
}  // namespace holocron::optim::kernels::cpu
