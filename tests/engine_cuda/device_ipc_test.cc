// The CUDA backend's side of the cuda_ipc KV transport: exportable device page pools
// (ModelRunner::CreatePagePool(..., exportable), EngineOptions::kv_device_export) and DeviceIpc
// (CreateCudaDeviceIpc): import in this process and in another one, copies, errors, no leaked
// descriptors. Built into both flavours' test binaries with cuda_runner_test.cc: on the
// interpreter (label cuda_interp) the VMM calls are its memfd stand-in; on a GPU the driver's.
#include <cuda_runtime.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "no_gpu.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/engine/engine.h"
#include "test_model.h"

extern char** environ;

namespace tandem {
namespace {

// The environment of the child process of CrossProcess (its pool's fd and size).
constexpr char kChildFdEnv[] = "TANDEM_DEVICE_IPC_TEST_FD";
constexpr char kChildBytesEnv[] = "TANDEM_DEVICE_IPC_TEST_BYTES";

int OpenFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - 1;  // the directory's own descriptor
}

// Byte i of a test pattern.
std::byte Pattern(size_t i, int seed) { return std::byte((i * 7 + seed * 31 + 3) & 0xff); }
std::vector<std::byte> Bytes(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = Pattern(i, seed);
  return v;
}
std::vector<std::byte> ReadDevice(const std::byte* p, size_t n) {
  std::vector<std::byte> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n, cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

class DeviceIpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = testing::NoGpuReason();
    if (!reason.empty()) GTEST_SKIP() << "needs a CUDA device (or the interpreter): " << reason;
    dir_ = testing::TempDir("device_ipc");
    testing::TinyModelSpec spec;  // Qwen2-like, head_dim 64 (the CUDA kernels' smallest)
    spec.arch = "Qwen2ForCausalLM";
    spec.hidden = 128;
    spec.heads = 2;
    spec.kv_heads = 1;
    spec.qkv_bias = true;
    spec.tied = true;
    spec.intermediate = 160;
    spec.vocab = 211;
    spec.seed = 11;
    spec_ = spec;
    testing::WriteTinyModel(dir_, spec);
    auto config = LoadModelConfig(dir_);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    auto weights = ModelWeights::Load(dir_, *config);
    ASSERT_TRUE(weights.ok()) << weights.status().ToString();
    CudaRunnerOptions o;
    o.weights = DType::kF32;
    auto runner = CreateCudaRunner(*config, std::move(weights).value(), o);
    ASSERT_TRUE(runner.ok()) << runner.status().ToString();
    runner_ = std::move(runner).value();
    geometry_ = runner_->KvGeometryFor(16);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<PagePool> ExportablePool(int32_t blocks = 64) {
    auto pool = runner_->CreatePagePool(geometry_, blocks, /*exportable=*/true);
    EXPECT_TRUE(pool.ok()) << pool.status().ToString();
    return pool.ok() ? std::move(pool).value() : nullptr;
  }

  std::filesystem::path dir_;
  testing::TinyModelSpec spec_;
  std::unique_ptr<ModelRunner> runner_;
  KvGeometry geometry_;
};

TEST_F(DeviceIpcTest, ExportablePoolIsImportedReadAndWrittenThroughTheMapping) {
  auto pool = ExportablePool();
  ASSERT_TRUE(pool);
  EXPECT_EQ(pool->memory(), PageMemory::kDevice);
  EXPECT_EQ(pool->kind(), "cuda");
  ASSERT_GE(pool->shared_fd(), 0);
  auto plain = runner_->CreatePagePool(geometry_, 8);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->shared_fd(), -1);

  const size_t n = pool->bytes();
  const auto written = Bytes(n, 1);
  ASSERT_EQ(cudaMemcpy(pool->base(), written.data(), n, cudaMemcpyHostToDevice), cudaSuccess);

  auto ipc = CreateCudaDeviceIpc(0);
  ASSERT_TRUE(ipc.ok()) << ipc.status().ToString();
  const std::string& id = (*ipc)->device_id();
  EXPECT_EQ(id.rfind("GPU-", 0), 0u) << id;
  EXPECT_EQ(id.size(), 4u + 36u) << id;

  // Imported through a duplicate that is closed at once: the mapping does not need the fd.
  const int dup_fd = dup(pool->shared_fd());
  ASSERT_GE(dup_fd, 0);
  auto mapping = (*ipc)->Import(dup_fd, n);
  close(dup_fd);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  EXPECT_EQ((*mapping)->bytes(), n);
  std::byte* remote = (*mapping)->base();
  ASSERT_NE(remote, nullptr);
  EXPECT_NE(remote, pool->base());
  EXPECT_EQ(ReadDevice(remote, n), written);

