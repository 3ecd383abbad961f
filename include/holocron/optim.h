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

#include "holocron/optim/adabelief.h"
#include "holocron/optim/adamp.h"
#include "holocron/optim/adan.h"
#include "holocron/optim/ademamix.h"
#include "holocron/optim/functional.h"
#include "holocron/optim/lamb.h"
#include "holocron/optim/lars.h"
#include "holocron/optim/ralars.h"
#include "holocron/optim/tadam.h"
#include "holocron/optim/wrapper.h"
