// Native gRPC front end: gRPC C++ terminates HTTP/2 and hands each unary call's request bytes
// to one Python callback; the Python data plane answers with response bytes.
//
// Why: with grpcio's Python server, about two thirds of the server CPU per request went to the
// Python side of grpcio (call objects, the thread-pool hand-off, the completion-queue loop), more
// than the model run itself. Here all of that is C++; Python runs only the handler.
//
// Threads: `pollers` threads each drive one completion queue (accept, read, finish); a call whose
// request has arrived is queued for one of `workers` threads, which call the Python handler (the
// handler takes the GIL; TensorFlow releases it while it runs). At most `max_concurrent` calls
// are queued or running; past that a call is answered RESOURCE_EXHAUSTED at once, so a burst
// never builds an unbounded queue. A call takes its slot when it is accepted, before its request
// is read, so refused calls are never buffered; once read, its bytes count against
// `max_inflight_bytes` until it is answered, so a storm of large requests is refused instead of
// growing the heap. A few methods may have a C function tried first (SetFast: the DeepRec and TF
// Serving Predict fast path, fast_predict.cc); what it does not answer goes to the Python
// handler.
// Lanes: when the model runs on a session group bound to cpusets (SetLanes), worker i serves
// lane i % lanes and is pinned to that lane's cpuset, so the fast path runs the lane's model
// inline in it, on the lane's CPUs, without handing the call to another thread. With DeepRec's
// RR policy each call is queued to the next lane in turn; with MOD any worker takes the next
// call and serves it on its own lane (the serving thread's number modulo the lanes).
// Authentication: when the runtime requires it, a call reaches the fast path only if its
// `authorization` metadata matches one of the credentials the runtime pushed here
// (SetCredentials; compared in constant time). Anything else goes to the Python handler, which
// checks again and writes the error: the Python side stays the one definition of who is let in
// and of every message, and a call with a just-rotated token is still served (by Python) until
// the new token reaches this side.
// grpc.health.v1.Health (Check and Watch) is gRPC C++'s own service, so probes are answered even
// while every worker is busy. TLS and mutual TLS come from watched PEM files, so a rotated
// certificate needs no restart.
//
// The C ABI below is what runtime/deeprec_runtime/native/server.py loads with cffi.

#include <grpc/grpc.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

extern "C" {
// Called on a worker thread for every call (timeout_s < 0: no deadline). Returns the gRPC status
// code and points *out at the response (code 0) or at the error message; that memory stays valid
// until the handler's next call on the same thread, so the answer is copied without one more
// call into the handler's side (for Python: one GIL hand-off less per request).
typedef int (*dr_handler_fn)(const char* method, size_t method_len, const char* data, size_t size,
                             double timeout_s, const char* authorization, size_t authorization_len,
                             const char** out, size_t* out_size);
// Optional first try for one method (fast_predict.cc's drf_predict), given the lane the worker
// serves (-1: no lanes): returns -1 to leave the call to the handler above, else a gRPC status
// code with *out set to the response (0) or the error message, valid until the next call on the
// same thread.
typedef int (*dr_fast_fn)(const char* data, size_t size, double timeout_s, int lane,
                          const char** out, size_t* out_size);
}

namespace {

class Frontend;

struct Call {
  enum class State { kAccept, kRead, kFinish };

  Call(Frontend* owner, grpc::ServerCompletionQueue* queue) : frontend(owner), cq(queue), stream(&ctx) {}