  // Copy: a page out of the mapping into a device buffer, and a buffer into the mapping's last
  // page, which the pool then shows.
  const size_t page = geometry_.PageBytes();
  void* local = nullptr;
  ASSERT_EQ(cudaMalloc(&local, 2 * page), cudaSuccess);
  auto* buf = static_cast<std::byte*>(local);
  const auto fresh = Bytes(page, 2);
  ASSERT_EQ(cudaMemcpy(buf + page, fresh.data(), page, cudaMemcpyHostToDevice), cudaSuccess);
  const std::vector<DeviceCopy> copies = {
      {buf, remote + 3 * page, page},
      {remote + n - page, buf + page, page},
      {buf, remote, 0},  // empty: nothing happens
  };
  ASSERT_TRUE((*ipc)->Copy(copies).ok());
  EXPECT_EQ(ReadDevice(buf, page),
            std::vector<std::byte>(written.begin() + 3 * page, written.begin() + 4 * page));
  EXPECT_EQ(ReadDevice(pool->base() + n - page, page), fresh);
  EXPECT_EQ(ReadDevice(pool->base(), page),
            std::vector<std::byte>(written.begin(), written.begin() + page));
  EXPECT_EQ(cudaFree(local), cudaSuccess);
}

// The child of CrossProcess: imports the parent's pool, checks the parent's first page and
// writes the second. Skips when not started by CrossProcess.
TEST_F(DeviceIpcTest, CrossProcessChild) {
  const char* fd_env = std::getenv(kChildFdEnv);
  const char* bytes_env = std::getenv(kChildBytesEnv);
  if (fd_env == nullptr || bytes_env == nullptr) {
    GTEST_SKIP() << "run by CrossProcessImportAndCopy in a child process";
  }
  const int fd = std::atoi(fd_env);
  const size_t n = std::strtoull(bytes_env, nullptr, 10);
  const size_t page = geometry_.PageBytes();
  auto ipc = CreateCudaDeviceIpc(0);
  ASSERT_TRUE(ipc.ok()) << ipc.status().ToString();
  auto mapping = (*ipc)->Import(fd, n);
  ASSERT_TRUE(mapping.ok()) << mapping.status().ToString();
  close(fd);
  EXPECT_EQ(ReadDevice((*mapping)->base(), page), Bytes(page, 3));
  void* local = nullptr;
  ASSERT_EQ(cudaMalloc(&local, page), cudaSuccess);
  const auto mine = Bytes(page, 4);
  ASSERT_EQ(cudaMemcpy(local, mine.data(), page, cudaMemcpyHostToDevice), cudaSuccess);
  const DeviceCopy c{(*mapping)->base() + page, static_cast<const std::byte*>(local), page};
  ASSERT_TRUE((*ipc)->Copy(std::span<const DeviceCopy>(&c, 1)).ok());
  EXPECT_EQ(cudaFree(local), cudaSuccess);
}

