#pragma once
// Internal: the files of libcur4llm/templates, compiled in by cmake/embed_templates.cmake.

#include <vector>

namespace cur4llm::repo::detail {

struct TemplateFile {
  const char* name;  // file name in libcur4llm/templates
  const char* text;  // its content
};

const std::vector<TemplateFile>& templates();

}  // namespace cur4llm::repo::detail
