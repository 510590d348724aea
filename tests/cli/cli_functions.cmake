# Helpers shared by the CLI sequence scripts (include()d, not run on their own).

# run(<rc> <output var> command...): runs the command; its exit code must be <rc>;
# <output var> receives stdout followed by stderr.
function(run expected out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc STREQUAL expected)
    message(FATAL_ERROR "exit code ${rc}, expected ${expected}: ${ARGN}\n${out}\n${err}")
  endif()
  set(${out_var} "${out}${err}" PARENT_SCOPE)
endfunction()
