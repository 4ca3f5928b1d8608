// A CUDA execution model on the CPU, for checking what the kernels of csrc/cuda compute (not how fast).
//
// Every CUDA thread of a block is a fiber on the calling OS thread (started with makecontext, then
// switched with _setjmp/_longjmp, which skip swapcontext's signal-mask system call); the scheduler runs each
// fiber until it waits at __syncthreads() or at a warp shuffle (or returns), and releases a barrier
// when every live thread of the block (warp) waits at it. Blocks run one after another; their shared
// memory is filled with 0xff bytes (NaN for floats) before each block, like memory nobody wrote. A
// barrier that can never be released (divergent __syncthreads, a shuffle some lanes skip) is reported
// as a deadlock, a shuffle after some lanes of the warp returned as an error. Launch limits are the
// hardware's (1024 threads, 48 KiB of static and dynamic shared memory together without an opt-in,
// grid.x <= 2^31 - 1, grid y and z <= 65535). Static __shared__ arrays live in a per-block arena, poisoned like the dynamic ones.
// Threads run alone up to their next barrier, in increasing or (every other block) decreasing order, so a
// missing barrier shows as a read of unwritten or stale data in one of the two orders; races that need
// finer interleavings, the GPU's FMA contraction and fast math, registers and speed it cannot see.
//
// Built with -fsanitize=address (cuda_emu.load(asan=True)), it is a memory checker like compute-sanitizer's:
// a kernel's read or write outside a tensor, or outside its shared memory, is reported by AddressSanitizer
// (the fiber switches are announced to it, and shared memory is allocated at its exact size).
//
// tests/cuda_emu/__init__.py rewrites the launches (kernel<<<grid, block, smem, stream>>>(args)) into
// emu::launch calls, `extern __shared__` arrays into emu::dynamic_smem() and static ones into
// emu::block_shared, and force-includes this file.
#pragma once

#include <setjmp.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = void*;

// The device math the kernels call unqualified (float overloads, as on the GPU).
using std::abs;
using std::exp;
using std::log;
using std::pow;
using std::sqrt;

namespace emu {

enum class State : unsigned char { kRun, kBlockBarrier, kWarpBarrier, kDone };

struct Fiber {
  ucontext_t ctx;  // the first entry
  jmp_buf env;     // where it waits
  bool started = false;
  unsigned shuffles = 0;  // shuffles done: selects the half of the double-buffered exchange
  char* stack = nullptr;
  void* asan_fake = nullptr;  // AddressSanitizer's fake stack of the fiber while it is switched out
  uint3 tid{0, 0, 0};
  unsigned warp = 0, lane = 0;
  State state = State::kDone;
};

// AddressSanitizer clears the shadow of a fiber's whole stack when it starts: a smaller stack there.
constexpr size_t kStackBytes = (EMU_ASAN ? 64 : 256) * 1024;
constexpr size_t kSlotBytes = 16;  // per lane, for shuffled values

struct Exec {
  dim3 grid, block;
  uint3 bid{0, 0, 0};
  unsigned nthreads = 0;
  std::vector<Fiber> fibers;
  unsigned cur = 0;
  jmp_buf sched;
  ucontext_t boot;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
  void* asan_fake = nullptr;         // the scheduler's fake stack while a fiber runs
  const void* asan_bottom = nullptr;  // the scheduler's stack, to switch back to
  size_t asan_size = 0;
  std::vector<unsigned char> warp_buf;
  std::unordered_map<const void*, std::unique_ptr<unsigned char[]>> statics;  // static __shared__, per block
  size_t static_bytes = 0;  // their total: with the dynamic bytes, within the 48 KiB a block gets without opt-in
  std::string error;  // set by a fiber, thrown by the scheduler
  bool reverse = false;  // run the block's threads from the last to the first (see launch)
  const std::function<void()>* body = nullptr;
};

inline Exec*& exec() {
  thread_local Exec* e = nullptr;
  return e;
}

inline Fiber& self() { return exec()->fibers[exec()->cur]; }

// AddressSanitizer must be told of every switch between stacks (before it, and on arrival), or it takes
// the fibers' frames for overflows of the OS thread's stack.
inline void asan_leave(void** fake_save, const void* bottom, size_t size) {
#if EMU_ASAN
  __sanitizer_start_switch_fiber(fake_save, bottom, size);
#else
  (void)fake_save, (void)bottom, (void)size;
#endif
}

inline void asan_arrive(void* fake_save, const void** bottom_old, size_t* size_old) {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_save, bottom_old, size_old);
#else
  (void)fake_save, (void)bottom_old, (void)size_old;
#endif
}

inline void wait_as(State s) {
  Exec* e = exec();
  Fiber& f = e->fibers[e->cur];
  f.state = s;
  if (_setjmp(f.env) == 0) {
    asan_leave(&f.asan_fake, e->asan_bottom, e->asan_size);
    _longjmp(e->sched, 1);
  }
  asan_arrive(f.asan_fake, &e->asan_bottom, &e->asan_size);
}

