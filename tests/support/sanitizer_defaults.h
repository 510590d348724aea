#pragma once
// Default AddressSanitizer options of the test and fuzz executables when they
// are built with CUR4LLM_SANITIZE / CUR4LLM_FUZZ (ASAN_OPTIONS still overrides
// them). LibTorch, OpenBLAS and the other Debian libraries are not
// instrumented: memory they allocate once at load time and keep for the life of
// the process (LibTorch's operator registry, OpenBLAS's thread buffers) is
// reported as leaked at exit, so leak detection is off. Every access the
// library and the tests make is still checked. These defaults also apply when
// CMake runs the test executables at build time to list their tests.

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUR4LLM_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define CUR4LLM_ASAN 1
#endif

#ifdef CUR4LLM_ASAN
extern "C" const char* __asan_default_options() { return "detect_leaks=0"; }
#endif
