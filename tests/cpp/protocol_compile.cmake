# Compiles SOURCE with the flags our targets use (warnings are errors) and
# checks the outcome: EXPECT is "pass" or "fail". The fused kernels' protocol
# (src/kernels/cpu/protocol.h) relies on it: a host filling a pass's
# constants with a field left out or out of order must not build.
foreach(var CXX_COMPILER SOURCE INCLUDE_DIR STANDARD EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "protocol_compile.cmake: ${var} is not set")
  endif()
endforeach()
execute_process(
  COMMAND "${CXX_COMPILER}" -std=c++${STANDARD} -Wall -Wextra -Werror -fsyntax-only -I "${INCLUDE_DIR}" "${SOURCE}"
  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(EXPECT STREQUAL "pass" AND NOT result EQUAL 0)
  message(FATAL_ERROR "${SOURCE} should compile:\n${output}")
elseif(EXPECT STREQUAL "fail" AND result EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but a misfilled pass must not build")
endif()
