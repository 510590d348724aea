# Runs one command and checks its exit code and output:
#   cmake -DCMD="prog|arg|..." -DRC=<expected exit code> -DREGEX=<regex on stdout+stderr>
#         [-DSTDERR_LINES=<exact number of stderr lines>] -P expect.cmake
string(REPLACE "|" ";" CMD "${CMD}")
execute_process(COMMAND ${CMD} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message("stdout:\n${out}\nstderr:\n${err}")
if(NOT rc STREQUAL RC)
  message(FATAL_ERROR "exit code ${rc}, expected ${RC}")
endif()
if(NOT "${out}${err}" MATCHES "${REGEX}")
  message(FATAL_ERROR "output does not match: ${REGEX}")
endif()
if(DEFINED STDERR_LINES)
  string(REGEX MATCHALL "\n" newlines "${err}")
  list(LENGTH newlines n)
  if(NOT n EQUAL STDERR_LINES)
    message(FATAL_ERROR "stderr has ${n} lines, expected ${STDERR_LINES}")
  endif()
endif()