[[noreturn]] inline void fiber_entry() {
  Exec* e = exec();
  asan_arrive(nullptr, &e->asan_bottom, &e->asan_size);
  (*e->body)();
  e->fibers[e->cur].state = State::kDone;
  asan_leave(nullptr, e->asan_bottom, e->asan_size);  // the fiber ends: nothing to keep
  _longjmp(e->sched, 1);
}

// Runs fiber t until it waits or returns.
inline void resume(Exec& e, unsigned t) {
  e.cur = t;
  Fiber& f = e.fibers[t];
  if (_setjmp(e.sched) == 0) {
    asan_leave(&e.asan_fake, f.stack, kStackBytes);
    if (f.started) _longjmp(f.env, 1);
    f.started = true;
    swapcontext(&e.boot, &f.ctx);  // does not return: the fiber comes back by _longjmp(e.sched)
  }
  asan_arrive(e.asan_fake, nullptr, nullptr);
}

inline unsigned char* dynamic_smem() { return exec()->smem; }

// A static __shared__ array T (one per declaration and template instantiation: `site`), fresh and filled
// with 0xff bytes in every block, like the dynamic shared memory.
template <typename T>
T& block_shared(const void* site) {
  Exec& e = *exec();
  auto& slot = e.statics[site];
  if (!slot) {
    // the launch's limit holds for static and dynamic shared memory together: a GPU refuses the launch
    // (cudaErrorInvalidValue) when their sum exceeds it, though each alone fits
    // (reported by the scheduler: an exception cannot unwind out of a fiber)
    e.static_bytes += sizeof(T);
    if (e.static_bytes + e.smem_bytes > 48 * 1024 && e.error.empty())
      e.error = "cuda_emu: " + std::to_string(e.static_bytes) + " bytes of static and " +
                std::to_string(e.smem_bytes) +
                " bytes of dynamic shared memory exceed the 48 KiB of a block without an opt-in";
    slot.reset(new unsigned char[sizeof(T)]);
    std::memset(slot.get(), 0xff, sizeof(T));
  }
  return *reinterpret_cast<T*>(slot.get());
}

// Grid and block extents: an integer extent must fit the hardware's 31-bit grid.x (no silent wrap-around).
inline dim3 dims(dim3 v, const char*) { return v; }
template <typename I, typename = std::enable_if_t<std::is_integral_v<I>>>
dim3 dims(I v, const char* what) {
  if (v <= 0 || static_cast<unsigned long long>(v) > 2147483647ull)
    throw std::runtime_error(std::string("cuda_emu: ") + what + " extent " + std::to_string(v) +
                             " outside [1, 2^31 - 1]");
  return dim3(static_cast<unsigned>(v));
}

inline unsigned lanes_in_warp(const Exec& e, unsigned warp) { return std::min(32u, e.nthreads - warp * 32); }

inline void run_block(Exec& e) {
  const unsigned n = e.nthreads;
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = e.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_entry), 0);
    f.started = false;
    f.shuffles = 0;
    f.state = State::kRun;
  }
  if (e.smem_bytes) std::memset(e.smem, 0xff, e.smem_bytes);
  e.statics.clear();
  e.static_bytes = 0;
  const unsigned nwarps = (n + 31) / 32;
  for (;;) {
    for (unsigned k = 0; k < n; ++k) {
      const unsigned t = e.reverse ? n - 1 - k : k;
      if (e.fibers[t].state == State::kRun) resume(e, t);
      if (!e.error.empty()) throw std::runtime_error(e.error);
    }
    bool alive = false, released = false;
    for (unsigned w = 0; w < nwarps; ++w) {
      bool any = false, all = true, exited = false;
      for (unsigned t = w * 32; t < w * 32 + lanes_in_warp(e, w); ++t) {
        if (e.fibers[t].state == State::kDone) {
          exited = true;
          continue;
        }
        any = true;
        all = all && e.fibers[t].state == State::kWarpBarrier;
      }
      if (any && all && exited)  // a full-mask shuffle needs every lane of the warp: undefined on a GPU
        throw std::runtime_error("cuda_emu: warp shuffle in block (" + std::to_string(e.bid.x) + ", " +
                                 std::to_string(e.bid.y) + ", " + std::to_string(e.bid.z) + ") warp " +
                                 std::to_string(w) + " after some of its lanes returned");
      if (any && all) {
        for (unsigned t = w * 32; t < w * 32 + lanes_in_warp(e, w); ++t)
          if (e.fibers[t].state == State::kWarpBarrier) e.fibers[t].state = State::kRun;
        released = true;
      }
    }
    bool any = false, all = true;
    for (unsigned t = 0; t < n; ++t) {
      if (e.fibers[t].state == State::kDone) continue;
      any = true;
      all = all && e.fibers[t].state == State::kBlockBarrier;
    }
    if (any && all) {
      for (unsigned t = 0; t < n; ++t) e.fibers[t].state = e.fibers[t].state == State::kDone ? State::kDone : State::kRun;
      released = true;
    }
    for (unsigned t = 0; t < n; ++t) alive = alive || e.fibers[t].state != State::kDone;
    if (!alive) return;
    if (!released && std::none_of(e.fibers.begin(), e.fibers.begin() + n,
                                  [](const Fiber& f) { return f.state == State::kRun; }))
      throw std::runtime_error("cuda_emu: deadlock in block (" + std::to_string(e.bid.x) + ", " +
                               std::to_string(e.bid.y) + ", " + std::to_string(e.bid.z) +
                               "): threads wait at barriers that not all live threads reach");
  }
}

