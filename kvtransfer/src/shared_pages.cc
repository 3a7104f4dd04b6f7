#include "tandem/kvtransfer/shared_pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tandem {

StatusOr<std::unique_ptr<SharedPageBuffer>> SharedPageBuffer::Create(const KvPageLayout& layout,
                                                                     int32_t num_blocks) {
  TANDEM_RETURN_IF_ERROR(layout.Validate());
  if (num_blocks <= 0) return InvalidArgumentError("num_blocks must be > 0, got {}", num_blocks);
  const size_t bytes = PagesAt::Bytes(layout, num_blocks);
  int fd = ::memfd_create("tandem-kv-pages", MFD_CLOEXEC);
  if (fd < 0) return ResourceExhaustedError("memfd_create: {}", std::strerror(errno));
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    const int err = errno;
    ::close(fd);
    return ResourceExhaustedError("memfd of {} bytes: {}", bytes, std::strerror(err));
  }
  void* base = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    return ResourceExhaustedError("mmap of {} shared bytes: {}", bytes, std::strerror(err));
  }
  SharedPagePool pool{fd, static_cast<std::byte*>(base), bytes, num_blocks};
  return std::unique_ptr<SharedPageBuffer>(new SharedPageBuffer(pool, layout));
}

SharedPageBuffer::~SharedPageBuffer() {
  ::munmap(pool_.base, pool_.bytes);
  ::close(pool_.fd);
}

}  // namespace tandem
