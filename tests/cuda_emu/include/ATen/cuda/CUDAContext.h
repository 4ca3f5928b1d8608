// cuda_emu stand-in: the current stream is a placeholder (kernels run synchronously on the CPU).
#pragma once
#include <ATen/ATen.h>

namespace at {
namespace cuda {
struct EmuStream {
  operator void*() const { return nullptr; }
};
inline EmuStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace at
