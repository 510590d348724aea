# benchmarks/compare.sh end to end: a dense run and two methods at one ratio
# into one results file, then the report; a second call refuses the existing
# results without --append.
#   cmake -DSCRIPT=... -DACUR=... -DREPORT=... -DMODEL=... -DTEXT=... -DWORK=... -P compare_script.cmake
include(${CMAKE_CURRENT_LIST_DIR}/cli_functions.cmake)
file(REMOVE_RECURSE "${WORK}")
find_program(BASH bash REQUIRED)
set(cmd ${CMAKE_COMMAND} -E env ACUR=${ACUR} ACUR_REPORT=${REPORT} ${BASH} ${SCRIPT} --model ${MODEL}
    --method "svd:--act_aware --preset reference" --method "skeleton_swap:--candidates 0.5,0.7,0.9"
    --ratios 0.8 --calib ${TEXT} --eval ${TEXT} --out ${WORK} --dense -- --seqlen 64 --n_calib_samples 4 --limit 8)
run(0 out ${cmd})
if(NOT out MATCHES "report of 3 runs" OR NOT out MATCHES "report: ${WORK}/report/report[.]html")
  message(FATAL_ERROR "compare.sh did not report 3 runs and where the report is:\n${out}")
endif()
file(READ "${WORK}/report/report.md" md)
foreach(row "| dense | — | — | 1.0000 |" "| svd | act_aware | 0.8 |" "| skeleton_swap | lagrangian, sequential, candidates 0.5,0.7,0.9 | 0.8 |")
  string(FIND "${md}" "${row}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "report.md lacks \"${row}\":\n${md}")
  endif()
endforeach()
run(2 again ${cmd})
if(NOT again MATCHES "compare.sh: [^\n]*results.jsonl exists [(]pass --append")
  message(FATAL_ERROR "a second call did not refuse the existing results:\n${again}")
endif()
message(STATUS "compare script ok")
