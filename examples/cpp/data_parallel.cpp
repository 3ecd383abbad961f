// Data-parallel training with LAMB over c10d's Gloo process group: every rank
// starts from the same weights, computes the gradients of its own batch, the
// gradients are averaged by an all-reduce, and every rank takes the same LAMB
// step, so the replicas stay bitwise equal. Rank 0 checks that at the end and
// saves the checkpoint.
//
// usage: data_parallel PATH                   forks two ranks
//        data_parallel PATH RANK WORLD_SIZE   one rank; start WORLD_SIZE of them
// The ranks meet in the file PATH.store (which must not exist beforehand);
// rank 0 writes PATH.model and PATH.optim.

#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/nn.h>
#include <torch/serialize.h>

#include <cstdio>
#include <string>
#include <vector>

#include <holocron/optim.h>

namespace {

namespace ho = holocron::optim;

constexpr int kSteps = 50;

struct MlpImpl : torch::nn::Module {
  MlpImpl() : hidden(register_module("hidden", torch::nn::Linear(8, 32))),
              out(register_module("out", torch::nn::Linear(32, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) { return out->forward(torch::tanh(hidden->forward(x))); }
  torch::nn::Linear hidden, out;
};
TORCH_MODULE(Mlp);

// [average-gradients]
// Averages each gradient over the ranks, in place; every rank receives the
// same bits.
void average_gradients(c10d::Backend& group, const std::vector<torch::Tensor>& params) {
  c10d::AllreduceOptions average;
  average.reduceOp = c10d::ReduceOp::AVG;
  for (const auto& p : params) {
    std::vector<torch::Tensor> grad = {p.grad()};
    group.allreduce(grad, average)->wait();
  }
}
// [average-gradients]

int run_rank(const std::string& path, int rank, int world_size) {
  // [process-group]
  auto store = c10::make_intrusive<c10d::FileStore>(path + ".store", world_size);
  c10::intrusive_ptr<c10d::Backend> group = c10::make_intrusive<c10d::ProcessGroupGloo>(
      store, rank, world_size, c10d::ProcessGroupGloo::Options::create_default());
  // [process-group]

  torch::manual_seed(0);  // the same initial weights on every rank
  Mlp model;
  ho::LAMB optimizer(model->parameters(), ho::LAMBOptions(5e-2).weight_decay(1e-2));
  double first_loss = 0.0, last_loss = 0.0;
  for (int step = 0; step < kSteps; ++step) {
    torch::manual_seed(1000 * (rank + 1) + step);  // this rank's own batch
    const auto x = torch::randn({32, 8});
    const auto y = torch::sin(x.sum(1, true));
    // [train-step]
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), y);
    loss.backward();
    average_gradients(*group, model->parameters());
    optimizer.step();
    // [train-step]
    (step == 0 ? first_loss : last_loss) = loss.item<double>();
  }

  // Every rank compares its parameters with rank 0's; the mismatches are summed.
  const auto mine = torch::nn::utils::parameters_to_vector(model->parameters()).detach();
  std::vector<torch::Tensor> rank0 = {mine.clone()};
  group->broadcast(rank0)->wait();
  std::vector<torch::Tensor> mismatches = {torch::tensor({torch::equal(mine, rank0[0]) ? 0 : 1})};
  group->allreduce(mismatches)->wait();
  const auto differing = mismatches[0].item<int64_t>();
  if (rank == 0) {
    torch::save(model, path + ".model");
    torch::save(optimizer, path + ".optim");
    std::printf("%d ranks, %d steps: loss %.4f -> %.4f (rank 0's batches); %lld rank(s) differ from rank 0\n",
                world_size, kSteps, first_loss, last_loss, static_cast<long long>(differing));
  }
  return differing == 0 && last_loss < first_loss ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && argc != 4) {
    std::fprintf(stderr, "usage: %s PATH [RANK WORLD_SIZE]\n", argv[0]);
    return 2;
  }
  const std::string path = argv[1];
  if (argc == 4) return run_rank(path, std::stoi(argv[2]), std::stoi(argv[3]));

  // Two ranks as two processes, forked before LibTorch starts any thread.
  std::remove((path + ".store").c_str());  // a store left by an earlier run holds its keys
  const pid_t child = fork();
  if (child < 0) {
    std::perror("fork");
    return 1;
  }
  if (child == 0) return run_rank(path, 1, 2);
  const int rc = run_rank(path, 0, 2);
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "rank 1 failed\n");
    return 1;
  }
  return rc;
}
