#include <cur4llm/util/device.h>

#include <ATen/ATen.h>

namespace cur4llm::util {

void synchronize(c10::Device device) {
  if (device.is_cpu()) return;
  // Reading a value back waits for everything queued before it on the stream.
  (void)at::zeros({1}, at::TensorOptions().device(device).dtype(at::kFloat)).item<float>();
}

}  // namespace cur4llm::util
