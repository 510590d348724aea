# A symbolic link at the output path counts as an existing output, even a
# dangling one: quantize and build_acur_repo refuse it before loading the model
# (no "loaded" line, no temporary folder), and --overwrite replaces the link
# itself by the new folder, leaving the folder it pointed to untouched.
#   cmake -DBUILD=... -DQUANTIZE=... -DMODEL=... -DTEXT=... -DWORK=... -P output_symlink.cmake
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/repos")

include(${CMAKE_CURRENT_LIST_DIR}/cli_functions.cmake)
# Refused at once: the message names the link and --overwrite, no work was done,
# the link is still there and nothing else appeared next to it.
function(expect_refused_early text link)
  if(NOT text MATCHES "[a-z_]+: ${link} already exists \\(pass --overwrite")
    message(FATAL_ERROR "no early refusal naming ${link}:\n${text}")
  endif()
  if(text MATCHES "loaded ")
    message(FATAL_ERROR "the model was loaded before the existing output was refused:\n${text}")
  endif()
  if(NOT IS_SYMLINK "${link}")
    message(FATAL_ERROR "${link} is no longer a symbolic link")
  endif()
  get_filename_component(parent "${link}" DIRECTORY)
  file(GLOB hidden LIST_DIRECTORIES true "${parent}/.*")
  if(hidden)
    message(FATAL_ERROR "temporary entries left behind: ${hidden}")
  endif()
endfunction()

# 1. Dangling links: std::filesystem::exists would follow them and say "no".
file(CREATE_LINK "${WORK}/nowhere" "${WORK}/q8" SYMBOLIC)
run(2 quantize_dangling ${QUANTIZE} --model_id ${MODEL} --format rtn_int8 --output ${WORK}/q8)
expect_refused_early("${quantize_dangling}" "${WORK}/q8")
set(repo "${WORK}/repos/tiny-shakespeare-opt-acur80")
file(CREATE_LINK "${WORK}/nowhere" "${repo}" SYMBOLIC)
run(2 build_dangling ${BUILD} --model_id ${MODEL} --param_ratio_target 0.8 --method cur --calib_dataset ${TEXT} --seqlen 64
    --n_calib_samples 4 --output ${WORK}/repos)
expect_refused_early("${build_dangling}" "${repo}")

# 2. --overwrite replaces the link, not what it points to.
file(MAKE_DIRECTORY "${WORK}/elsewhere")
file(WRITE "${WORK}/elsewhere/keep.txt" "mine")
file(REMOVE "${WORK}/q8")
file(CREATE_LINK "${WORK}/elsewhere" "${WORK}/q8" SYMBOLIC)
run(0 replaced ${QUANTIZE} --model_id ${MODEL} --format rtn_int8 --output ${WORK}/q8 --overwrite)
if(IS_SYMLINK "${WORK}/q8" OR NOT EXISTS "${WORK}/q8/config.json")
  message(FATAL_ERROR "--overwrite did not put a new folder in place of the link:\n${replaced}")
endif()
if(NOT EXISTS "${WORK}/elsewhere/keep.txt" OR EXISTS "${WORK}/elsewhere/config.json")
  message(FATAL_ERROR "--overwrite wrote into or removed the folder the link pointed to")
endif()
file(GLOB hidden LIST_DIRECTORIES true "${WORK}/.*")
if(hidden)
  message(FATAL_ERROR "temporary entries left behind: ${hidden}")
endif()
message(STATUS "output symlink ok")
