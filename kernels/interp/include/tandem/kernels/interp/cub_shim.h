// CPU stand-in for the CUB device algorithms our kernels call (sampling.cu), with CUB's
// temporary-storage protocol: a call with d_temp_storage == nullptr only sets
// temp_storage_bytes; a real call needs at least that many bytes and is enqueued on `stream`
// (so it is captured into graphs like a kernel).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "tandem/kernels/interp/runtime.h"

namespace cub {

struct DeviceSegmentedRadixSort {
  // Stable sort of each segment [d_begin_offsets[s], d_end_offsets[s]) by bits
  // [begin_bit, end_bit) of the key, largest first (equal keys keep their input order).
  template <typename KeyT, typename BeginOffsetIteratorT, typename EndOffsetIteratorT>
  static cudaError_t SortKeysDescending(void* d_temp_storage, size_t& temp_storage_bytes,
                                        const KeyT* d_keys_in, KeyT* d_keys_out, int num_items,
                                        int num_segments, BeginOffsetIteratorT d_begin_offsets,
                                        EndOffsetIteratorT d_end_offsets, int begin_bit = 0,
                                        int end_bit = sizeof(KeyT) * 8,
                                        cudaStream_t stream = nullptr) {
    static_assert(std::is_unsigned_v<KeyT>, "the shim sorts unsigned keys");
    // A double buffer like CUB's, so callers size their workspace as on the GPU.
    const size_t needed = size_t(num_items > 0 ? num_items : 0) * sizeof(KeyT) + 256;
    if (d_temp_storage == nullptr) {
      temp_storage_bytes = needed;
      return cudaSuccess;
    }
    if (temp_storage_bytes < needed || num_items < 0 || num_segments < 0 || begin_bit < 0 ||
        end_bit > int(sizeof(KeyT) * 8) || begin_bit >= end_bit) {
      return cudaErrorInvalidValue;
    }
    return ::tandem::interp::Enqueue(stream, [=] {
      const int width = end_bit - begin_bit;
      const KeyT field =
          width >= int(sizeof(KeyT) * 8) ? ~KeyT{0} : static_cast<KeyT>((KeyT{1} << width) - 1);
      auto bits = [&](KeyT k) { return static_cast<KeyT>((k >> begin_bit) & field); };
      std::vector<KeyT> seg;
      for (int s = 0; s < num_segments; ++s) {
        const auto lo = static_cast<ptrdiff_t>(d_begin_offsets[s]);
        const auto hi = static_cast<ptrdiff_t>(d_end_offsets[s]);
        if (hi <= lo) continue;
        seg.assign(d_keys_in + lo, d_keys_in + hi);
        std::stable_sort(seg.begin(), seg.end(), [&](KeyT a, KeyT b) { return bits(a) > bits(b); });
        std::copy(seg.begin(), seg.end(), d_keys_out + lo);
      }
    });
  }
};

}  // namespace cub
