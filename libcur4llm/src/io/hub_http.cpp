// The Hub's HTTP requests through libcurl, or, when the library is built
// without it (CUR4LLM_WITH_HUB off), a stub that says so.
#include "io/hub_http.h"

#include <stdexcept>

#if CUR4LLM_WITH_HUB

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <exception>
#include <memory>
#include <mutex>

namespace cur4llm::detail {

namespace {

constexpr size_t kMaxErrorBody = 4096;

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) throw std::runtime_error("libcurl failed to initialise");
  });
}

struct Transfer {
  CURL* curl = nullptr;
  const HttpRequest* request = nullptr;
  HttpResponse* response = nullptr;
  std::exception_ptr error;  // thrown by a callback, rethrown after curl returns
  bool status_known = false;
  bool to_sink = false;
};

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  try {
    std::string line(data, n);
    if (line.rfind("HTTP/", 0) == 0) {  // a new response (after a redirect or a 100): start over
      t->response->headers.clear();
      t->status_known = false;
      return n;
    }
    const auto colon = line.find(':');
    if (colon == std::string::npos) return n;
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    t->response->headers[trim(name)] = trim(line.substr(colon + 1));
  } catch (...) {
    t->error = std::current_exception();
    return 0;
  }
  return n;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  try {
    if (!t->status_known) {
      long status = 0;
      curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
      t->status_known = true;
      t->to_sink = t->request->sink && status >= 200 && status < 300;
      if (t->to_sink && t->request->on_start) t->request->on_start(status);
    }
    if (t->to_sink) return t->request->sink(data, n) ? n : 0;
    std::string& body = t->response->body;
    if (!t->request->sink || body.size() < kMaxErrorBody) body.append(data, n);
  } catch (...) {
    t->error = std::current_exception();
    return 0;
  }
  return n;
}

int on_progress(void* user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  try {
    if (t->request->progress && t->to_sink) {
      t->request->progress(static_cast<uint64_t>(dlnow), static_cast<uint64_t>(dltotal));
    }
  } catch (...) {
    t->error = std::current_exception();
    return 1;
  }
  return 0;
}

}  // namespace

bool http_supported() { return true; }

HttpResponse http_request(const HttpRequest& request) {
  global_init();
  HttpResponse response;
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw std::runtime_error("libcurl could not start a request");
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
  for (const auto& h : request.headers) {
    curl_slist* next = curl_slist_append(headers.get(), h.c_str());
    if (next == nullptr) throw std::runtime_error("libcurl: out of memory");
    headers.release();
    headers.reset(next);
  }
  Transfer t;
  t.curl = curl.get();
  t.request = &request;
  t.response = &response;
  char error_buffer[CURL_ERROR_SIZE] = {0};
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error_buffer);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "cur4llm (libcurl)");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
#if LIBCURL_VERSION_NUM >= 0x075500
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
#else
  curl_easy_setopt(c, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
  if (request.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (request.method != "GET") {
    throw std::invalid_argument("http_request: unsupported method " + request.method);
  }
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, request.follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, request.connect_timeout_s);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, request.stall_timeout_s);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, request.progress ? 0L : 1L);

  const CURLcode rc = curl_easy_perform(c);
  if (t.error) std::rethrow_exception(t.error);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
  if (rc != CURLE_OK) {
    const std::string reason = error_buffer[0] != '\0' ? std::string(error_buffer) : curl_easy_strerror(rc);
    if (response.status == 0) throw HttpConnectError(reason);
    response.transfer_complete = false;
    response.transfer_error = reason;
  }
  return response;
}

}  // namespace cur4llm::detail

#else  // !CUR4LLM_WITH_HUB

namespace cur4llm::detail {

bool http_supported() { return false; }

HttpResponse http_request(const HttpRequest&) {
  throw std::runtime_error(
      "cur4llm was built without Hub download support (libcurl was not found; install libcurl4-openssl-dev "
      "and rebuild with -DCUR4LLM_WITH_HUB=ON)");
}

}  // namespace cur4llm::detail

#endif
