# Finds what libcur4llm is built with. Only LibTorch is part of the public
# interface; the rest is private to the shared library.
#
# LibTorch: Debian's libtorch-dev (1.13, CPU) or the one inside a PyTorch
# install (2.x, CUDA): add
#   $(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
# to CMAKE_PREFIX_PATH.
find_package(Torch REQUIRED)

# cur4llm's own CUDA kernels (libcur4llm/src/fused) need a CUDA LibTorch and
# nvcc. The language is enabled here, at the top level, because every target
# that links libcur4llm then links CUDA code.
option(CUR4LLM_CUDA_KERNELS "Build cur4llm's CUDA kernels when LibTorch has CUDA" ON)
set(CUR4LLM_WITH_CUDA_KERNELS OFF)
if(CUR4LLM_CUDA_KERNELS AND (TARGET torch_cuda OR TORCH_CUDA_LIBRARIES))
  get_property(cur4llm_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT "CUDA" IN_LIST cur4llm_languages)
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      enable_language(CUDA)
    endif()
  endif()
  get_property(cur4llm_languages GLOBAL PROPERTY ENABLED_LANGUAGES)
  if("CUDA" IN_LIST cur4llm_languages)
    set(CUR4LLM_WITH_CUDA_KERNELS ON)
  endif()
endif()
message(STATUS "cur4llm CUDA kernels: ${CUR4LLM_WITH_CUDA_KERNELS}")
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.2 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(PCRE2 REQUIRED)
find_package(SentencePiece REQUIRED)

# Downloading models from the Hugging Face Hub needs libcurl (Debian:
# libcurl4-openssl-dev). Without it the library still builds, and a download
# fails saying that it was built without Hub download support.
find_package(CURL QUIET)
option(CUR4LLM_WITH_HUB "Download models from the Hugging Face Hub (needs libcurl)" ${CURL_FOUND})
if(CUR4LLM_WITH_HUB AND NOT CURL_FOUND)
  message(FATAL_ERROR "CUR4LLM_WITH_HUB needs libcurl (Debian: libcurl4-openssl-dev); or set -DCUR4LLM_WITH_HUB=OFF")
endif()
message(STATUS "cur4llm Hub downloads: ${CUR4LLM_WITH_HUB}")

# Several processes over LibTorch's c10d (TCPStore and Gloo; docs/distributed.md).
# Debian's LibTorch needs the Gloo headers beside it (libgloo-dev). Without
# them the library still builds, and WORLD_SIZE > 1 is refused.
include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_INCLUDES ${TORCH_INCLUDE_DIRS})
set(CMAKE_REQUIRED_FLAGS "-std=c++17 ${TORCH_CXX_FLAGS}")
# The check links the library files, not LibTorch's imported targets: a pip wheel's
# targets name dependencies (protobuf::libprotobuf) that the check's own project lacks.
set(_cur4llm_c10d_libs)
foreach(_lib torch torch_cpu c10)
  if(TARGET ${_lib})
    get_target_property(_loc ${_lib} IMPORTED_LOCATION)
    if(NOT _loc)
      get_target_property(_loc ${_lib} IMPORTED_LOCATION_RELEASE)
    endif()
    if(_loc)
      list(APPEND _cur4llm_c10d_libs ${_loc})
    endif()
  endif()
endforeach()
if(NOT _cur4llm_c10d_libs)
  set(_cur4llm_c10d_libs ${TORCH_LIBRARIES})
endif()
set(CMAKE_REQUIRED_LIBRARIES ${_cur4llm_c10d_libs})
set(CMAKE_REQUIRED_QUIET ON)
# LibTorch 2.x declares the Gloo group only under USE_C10D_GLOO; linking proves it is there.
check_cxx_source_compiles("
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
int main() { auto device = c10d::ProcessGroupGloo::createDeviceForHostname(\"127.0.0.1\"); return device ? 0 : 1; }"
  CUR4LLM_C10D_FOUND)
unset(CMAKE_REQUIRED_INCLUDES)
unset(CMAKE_REQUIRED_FLAGS)
unset(CMAKE_REQUIRED_LIBRARIES)
unset(CMAKE_REQUIRED_QUIET)
option(CUR4LLM_WITH_DIST "Several processes over c10d (needs LibTorch's c10d and Gloo headers)" ${CUR4LLM_C10D_FOUND})
if(CUR4LLM_WITH_DIST AND NOT CUR4LLM_C10D_FOUND)
  message(FATAL_ERROR "CUR4LLM_WITH_DIST needs LibTorch's c10d and Gloo headers (Debian: libgloo-dev); or set -DCUR4LLM_WITH_DIST=OFF")
endif()
message(STATUS "cur4llm several processes (c10d): ${CUR4LLM_WITH_DIST}")
