// Just enough of the Metal Shading Language, in C++20, to run MLX-generated compute kernels on a
// CPU: the types and built-ins the kernels use, and a launcher that runs each threadgroup's
// threads as fibers (ucontext), switching at every barrier and SIMD shuffle.
//
// Semantics kept: values a thread holds in registers, threadgroup memory shared by the threads of
// one threadgroup, barriers, shuffles between the lanes of a SIMD group of 32. Not kept: address
// spaces (the qualifiers are erased), threadgroup memory limits, SIMD lockstep timing. Threadgroup
// memory is a function-level `static`, so it starts zeroed where Metal's holds garbage.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

// ---- Types ----------------------------------------------------------------------------------

typedef unsigned int uint;
typedef unsigned short ushort;

struct uint3 {
  uint x, y, z;
};

// Storage types only: the kernels convert to float for arithmetic. Metal has half arithmetic;
// here a kernel that uses it fails to compile (rather than silently computing in float).
struct half_t {
  _Float16 v;
  half_t() = default;
  half_t(float f) : v(static_cast<_Float16>(f)) {}
  explicit operator float() const { return static_cast<float>(v); }
};

struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  bfloat16_t(float f) {  // round to nearest even, as the GPU's conversion does
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
  }
  explicit operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

typedef half_t half;
typedef half_t float16_t;

// ---- Built-ins ------------------------------------------------------------------------------

using std::max;
using std::min;
inline float exp2(float x) { return std::exp2(x); }

#define device
#define constant
#define thread
#define threadgroup static  // one copy per kernel instantiation; threadgroups run one at a time

enum class mem_flags { mem_none, mem_device, mem_threadgroup };

