#include "shm_plane.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "wire.h"

namespace tandem::kvtransfer_internal {
namespace {

constexpr uint16_t kAttachKind = 6;  // Kind::kAttach (transceiver_impl.h)
constexpr size_t kAttachBytes = 8 + 4 + 8 + 8;
constexpr size_t kMaxDeviceIdBytes = 256;
constexpr size_t kLeaseBytes = 4096;

// Copies pages into the receiver's pool. With AVX-512, non-temporal stores: the pages are not
// read again by this process, and streaming them past the cache saves the read-for-ownership of
// every destination line; four pages are copied interleaved, which keeps more DRAM pages open (as
// glibc's large memcpy does). Measured on a 2-core Xeon (AVX-512), 7,680 scattered 24 KiB pages:
// memcpy per page 5.7 GB/s, streams one page at a time 9.6, four interleaved 11.2, one contiguous
// memcpy of the same bytes 11.2. Without AVX-512, AVX2 non-temporal stores one page at a time: on
// a 2-core AMD EPYC (AVX2, 2026-12-05), 7,680 scattered 24 KiB pages (medians of 7): memcpy per
// page 9.3 GB/s, rep movsb per page 9.2, AVX2 streams one page at a time 15.4-16.2, one
// contiguous memcpy of the same bytes 9.5-9.9 (four pages interleaved, as with AVX-512, had
// reached only 0.56-0.65x of it there). Call FinishCopies() before announcing the pages.
struct PageCopy {
  std::byte* dst;
  const std::byte* src;
};

#if defined(__x86_64__)
__attribute__((target("avx512f"))) void StreamAvx512(const PageCopy* c, int count, size_t n) {
  for (size_t i = 0; i < n; i += 128) {
    for (int k = 0; k < count; ++k) {
      const __m512i a = _mm512_loadu_si512(c[k].src + i);
      const __m512i b = _mm512_loadu_si512(c[k].src + i + 64);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(c[k].dst + i), a);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(c[k].dst + i + 64), b);
    }
  }
}

__attribute__((target("avx2"))) void StreamAvx2(std::byte* dst, const std::byte* src, size_t n) {
  for (size_t i = 0; i < n; i += 128) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 64));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 96), d);
  }
}

bool HasAvx512() {
  __builtin_cpu_init();  // needed before __builtin_cpu_supports in a static initializer
  return __builtin_cpu_supports("avx512f");
}
bool HasAvx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}
const bool kStream = HasAvx512();
const bool kStreamAvx2 = !kStream && HasAvx2();
#endif

// Copies every page of `copies` (`n` bytes each).
void CopyPages(const std::vector<PageCopy>& copies, size_t n) {
  size_t i = 0;
#if defined(__x86_64__)
  if (kStream && n % 128 == 0) {
    for (; i < copies.size(); i += 4) {
      const int count = static_cast<int>(std::min<size_t>(4, copies.size() - i));
      bool aligned = true;
      for (int k = 0; k < count; ++k) {
        aligned = aligned && reinterpret_cast<uintptr_t>(copies[i + k].dst) % 64 == 0;
      }
      if (!aligned) break;
      StreamAvx512(&copies[i], count, n);
    }
  }
  if (kStreamAvx2 && n % 128 == 0) {
    for (; i < copies.size(); ++i) {
      if (reinterpret_cast<uintptr_t>(copies[i].dst) % 32 != 0) break;
      StreamAvx2(copies[i].dst, copies[i].src, n);
    }
  }
#endif
  for (; i < copies.size(); ++i) std::memcpy(copies[i].dst, copies[i].src, n);
}

// Orders the streamed stores before whatever follows (the layer's announcement).
void FinishCopies() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

// The device copies for `copies` (`n` bytes each), runs of pages adjacent on both sides merged
// into one copy: a layer's pages of consecutive blocks are adjacent in both pools.
std::vector<DeviceCopy> DeviceCopies(const std::vector<PageCopy>& copies, size_t n) {
  std::vector<DeviceCopy> out;
  for (const PageCopy& c : copies) {
    if (!out.empty() && out.back().dst + out.back().bytes == c.dst &&
        out.back().src + out.back().bytes == c.src) {
      out.back().bytes += n;
    } else {
      out.push_back({c.dst, c.src, n});
    }
  }
  return out;
}

