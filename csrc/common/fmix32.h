// murmur3's fmix32, the hash behind the counter-based Gumbel noise of mtkernels/gumbel.py. One
// definition for the CPU and CUDA kernels: every backend must draw the same token for a seed.
#pragma once

#include <cstdint>

#include "common/host_device.h"

namespace mtk {

MTK_HOST_DEVICE uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}

}  // namespace mtk
