# build_acur_repo, quantize and acur on the repositories they write, as a user
# runs them: the repository computes what acur computed in memory; a saved plan
# rebuilds the same bytes; existing folders need --overwrite; a write that
# fails (file size limit), an output under a regular file, a folder that is no
# model and a newer format are refused with nothing left behind; the source
# model is never written to.
#   cmake -DACUR=... -DBUILD=... -DQUANTIZE=... -DMODEL=... -DTEXT=... -DNOT_A_MODEL=... -DWORK=...
#         -P export_sequence.cmake
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}")
set(flags --act_aware --param_ratio_target 0.8 --method cur --calib_dataset ${TEXT} --eval_ppl ${TEXT}
    --seqlen 64 --n_calib_samples 8 --batch_size 4)
set(repo "${WORK}/repos/tiny-shakespeare-opt-acur80")
file(SHA256 "${MODEL}/model.safetensors" source_weights)
file(SHA256 "${MODEL}/config.json" source_config)

include(${CMAKE_CURRENT_LIST_DIR}/cli_functions.cmake)
function(expect text regex)
  if(NOT text MATCHES "${regex}")
    message(FATAL_ERROR "output does not match ${regex}:\n${text}")
  endif()
endfunction()
# No folder `path` and no temporary sibling in its parent.
function(expect_nothing_left path)
  if(EXISTS "${path}")
    message(FATAL_ERROR "${path} exists after a failed write")
  endif()
  get_filename_component(parent "${path}" DIRECTORY)
  file(GLOB hidden LIST_DIRECTORIES true "${parent}/.*")
  if(hidden)
    message(FATAL_ERROR "temporary entries left behind: ${hidden}")
  endif()
endfunction()

# 1. acur in memory, and the repository read back by acur: the same perplexity.
run(0 in_memory ${ACUR} --model_id ${MODEL} ${flags} --output ${WORK}/acur)
string(REGEX MATCH "shakespeare_tail.txt [0-9.]+" ppl_in_memory "${in_memory}")
run(0 built ${BUILD} --model_id ${MODEL} ${flags} --output ${WORK}/repos)
expect("${built}" "wrote [^\n]*tiny-shakespeare-opt-acur80: [0-9]+ layers")
# The repository says which cur4llm wrote it (version and git commit).
file(READ "${repo}/config.json" written_config)
string(JSON written_version GET "${written_config}" acur provenance cur4llm_version)
string(JSON written_commit GET "${written_config}" acur provenance git_commit)
if(NOT written_version MATCHES "^[0-9]+[.][0-9]+[.][0-9]+$" OR written_commit STREQUAL "")
  message(FATAL_ERROR "config.json lacks the cur4llm version and commit: '${written_version}' '${written_commit}'")
endif()
run(0 read_back ${ACUR} --model_id ${repo} --raw_model --eval_ppl ${TEXT} --seqlen 64 --output ${WORK}/acur2)
string(REGEX MATCH "shakespeare_tail.txt [0-9.]+" ppl_read_back "${read_back}")
if(NOT ppl_in_memory OR NOT ppl_in_memory STREQUAL ppl_read_back)
  message(FATAL_ERROR "in memory: '${ppl_in_memory}', read back: '${ppl_read_back}'")
endif()
# The real parameter ratios too (of all Linear weights: the tied lm_head stays dense and tied).
string(REGEX MATCH "param ratio: [^
]* of Linear weights[^
]*" ratio_in_memory "${in_memory}")
string(REGEX MATCH "param ratio: [^
]* of Linear weights[^
]*" ratio_read_back "${read_back}")
if(NOT ratio_in_memory)
  message(FATAL_ERROR "no param ratio line in: ${in_memory}")
endif()
if(NOT ratio_in_memory STREQUAL ratio_read_back)
  message(FATAL_ERROR "in memory: '${ratio_in_memory}', read back: '${ratio_read_back}'")
endif()

# 2. An existing repository needs --overwrite; acur's saved plan rebuilds the very same weights.
file(SHA256 "${repo}/model.safetensors" weights)
run(2 again ${BUILD} --model_id ${MODEL} ${flags} --output ${WORK}/repos)
expect("${again}" "already exists.*--overwrite")
file(GLOB plan "${WORK}/acur/plan-*.json")
list(REMOVE_ITEM flags --param_ratio_target 0.8)
run(0 replanned ${BUILD} --model_id ${MODEL} ${flags} --plan ${plan} --output ${WORK}/repos --overwrite)
file(SHA256 "${repo}/model.safetensors" weights_from_plan)
if(NOT weights STREQUAL weights_from_plan)
  message(FATAL_ERROR "the plan did not rebuild the same weights:\n${replanned}")
endif()