TEST_F(DeviceIpcTest, CrossProcessImportAndCopy) {
  // The pool's fd is inherited across fork + exec (the transport passes it over a Unix socket;
  // either way the child gets a descriptor of the same allocation). The child only execs after
  // fork, which is valid with a CUDA context in the parent.
  auto pool = ExportablePool();
  ASSERT_TRUE(pool);
  const size_t page = geometry_.PageBytes();
  const auto first = Bytes(page, 3);
  ASSERT_EQ(cudaMemcpy(pool->base(), first.data(), page, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(pool->base() + page, 0, page), cudaSuccess);

  const int fd = pool->shared_fd();
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  env.push_back(std::string(kChildFdEnv) + "=" + std::to_string(fd));
  env.push_back(std::string(kChildBytesEnv) + "=" + std::to_string(pool->bytes()));
  std::vector<char*> envp;
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string exe = "/proc/self/exe";
  std::string filter = "--gtest_filter=DeviceIpcTest.CrossProcessChild";
  std::vector<char*> argv = {exe.data(), filter.data(), nullptr};

  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    fcntl(fd, F_SETFD, 0);  // keep the pool's fd across exec
    execve(exe.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  ASSERT_EQ(WEXITSTATUS(status), 0) << "the child's test failed (its output is above)";
  EXPECT_EQ(ReadDevice(pool->base() + page, page), Bytes(page, 4));
  EXPECT_EQ(ReadDevice(pool->base(), page), first);
}

TEST_F(DeviceIpcTest, BadImportsAreInvalidArgumentsAndNothingLeaks) {
  auto ipc = CreateCudaDeviceIpc(0);
  ASSERT_TRUE(ipc.ok()) << ipc.status().ToString();
  {
    auto warm = ExportablePool();  // the runtime's own descriptors, if any, open now
    ASSERT_TRUE(warm);
    auto m = (*ipc)->Import(warm->shared_fd(), warm->bytes());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
  }
  const int fds_before = OpenFds();
  size_t free_before = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);

  for (int round = 0; round < 2; ++round) {
    auto pool = ExportablePool();
    ASSERT_TRUE(pool);
    EXPECT_GE(OpenFds(), fds_before + 1);  // the pool's fd
    const size_t n = pool->bytes();
    {
      auto m = (*ipc)->Import(pool->shared_fd(), n);
      ASSERT_TRUE(m.ok()) << m.status().ToString();
    }
    // Past the allocation (rounded up to the granularity, as the exporter did): refused.
    auto big = (*ipc)->Import(pool->shared_fd(), size_t{64} << 20);
    ASSERT_FALSE(big.ok());
    EXPECT_EQ(big.status().code(), StatusCode::kInvalidArgument) << big.status().ToString();
    EXPECT_NE(big.status().message().find("smaller"), std::string::npos) << big.status().ToString();

    int p[2];
    ASSERT_EQ(pipe(p), 0);
    auto from_pipe = (*ipc)->Import(p[0], n);
    close(p[0]);
    close(p[1]);
    ASSERT_FALSE(from_pipe.ok());
    EXPECT_EQ(from_pipe.status().code(), StatusCode::kInvalidArgument)
        << from_pipe.status().ToString();
    EXPECT_NE(from_pipe.status().message().find("not an exported device allocation"),
              std::string::npos)
        << from_pipe.status().ToString();

    const int file = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(file, 0);
    auto from_file = (*ipc)->Import(file, n);
    close(file);
    EXPECT_EQ(from_file.status().code(), StatusCode::kInvalidArgument)
        << from_file.status().ToString();

    auto closed = (*ipc)->Import(-1, n);
    EXPECT_EQ(closed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(closed.status().message().find("not an open file descriptor"), std::string::npos)
        << closed.status().ToString();
    auto empty = (*ipc)->Import(pool->shared_fd(), 0);
    EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(OpenFds(), fds_before);
  size_t free_after = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
#ifdef TANDEM_CUDA_INTERP
  EXPECT_EQ(free_after, free_before);  // a GPU's free memory moves with other processes
#endif

  auto none = CreateCudaDeviceIpc(7);
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable) << none.status().ToString();
}

#ifdef TANDEM_CUDA_INTERP
TEST_F(DeviceIpcTest, WithoutPosixFdHandlesItIsUnavailable) {
  // The interpreter's device pretends it cannot export POSIX file descriptors.
  ASSERT_EQ(setenv("TANDEM_INTERP_NO_VMM_FD", "1", 1), 0);
  auto ipc = CreateCudaDeviceIpc(0);
  auto pool = runner_->CreatePagePool(geometry_, 8, /*exportable=*/true);
  unsetenv("TANDEM_INTERP_NO_VMM_FD");
  ASSERT_FALSE(ipc.ok());
  EXPECT_EQ(ipc.status().code(), StatusCode::kUnavailable) << ipc.status().ToString();
  EXPECT_NE(ipc.status().message().find("POSIX file descriptors"), std::string::npos)
      << ipc.status().ToString();
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), StatusCode::kUnavailable) << pool.status().ToString();
  EXPECT_TRUE(runner_->CreatePagePool(geometry_, 8).ok());  // plain device pages still work
}
#endif

TEST_F(DeviceIpcTest, EngineWithExportedKvPagesGivesTheCpuTokens) {
  auto load = [&](Device device) -> std::unique_ptr<Engine> {
    EngineOptions eo;
    eo.device = device;
    eo.deterministic = true;
    eo.weights = DType::kF32;
    eo.kv_cache_bytes = 1 << 20;
    eo.kv_device_export = true;
    auto e = Engine::Load(dir_, eo);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(e).value() : nullptr;
  };
  auto cpu = load(Device::kCpu);
  auto gpu = load(Device::kCuda);
  ASSERT_TRUE(cpu && gpu);
  // Host backends: the same flag gives a memfd pool.
  EXPECT_EQ(cpu->kv_cache().pool().kind(), "shm");
  EXPECT_GE(cpu->kv_cache().pool().shared_fd(), 0);
  EXPECT_EQ(gpu->kv_cache().pool().memory(), PageMemory::kDevice);
  EXPECT_GE(gpu->kv_cache().pool().shared_fd(), 0);

  GenerationRequest r;
  for (int t = 0; t < 9; ++t) r.prompt.push_back((31 * t + 2) % spec_.vocab);
  r.max_tokens = 4;
  r.ignore_eos = true;
  r.sampling.temperature = 0.0f;
  auto run = [&](Engine& e) {
    Generator g(e, GeneratorOptions{});
    std::vector<int32_t> out;
    EXPECT_TRUE(g.Add(r).ok());
    while (g.HasWork()) {
      std::vector<TokenEvent> events;
      const Status st = g.Step(&events);
      EXPECT_TRUE(st.ok()) << st.ToString();
      if (!st.ok()) break;
      for (const TokenEvent& ev : events) {
        if (ev.token >= 0) out.push_back(ev.token);
      }
    }
    return out;
  };
  const auto want = run(*cpu);
  ASSERT_EQ(want.size(), 4u);
  EXPECT_EQ(run(*gpu), want);
}

}  // namespace
}  // namespace tandem