template <typename F>
void launch(dim3 grid, dim3 block, size_t smem, F&& kernel_call) {
  const unsigned long long n = 1ull * block.x * block.y * block.z;
  if (n == 0 || n > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535)
    throw std::runtime_error("cuda_emu: invalid launch configuration: grid (" + std::to_string(grid.x) + ", " +
                             std::to_string(grid.y) + ", " + std::to_string(grid.z) + "), block (" +
                             std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
                             std::to_string(block.z) + ")");
  if (smem > 48 * 1024)
    throw std::runtime_error("cuda_emu: " + std::to_string(smem) +
                             " bytes of dynamic shared memory need cudaFuncSetAttribute (over 48 KiB)");
  Exec e;
  e.grid = grid;
  e.block = block;
  e.nthreads = static_cast<unsigned>(n);
  e.fibers.resize(n);
  // Not zeroed: pages touched where used. Under AddressSanitizer one allocation per fiber, so that a
  // fiber's stack overflow runs into a redzone instead of its neighbour's stack.
  std::vector<std::unique_ptr<char[]>> stacks(EMU_ASAN ? n : 1);
  for (auto& st : stacks) st.reset(new char[(EMU_ASAN ? 1 : n) * kStackBytes]);
  for (unsigned t = 0; t < n; ++t) {
    Fiber& f = e.fibers[t];
    f.stack = EMU_ASAN ? stacks[t].get() : stacks[0].get() + t * kStackBytes;
    f.tid = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
    f.warp = t / 32;
    f.lane = t % 32;
  }
  // exactly `smem` bytes, so that a read past the end is outside the allocation (AddressSanitizer)
  void* smem_raw = nullptr;
  if (smem && posix_memalign(&smem_raw, 64, smem) != 0) throw std::bad_alloc();
  const std::unique_ptr<void, decltype(&std::free)> smem_buf(smem_raw, &std::free);
  e.smem = static_cast<unsigned char*>(smem_raw);
  e.smem_bytes = smem;
  e.warp_buf.resize(((n + 31) / 32) * 2 * 32 * kSlotBytes);
  const std::function<void()> body = [&] { kernel_call(); };
  e.body = &body;
  Exec* outer = exec();
  exec() = &e;
  try {
    // Threads run one at a time between barriers, so a missing barrier goes unseen when the writer
    // happens to run first. Blocks alternate the order (and so do consecutive launches): a race in
    // either direction makes some block read unwritten (NaN-poisoned) or stale data.
    thread_local unsigned launches = 0;
    const unsigned parity = launches++ & 1u;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          e.bid = {x, y, z};
          e.reverse = ((x + y + z) & 1u) != parity;
          run_block(e);
        }
  } catch (...) {
    exec() = outer;
    throw;
  }
  exec() = outer;
}

}  // namespace emu

#define threadIdx (::emu::self().tid)
#define blockIdx (::emu::exec()->bid)
#define blockDim (::emu::exec()->block)
#define gridDim (::emu::exec()->grid)

inline void __syncthreads() { emu::wait_as(emu::State::kBlockBarrier); }

// One barrier per shuffle: the lanes exchange through one half of a double buffer, alternating halves,
// so a lane that runs ahead to its next shuffle writes the other half while slower lanes still read.
template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask, int /*width*/ = 32) {
  static_assert(sizeof(T) <= emu::kSlotBytes && std::is_trivially_copyable_v<T>);
  emu::Exec* e = emu::exec();
  emu::Fiber& f = e->fibers[e->cur];
  unsigned char* half = e->warp_buf.data() + ((f.warp * 2 + (f.shuffles++ & 1)) * 32) * emu::kSlotBytes;
  std::memcpy(half + f.lane * emu::kSlotBytes, &v, sizeof(T));
  emu::wait_as(emu::State::kWarpBarrier);  // every lane has written
  const unsigned src = f.lane ^ static_cast<unsigned>(lane_mask);
  T out = v;
  if (src < emu::lanes_in_warp(*e, f.warp)) std::memcpy(&out, half + src * emu::kSlotBytes, sizeof(T));
  return out;
}

// CUDA's max/min: for floating types fmax/fmin (a NaN argument loses), else the usual comparison. Declared
// in the kernels' namespace so that unqualified calls there find them first.
namespace scc {
namespace cuda {
template <typename T>
inline T max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) return std::fmax(a, b);
  else return a < b ? b : a;
}
template <typename T>
inline T min(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) return std::fmin(a, b);
  else return b < a ? b : a;
}
}  // namespace cuda
}  // namespace scc
