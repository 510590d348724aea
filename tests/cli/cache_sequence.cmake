# --use_cache: the second identical run hits every cache; a run with another
# alpha reuses the samples but recomputes statistics-dependent work... and a
# corrupted cache file is reported and rebuilt. A sensitivity table is keyed on
# the options its method reads only: --sigma_fuse on svd's, not skeleton_row's;
# --cur_selection on grad_cur's.
#   cmake -DACUR=... -DMODEL=... -DTEXT=... -DWORK=... -P cache_sequence.cmake
file(REMOVE_RECURSE "${WORK}")
set(common ${ACUR} --model_id ${MODEL} --act_aware --param_ratio_target 0.8 --calib_dataset ${TEXT}
    --eval_ppl ${TEXT} --seqlen 64 --n_calib_samples 6 --limit 4 --candidates 0.5,0.7,0.9 --use_cache --cache_dir ${WORK}/cache
    --output ${WORK}/out)

function(run_acur out_var)
  execute_process(COMMAND ${common} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc)
    message(FATAL_ERROR "acur failed (${rc}):\n${out}\n${err}")
  endif()
  set(${out_var} "${out}${err}" PARENT_SCOPE)
endfunction()

# The per-layer sweep's caches; sensitivity_after names its own methods.
run_acur(first --method skeleton_swap)
if(first MATCHES "cache hit")
  message(FATAL_ERROR "the first run found a cache:\n${first}")
endif()
run_acur(second --method skeleton_swap)
foreach(kind calib stats sensitivity)
  if(NOT second MATCHES "cache hit: [^\n]*/${kind}-")
    message(FATAL_ERROR "the second run did not reuse the ${kind} cache:\n${second}")
  endif()
endforeach()
run_acur(third --method skeleton_swap --alpha 0.25)
if(NOT third MATCHES "cache hit: [^\n]*/stats-" OR third MATCHES "cache hit: [^\n]*/sensitivity-")
  message(FATAL_ERROR "changing --alpha must keep the statistics and recompute the sensitivity:\n${third}")
endif()
file(GLOB tables "${WORK}/cache/sensitivity-*.json")
foreach(t IN LISTS tables)
  file(WRITE "${t}" "{ not json")
endforeach()
run_acur(fourth --method skeleton_swap)
if(NOT fourth MATCHES "is unreadable" OR fourth MATCHES "cache hit: [^\n]*/sensitivity-")
  message(FATAL_ERROR "a corrupt cache file must be reported and rebuilt:\n${fourth}")
endif()

# sensitivity_after(<method> <hit|miss> flags...): a run of <method> with the
# defaults, then one with `flags`, whose sensitivity table must be reused (hit)
# or rebuilt (miss).
function(sensitivity_after method expected)
  run_acur(defaults --method ${method})
  run_acur(changed --method ${method} ${ARGN})
  if(changed MATCHES "cache hit: [^\n]*/sensitivity-")
    set(found hit)
  else()
    set(found miss)
  endif()
  if(NOT found STREQUAL expected)
    message(FATAL_ERROR "${method} with ${ARGN}: sensitivity cache ${found}, expected ${expected}:\n${changed}")
  endif()
endfunction()
sensitivity_after(skeleton_row hit --sigma_fuse U)
sensitivity_after(svd miss --sigma_fuse U)
sensitivity_after(grad_cur miss --cur_selection sampled)
message(STATUS "cache sequence ok")
