# Installs the built library into a scratch prefix, then configures, builds
# and runs a project of a user's (tests/consumer, examples/cpp) against that
# installation.
#
# Variables: BUILD_DIR (the holocron-optim build tree), SOURCE_DIR (the
# user's project), EXECUTABLE (the programs it builds, separated by commas,
# run in turn, each with WORK_DIR/run as its one argument when RUN_WITH_PATH
# is set), WORK_DIR (scratch space),
# Torch_DIR, GENERATOR, CXX_COMPILER, COMPILER_LAUNCHER (may be empty).

foreach(var BUILD_DIR SOURCE_DIR EXECUTABLE WORK_DIR Torch_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "consumer_test.cmake: ${var} is not set")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer test: ${what} failed (${result})")
  endif()
endfunction()

set(prefix "${WORK_DIR}/install")
set(build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${prefix}" "${build}")

run_step("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}")

# torch.utils.cmake_prefix_path is the folder above Torch_DIR's "Torch".
get_filename_component(torch_prefix "${Torch_DIR}" DIRECTORY)
set(launcher_arg "")
if(COMPILER_LAUNCHER)
  set(launcher_arg "-DCMAKE_CXX_COMPILER_LAUNCHER=${COMPILER_LAUNCHER}")
endif()
# Not through run_step: its ARGN would split the prefix path at the ';'.
execute_process(COMMAND "${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${build}" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${prefix};${torch_prefix}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    -DCMAKE_BUILD_TYPE=Release
    ${launcher_arg}
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "consumer test: configure failed (${result})")
endif()
run_step("build" "${CMAKE_COMMAND}" --build "${build}")
string(REPLACE "," ";" executables "${EXECUTABLE}")
foreach(executable IN LISTS executables)
  if(RUN_WITH_PATH)
    run_step("run ${executable}" "${build}/${executable}" "${WORK_DIR}/run")
  else()
    run_step("run ${executable}" "${build}/${executable}")
  endif()
endforeach()
