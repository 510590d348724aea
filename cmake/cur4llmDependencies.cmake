# Finds what libcur4llm is built with. Only LibTorch is part of the public
# interface; the rest is private to the shared library.
#
# LibTorch: Debian's libtorch-dev (1.13, CPU) or the one inside a PyTorch
# install (2.x, CUDA): add
#   $(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
# to CMAKE_PREFIX_PATH.
find_package(Torch REQUIRED)
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(fmt REQUIRED)
find_package(nlohmann_json 3.2 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(PCRE2 REQUIRED)
find_package(SentencePiece REQUIRED)