# 3. quantize: packed storage, smaller files, loaded back; a quantized repository is not quantized again.
run(0 quantized ${QUANTIZE} --model_id ${repo} --format rtn_int4 --output ${WORK}/q4)
expect("${quantized}" "rtn_int4: [0-9]+ weight tensors of the decoder layers: [0-9]+ bytes as Float -> [0-9]+ bytes packed")
expect("${quantized}" "folder: [0-9]+ -> [0-9]+ bytes")
file(SIZE "${repo}/model.safetensors" size_before)
file(SIZE "${WORK}/q4/model.safetensors" size_after)
if(NOT size_after LESS size_before)
  message(FATAL_ERROR "rtn_int4 weights take ${size_after} bytes, the unquantized ${size_before}")
endif()
run(0 q4_ppl ${ACUR} --model_id ${WORK}/q4 --raw_model --eval_ppl ${TEXT} --seqlen 64 --output ${WORK}/acur3)
expect("${q4_ppl}" "shakespeare_tail.txt [0-9]+[.][0-9]+")
run(2 twice ${QUANTIZE} --model_id ${WORK}/q4 --format rtn_int8 --output ${WORK}/q8)
expect("${twice}" "already quantized \\(rtn_int4\\)")
run(2 exists ${QUANTIZE} --model_id ${MODEL} --format rtn_int8 --output ${WORK}/q4)
expect("${exists}" "already exists")
# AWQ: the repository's factors quantized with searched input scales, stored beside the codes and read back.
run(0 awq ${QUANTIZE} --model_id ${repo} --format awq_int4 --calib_dataset ${TEXT} --n_calib_samples 4 --seqlen 64
    --output ${WORK}/awq4)
expect("${awq}" "awq_int4: [0-9]+ weight tensors of the decoder layers: [0-9]+ bytes as Float -> [0-9]+ bytes packed")
file(READ "${WORK}/awq4/config.json" awq_config)
expect("${awq_config}" "\"activation_aware\": true")
file(READ "${WORK}/awq4/model.safetensors" awq_header OFFSET 8 LIMIT 100000)  # the JSON header
expect("${awq_header}" "q_proj[.][A-Za-z_.]+[.]input_scales")
run(0 awq_ppl ${ACUR} --model_id ${WORK}/awq4 --raw_model --eval_ppl ${TEXT} --seqlen 64 --output ${WORK}/acur_awq)
expect("${awq_ppl}" "shakespeare_tail.txt [0-9]+[.][0-9]+")

# 4. Writes that cannot succeed.
run(1 limited sh -c "ulimit -f 100 && exec \"$0\" \"$@\"" ${BUILD} --model_id ${MODEL} ${flags} --plan ${plan}
    --output ${WORK}/limited)
expect("${limited}" "build_acur_repo: error: .*File too large")
expect_nothing_left("${WORK}/limited/tiny-shakespeare-opt-acur80")
run(1 limited_q sh -c "ulimit -f 100 && exec \"$0\" \"$@\"" ${QUANTIZE} --model_id ${MODEL} --format rtn_int8
    --output ${WORK}/limited/q8)
expect("${limited_q}" "quantize: error: .*File too large")
expect_nothing_left("${WORK}/limited/q8")
file(WRITE "${WORK}/a_file" "x")
run(1 under_file ${QUANTIZE} --model_id ${MODEL} --format rtn_int8 --output ${WORK}/a_file/q8)
expect("${under_file}" "quantize: error: .*a_file.*cannot create")
run(1 not_model ${QUANTIZE} --model_id ${NOT_A_MODEL} --format rtn_int8 --output ${WORK}/nm)
expect("${not_model}" "quantize: error: .*config.json")
run(2 bad_format ${QUANTIZE} --model_id ${MODEL} --format rtn_int3 --output ${WORK}/q3)
expect("${bad_format}" "rtn_int3")

# 5. A repository of a newer format is refused by every reader.
file(COPY "${repo}/" DESTINATION "${WORK}/newer")
file(READ "${WORK}/newer/config.json" config)
string(REPLACE "\"format_version\": 1" "\"format_version\": 2" config "${config}")
file(WRITE "${WORK}/newer/config.json" "${config}")
run(1 newer ${ACUR} --model_id ${WORK}/newer --raw_model --eval_ppl ${TEXT} --seqlen 64 --output ${WORK}/acur4)
expect("${newer}" "format_version 2 is newer than this build")
run(1 newer_q ${QUANTIZE} --model_id ${WORK}/newer --format rtn_int8 --output ${WORK}/q_newer)
expect("${newer_q}" "format_version 2 is newer than this build")

file(SHA256 "${MODEL}/model.safetensors" source_weights_after)
file(SHA256 "${MODEL}/config.json" source_config_after)
if(NOT source_weights STREQUAL source_weights_after OR NOT source_config STREQUAL source_config_after)
  message(FATAL_ERROR "the source model was modified")
endif()
message(STATUS "export sequence ok")
