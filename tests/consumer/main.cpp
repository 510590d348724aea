// Loads a model folder given on the command line and prints its logits' shape.
#include <cur4llm/cur4llm.h>

#include <ATen/ATen.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: consumer MODEL_FOLDER\n";
    return 2;
  }
  auto lm = cur4llm::model::CausalLM::load(argv[1]);
  auto ids = at::arange(8, at::kLong).reshape({1, 8});
  auto logits = lm->forward(ids);
  std::cout << "logits " << logits.size(0) << "x" << logits.size(1) << "x" << logits.size(2) << "\n";
  return logits.size(2) == lm->config().vocab_size ? 0 : 1;
}
