// How evenly the partitioning rule of DESIGN.md spreads the parameters of
// real models over S shards, for several block sizes: the bytes each shard
// holds, which is also its share of every step's traffic (a step pushes
// and pulls every value once). Pure arithmetic over the models' parameter
// shapes and names (PyTorch's named_parameters()); no server is started.
//
//   shard_balance [--shards=2,4] [--block_sizes=262144,65536,16384,4096]
//
// Prints one markdown table: per model, S and block size, the largest
// shard's share of the bytes, its ratio to the mean (1.00 = even), and the
// bytes of each shard.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/partition.h"

ABSL_FLAG(std::string, shards, "2,4", "shard counts, comma-separated");
ABSL_FLAG(std::string, block_sizes, "262144,65536,16384,4096",
          "block sizes (values), comma-separated");

namespace {

struct Parameter {
  std::string name;
  uint64_t size;
};

struct Model {
  std::string name;
  std::vector<Parameter> parameters;
};

void Add(std::vector<Parameter>& out, const std::string& name,
         std::initializer_list<uint64_t> shape) {
  uint64_t size = 1;
  for (uint64_t d : shape) size *= d;
  out.push_back({name, size});
}

// A small MNIST CNN, the kind that sent 86% of its traffic to one of two
// shards: two conv layers and two linear layers, the largest (fc1, 91% of
// the values) under 262,144 values.
Model TinyCnn() {
  Model m{"small MNIST CNN (0.22 M)", {}};
  auto& p = m.parameters;
  Add(p, "conv1.weight", {32, 1, 3, 3});
  Add(p, "conv1.bias", {32});
  Add(p, "conv2.weight", {64, 32, 3, 3});
  Add(p, "conv2.bias", {64});
  Add(p, "fc1.weight", {64, 64 * 7 * 7});
  Add(p, "fc1.bias", {64});
  Add(p, "fc2.weight", {10, 64});
  Add(p, "fc2.bias", {10});
  return m;
}

// A CIFAR-10 CNN: three conv layers with BatchNorm and two linear layers.
Model SmallCnn() {
  Model m{"CIFAR-10 CNN (0.62 M)", {}};
  auto& p = m.parameters;
  const uint64_t channels[] = {3, 32, 64, 128};
  for (int i = 0; i < 3; ++i) {
    const std::string conv = absl::StrCat("features.", 3 * i);
    const std::string bn = absl::StrCat("features.", 3 * i + 1);
    Add(p, conv + ".weight", {channels[i + 1], channels[i], 3, 3});
    Add(p, conv + ".bias", {channels[i + 1]});
    Add(p, bn + ".weight", {channels[i + 1]});
    Add(p, bn + ".bias", {channels[i + 1]});
  }
  Add(p, "classifier.0.weight", {256, 128 * 4 * 4});
  Add(p, "classifier.0.bias", {256});
  Add(p, "classifier.2.weight", {10, 256});
  Add(p, "classifier.2.bias", {10});
  return m;
}

// PyTorch's MNIST example network (examples/mnist in pytorch/examples).
Model MnistCnn() {
  Model m{"MNIST CNN (pytorch/examples, 1.2 M)", {}};
  auto& p = m.parameters;
  Add(p, "conv1.weight", {32, 1, 3, 3});
  Add(p, "conv1.bias", {32});
  Add(p, "conv2.weight", {64, 32, 3, 3});
  Add(p, "conv2.bias", {64});
  Add(p, "fc1.weight", {128, 9216});
  Add(p, "fc1.bias", {128});
  Add(p, "fc2.weight", {10, 128});
  Add(p, "fc2.bias", {10});
  return m;
}

// torchvision's resnet18(): 62 tensors, 11.7 M values.
Model ResNet18() {
  Model m{"ResNet-18 (torchvision, 11.7 M)", {}};
  auto& p = m.parameters;
  auto bn = [&](const std::string& name, uint64_t c) {
    Add(p, name + ".weight", {c});
    Add(p, name + ".bias", {c});
  };
  Add(p, "conv1.weight", {64, 3, 7, 7});
  bn("bn1", 64);
  uint64_t in = 64;
  const uint64_t widths[] = {64, 128, 256, 512};
  for (int layer = 0; layer < 4; ++layer) {
    const uint64_t out = widths[layer];
    for (int block = 0; block < 2; ++block) {
      const std::string b = absl::StrCat("layer", layer + 1, ".", block);
      const uint64_t from = block == 0 ? in : out;
      Add(p, b + ".conv1.weight", {out, from, 3, 3});
      bn(b + ".bn1", out);
      Add(p, b + ".conv2.weight", {out, out, 3, 3});
      bn(b + ".bn2", out);
      if (block == 0 && from != out) {
        Add(p, b + ".downsample.0.weight", {out, from, 1, 1});
        bn(b + ".downsample.1", out);
      }
    }
    in = out;
  }
  Add(p, "fc.weight", {1000, 512});
  Add(p, "fc.bias", {1000});
  return m;
}

// A model of many small tensors: a 6-layer torch.nn.TransformerEncoder of
// width 128 (every tensor at most 65,536 values, most a few hundred) over
// a 1000 x 128 embedding, with a linear head.
Model SmallTransformer() {
  Model m{"Transformer encoder (6 x d128, 75 tensors, 1.3 M)", {}};
  auto& p = m.parameters;
  Add(p, "embedding.weight", {1000, 128});
  for (int layer = 0; layer < 6; ++layer) {
    const std::string l = absl::StrCat("encoder.layers.", layer);
    Add(p, l + ".self_attn.in_proj_weight", {384, 128});
    Add(p, l + ".self_attn.in_proj_bias", {384});
    Add(p, l + ".self_attn.out_proj.weight", {128, 128});
    Add(p, l + ".self_attn.out_proj.bias", {128});
    Add(p, l + ".linear1.weight", {512, 128});
    Add(p, l + ".linear1.bias", {512});
    Add(p, l + ".linear2.weight", {128, 512});
    Add(p, l + ".linear2.bias", {128});
    for (const char* norm : {".norm1", ".norm2"}) {
      Add(p, l + norm + ".weight", {128});
      Add(p, l + norm + ".bias", {128});
    }
  }
  Add(p, "head.weight", {10, 128});
  Add(p, "head.bias", {10});
  return m;
}

// Bytes (float32) each shard holds of `model`.
std::vector<uint64_t> BytesPerShard(const Model& model, uint32_t shards,
                                    uint64_t block_size) {
  const ps::PartitionPlan plan(shards, block_size);
  std::vector<uint64_t> bytes(shards, 0);
  for (const Parameter& parameter : model.parameters) {
    for (uint64_t k = 0; k < plan.NumBlocks(parameter.size); ++k) {
      bytes[plan.ShardOf(parameter.name, k)] +=
          plan.BlockRange(parameter.size, k).length * sizeof(float);
    }
  }
  return bytes;
}

std::vector<uint64_t> ParseList(const std::string& text, const char* flag) {
  std::vector<uint64_t> values;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    uint64_t value = 0;
    if (!absl::SimpleAtoi(part, &value) || value == 0) {
      std::cerr << "--" << flag << ": '" << part
                << "' is not a positive integer\n";
      std::exit(2);
    }
    values.push_back(value);
  }
  return values;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Bytes per shard of real models' parameters under the partitioning "
      "rule, for several shard counts and block sizes.");
  absl::ParseCommandLine(argc, argv);
  const std::vector<uint64_t> shard_counts =
      ParseList(absl::GetFlag(FLAGS_shards), "shards");
  const std::vector<uint64_t> block_sizes =
      ParseList(absl::GetFlag(FLAGS_block_sizes), "block_sizes");

  std::cout << "| model | S | block_size | largest shard | max / mean | "
               "MiB per shard |\n";
  std::cout << "|---|---|---|---|---|---|\n";
  for (const Model& model :
       {TinyCnn(), SmallCnn(), MnistCnn(), ResNet18(), SmallTransformer()}) {
    for (uint64_t s : shard_counts) {
      for (uint64_t block_size : block_sizes) {
        const std::vector<uint64_t> bytes =
            BytesPerShard(model, static_cast<uint32_t>(s), block_size);
        uint64_t total = 0;
        for (uint64_t b : bytes) total += b;
        const uint64_t largest = *std::max_element(bytes.begin(), bytes.end());
        std::vector<std::string> mib;
        for (uint64_t b : bytes) {
          mib.push_back(absl::StrFormat("%.2f", b / double(1 << 20)));
        }
        std::cout << absl::StrFormat("| %s | %d | %d | %.1f%% | %.2f | %s |\n",
                                     model.name, s, block_size,
                                     100.0 * largest / total,
                                     static_cast<double>(largest) * s / total,
                                     absl::StrJoin(mib, " / "));
      }
    }
  }
  return 0;
}
