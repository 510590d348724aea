# Installs the built project into a scratch prefix, then configures, builds and
# runs tests/consumer against it with find_package(cur4llm).
file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
execute_process(COMMAND ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}"
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "install failed: ${rc}")
endif()
# The installed apps start from the prefix alone (their RPATH finds libcur4llm), with
# no library path set by the environment.
foreach(app acur build_acur_repo quantize)
  if(EXISTS "${prefix}/bin/${app}")
    execute_process(COMMAND ${CMAKE_COMMAND} -E env --unset=LD_LIBRARY_PATH "${prefix}/bin/${app}" --version
                    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    if(rc OR NOT out MATCHES "^${app} [0-9]+\\.[0-9]+\\.[0-9]+")
      message(FATAL_ERROR "installed ${app} --version failed (${rc}): ${out}${err}")
    endif()
    message(STATUS "installed: ${out}")
  elseif(app STREQUAL "acur")
    message(FATAL_ERROR "the install did not put ${prefix}/bin/acur")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -S "${SOURCE_DIR}" -B "${WORK_DIR}/build"
                "-DCMAKE_PREFIX_PATH=${prefix};${PREFIX_PATH}" "-DTorch_DIR=${TORCH_DIR}"
                RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer failed: ${rc}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build "${WORK_DIR}/build" RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer failed: ${rc}")
endif()
execute_process(COMMAND "${WORK_DIR}/build/consumer" "${SOURCE_DIR}/../data/models/llama_gqa"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(rc)
  message(FATAL_ERROR "the consumer failed: ${rc}")
endif()
