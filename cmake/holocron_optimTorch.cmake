# Finds LibTorch for holocron-optim, in its own build and in the installed
# package's config, so a user's project meets the same torch the same way.
#
#   holocron_optim_find_torch()
#
# runs find_package(Torch REQUIRED) and sets
#   HOLOCRON_OPTIM_TORCH_VERSION       the torch release, "2.14.1"
#   HOLOCRON_OPTIM_TORCH_CXX_STANDARD  the C++ standard its headers need (17 or 20)
#
# Why more than find_package(Torch): a CUDA build of torch (the default wheel
# on PyPI for Linux) makes its CMake config look for a whole CUDA toolkit and
# stop without one, though this library holds no CUDA code. A pip-installed
# torch keeps its CUDA libraries in the `nvidia` packages beside it, where
# torch's config does not look, and a toolkit may lack nvrtc. So before
# torch's config runs:
#   - a toolkit that works (check_language(CUDA): nvcc and a host compiler it
#     accepts) is handed to it by its root, with nvrtc taken from the toolkit
#     or from the nvidia packages;
#   - without one, torch's CUDA detection is skipped through its own include
#     guard (an empty torch::cudart): the CPU library needs none of it, and a
#     program that calls torch's CUDA functions still loads libtorch_cuda,
#     which finds its CUDA libraries itself (RUNPATH into the nvidia packages).
# Force the second with -DHOLOCRON_OPTIM_TORCH_CUDA_TOOLKIT=OFF.
include_guard(GLOBAL)

# Torch_DIR, or the folder of TorchConfig.cmake found on CMAKE_PREFIX_PATH.
function(_holocron_optim_torch_dir out)
  if(Torch_DIR AND EXISTS "${Torch_DIR}/TorchConfig.cmake")
    set(${out} "${Torch_DIR}" PARENT_SCOPE)
    return()
  endif()
  find_path(_holocron_torch_config_dir TorchConfig.cmake
    PATH_SUFFIXES Torch share/cmake/Torch lib/cmake/Torch NO_CACHE)
  set(${out} "${_holocron_torch_config_dir}" PARENT_SCOPE)
endfunction()

# The root of the CUDA toolkit that nvcc belongs to ("#$ TOP=" of a dry run:
# nvcc may be a wrapper script outside the toolkit, as /usr/local/bin/nvcc).
function(_holocron_optim_toolkit_root nvcc out)
  set(probe "${CMAKE_BINARY_DIR}${CMAKE_FILES_DIRECTORY}/holocron_toolkit_probe.cu")
  file(WRITE "${probe}" "")
  execute_process(COMMAND "${nvcc}" --dryrun -c "${probe}"
    OUTPUT_VARIABLE dryrun ERROR_VARIABLE dryrun RESULT_VARIABLE result)
  set(${out} "" PARENT_SCOPE)
  if(result EQUAL 0 AND dryrun MATCHES "#\\$ TOP=([^\r\n]*)")
    get_filename_component(root "${CMAKE_MATCH_1}" REALPATH)
    if(EXISTS "${root}/include/cuda.h")
      set(${out} "${root}" PARENT_SCOPE)
    endif()
  endif()
endfunction()

# Readies torch's CUDA detection (see the top of this file).
macro(_holocron_optim_prepare_torch_cuda torch_root)
  # torch's cuda.cmake copies CMAKE_CXX_STANDARD into CMAKE_CUDA_STANDARD, and
  # CMake before 3.26 knows no CUDA20 for nvcc; no CUDA is compiled here.
  if(NOT DEFINED CMAKE_CUDA_STANDARD)
    set(CMAKE_CUDA_STANDARD 17)
  endif()
  # torch's config warns about any CMAKE_CUDA_ARCHITECTURES (it reads
  # TORCH_CUDA_ARCH_LIST), and enable_language(CUDA) would set one.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES OFF)
  endif()
  set(_holocron_toolkit_root "")
  if(NOT DEFINED HOLOCRON_OPTIM_TORCH_CUDA_TOOLKIT OR HOLOCRON_OPTIM_TORCH_CUDA_TOOLKIT)
    include(CheckLanguage)
    check_language(CUDA)
    if(CMAKE_CUDA_COMPILER)
      _holocron_optim_toolkit_root("${CMAKE_CUDA_COMPILER}" _holocron_toolkit_root)
    endif()
  endif()
  if(_holocron_toolkit_root)
    if(NOT CUDA_TOOLKIT_ROOT_DIR)
      set(CUDA_TOOLKIT_ROOT_DIR "${_holocron_toolkit_root}" CACHE PATH "The CUDA toolkit torch's config uses")
    endif()
    # pip's CUDA 12 packages put nvrtc in nvidia/cuda_nvrtc/lib, CUDA 13's in
    # nvidia/cu13/lib; both ship only the versioned file.
    file(GLOB _holocron_nvidia_libs LIST_DIRECTORIES true "${torch_root}/../nvidia/*/lib")
    find_library(CUDA_nvrtc_LIBRARY
      NAMES nvrtc libnvrtc.so.13 libnvrtc.so.12
      HINTS "${CUDA_TOOLKIT_ROOT_DIR}" ${_holocron_nvidia_libs}
      PATH_SUFFIXES lib64 lib targets/x86_64-linux/lib targets/sbsa-linux/lib)
    message(STATUS "holocron-optim: torch is a CUDA build; CUDA toolkit ${CUDA_TOOLKIT_ROOT_DIR}, nvrtc ${CUDA_nvrtc_LIBRARY}")
  elseif(NOT TARGET torch::cudart)
    add_library(torch::cudart INTERFACE IMPORTED)
    message(STATUS "holocron-optim: torch is a CUDA build and no CUDA toolkit is used "
      "(none found, or HOLOCRON_OPTIM_TORCH_CUDA_TOOLKIT=OFF): torch's CUDA detection is skipped; "
      "this library has no CUDA code")
  endif()
endmacro()

macro(holocron_optim_find_torch)
  _holocron_optim_torch_dir(_holocron_torch_dir)
  if(_holocron_torch_dir)
    get_filename_component(_holocron_torch_root "${_holocron_torch_dir}/../../.." ABSOLUTE)
    if(EXISTS "${_holocron_torch_root}/lib/libtorch_cuda.so")
      _holocron_optim_prepare_torch_cuda("${_holocron_torch_root}")
    endif()
  endif()
  find_package(Torch REQUIRED)
  set(HOLOCRON_OPTIM_TORCH_VERSION "${Torch_VERSION}")
  # torch 2.14's headers use C++20 (std::strong_ordering, requires-clauses).
  if(Torch_VERSION VERSION_GREATER_EQUAL 2.14)
    set(HOLOCRON_OPTIM_TORCH_CXX_STANDARD 20)
  else()
    set(HOLOCRON_OPTIM_TORCH_CXX_STANDARD 17)
  endif()
endmacro()
