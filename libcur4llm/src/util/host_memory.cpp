#include <cur4llm/util/host_memory.h>

#if __has_include(<malloc.h>)
#include <malloc.h>
#endif

namespace cur4llm::util {

void tune_host_allocator() {
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)  // glibc
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

}  // namespace cur4llm::util
