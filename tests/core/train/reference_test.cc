// The Python reference of issue 15 (bench/reference/unet_reference.py) as a correctness
// anchor for the speed ratios miseg-bench prints: it runs under Debian's python3-torch, its
// U-Net has exactly miseg's parameters and buffers (names and shapes), and its train and
// infer commands print their figures.
#include <cctype>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "core/train/unet.h"

namespace miseg {
namespace {

// Stdout of `/usr/bin/python3 reference args`; fails the test on a non-zero exit.
std::string RunReference(const std::string& args) {
  const std::string command =
      std::string("/usr/bin/python3 '") + MISEG_SOURCE_DIR "/bench/reference/unet_reference.py' " + args;
  FILE* pipe = ::popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return "";
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  EXPECT_EQ(::pclose(pipe), 0) << command << "\n" << out;
  return out;
}

std::string Shape(const torch::Tensor& t) {
  if (t.dim() == 0) return "scalar";
  std::string out;
  for (int64_t i = 0; i < t.dim(); ++i) out += (i ? "x" : "") + std::to_string(t.size(i));
  return out;
}

std::map<std::string, std::string> MisegShapes(const UNetOptions& options) {
  UNet net(options);
  std::map<std::string, std::string> shapes;
  for (const auto& p : net->named_parameters()) shapes[p.key()] = Shape(p.value());
  for (const auto& b : net->named_buffers()) shapes[b.key()] = Shape(b.value());
  return shapes;
}

TEST(PythonReference, HasMisegsParametersAndBuffers) {
  for (const auto& [widths, flag] :
       {std::pair<std::vector<int64_t>, std::string>{{16, 32, 64, 128, 256}, "16,32,64,128,256"},
        {{8, 16, 32}, "8,16,32"}}) {
    UNetOptions options;
    options.classes = 4;
    options.widths = widths;
    std::map<std::string, std::string> python;
    std::istringstream lines(RunReference("shapes --classes=4 --widths=" + flag));
    for (std::string name, shape; lines >> name >> shape;) python[name] = shape;
    EXPECT_EQ(python, MisegShapes(options)) << "widths " << flag;

    int64_t count = 0;
    for (const auto& p : UNet(options)->parameters()) count += p.numel();
    const std::string params = RunReference("params --classes=4 --widths=" + flag);
    const std::string expected = "\"params\": " + std::to_string(count);
    const size_t at = params.find(expected);
    ASSERT_NE(at, std::string::npos) << params << " (miseg: " << count << ")";
    EXPECT_FALSE(std::isdigit(params[at + expected.size()])) << params;
  }
}

TEST(PythonReference, TrainAndInferPrintTheirFigures) {
  const std::string small = " --threads=1 --size=32 --widths=8,16,32 --steps=1 --warmup=0";
  for (const char* form : {"two_pass", "three_forward"}) {
    const std::string train = RunReference(std::string("train --labeled-batch=2 --unlabeled-batch=2 --form=") +
                                           form + small);
    EXPECT_NE(train.find("\"step_ms_median\": "), std::string::npos) << train;
  }
  const std::string infer = RunReference("infer --slices=3 --batch-slices=2" + small);
  EXPECT_NE(infer.find("\"ms_median\": "), std::string::npos) << infer;
}

}  // namespace
}  // namespace miseg