  Frontend* frontend;
  grpc::ServerCompletionQueue* cq;
  grpc::GenericServerContext ctx;
  grpc::GenericServerAsyncReaderWriter stream;
  grpc::ByteBuffer request;
  State state = State::kAccept;
  bool counted = false;  // holds one of the max_concurrent slots
  size_t bytes = 0;      // request bytes counted against max_inflight_bytes
  bool replied = false;
};

// The credentials a call may carry to use the fast path: bearer tokens and the base64 of Basic
// `user:password` pairs, as the runtime's authenticator accepts them.
struct AcceptedCredentials {
  std::vector<std::string> bearer;
  std::vector<std::string> basic;
};

// Equality whose time depends on the lengths only, never on where the bytes differ.
bool ConstantTimeEquals(const std::string& expected, const char* data, size_t size) {
  if (expected.size() != size) return false;
  volatile unsigned char diff = 0;
  for (size_t i = 0; i < size; ++i) diff = diff | (static_cast<unsigned char>(expected[i]) ^
                                                   static_cast<unsigned char>(data[i]));
  return diff == 0;
}

bool IsSpace(char c) { return c == ' ' || c == '\t'; }

// Whether `value` (an `authorization` header: "<scheme> <credentials>", scheme in any case, as
// the Python authenticator parses it) matches one accepted credential. Every candidate of the
// scheme is compared, so the time taken does not say which one was close.
bool Matches(const AcceptedCredentials& accepted, const char* value, size_t size) {
  size_t begin = 0, end = size;
  while (begin < end && IsSpace(value[begin])) ++begin;
  while (end > begin && IsSpace(value[end - 1])) --end;
  size_t space = begin;
  while (space < end && value[space] != ' ') ++space;
  std::string scheme(value + begin, space - begin);
  for (char& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t cred = space;
  while (cred < end && IsSpace(value[cred])) ++cred;
  const std::vector<std::string>* candidates =
      scheme == "bearer" ? &accepted.bearer : scheme == "basic" ? &accepted.basic : nullptr;
  if (candidates == nullptr || cred == end) return false;
  bool found = false;
  for (const std::string& candidate : *candidates)
    found = ConstantTimeEquals(candidate, value + cred, end - cred) | found;
  return found;
}

class Frontend {
 public:
  Frontend(dr_handler_fn handler, int workers, int max_concurrent, int64_t max_inflight_bytes)
      : handler_(handler),
        workers_(workers),
        max_concurrent_(max_concurrent),
        max_inflight_bytes_(max_inflight_bytes) {}

  bool Start(const std::string& address, int pollers, int max_message_bytes,
             int max_connection_age_ms, std::shared_ptr<grpc::ServerCredentials> credentials,
             int* bound_port, std::string* error) {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, credentials, bound_port);
    builder.RegisterAsyncGenericService(&generic_);
    builder.SetMaxReceiveMessageSize(max_message_bytes);
    builder.SetMaxSendMessageSize(max_message_bytes);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    // A connection is closed gracefully (GOAWAY; its calls finish) after this age: a client
    // behind a Service ClusterIP reconnects through kube-proxy, which is how it leaves a pod
    // that is draining and how it reaches pods added since it connected.
    if (max_connection_age_ms > 0)
      builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, max_connection_age_ms);
    for (int i = 0; i < pollers; ++i) queues_.push_back(builder.AddCompletionQueue());
    server_ = builder.BuildAndStart();
    if (!server_ || *bound_port == 0) {
      *error = "cannot bind gRPC port " + address + " (in use?)";
      return false;
    }
    // NOT_SERVING until the runtime says otherwise (gRPC C++ starts the overall status SERVING).
    SetServing("", false);
    for (auto& cq : queues_) {
      // A few outstanding accepts per queue, so a burst of new calls is taken at once.
      for (int i = 0; i < 4; ++i) Accept(cq.get());
      grpc::ServerCompletionQueue* raw = cq.get();
      pollers_.emplace_back([this, raw] {
        pthread_setname_np(pthread_self(), "grpc-poller");
        Poll(raw);
      });
    }
    for (int i = 0; i < workers_; ++i) StartWorker(i);
    return true;
  }

