#pragma once

/// \file
/// Umbrella header: includes every optimizer, the wrappers and the functional layer.

// holocron-optim: the optimizers of holocron.optim for LibTorch.

/// \namespace holocron
/// The holocron project.

/// \namespace holocron::optim
/// The optimizers (LARS, LAMB, RaLars, TAdam, AdaBelief, AdamP, Adan, AdEMAMix), their options
/// and param states, and the wrappers Lookahead and Scout.

/// \namespace holocron::optim::detail
/// Implementation details shared by the optimizers: not an API to call or derive from.

// Every header of include/holocron/optim/, listed by CMake when the library is
// built and installed next to them.
#include "holocron/optim/all.h"
