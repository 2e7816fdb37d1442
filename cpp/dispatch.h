// Runtime choice of the SIMD target: the CPU is probed once (cpuid and, for
// the register state the OS enabled, xgetbv); GRADGUARD_SIMD may cap the level.
#pragma once
#include <string>
#include <vector>

#include "kernel_table.h"

namespace gradguard {

// The table every operation uses. Chosen at first use; immutable afterwards
// except through use_target (tests switch targets with it).
const KernelTable& active_kernels();

// Targets this CPU can run, best first (always ends with "baseline").
std::vector<std::string> supported_targets();

// Targets compiled into this build, best first.
std::vector<std::string> compiled_targets();

// Makes `name` the active target; throws std::invalid_argument when the name
// is unknown or the CPU cannot run it.
void use_target(const std::string& name);

}  // namespace gradguard