  // Serves the session group's lanes (once, before traffic is expected): `cpus[i]` is lane i's
  // cpuset. Workers are added until each lane has as many; false when lanes are set already or
  // the server is stopping.
  bool SetLanes(const std::vector<cpu_set_t>& cpus, bool round_robin) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!lanes_.empty() || cpus.empty() || stopped_.load()) return false;
    for (const cpu_set_t& set : cpus) {
      lanes_.push_back(std::make_unique<LaneQueue>());
      lanes_.back()->cpus = set;
    }
    round_robin_ = round_robin;
    if (round_robin_) {  // calls queued before: to the lanes in turn, like the ones after
      while (!queue_.empty()) {
        lanes_[next_lane_++ % lanes_.size()]->calls.push_back(queue_.front());
        queue_.pop_front();
      }
    }
    ++lanes_generation_;
    int n = static_cast<int>(lanes_.size());
    int target = std::max(n, (workers_ + n - 1) / n * n);
    for (int i = workers_; i < target; ++i) StartWorker(i);
    workers_ = target;
    ready_.notify_all();  // workers waiting on the shared queue take their lanes
    return true;
  }

  void SetServing(const std::string& service, bool serving) {
    if (server_ && server_->GetHealthCheckService() != nullptr)
      server_->GetHealthCheckService()->SetServingStatus(service, serving);
  }

  int InFlight() const { return in_flight_.load(); }
  // Every call accepted so far, answered in C++ or in Python: a drain waits until it stops moving.
  int64_t CallsAccepted() const { return calls_accepted_.load(); }
  int64_t InFlightBytes() const { return in_flight_bytes_.load(); }

  // Replaces the credentials that open the fast path (required = false: every call may use it).
  void SetCredentials(bool required, std::shared_ptr<const AcceptedCredentials> accepted) {
    std::atomic_store(&accepted_, std::move(accepted));
    auth_required_.store(required);
  }

  // A slot's method is written once, before its function is published; calls read the function
  // first, so they never see a method being written. Returns false when every slot is taken.
  bool SetFast(const std::string& method, dr_fast_fn fn) {
    std::lock_guard<std::mutex> lock(mu_);
    for (FastSlot& slot : fast_) {
      if (slot.method.empty()) slot.method = method;
      if (slot.method == method) {
        slot.fn.store(fn);
        return true;
      }
    }
    return false;
  }

  // Stops accepting, waits up to `grace` seconds for calls in progress, cancels the rest.
  void Stop(double grace) {
    if (stopped_.exchange(true)) return;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(grace * 1000));
    server_->Shutdown(deadline);
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
      for (auto& lane : lanes_) lane->ready.notify_all();
    }
    ready_.notify_all();
    // Workers first: one may still be replying, and no operation may start on a queue that is
    // shut down. Then the queues drain and the pollers end.
    for (auto& t : workers_threads_) t.join();
    for (auto& cq : queues_) cq->Shutdown();
    for (auto& t : pollers_) t.join();
  }

  void Reply(Call* call, int code, const char* data, size_t size, const char* message) {
    if (call->replied) return;
    call->replied = true;
    call->state = Call::State::kFinish;
    grpc::Status status(static_cast<grpc::StatusCode>(code), message ? message : "");
    if (code == 0) {
      grpc::Slice slice(data, size);
      grpc::ByteBuffer response(&slice, 1);
      call->stream.WriteAndFinish(response, grpc::WriteOptions(), status, call);
    } else {
      call->stream.Finish(status, call);
    }
  }

 private:
  void Accept(grpc::ServerCompletionQueue* cq) {
    auto* call = new Call(this, cq);
    generic_.RequestCall(&call->ctx, &call->stream, cq, cq, call);
  }

  void Poll(grpc::ServerCompletionQueue* cq) {
    void* tag;
    bool ok;
    while (cq->Next(&tag, &ok)) {
      auto* call = static_cast<Call*>(tag);
      switch (call->state) {
        case Call::State::kAccept:
          if (!ok) {  // shutting down
            delete call;
            break;
          }
          if (!stopped_) Accept(cq);
          calls_accepted_.fetch_add(1);
          if (!TakeSlot(call)) {  // refused before its request is read into memory
            Reply(call, grpc::StatusCode::RESOURCE_EXHAUSTED, nullptr, 0,
                  ("server overloaded: " + std::to_string(max_concurrent_) +
                   " requests already in progress; retry later")
                      .c_str());
            break;
          }
          call->state = Call::State::kRead;
          call->stream.Read(&call->request, call);
          break;
        case Call::State::kRead:
          if (!ok) {  // the client went away before sending its request
            call->replied = true;
            call->state = Call::State::kFinish;
            call->stream.Finish(grpc::Status(grpc::StatusCode::CANCELLED, "no request"), call);
          } else if (!TakeBytes(call)) {
            call->request.Clear();
            Reply(call, grpc::StatusCode::RESOURCE_EXHAUSTED, nullptr, 0,
                  ("server overloaded: requests of " + std::to_string(in_flight_bytes_.load()) +
                   " bytes already in progress (--max-inflight-bytes " +
                   std::to_string(max_inflight_bytes_) + "); retry later")
                      .c_str());
          } else {
            Enqueue(call);
          }
          break;
        case Call::State::kFinish:
          if (call->counted) in_flight_.fetch_sub(1);
          if (call->bytes != 0) in_flight_bytes_.fetch_sub(static_cast<int64_t>(call->bytes));
          delete call;
          break;
      }
    }
  }

  // One of the max_concurrent slots, held from accept to finish.
  bool TakeSlot(Call* call) {
    int now = in_flight_.load();
    do {
      if (max_concurrent_ > 0 && now >= max_concurrent_) return false;
    } while (!in_flight_.compare_exchange_weak(now, now + 1));
    call->counted = true;
    return true;
  }

  // The request's bytes against max_inflight_bytes (0: no bound), held until it is answered.
  bool TakeBytes(Call* call) {
    int64_t size = static_cast<int64_t>(call->request.Length());
    if (!TakeBytes(size)) return false;
    call->bytes = static_cast<size_t>(size);
    return true;
  }

 public:
  // The budget is the process's: the REST server takes its requests' bytes here too.
  bool TakeBytes(int64_t size) {
    int64_t now = in_flight_bytes_.load();
    do {
      if (max_inflight_bytes_ > 0 && now + size > max_inflight_bytes_) return false;
    } while (!in_flight_bytes_.compare_exchange_weak(now, now + size));
    return true;
  }

  void GiveBytes(int64_t size) { in_flight_bytes_.fetch_sub(size); }

 private:

  void Enqueue(Call* call) {
    std::condition_variable* ready = &ready_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (round_robin_ && !lanes_.empty()) {
        LaneQueue& lane = *lanes_[next_lane_++ % lanes_.size()];
        lane.calls.push_back(call);
        ready = &lane.ready;
      } else {
        queue_.push_back(call);
      }
    }
    ready->notify_one();
  }

  void StartWorker(int index) {
    workers_threads_.emplace_back([this, index] {
      pthread_setname_np(pthread_self(), "grpc-worker");
      Work(index);
    });
  }

  // Under mu_: where a worker of `lane` (-1: none) takes its calls from and waits for them.
  std::deque<Call*>& QueueOf(int lane) {
    return round_robin_ && lane >= 0 ? lanes_[static_cast<size_t>(lane)]->calls : queue_;
  }
  std::condition_variable& ReadyOf(int lane) {
    return round_robin_ && lane >= 0 ? lanes_[static_cast<size_t>(lane)]->ready : ready_;
  }

  // Whether the call may use the fast path: no authentication required, or credentials that
  // match one pushed by the runtime.
  bool FastPathAllowed(const grpc::GenericServerContext& ctx) {
    if (!auth_required_.load()) return true;
    auto accepted = std::atomic_load(&accepted_);
    if (!accepted) return false;
    const auto& metadata = ctx.client_metadata();
    auto found = metadata.find("authorization");
    return found != metadata.end() && Matches(*accepted, found->second.data(), found->second.size());
  }

  void Work(int index) {
    int generation = 0;  // of the lane layout this thread follows
    int lane = -1;
    for (;;) {
      Call* call;
      {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
          if (generation != lanes_generation_) {
            generation = lanes_generation_;
            lane = index % static_cast<int>(lanes_.size());
            const cpu_set_t& cpus = lanes_[static_cast<size_t>(lane)]->cpus;
            pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
          }
          if (closing_ || !QueueOf(lane).empty()) break;
          ReadyOf(lane).wait(lock);
        }
        std::deque<Call*>& queue = QueueOf(lane);
        if (queue.empty()) return;
        call = queue.front();
        queue.pop_front();
        if (closing_) {  // Python may be going away: answer without calling it
          lock.unlock();
          Reply(call, grpc::StatusCode::UNAVAILABLE, nullptr, 0, "server is shutting down");
          continue;
        }
      }
      Handle(call, lane);
    }
  }

  void Handle(Call* call, int lane) {
    std::vector<grpc::Slice> slices;
    std::string flat;
    const char* data = "";
    size_t size = 0;
    if (call->request.Dump(&slices).ok()) {
      if (slices.size() == 1) {  // the usual case: no copy
        data = reinterpret_cast<const char*>(slices[0].begin());
        size = slices[0].size();
      } else {
        flat.reserve(call->request.Length());
        for (auto& s : slices) flat.append(reinterpret_cast<const char*>(s.begin()), s.size());
        // A large request arrives in many slices: once copied, they are released at once, so
        // it is held once, not twice, while it is decoded and run.
        slices.clear();
        call->request.Clear();
        data = flat.data();
        size = flat.size();
      }
    }
    double timeout = -1.0;
    auto deadline = call->ctx.deadline();
    if (deadline != std::chrono::system_clock::time_point::max()) {
      // Never negative: an already expired deadline is 0 s left, not "no deadline" (-1).
      timeout = std::max(
          0.0, std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count());
    }
    const std::string& method = call->ctx.method();
    const char* out = nullptr;
    size_t out_size = 0;
    dr_fast_fn fast = nullptr;
    for (const FastSlot& slot : fast_) {
      dr_fast_fn fn = slot.fn.load();
      if (fn == nullptr) break;  // slots fill in order
      if (method == slot.method) {
        fast = fn;
        break;
      }
    }
    if (fast != nullptr && FastPathAllowed(call->ctx)) {
      int code = fast(data, size, timeout, lane, &out, &out_size);
      if (code == 0) {
        Reply(call, 0, out, out_size, nullptr);
        return;
      }
      if (code > 0) {
        Reply(call, code, nullptr, 0, std::string(out, out_size).c_str());
        return;
      }
      // Declined, possibly after waiting (for a delta to end): the handler gets what is left.
      if (timeout >= 0) {
        timeout = std::max(0.0, std::chrono::duration<double>(
                                    deadline - std::chrono::system_clock::now()).count());
      }
    }
    const char* auth = nullptr;
    size_t auth_len = 0;
    const auto& metadata = call->ctx.client_metadata();
    auto found = metadata.find("authorization");
    if (found != metadata.end()) {
      auth = found->second.data();
      auth_len = found->second.size();
    }
    int code = handler_(method.data(), method.size(), data, size, timeout, auth, auth_len, &out,
                        &out_size);
    if (code == 0) {
      Reply(call, 0, out != nullptr ? out : "", out != nullptr ? out_size : 0, nullptr);
    } else {
      std::string message = out != nullptr ? std::string(out, out_size)
                                            : "internal error (see the server log)";
      Reply(call, code, nullptr, 0, message.c_str());
    }
  }

  dr_handler_fn handler_;
  struct FastSlot {
    std::string method;
    std::atomic<dr_fast_fn> fn{nullptr};
  };
  FastSlot fast_[4];
  int workers_;
  int max_concurrent_;
  int64_t max_inflight_bytes_;
  std::atomic<bool> auth_required_{false};
  std::shared_ptr<const AcceptedCredentials> accepted_;  // std::atomic_load / atomic_store
  grpc::AsyncGenericService generic_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::thread> pollers_;
  std::vector<std::thread> workers_threads_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<Call*> queue_;
  struct LaneQueue {
    cpu_set_t cpus;
    std::deque<Call*> calls;  // RR: the calls queued to this lane
    std::condition_variable ready;
  };
  std::vector<std::unique_ptr<LaneQueue>> lanes_;  // under mu_, set once (SetLanes)
  bool round_robin_ = false;
  uint64_t next_lane_ = 0;
  int lanes_generation_ = 0;
  bool closing_ = false;
  std::atomic<int> in_flight_{0};
  std::atomic<int64_t> in_flight_bytes_{0};
  std::atomic<int64_t> calls_accepted_{0};
  std::atomic<bool> stopped_{false};
};


