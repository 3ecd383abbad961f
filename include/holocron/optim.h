#pragma once

// holocron-optim: the optimizers of holocron.optim for LibTorch.

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
