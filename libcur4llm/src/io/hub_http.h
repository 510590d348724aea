#pragma once
// Internal: the HTTP requests the Hub download makes, behind a small
// interface so that libcurl stays out of every header (hub_http.cpp holds the
// libcurl code, or a stub when the library is built without it).

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace cur4llm::detail {

/// Whether hub_http.cpp was built with libcurl.
bool http_supported();

struct HttpRequest {
  std::string method = "GET";             // GET or HEAD
  std::string url;
  std::vector<std::string> headers;       // "Name: value"
  bool follow_redirects = false;          // follow 3xx (curl drops Authorization on another host)
  // Receives the body of a 2xx response; returns false to abort the transfer.
  // Unset: the body is kept in HttpResponse::body (error bodies always are).
  std::function<bool(const char* data, size_t size)> sink;
  // Called with the status of a 2xx response before its first body byte reaches the sink.
  std::function<void(long status)> on_start;
  // Called now and then with the bytes received so far and the expected total (0 = unknown).
  std::function<void(uint64_t received, uint64_t total)> progress;
  long connect_timeout_s = 15;
  long stall_timeout_s = 60;              // abort when less than 1 byte/s arrives for this long
};

struct HttpResponse {
  long status = 0;                              // of the last response
  std::map<std::string, std::string> headers;   // of the last response, names lower-cased
  std::string body;                             // when no sink, or on error statuses (truncated)
  bool transfer_complete = true;                // false: the connection broke mid-body
  std::string transfer_error;                   // what broke, when !transfer_complete

  /// A header's value, "" when absent (`name` lower-case).
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

/// No response at all: the host could not be resolved or reached.
struct HttpConnectError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Performs one request. A response of any status is returned (with
/// transfer_complete false when the body was cut short); failing to connect
/// or to resolve the host throws HttpConnectError with curl's reason, and what
/// a callback throws is rethrown.
HttpResponse http_request(const HttpRequest& request);

}  // namespace cur4llm::detail