// Plaintext, TLS, or mutual TLS when a client CA is given. The files are watched: a rotated
// certificate (a Secret update) is used for new connections within `refresh_seconds`.
std::shared_ptr<grpc::ServerCredentials> Credentials(const char* key, const char* cert,
                                                     const char* client_ca, int refresh_seconds) {
  if (key == nullptr || cert == nullptr || !*key || !*cert) return grpc::InsecureServerCredentials();
  bool mutual = client_ca != nullptr && *client_ca;
  auto provider = mutual ? std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                               key, cert, client_ca, refresh_seconds)
                         : std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
                               key, cert, refresh_seconds);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mutual) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace

extern "C" {

void* dr_frontend_start(const char* address, int pollers, int workers, int max_concurrent,
                        int max_message_bytes, int64_t max_inflight_bytes,
                        int max_connection_age_ms, const char* tls_key,
                        const char* tls_cert, const char* tls_client_ca, int tls_refresh_seconds,
                        dr_handler_fn handler, int* bound_port, char* error, size_t error_size) {
  auto* frontend = new Frontend(handler, workers, max_concurrent, max_inflight_bytes);
  std::string why;
  // The TLS certificate provider is created before any ServerBuilder, which would otherwise be
  // what initialises gRPC: do it here (reference-counted, kept for the process).
  grpc_init();
  auto credentials = Credentials(tls_key, tls_cert, tls_client_ca, tls_refresh_seconds);
  if (!frontend->Start(address, pollers, max_message_bytes, max_connection_age_ms, credentials,
                       bound_port, &why)) {
    snprintf(error, error_size, "%s", why.c_str());
    delete frontend;
    return nullptr;
  }
  return frontend;
}

void dr_frontend_set_serving(void* frontend, const char* service, int serving) {
  static_cast<Frontend*>(frontend)->SetServing(service, serving != 0);
}

int dr_frontend_set_fast(void* frontend, const char* method, dr_fast_fn fn) {
  return static_cast<Frontend*>(frontend)->SetFast(method, fn) ? 0 : -1;
}

// Serves a session group's lanes (see Frontend::SetLanes): lane i's cpuset is the counts[i] CPUs
// that follow in `cpus`; round_robin: DeepRec's RR, else MOD. 0 when set, -1 when refused (set
// already, the server stopping, or a CPU out of range).
int dr_frontend_set_lanes(void* frontend, int lanes, const int* cpus, const int* counts,
                          int round_robin) {
  std::vector<cpu_set_t> sets(static_cast<size_t>(std::max(lanes, 0)));
  for (int i = 0; i < lanes; ++i) {
    CPU_ZERO(&sets[static_cast<size_t>(i)]);
    for (int k = 0; k < counts[i]; ++k, ++cpus) {
      if (*cpus < 0 || *cpus >= CPU_SETSIZE) return -1;
      CPU_SET(*cpus, &sets[static_cast<size_t>(i)]);
    }
  }
  return static_cast<Frontend*>(frontend)->SetLanes(sets, round_robin != 0) ? 0 : -1;
}

int dr_frontend_in_flight(void* frontend) { return static_cast<Frontend*>(frontend)->InFlight(); }

int64_t dr_frontend_calls_accepted(void* frontend) {
  return static_cast<Frontend*>(frontend)->CallsAccepted();
}

int64_t dr_frontend_in_flight_bytes(void* frontend) {
  return static_cast<Frontend*>(frontend)->InFlightBytes();
}

// Bytes of a request served elsewhere in the process (REST) against the same budget: 1 when
// taken (give them back with dr_frontend_give_bytes), 0 when they would pass it.
int dr_frontend_take_bytes(void* frontend, int64_t size) {
  return static_cast<Frontend*>(frontend)->TakeBytes(size) ? 1 : 0;
}

void dr_frontend_give_bytes(void* frontend, int64_t size) {
  static_cast<Frontend*>(frontend)->GiveBytes(size);
}

// Credentials that open the fast path (see Matches): `bearer` tokens and the base64 of Basic
// `user:password` pairs. required = 0: authentication is off and every call may use it.
void dr_frontend_set_credentials(void* frontend, int required, const char** bearer, int num_bearer,
                                 const char** basic, int num_basic) {
  auto accepted = std::make_shared<AcceptedCredentials>();
  accepted->bearer.assign(bearer, bearer + num_bearer);
  accepted->basic.assign(basic, basic + num_basic);
  static_cast<Frontend*>(frontend)->SetCredentials(required != 0, std::move(accepted));
}

void dr_frontend_stop(void* frontend, double grace_seconds) {
  static_cast<Frontend*>(frontend)->Stop(grace_seconds);
}

}  // extern "C"
