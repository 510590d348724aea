# Builds the cur4llm_docs target (Doxygen fails on any warning, WARN_AS_ERROR),
# then checks what the reference holds: the umbrella header and the main
# classes, and none of the internal headers or LayerPrefix.
file(REMOVE_RECURSE "${HTML}")
execute_process(COMMAND ${CMAKE_COMMAND} --build "${BUILD_DIR}" --target cur4llm_docs
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc)
  message(FATAL_ERROR "building cur4llm_docs failed (${rc}):\n${out}${err}")
endif()
foreach(page index.html cur4llm_8h.html causal__lm_8h.html classcur4llm_1_1model_1_1CausalLM.html)
  if(NOT EXISTS "${HTML}/${page}")
    message(FATAL_ERROR "the API reference has no ${page}")
  endif()
endforeach()
foreach(page atomic__folder_8h.html host__memory_8h.html fused__kernels_8h.html
             structcur4llm_1_1model_1_1LayerPrefix.html)
  if(EXISTS "${HTML}/${page}")
    message(FATAL_ERROR "the API reference documents the internal ${page}")
  endif()
endforeach()
file(READ "${HTML}/classcur4llm_1_1model_1_1CausalLM.html" causal_lm)
if(causal_lm MATCHES "layer_prefix" OR NOT causal_lm MATCHES "replace_linear")
  message(FATAL_ERROR "CausalLM's page lists the internal layer_prefix, or misses replace_linear")
endif()
message(STATUS "API reference: ${HTML}/index.html")
