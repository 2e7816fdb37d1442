#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace gradguard {
namespace {

struct CompiledTarget {
  const char* name;
  const KernelTable& (*table)();
  bool (*cpu_supports)();
};

#if defined(__x86_64__)
// XCR0: which register files the OS saves on context switch. A CPU can report
// AVX-512 while the OS (or hypervisor) has not enabled its state.
unsigned long long enabled_register_state() {
  unsigned int eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

bool osxsave_and(unsigned int ecx_bits_leaf1) {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned int osxsave = 1u << 27;
  return (ecx & osxsave) && (ecx & ecx_bits_leaf1) == ecx_bits_leaf1;
}

unsigned int leaf7_ebx() {
  unsigned int eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
  return ebx;
}

// avx2 = AVX2 + FMA + F16C, with the YMM state enabled.
bool cpu_has_avx2() {
  const unsigned int fma = 1u << 12, avx = 1u << 28, f16c = 1u << 29;
  if (!osxsave_and(fma | avx | f16c)) return false;
  if ((enabled_register_state() & 0x6) != 0x6) return false;
  return leaf7_ebx() & (1u << 5);
}

// avx512 = F + DQ + BW + VL on top of avx2, with the opmask and ZMM state enabled.
bool cpu_has_avx512() {
  if (!cpu_has_avx2()) return false;
  if ((enabled_register_state() & 0xe6) != 0xe6) return false;
  const unsigned int needed = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
  return (leaf7_ebx() & needed) == needed;
}
#endif

bool always() { return true; }

// Best first.
const std::vector<CompiledTarget>& targets() {
  static const std::vector<CompiledTarget> all = {
#if defined(__x86_64__)
      {"avx512", avx512::kernel_table, cpu_has_avx512},
      {"avx2", avx2::kernel_table, cpu_has_avx2},
#endif
      {"baseline", baseline::kernel_table, always},
  };
  return all;
}

// The best target the CPU runs, capped by GRADGUARD_SIMD when it is set.
const KernelTable* initial_table() {
  const char* cap = std::getenv("GRADGUARD_SIMD");
  bool cap_reached = cap == nullptr || *cap == '\0';
  if (!cap_reached) {
    bool known = false;
    for (const auto& target : targets()) known = known || std::string(target.name) == cap;
    if (!known)
      throw std::invalid_argument(std::string("GRADGUARD_SIMD='") + cap +
                                  "' names no compiled target; use one of avx512, avx2, baseline");
  }
  for (const auto& target : targets()) {
    cap_reached = cap_reached || std::string(target.name) == cap;
    if (cap_reached && target.cpu_supports()) return &target.table();
  }
  return &baseline::kernel_table();
}

std::atomic<const KernelTable*>& active_slot() {
  static std::atomic<const KernelTable*> slot{initial_table()};
  return slot;
}

}  // namespace

const KernelTable& active_kernels() { return *active_slot().load(std::memory_order_acquire); }

std::vector<std::string> supported_targets() {
  std::vector<std::string> names;
  for (const auto& target : targets())
    if (target.cpu_supports()) names.emplace_back(target.name);
  return names;
}

std::vector<std::string> compiled_targets() {
  std::vector<std::string> names;
  for (const auto& target : targets()) names.emplace_back(target.name);
  return names;
}

void use_target(const std::string& name) {
  for (const auto& target : targets()) {
    if (name != target.name) continue;
    if (!target.cpu_supports()) throw std::invalid_argument("this CPU cannot run the '" + name + "' target");
    active_slot().store(&target.table(), std::memory_order_release);
    return;
  }
  throw std::invalid_argument("unknown SIMD target '" + name + "'; compiled: avx512, avx2, baseline");
}

}  // namespace gradguard