void CloseAll(const std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
}

}  // namespace

Mapping::~Mapping() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (base_ != nullptr) ::munmap(base_, bytes_);
    base_ = std::exchange(o.base_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

StatusOr<std::pair<int, Mapping>> CreateLease() {
  int fd = ::memfd_create("tandem-kv-lease", MFD_CLOEXEC);
  if (fd < 0) return ResourceExhaustedError("memfd_create: {}", std::strerror(errno));
  void* p = MAP_FAILED;
  if (::ftruncate(fd, kLeaseBytes) == 0) {
    p = ::mmap(nullptr, kLeaseBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  }
  if (p == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    return ResourceExhaustedError("shm lease: {}", std::strerror(err));
  }
  new (p) ShmLease{{0}, {0}};
  return std::pair<int, Mapping>(fd, Mapping(p, kLeaseBytes));
}

std::string EncodeAttach(uint64_t fingerprint, const SharedPagePool& pool, size_t page_bytes,
                         std::string_view device_id) {
  std::string out;
  PutField<uint64_t>(out, fingerprint);
  PutField<int32_t>(out, pool.num_blocks);
  PutField<uint64_t>(out, page_bytes);
  PutField<uint64_t>(out, pool.bytes);
  out.append(device_id.substr(0, kMaxDeviceIdBytes));
  return out;
}

StatusOr<std::unique_ptr<ShmAttachment>> AttachShm(Connection& conn, const Formatter& formatter,
                                                   Deadline deadline, DeviceIpc* device) {
  TANDEM_ASSIGN_OR_RETURN(MessageHeader h, conn.ReceiveHeader(deadline));
  const bool length_ok =
      device == nullptr ? h.length == kAttachBytes
                        : h.length > kAttachBytes && h.length <= kAttachBytes + kMaxDeviceIdBytes;
  if (h.kind != kAttachKind || !length_ok) {
    return UnavailableError(
        "protocol error from {}: expected the {} attach message, got kind {} ({} bytes)",
        conn.peer(), device == nullptr ? "shm" : "cuda_ipc", h.kind, h.length);
  }
  std::byte buf[kAttachBytes + kMaxDeviceIdBytes];
  ByteSpan span(buf, h.length);
  TANDEM_RETURN_IF_ERROR(conn.ReceivePayload({&span, 1}, deadline));
  std::vector<int> fds = conn.TakeFds();
  if (fds.size() != 2) {
    CloseAll(fds);
    return UnavailableError("protocol error from {}: shm attach carried {} descriptors, not 2",
                            conn.peer(), fds.size());
  }
  auto shm = std::make_unique<ShmAttachment>();
  const std::byte* p = buf + 8;  // past the receiver's fingerprint
  shm->num_blocks = GetField<int32_t>(p);
  shm->page_bytes = GetField<uint64_t>(p);
  const uint64_t pool_bytes = GetField<uint64_t>(p);
  const size_t layers = size_t(formatter.layout().num_layers);
  if (shm->page_bytes != formatter.page_bytes() || shm->num_blocks <= 0 ||
      pool_bytes != shm->page_bytes * layers * size_t(shm->num_blocks)) {
    CloseAll(fds);
    return FailedPreconditionError(
        "receiver {} shares a pool of {} blocks x {} B pages ({} B), local pages are {} B",
        conn.peer(), shm->num_blocks, shm->page_bytes, pool_bytes, formatter.page_bytes());
  }
  if (device != nullptr) {
    shm->peer_device.assign(reinterpret_cast<const char*>(buf + kAttachBytes),
                            h.length - kAttachBytes);
    StatusOr<std::unique_ptr<DeviceMapping>> mapped = device->Import(fds[0], pool_bytes);
    if (!mapped.ok()) {
      CloseAll(fds);
      return FailedPreconditionError(
          "cannot import the device page pool of {} (on {}) on this worker's {}: {}", conn.peer(),
          shm->peer_device, device->device_id(), mapped.status().ToString());
    }
    shm->device = std::move(mapped).value();
    shm->ipc = device;
  }
  void* pool = device != nullptr
                   ? nullptr
                   : ::mmap(nullptr, pool_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
  void* lease = ::mmap(nullptr, kLeaseBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[1], 0);
  const int err = errno;
  CloseAll(fds);
  if (pool != MAP_FAILED && pool != nullptr) shm->pool = Mapping(pool, pool_bytes);
  if (lease != MAP_FAILED) shm->lease = Mapping(lease, kLeaseBytes);
  if (pool == MAP_FAILED || lease == MAP_FAILED) {
    return UnavailableError("cannot map the shared pool of {}: {}", conn.peer(),
                            std::strerror(err));
  }
  return shm;
}

Status CopyLayerShm(ShmAttachment& shm, uint64_t request_id, const PageAccessor& src, int32_t layer,
                    std::span<const int32_t> local_blocks, std::span<const int32_t> dest_blocks,
                    int32_t num_layers) {
  if (layer < 0 || layer >= num_layers) {
    return InvalidArgumentError("layer {} out of range [0, {})", layer, num_layers);
  }
  for (int32_t d : dest_blocks) {
    if (d < 0 || d >= shm.num_blocks) {
      return InvalidArgumentError(
          "req={}: destination block {} is outside the receiver's pool "
          "of {} blocks",
          request_id, d, shm.num_blocks);
    }
  }
  ShmLease* lease = LeaseOf(shm.lease);
  lease->writing.store(request_id, std::memory_order_seq_cst);
  if (lease->revoked.load(std::memory_order_seq_cst) != 0) {
    lease->writing.store(0, std::memory_order_seq_cst);
    return UnavailableError("req={}: the receiver revoked this connection's pool access",
                            request_id);
  }
  Status status;
  std::vector<PageCopy> copies;
  copies.reserve(local_blocks.size());
  std::byte* layer_base = shm.base() + size_t(layer) * size_t(shm.num_blocks) * shm.page_bytes;
  for (size_t i = 0; i < local_blocks.size(); ++i) {
    std::span<std::byte> page = src.Page(layer, local_blocks[i]);
    if (page.size() != shm.page_bytes || page.data() == nullptr) {
      status = InvalidArgumentError(
          "req={}: page (layer {}, block {}) has {} bytes, layout needs "
          "{}",
          request_id, layer, local_blocks[i], page.size(), shm.page_bytes);
      break;
    }
    copies.push_back({layer_base + size_t(dest_blocks[i]) * shm.page_bytes, page.data()});
  }
  if (status.ok() && shm.ipc != nullptr) {
    status = shm.ipc->Copy(DeviceCopies(copies, shm.page_bytes));
    if (!status.ok()) {
      status = InternalError("req={}: copying layer {} into the receiver's device pages: {}",
                             request_id, layer, status.message());
    }
  } else if (status.ok()) {
    CopyPages(copies, shm.page_bytes);
    FinishCopies();
  }
  lease->writing.store(0, std::memory_order_seq_cst);
  return status;
}

Status CheckPagesInPool(const SharedPagePool& pool, const PageAccessor& pages,
                        std::span<const int32_t> blocks, int32_t num_layers, size_t page_bytes) {
  // The first and the last layer, as ExpectTransfer checks page sizes: accessors place pages by
  // arithmetic, so these two pin down the rest.
  for (int32_t layer : {0, num_layers - 1}) {
    for (int32_t b : blocks) {
      const std::byte* want =
          pool.base + (size_t(layer) * size_t(pool.num_blocks) + size_t(b)) * page_bytes;
      if (b < 0 || b >= pool.num_blocks || pages.Page(layer, b).data() != want) {
        return FailedPreconditionError(
            "page (layer {}, block {}) is not in the shared pool: the shm transport writes only "
            "there",
            layer, b);
      }
    }
  }
  return Status::Ok();
}

}  // namespace tandem::kvtransfer_internal
