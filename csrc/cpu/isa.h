// Runtime choice among the copies of a CPU kernel's hot loops compiled for AVX-512, AVX2 + FMA and the x86-64
// baseline (conv4d, fused_match). SCC_CPU_ISA=avx2 or =base selects a lower one than the CPU's best, so that
// tests can run those copies on a machine that would never pick them; it is read once per process.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>

// `#pragma GCC target` multiversioning needs GCC on x86-64; elsewhere only the portable copies are built. The
// copies use "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma" and "avx2,fma", what detect_isa() checks.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SCC_CPU_X86 1
#endif

namespace scc {
namespace cpu {

enum class Isa { base, avx2, avx512 };

inline Isa detect_isa() {
#ifdef SCC_CPU_X86
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::base;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
    if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      best = Isa::avx512;
    const char* want = std::getenv("SCC_CPU_ISA");
    if (want == nullptr || *want == '\0') return best;
    if (std::strcmp(want, "base") == 0) return Isa::base;
    if (std::strcmp(want, "avx2") == 0) return best == Isa::avx512 ? Isa::avx2 : best;
    if (std::strcmp(want, "avx512") != 0)
      TORCH_WARN("scc: SCC_CPU_ISA=", want, " is not one of avx512, avx2, base: ignored");
    return best;
  }();
  return isa;
#else
  return Isa::base;
#endif
}

}  // namespace cpu
}  // namespace scc