namespace emu {

[[noreturn]] inline void fail(const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::exit(3);
}

// What every thread of the launch sees; the generated main passes the members the kernel's
// signature asks for, by their Metal attribute names.
struct Thread {
  uint3 thread_position_in_threadgroup, threadgroup_position_in_grid, threadgroups_per_grid;
  uint3 threads_per_threadgroup, thread_position_in_grid, threads_per_grid;
  uint thread_index_in_threadgroup, thread_index_in_simdgroup, simdgroup_index_in_threadgroup;
  uint threads_per_simdgroup;
};

constexpr int SIMD_WIDTH = 32;

struct Fiber {
  ucontext_t context;
  bool done;
  int waiting_at;  // source line of the barrier or shuffle it is stopped at
};

inline ucontext_t scheduler;
inline std::vector<Fiber> fibers;
inline std::vector<std::vector<char>> stacks;
inline int current;
inline std::function<void(const Thread&)> body;
inline std::vector<Thread> threads;

// Hands control back to the scheduler; `line` names the synchronisation point for the
// divergence check.
inline void yield(int line) {
  fibers[current].waiting_at = line;
  swapcontext(&fibers[current].context, &scheduler);
}

inline void barrier(int line) { yield(line); }

// Every lane publishes its value, all wait, every lane reads its partner's, all wait again (so
// that no value is overwritten before its reader has it).
template <typename T>
T shuffle_xor(T value, ushort mask, int line) {
  static std::vector<T> published;
  published.resize(fibers.size());
  const int t = current;
  const int partner = (t & ~(SIMD_WIDTH - 1)) | ((t & (SIMD_WIDTH - 1)) ^ mask);
  if (partner >= int(fibers.size()))
    fail("simd_shuffle_xor on line " + std::to_string(line) + ": thread " + std::to_string(t) +
         " reads lane " + std::to_string(partner) + ", which is not in the threadgroup of " +
         std::to_string(fibers.size()) + " threads");
  published[t] = value;
  yield(line);
  const T result = published[partner];
  yield(line);
  return result;
}

inline void enter() {
  body(threads[current]);
  fibers[current].done = true;
}

// Every thread still running must have stopped at the same barrier or shuffle: Metal leaves a
// barrier that only some threads reach undefined (it hangs or silently misbehaves).
inline void check_converged(uint3 group) {
  std::map<int, int> at;  // line (-1: finished) -> threads there
  for (auto& f : fibers) at[f.done ? -1 : f.waiting_at]++;
  if (at.size() <= 1) return;
  std::string message = "BARRIER DIVERGENCE in threadgroup (" + std::to_string(group.x) + ", " +
                        std::to_string(group.y) + ", " + std::to_string(group.z) + "):";
  for (auto [line, count] : at)
    message += " " + std::to_string(count) + " thread(s) " +
               (line < 0 ? std::string("finished") : "wait at line " + std::to_string(line)) + ";";
  fail(message);
}

// Runs the grid (in threads, as mx.fast.metal_kernel takes it) one threadgroup at a time. Each
// round resumes every unfinished thread in a fresh random order, so that a read of threadgroup
// memory that misses a barrier sees a different writer's progress from run to run rather than
// the same lucky order.
inline void launch(uint3 grid, uint3 group_size, unsigned seed, std::function<void(const Thread&)> kernel) {
  if (grid.x % group_size.x || grid.y % group_size.y || grid.z % group_size.z)
    fail("the grid is not a multiple of the threadgroup size (partial threadgroups are not emulated)");
  const uint3 groups = {grid.x / group_size.x, grid.y / group_size.y, grid.z / group_size.z};
  const int n = int(group_size.x * group_size.y * group_size.z);
  body = std::move(kernel);
  fibers.assign(n, Fiber{});
  stacks.resize(n);
  for (auto& s : stacks) s.resize(1 << 18);
  threads.assign(n, Thread{});
  std::vector<int> order(n);
  std::mt19937 rng(seed);
  for (uint gz = 0; gz < groups.z; ++gz)
    for (uint gy = 0; gy < groups.y; ++gy)
      for (uint gx = 0; gx < groups.x; ++gx) {
        const uint3 group = {gx, gy, gz};
        for (int t = 0; t < n; ++t) {
          const uint3 local = {t % group_size.x, t / group_size.x % group_size.y,
                               t / (group_size.x * group_size.y)};
          threads[t] = Thread{local, group, groups, group_size,
                              {gx * group_size.x + local.x, gy * group_size.y + local.y, gz * group_size.z + local.z},
                              grid, uint(t), uint(t % SIMD_WIDTH), uint(t / SIMD_WIDTH), uint(SIMD_WIDTH)};
          fibers[t].done = false;
          getcontext(&fibers[t].context);
          fibers[t].context.uc_stack.ss_sp = stacks[t].data();
          fibers[t].context.uc_stack.ss_size = stacks[t].size();
          fibers[t].context.uc_link = &scheduler;
          makecontext(&fibers[t].context, enter, 0);
        }
        for (int t = 0; t < n; ++t) order[t] = t;
        while (true) {
          std::shuffle(order.begin(), order.end(), rng);
          for (int t : order)
            if (!fibers[t].done) {
              current = t;
              swapcontext(&scheduler, &fibers[t].context);
            }
          check_converged(group);
          if (fibers[0].done) break;  // converged: all finished together
        }
      }
}

// Buffers travel as files: floating types as float32, integers as themselves.
template <typename Stored, typename T>
std::vector<T> load(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail("cannot open " + path);
  std::vector<Stored> raw;
  Stored x;
  while (std::fread(&x, sizeof x, 1, f) == 1) raw.push_back(x);
  std::fclose(f);
  return std::vector<T>(raw.begin(), raw.end());
}

template <typename Stored, typename T>
void store(const std::string& path, const std::vector<T>& values) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail("cannot write " + path);
  for (const T& v : values) {
    const Stored x = static_cast<Stored>(v);
    std::fwrite(&x, sizeof x, 1, f);
  }
  std::fclose(f);
}

}  // namespace emu

// At the call site, so that the divergence check can name the line.
#define threadgroup_barrier(flags) emu::barrier(__LINE__)
#define simd_shuffle_xor(value, mask) emu::shuffle_xor((value), (mask), __LINE__)
