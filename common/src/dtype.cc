#include "tandem/common/dtype.h"

#include <array>

namespace tandem {
namespace {

struct Info {
  DType dtype;
  std::string_view name;
  int64_t block_elems;
  size_t block_bytes;
};

constexpr std::array<Info, 6> kInfo = {{
    {DType::kF32, "f32", 1, 4},
    {DType::kF16, "f16", 1, 2},
    {DType::kBF16, "bf16", 1, 2},
    {DType::kQ8_0, "q8_0", kQuantBlock, 34},
    {DType::kQ4_0, "q4_0", kQuantBlock, 18},
    {DType::kQ4_1, "q4_1", kQuantBlock, 20},
}};

const Info* Find(DType d) {
  const auto i = static_cast<uint32_t>(d);
  return i < kInfo.size() ? &kInfo[i] : nullptr;
}

}  // namespace

std::string_view DTypeName(DType d) {
  if (const Info* i = Find(d)) return i->name;
  return "unknown";
}

StatusOr<DType> ParseDType(std::string_view name) {
  for (const Info& i : kInfo) {
    if (name == i.name) return i.dtype;
  }
  if (name == "float32") return DType::kF32;
  if (name == "float16") return DType::kF16;
  if (name == "bfloat16") return DType::kBF16;
  return InvalidArgumentError("unknown dtype '{}' (expected f32, f16, bf16, q8_0, q4_0 or q4_1)",
                              name);
}

bool IsKnownDType(DType d) { return Find(d) != nullptr; }
bool IsQuantized(DType d) { return DTypeBlockElems(d) > 1; }

int64_t DTypeBlockElems(DType d) {
  const Info* i = Find(d);
  return i ? i->block_elems : 0;
}

size_t DTypeBlockBytes(DType d) {
  const Info* i = Find(d);
  return i ? i->block_bytes : 0;
}

size_t DTypeSize(DType d) {
  const Info* i = Find(d);
  return i && i->block_elems == 1 ? i->block_bytes : 0;
}

}  // namespace tandem
