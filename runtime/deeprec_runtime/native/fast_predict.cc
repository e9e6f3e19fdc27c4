// Fast predict: answers the common DeepRec (and TF Serving) Predict call without Python.
//
// The native gRPC front end (grpc_frontend.cc) offers every PredictionService/Predict call here
// first. When the serving version has a published plan and the request is one the plan fully
// understands (the plan's signature, every input by alias exactly once, with the signature's dtype
// and a compatible shape, packed values or tensor_content, an output_filter naming known outputs
// by alias or tensor name, each once), the request is decoded straight into TensorFlow tensors,
// run through a prepared callable of one of the version's lanes (`Session::RunCallable`), and the
// response is encoded here. TF Serving's Predict (TensorProto inputs, a model_spec naming no
// version or the plan's own) is answered the same way when the plan allows it, by the plan of the
// model it names (each model of a runtime has its own). Anything else -- and any failure,
// TensorFlow's included -- returns "not handled", and the Python handler answers exactly as it
// always has, error messages and status codes included. So this path answers successes and two
// refusals only, both with the Python path's own codes and messages: RESOURCE_EXHAUSTED when its
// batching queue is full, and INVALID_ARGUMENT for a request valid in every respect but its
// decoded size (which Python would have to parse first, at up to 8 bytes per one-byte varint:
// request_wire.h's OverCap). The Python data plane stays the single definition of what a request
// means.
//
// Why: at batch 64 the Python handler (protobuf objects, numpy conversions, metrics, the GIL)
// cost more CPU than the model; this path holds no GIL (but for a feature store's lookups).
//
// Lanes (the session group, model/session_group.py): one session, one inter-op pool per lane,
// picked per run by the callable's RunOptions.inter_op_thread_pool. Each lane has the callable the
// Python path uses for requests without output_filter (made by Python, so the same pool and the
// same inline-or-pool choice), a callable per output subset that requests named in an
// output_filter (made here on first use, with the same CallableOptions the Python path would
// build, at most kMaxSubsetCallables per lane; past that the request goes to Python), and, with
// batching on, its own batcher. A request's lane is the one the front end's worker serves when
// the front end serves lanes (grpc_frontend.cc: its workers are pinned to the lanes' cpusets and
// apply the policy), else it is chosen here as DeepRec's select_session_policy says: MOD, the
// calling thread's sticky id (given once per thread, in order) modulo the number of lanes; RR, a
// counter per plan. Where it runs: a lane bound to a cpuset runs inline in the calling thread
// when that thread is on the lane's CPUs (a worker pinned there; or a thread that happens to be
// there, held on the cpuset for the run), and on its pool, whose threads are pinned there,
// otherwise. Either way its kernels run on its CPUs; inline, a small graph costs no hand-off to
// another thread (on the 2-core bench machine a hand-off cost about as much CPU as the model). A
// lane that runs inline by configuration (enable_inline_execute) on a cpuset moves the calling
// thread onto it first, as the Python path does.
//
// Plans are created by runtime/deeprec_runtime/native/fast_predict.py for one version each. Lifetime rules, so a
// request never touches a session that is gone: a request counts itself active on the plan and
// then checks that the plan is neither closed nor blocked (sequentially consistent, paired with
// Block/Close, which first set the flag and then wait for the active count to reach zero). Block
// is how a delta gets exclusive access (the front end's calls arriving meanwhile wait for the
// unblock, within their deadlines, without counting as active; the C API's and the data plane's,
// whose callers may hold the version's gate, take the Python path, which waits on the gate);
// Close is called before the version's session is closed, and releases the callables made here.
//
// Feature stores: a version whose embedding rows live outside its session (Redis, the DRAM and
// DRAM+SSD tiers) has a lookup hook (drf_plan_lookup), the Python feature-store code; each request
// calls it once with its input feeds, and the rows it puts (drf_lookup_put) are fed in place of the
// gathers. That call takes the GIL; the rest of the request does not.
//
// Request bytes are parsed and admitted by request_wire.cc, which knows no TensorFlow and is fuzzed
// on its own: by the time this file builds a tensor, its shape, element count and size are
// checked against the bytes sent and the plan's cap on decoded bytes, its output_filter resolved
// to known outputs, and shapes and tensors are still built with TensorFlow's Status-returning
// APIs, so no request reaches a CHECK.
//
// The session: fast_predict.py obtains the TF_Session* behind TensorFlow's Python handle through
// pybind11's cpp_conduit (`_pybind11_conduit_v1_`, which hands out the pointer only for the
// std::type_info of the type the object was registered with), passing drf_tf_session_type();
// its `session` member is read with TF_Session's definition from TensorFlow's own header, so a
// TensorFlow that changes either fails when this library is built or when a plan is made, never
// on a request.
//
// Built against TensorFlow's own headers and libtensorflow_framework (the flags TensorFlow gives
// custom ops), as a library of its own: gRPC C++ and TensorFlow each bundle protobuf and absl
// headers that cannot meet in one translation unit.

#include <atomic>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include <pthread.h>
#include <sched.h>

#include "request_wire.h"
#include "tensorflow/c/c_api_internal.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/protobuf/config.pb.h"
#include "tensorflow/core/public/session.h"

// A tensor a lookup hook reads: a TensorFlow DataType number, its dims and its C-order bytes.
extern "C" {
struct drf_tensor {
  int dtype;
  int rank;
  const int64_t* dims;
  const void* data;
  size_t bytes;
};
// A plan's lookup hook (drf_plan_lookup): reads a request's input feeds, puts each looked-up
// tensor with drf_lookup_put(sink, ...); nonzero when the rows cannot be given.
typedef int (*drf_lookup_fn)(void* sink, const drf_tensor* feeds, int num_feeds);
}

namespace {

using request_wire::Api;
using request_wire::kDeepRec;
using request_wire::kDouble;
using request_wire::kFloat;
using request_wire::kInt32;
using request_wire::kInt64;
using request_wire::kNumApis;
using request_wire::kTfs;
using request_wire::TfsValueField;
using request_wire::ValueField;
using tensorflow::DataType;
using tensorflow::Tensor;
using tensorflow::TensorShape;

static_assert(request_wire::kMaxRank <= TensorShape::MaxDimensions(),
              "admitted shapes must be ones TensorShape can hold");
// The one field of TensorFlow's TF_Session this library reads: a TensorFlow that renames or
// retypes it fails here, at build time.
static_assert(std::is_same<decltype(TF_Session::session), tensorflow::Session*>::value,
              "TF_Session::session must be the tensorflow::Session*");

// Output subsets a lane makes callables for (each is an executor of the graph's pruned
// subgraph; a bound lane makes an inline twin of each too); requests naming yet another subset
// go to Python. DeepRec clients send the same output_filter with every request, so a lane sees
// one or a few.
constexpr size_t kMaxSubsetCallables = 16;

struct OutputSpec {
  std::string alias;
  int fetch = 0;  // position in the plan's fetches (fetch_names)
  int wire = 0;
};

struct Histogram {
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1) {}
  void Observe(double v) {
    size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;  // first bound >= v, as Prometheus' `le`
    std::lock_guard<std::mutex> lock(mu);
    ++count;
    sum += v;
    ++counts[i];
  }
  std::vector<double> bounds;
  std::mutex mu;
  uint64_t count = 0;
  double sum = 0;
  std::vector<uint64_t> counts;
};

struct Batcher;

// A callable made here: for the requests whose output_filter names exactly these fetches, or
// (in_place) the inline twin of a bound lane's callable.
struct SubsetCallable {
  std::vector<int> fetches;  // ascending positions in the plan's fetches
  bool in_place = false;
  int64_t handle = 0;
};

// How a lane runs its requests (drf_plan_lane's `mode`).
enum LaneMode {
  kUnbound = 0,   // its callables as Python made them: its pool, or inline where Python chose it
  kPinCaller = 1, // inline on its cpuset (enable_inline_execute): the caller moves there first
  kBound = 2,     // inline in a caller on its cpuset (see InPlace), else on its own pool,
                  // pinned to that cpuset
};

// One lane of the session group.
struct Lane {
  int64_t callable = 0;  // every fetch; made by Python (the handle its requests use)
  tensorflow::RunOptions run_options;  // the Python path's, for the callables made here
  LaneMode mode = kUnbound;
  cpu_set_t cpus;
  std::unique_ptr<Batcher> batcher;  // set when server-side batching is on
  std::atomic<uint64_t> runs{0};     // requests this lane answered
  mutable std::atomic<uint64_t> in_place_runs{0};  // runs of a bound lane inline in the caller
  std::mutex mu;                     // guards subsets
  std::mutex make_mu;                // one callable made at a time: a burst asking for a new
                                     // subset makes it once
  std::vector<SubsetCallable> subsets;
  ~Lane();
};

struct Plan {
  tensorflow::Session* session = nullptr;
  // What requests it admits: signature, inputs, outputs, TF Serving's model, the cap on decoded
  // bytes. TF Serving's Predict is answered only when spec.tfs_on (drf_plan_tfs), for requests
  // naming this model (or none, when it is the default model).
  request_wire::RequestSpec spec;
  std::vector<OutputSpec> outputs;  // sorted by alias, as the Python path answers
  std::vector<std::string> feed_names;   // the callables' feeds, in order
  std::vector<std::string> fetch_names;  // every output tensor, ascending (as Python sorts them)
  int num_feeds = 0;
  // A version whose embedding rows come from a feature store (drf_plan_lookup): the hook that
  // looks them up and the number of feeds it fills, the last of feed_names.
  drf_lookup_fn lookup = nullptr;
  int num_lookup_feeds = 0;
  int num_fetches = 0;
  std::vector<int> all_fetches;  // 0 .. num_fetches - 1
  std::vector<std::unique_ptr<Lane>> lanes;
  bool round_robin = false;      // select_session_policy RR; else MOD
  std::atomic<uint64_t> next_lane{0};
  std::atomic<int> active{0};
  std::atomic<int> blocked{0};
  // Front-end calls that arrive while a delta blocks the plan wait here for it to end (see
  // WaitUnblocked); woken by drf_unblock and drf_close.
  std::mutex unblocked_mu;
  std::condition_variable unblocked_cv;
  std::atomic<bool> closed{false};
  std::unique_ptr<Histogram> latency[kNumApis];
  std::unique_ptr<Histogram> rows;
  std::unique_ptr<Histogram> refused[kNumApis];  // calls refused with RESOURCE_EXHAUSTED
  std::unique_ptr<Histogram> invalid[kNumApis];  // refused INVALID_ARGUMENT: over the decoded cap
  std::atomic<int> api_active[kNumApis] = {};
  std::atomic<int> api_waiting[kNumApis] = {};  // front-end calls waiting for a delta to end
  // Calls the Python data plane offered (REST, after its own parsing and admission) and this
  // plan answered: counted by their adapter, so in none of the figures above.
  std::atomic<uint64_t> offered_answered{0};
  ~Plan();
};

// --- server-side batching ----------------------------------------------------------------------
// The same rules as runtime/deeprec_runtime/batching.py (TensorFlow Serving's BasicBatchScheduler), without a
// thread of its own, per lane: the request that opens a batch leads it. It waits until the batch
// is full or `timeout` has passed since it opened, takes one of `num_threads` run slots, runs the
// merged rows once and wakes the others, each of which encodes its own rows from the shared
// outputs on its own thread. Batches (open or waiting for a slot) are bounded by `max_enqueued`;
// past it a request is refused with RESOURCE_EXHAUSTED at once. Only requests whose inputs have
// the same per-row shapes and that ask for the same outputs share a batch; a merged run that
// fails, or whose outputs do not carry the batch on axis 0, is rerun request by request so that
// only the request at fault falls back to Python. Memory is bounded as rows are: a batch's feed
// bytes, padding included, stay within max_batch_bytes (request_wire.h's BatchLimits): a request
// that would pass it starts a new batch, and a batch whose padding would pass it runs its
// requests one by one, unpadded.
struct Outputs {
  std::shared_ptr<std::vector<Tensor>> tensors;
  int64_t start = 0;
  int64_t rows = -1;  // -1: the whole tensors (the request ran alone)
};

struct Task {
  std::vector<Tensor>* feeds;
  int64_t rows;
  uint64_t bytes;  // of all its feeds
  bool ok = false;
  Outputs result;
};

// TensorFlow's callable handles count from 0: this is none.
constexpr int64_t kNoCallable = -1;

// What one run is: a callable, its inline twin on a bound lane (or none), how many fetches they
// return, and the lane.
struct Run {
  int64_t handle = kNoCallable;
  int64_t in_place = kNoCallable;
  size_t fetches = 0;
  const Lane* lane = nullptr;
};

// How a run is placed (drf_predict_on's `how`): by where the caller is, or forced (the plan's
// check and the tests run each callable of a lane); kDispatched: the front end chose the lane
// and runs the call on a worker pinned to it (grpc_frontend.cc's lanes).
enum How { kAuto = 0, kPooled = 1, kInPlace = 2, kDispatched = 3 };
thread_local How t_how = kAuto;

// Runs a bound lane's request in the calling thread when the thread is on the lane's cpuset:
// already confined to it (a front end worker of that lane), or on one of its CPUs now (then it
// is held on the cpuset for the run and gets its own affinity back; setting the mask moves
// nothing). Either way the run needs no hand-off to the lane's pool. Forced (kInPlace), the
// thread is moved there for the run.
class InPlace {
 public:
  explicit InPlace(const Run& run) {
    if (run.in_place == kNoCallable || t_how == kPooled) return;
    const cpu_set_t& cpus = run.lane->cpus;
    if (pthread_getaffinity_np(pthread_self(), sizeof saved_, &saved_) != 0) return;
    cpu_set_t within;
    CPU_AND(&within, &saved_, &cpus);
    if (CPU_EQUAL(&within, &saved_)) {  // confined to the lane's CPUs already
      in_place_ = true;
      return;
    }
    if (t_how != kInPlace) {
      int cpu = sched_getcpu();
      if (cpu < 0 || !CPU_ISSET(cpu, &cpus)) return;
    }
    held_ = in_place_ = pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus) == 0;
  }
  ~InPlace() {
    if (held_) pthread_setaffinity_np(pthread_self(), sizeof saved_, &saved_);
  }
  bool runs_here() const { return in_place_; }

 private:
  cpu_set_t saved_;
  bool in_place_ = false;  // runs inline here
  bool held_ = false;      // on the lane's cpuset for this run only
};

struct Batch {
  std::string key;
  Run run;
  std::vector<Task*> tasks;
  int64_t rows = 0;
  uint64_t bytes = 0;
  std::chrono::steady_clock::time_point deadline;
  bool closed = false;
  bool done = false;
  std::condition_variable closed_cv;  // the leader waits for the batch to close
  std::condition_variable done_cv;    // the others wait for their rows
};

struct Batcher {
  request_wire::BatchLimits limits;  // allowed: ascending, the last is max_batch_size
  std::chrono::microseconds timeout{0};
  int num_threads = 1;
  int max_enqueued = 1;
  std::mutex mu;
  std::vector<std::shared_ptr<Batch>> open;
  int waiting = 0;  // closed batches not yet running
  int running = 0;
  std::condition_variable slot_cv;
  std::atomic<uint64_t> merged_runs{0};
  std::atomic<uint64_t> merged_rows{0};

  // Closes every open batch, so their leaders run them now (a delta or a close is waiting).
  void CloseAll() {
    std::lock_guard<std::mutex> lock(mu);
    while (!open.empty()) Close(open.front());
  }
  // Requests waiting in open batches.
  size_t Queued() {
    std::lock_guard<std::mutex> lock(mu);
    size_t n = 0;
    for (const auto& batch : open) n += batch->tasks.size();
    return n;
  }
  // Under mu.
  void Close(const std::shared_ptr<Batch>& batch) {
    open.erase(std::find(open.begin(), open.end(), batch));
    batch->closed = true;
    ++waiting;
    batch->closed_cv.notify_one();
  }
};

Lane::~Lane() = default;
Plan::~Plan() = default;

// A tensor of `first`'s dtype and per-row shape with `rows` rows; false if TensorFlow refuses
// the shape or cannot allocate it.
bool MergedTensor(const Tensor& first, int64_t rows, Tensor* out) {
  auto sizes = first.shape().dim_sizes();
  std::vector<int64_t> dims(sizes.begin(), sizes.end());
  dims[0] = rows;
  TensorShape shape;
  if (!TensorShape::BuildTensorShape(dims, &shape).ok()) return false;
  return Tensor::BuildTensor(first.dtype(), shape, out).ok() && out->IsInitialized();
}

bool RunAlone(Plan* plan, const Run& run, const std::vector<Tensor>& feeds, Outputs* result) {
  auto fetches = std::make_shared<std::vector<Tensor>>();
  InPlace in_place(run);
  if (!in_place.runs_here() && t_how == kInPlace && run.in_place != kNoCallable) return false;
  int64_t handle = in_place.runs_here() ? run.in_place : run.handle;
  if (in_place.runs_here()) run.lane->in_place_runs.fetch_add(1);
  if (!plan->session->RunCallable(handle, feeds, fetches.get(), nullptr).ok()) return false;
  if (fetches->size() != run.fetches) return false;
  result->tensors = std::move(fetches);
  result->rows = -1;
  return true;
}

// Runs a closed batch (on its leader's thread, holding a run slot).
void RunBatch(Plan* plan, Batcher* batcher, Batch* batch) {
  auto& tasks = batch->tasks;
  auto alone = [&] {
    for (Task* t : tasks) t->ok = RunAlone(plan, batch->run, *t->feeds, &t->result);
  };
  if (tasks.size() == 1 || !batcher->limits.MayPad(batch->rows, batch->bytes)) {
    alone();
    return;
  }
  int64_t size = batcher->limits.PaddedSize(batch->rows);
  std::vector<Tensor> merged(plan->num_feeds);
  for (int f = 0; f < plan->num_feeds; ++f) {
    const Tensor& first = (*tasks[0]->feeds)[f];
    Tensor m;
    if (!MergedTensor(first, size, &m)) {
      alone();
      return;
    }
    char* dst = const_cast<char*>(m.tensor_data().data());
    for (Task* t : tasks) {
      auto src = (*t->feeds)[f].tensor_data();
      std::memcpy(dst, src.data(), src.size());
      dst += src.size();
    }
    size_t row_bytes = first.tensor_data().size() / static_cast<size_t>(tasks[0]->rows);
    for (int64_t r = batch->rows; r < size; ++r, dst += row_bytes)  // padding: the first row
      std::memcpy(dst, first.tensor_data().data(), row_bytes);
    merged[f] = std::move(m);
  }
  Outputs all;
  if (!RunAlone(plan, batch->run, merged, &all)) {
    alone();  // one request may be what the model rejects: only its caller must see that
    return;
  }
  for (const Tensor& t : *all.tensors) {
    if (t.dims() == 0 || t.dim_size(0) != size) {  // cannot be split by rows
      alone();
      return;
    }
  }
  batcher->merged_runs.fetch_add(1);
  batcher->merged_rows.fetch_add(static_cast<uint64_t>(batch->rows));
  int64_t start = 0;
  for (Task* t : tasks) {
    t->result = {all.tensors, start, t->rows};
    t->ok = true;
    start += t->rows;
  }
}

constexpr int kInvalidArgument = 3, kResourceExhausted = 8;

// Runs `feeds` (`rows` rows each, `bytes` in all) with `run` in a merged batch of `b`. Returns 0
// with *result set, -1 when the request must go to Python, or kResourceExhausted with *message
// set.
int RunBatched(Plan* plan, Batcher* b, const Run& run, std::vector<Tensor>* feeds, int64_t rows,
               uint64_t bytes, Outputs* result, std::string* message) {
  std::string key = std::to_string(run.handle) + ":";
  for (const Tensor& t : *feeds) {
    for (int d = 1; d < t.dims(); ++d) key += std::to_string(t.dim_size(d)) + ",";
    key += ";";
  }
  Task task{feeds, rows, bytes};
  std::shared_ptr<Batch> batch;
  bool leader = false;
  std::unique_lock<std::mutex> lock(b->mu);
  for (auto& candidate : b->open)
    if (candidate->key == key) batch = candidate;
  if (batch && !b->limits.Fits(batch->rows, batch->bytes, rows, bytes)) {
    b->Close(batch);
    batch.reset();
  }
  if (!batch) {
    if (static_cast<int>(b->open.size()) + b->waiting >= b->max_enqueued) {
      *message = "batching queue is full (" + std::to_string(b->max_enqueued) +
                 " batches waiting); retry later";
      return kResourceExhausted;
    }
    batch = std::make_shared<Batch>();
    batch->key = std::move(key);
    batch->run = run;
    batch->deadline = std::chrono::steady_clock::now() + b->timeout;
    b->open.push_back(batch);
    leader = true;
  }
  batch->tasks.push_back(&task);
  batch->rows += rows;
  batch->bytes += bytes;
  // A blocked or closed plan has someone waiting for its calls to end (CloseAll ran, or runs
  // after this under the same lock): do not wait for company.
  if (batch->rows >= b->limits.max_batch_size || b->timeout.count() == 0 ||
      plan->blocked.load() != 0 || plan->closed.load())
    b->Close(batch);
  if (!leader) {
    batch->done_cv.wait(lock, [&] { return batch->done; });
  } else {
    batch->closed_cv.wait_until(lock, batch->deadline, [&] { return batch->closed; });
    if (!batch->closed) b->Close(batch);
    b->slot_cv.wait(lock, [&] { return b->running < b->num_threads; });
    --b->waiting;
    ++b->running;
    lock.unlock();
    RunBatch(plan, b, batch.get());
    lock.lock();
    --b->running;
    batch->done = true;
    lock.unlock();
    b->slot_cv.notify_one();
    batch->done_cv.notify_all();  // after unlocking: the woken need the lock to return
  }
  if (lock.owns_lock()) lock.unlock();
  if (!task.ok) return -1;
  *result = std::move(task.result);
  return 0;
}

// --- lanes -------------------------------------------------------------------------------------
std::atomic<uint64_t> g_next_sticky{0};
thread_local int64_t t_sticky = -1;

// DeepRec's MOD policy: each calling thread gets the next id once, for its lifetime.
uint64_t StickyId() {
  if (t_sticky < 0) t_sticky = static_cast<int64_t>(g_next_sticky.fetch_add(1));
  return static_cast<uint64_t>(t_sticky);
}

// The lane for this request: `forced` when >= 0 (the plan's check, tests), else the policy.
Lane* SelectLane(Plan* plan, int forced) {
  size_t n = plan->lanes.size();
  if (forced >= 0) return plan->lanes[static_cast<size_t>(forced) % n].get();
  if (n == 1) return plan->lanes[0].get();
  uint64_t i = plan->round_robin ? plan->next_lane.fetch_add(1) : StickyId();
  return plan->lanes[i % n].get();
}

// Moves the calling thread onto the lane's cpuset unless it is there already (with MOD a
// thread keeps its lane, so this is one system call per request; the Python path may have moved
// the thread meanwhile, so the current affinity is asked, not remembered).
bool PinCaller(const Lane& lane) {
  cpu_set_t now;
  CPU_ZERO(&now);
  if (pthread_getaffinity_np(pthread_self(), sizeof now, &now) == 0 && CPU_EQUAL(&now, &lane.cpus))
    return true;
  return pthread_setaffinity_np(pthread_self(), sizeof lane.cpus, &lane.cpus) == 0;
}

// A callable of `lane` for `fetches` (ascending positions in the plan's fetches), inline or on
// the lane's pool: made here on first use, with the CallableOptions Servable._make_callable builds
// (inline: with inter_op_thread_pool -1); kNoCallable when the lane has made kMaxSubsetCallables
// already or TensorFlow refuses (the request goes to Python).
int64_t MadeCallable(Plan* plan, Lane* lane, const std::vector<int>& fetches, bool in_place) {
  int64_t handle = kNoCallable;
  auto find = [&]() -> int {  // under lane->mu: 1 found, 0 room for one more, -1 full
    size_t made = 0;
    for (const SubsetCallable& s : lane->subsets) {
      if (s.in_place != in_place) continue;
      if (s.fetches == fetches) {
        handle = s.handle;
        return 1;
      }
      ++made;
    }
    // A bound lane's inline twins: one per subset, and one of the full set.
    return made < kMaxSubsetCallables + (in_place ? 1 : 0) ? 0 : -1;
  };
  {
    std::lock_guard<std::mutex> lock(lane->mu);
    if (find() != 0) return handle;
  }
  std::lock_guard<std::mutex> making(lane->make_mu);
  {
    std::lock_guard<std::mutex> lock(lane->mu);  // made while this thread waited?
    if (find() != 0) return handle;
  }
  tensorflow::CallableOptions options;
  for (const std::string& feed : plan->feed_names) options.add_feed(feed);
  for (int f : fetches) options.add_fetch(plan->fetch_names[f]);
  *options.mutable_run_options() = lane->run_options;
  if (in_place) options.mutable_run_options()->set_inter_op_thread_pool(-1);
  tensorflow::Session::CallableHandle made;
  if (!plan->session->MakeCallable(options, &made).ok()) return kNoCallable;
  std::lock_guard<std::mutex> lock(lane->mu);
  lane->subsets.push_back({fetches, in_place, made});
  return made;
}

// The run for `fetches` on `lane`: the lane's own callable for all of them, else one made here;
// on a bound lane also its inline twin. False when a callable cannot be had (see MadeCallable).
bool RunFor(Plan* plan, Lane* lane, const std::vector<int>& fetches, Run* run) {
  run->fetches = fetches.size();
  run->lane = lane;
  run->handle = fetches.size() == static_cast<size_t>(plan->num_fetches)
                    ? lane->callable
                    : MadeCallable(plan, lane, fetches, false);
  if (run->handle == kNoCallable) return false;
  if (lane->mode != kBound) return true;
  run->in_place = MadeCallable(plan, lane, fetches, true);
  return run->in_place != kNoCallable;
}

// Releases the callables made here (at close, once no request uses the plan).
void ReleaseSubsets(Plan* plan) {
  for (auto& lane : plan->lanes) {
    std::lock_guard<std::mutex> lock(lane->mu);
    // A release that fails leaves an executor behind until the session closes, just after.
    for (const SubsetCallable& s : lane->subsets)
      plan->session->ReleaseCallable(s.handle).IgnoreError();
    lane->subsets.clear();
  }
}

// The published plans: g_current, the default model's (DeepRec's Predict names no model, so it
// is always that one's), and by model name every model's plan that answers TF Serving's Predict
// (the default model's included). The map is replaced whole under g_mu and read with
// std::atomic_load, so a call takes one snapshot and holds its plan alive.
using ModelPlans = std::map<std::string, std::shared_ptr<Plan>, std::less<>>;
std::mutex g_mu;
std::shared_ptr<Plan> g_current;  // read with std::atomic_load
std::shared_ptr<const ModelPlans> g_models = std::make_shared<const ModelPlans>();

// The published plan TF Serving's Predict `data` goes to: by its model_spec.name, the default
// model's when it names none; null when none (or the request is not one to route).
std::shared_ptr<Plan> TfsPlanFor(const char* data, size_t size) {
  std::string_view name;
  if (!request_wire::TfsModelName(reinterpret_cast<const uint8_t*>(data), size, &name))
    return nullptr;
  if (name.empty()) return std::atomic_load(&g_current);
  std::shared_ptr<const ModelPlans> models = std::atomic_load(&g_models);
  auto found = models->find(name);
  return found == models->end() ? nullptr : found->second;
}

// Replaces (or with a null plan removes) the plan published for model `name`. Under g_mu.
void SetModelPlan(const std::string& name, std::shared_ptr<Plan> plan) {
  auto models = std::make_shared<ModelPlans>(*std::atomic_load(&g_models));
  if (plan) {
    (*models)[name] = std::move(plan);
  } else {
    models->erase(name);
  }
  std::atomic_store(&g_models, std::shared_ptr<const ModelPlans>(std::move(models)));
}

// The tensor of one admitted input: its shape and allocation go through TensorFlow's
// Status-returning APIs, so even a shape request_wire let through by mistake is declined, never
// a CHECK.
bool BuildFeed(const request_wire::InputSpec& spec, const request_wire::WireArray& a,
               Tensor* out) {
  TensorShape shape;
  if (!TensorShape::BuildTensorShape(a.dims, &shape).ok()) return false;
  Tensor t;
  if (!Tensor::BuildTensor(static_cast<DataType>(spec.wire), shape, &t).ok() || !t.IsInitialized())
    return false;
  auto data = t.tensor_data();
  if (!request_wire::FillValues(a, spec.wire, const_cast<char*>(data.data()), data.size()))
    return false;
  *out = std::move(t);
  return true;
}

// What drf_lookup_put fills while a plan's lookup hook runs: one tensor per looked-up feed.
struct LookupSink {
  std::vector<Tensor> rows;
  std::vector<bool> filled;
};

// Looks up the embedding rows of a request whose input feeds are built (the first
// num_feeds - num_lookup_feeds of `feeds`): the plan's hook (Python's feature-store code, under
// the GIL) gets the inputs and puts each looked-up tensor through drf_lookup_put, which copies it
// into its feed. Adds the rows' bytes to `bytes` and clears `rows_shared` when a looked-up tensor
// does not lead with the request's `batch` rows (then it is not batched). False: not answered.
bool LookUp(Plan* plan, int64_t batch, std::vector<Tensor>* feeds, uint64_t* bytes,
            bool* rows_shared) {
  int inputs = plan->num_feeds - plan->num_lookup_feeds;
  std::vector<drf_tensor> in(static_cast<size_t>(inputs));
  std::vector<std::vector<int64_t>> dims(static_cast<size_t>(inputs));
  for (int f = 0; f < inputs; ++f) {
    const Tensor& t = (*feeds)[f];
    for (int d = 0; d < t.dims(); ++d) dims[f].push_back(t.dim_size(d));
    auto data = t.tensor_data();
    in[f] = {static_cast<int>(t.dtype()), t.dims(), dims[f].data(), data.data(), data.size()};
  }
  LookupSink sink;
  sink.rows.resize(static_cast<size_t>(plan->num_lookup_feeds));
  sink.filled.assign(static_cast<size_t>(plan->num_lookup_feeds), false);
  if (plan->lookup(&sink, in.data(), inputs) != 0) return false;
  for (int k = 0; k < plan->num_lookup_feeds; ++k) {
    if (!sink.filled[k]) return false;
    Tensor& t = sink.rows[k];
    if (__builtin_add_overflow(*bytes, static_cast<uint64_t>(t.TotalBytes()), bytes)) return false;
    if (t.dims() == 0 || t.dim_size(0) != batch) *rows_shared = false;
    (*feeds)[inputs + k] = std::move(t);
  }
  return true;
}

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutBytes(std::string* out, int field, const char* data, size_t size) {
  PutVarint(out, (static_cast<uint64_t>(field) << 3) | 2);
  PutVarint(out, size);
  out->append(data, size);
}

// The values of `t` in `field` (packed) or, with raw, in `raw_field` (tensor_content).
void PutValues(const Tensor& t, int wire, bool raw, int field, int raw_field, std::string* out) {
  auto data = t.tensor_data();
  if (data.empty()) return;
  if (raw) {
    PutBytes(out, raw_field, data.data(), data.size());
  } else if (wire == kFloat || wire == kDouble) {
    PutBytes(out, field, data.data(), data.size());
  } else {
    std::string packed;
    int64_t n = t.NumElements();
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = wire == kInt64 ? reinterpret_cast<const int64_t*>(data.data())[i]
                                 : reinterpret_cast<const int32_t*>(data.data())[i];
      PutVarint(&packed, static_cast<uint64_t>(v));
    }
    PutBytes(out, field, packed.data(), packed.size());
  }
}

// ArrayProto of one output, as runtime/deeprec_runtime/codec.py's encode_array writes it.
void EncodeArray(const Tensor& t, int wire, bool raw, std::string* out) {
  PutVarint(out, (1 << 3) | 0);
  PutVarint(out, static_cast<uint64_t>(wire));
  std::string shape;
  if (t.dims() > 0) {
    std::string dims;
    for (int i = 0; i < t.dims(); ++i) PutVarint(&dims, static_cast<uint64_t>(t.dim_size(i)));
    PutBytes(&shape, 1, dims.data(), dims.size());
  }
  PutBytes(out, 2, shape.data(), shape.size());
  PutValues(t, wire, raw, ValueField(wire), 100, out);
}

// TensorProto of one output, as runtime/deeprec_runtime/server/tfs_convert.py's array_to_tensor writes it.
void EncodeTensorProto(const Tensor& t, int wire, bool raw, std::string* out) {
  PutVarint(out, (1 << 3) | 0);
  PutVarint(out, static_cast<uint64_t>(wire));
  if (t.dims() > 0) {
    std::string shape, dim;
    for (int i = 0; i < t.dims(); ++i) {
      dim.clear();
      if (t.dim_size(i) != 0) {
        PutVarint(&dim, (1 << 3) | 0);
        PutVarint(&dim, static_cast<uint64_t>(t.dim_size(i)));
      }
      PutBytes(&shape, 2, dim.data(), dim.size());
    }
    PutBytes(out, 2, shape.data(), shape.size());
  }
  PutValues(t, wire, raw, TfsValueField(wire), 4, out);
}

// Wakes the calls waiting for a blocked plan (after blocked or closed changed: taking the mutex
// between the change and the notify means no waiter checks the old value and then sleeps).
void WakeWaiters(Plan* plan) {
  { std::lock_guard<std::mutex> lock(plan->unblocked_mu); }
  plan->unblocked_cv.notify_all();
}

// Waits, counted as no user of the plan, until no delta blocks it: true then, false when the
// plan closed first or `timeout_s` (>= 0; -1: none) ran out. A front-end call that went to Python
// instead would wait on the version's write gate all the same, and then be answered at the
// Python path's cost; this way the delta's new rows are still seen whole (the delta blocked the
// plan before it took the gate, and unblocks it after releasing it).
bool WaitUnblocked(Plan* plan, double timeout_s) {
  auto ready = [plan] { return plan->closed.load() || plan->blocked.load() == 0; };
  std::unique_lock<std::mutex> lock(plan->unblocked_mu);
  if (timeout_s < 0) {
    plan->unblocked_cv.wait(lock, ready);
  } else if (!plan->unblocked_cv.wait_for(lock, std::chrono::duration<double>(timeout_s), ready)) {
    return false;
  }
  return !plan->closed.load();
}

// Holds the plan's active count for one request; the plan is usable only if open().
class Use {
 public:
  // `counted`: a call of this plan's own API (a front end's), in its figures; else one the
  // Python data plane offered, which its adapter counts.
  Use(Plan* plan, int api, bool counted) : plan_(plan), api_(counted ? api : -1) {
    plan_->active.fetch_add(1);
    if (api_ >= 0) plan_->api_active[api_].fetch_add(1);
  }
  ~Use() {
    if (api_ >= 0) plan_->api_active[api_].fetch_sub(1);
    plan_->active.fetch_sub(1);
  }
  bool open() const { return !plan_->closed.load() && plan_->blocked.load() == 0; }

 private:
  Plan* plan_;
  int api_;
};

void WaitIdle(Plan* plan) {
  while (plan->active.load() != 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
}

// A request over the cap on decoded bytes, refused with the Python path's message (codec.py's
// DecodeBudget) before any of it is decoded. A call the data plane offered has been through
// Python's own budget already; it goes back there.
int RefuseOverCap(Plan* plan, Api api, bool counted, const request_wire::OverCap& over,
                  std::chrono::steady_clock::time_point started, std::string* message) {
  if (!counted) return -1;
  *message = "input '" + plan->spec.inputs[static_cast<size_t>(over.input)].alias + "' takes " +
             std::to_string(over.input_bytes) +
             " bytes decoded, which brings the request's decoded inputs to " +
             std::to_string(over.total) + " bytes, over the limit of " +
             std::to_string(plan->spec.max_decoded_bytes) + " bytes per request";
  plan->invalid[api]->Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return kInvalidArgument;
}

// -1: not handled (the caller asks Python); 0: *out holds the serialized PredictResponse;
// kResourceExhausted: the batching queue is full and *out holds the message; kInvalidArgument:
// the request's inputs decode past the cap and *out holds the message. `forced_lane` >= 0
// runs on that lane (the front end's choice, or the plan's check, which moves no caller for an
// inline lane); -1 follows the policy.
int Predict(Plan* plan, Api api, bool counted, int forced_lane, const char* data, size_t size,
            std::chrono::steady_clock::time_point started, double timeout_s, std::string* out) {
  request_wire::Decoded request;
  request_wire::OverCap over;
  switch (request_wire::DecodeRequest(plan->spec, api, reinterpret_cast<const uint8_t*>(data),
                                      size, &request, &over)) {
    case request_wire::Verdict::kDeclined:
      return -1;
    case request_wire::Verdict::kOverCap:
      return RefuseOverCap(plan, api, counted, over, started, out);
    case request_wire::Verdict::kAdmitted:
      break;
  }
  std::vector<Tensor> feeds(plan->num_feeds);
  for (size_t i = 0; i < plan->spec.inputs.size(); ++i) {
    const request_wire::InputSpec& spec = plan->spec.inputs[i];
    if (!BuildFeed(spec, request.arrays[i], &feeds[spec.feed])) return -1;
  }
  uint64_t feed_bytes = request.bytes;  // what batching counts: the inputs and looked-up rows
  bool rows_shared = request.rows_shared;
  if (plan->lookup != nullptr && !LookUp(plan, request.batch, &feeds, &feed_bytes, &rows_shared))
    return -1;  // the store failed, or the ids are invalid: Python answers, with its error
  // The fetches the answer needs (ascending, each once) and, per answered output, its key and
  // its spec: every output under its alias, sorted, without output_filter; else the filter's
  // names in the request's order (the Python path answers the same map).
  std::vector<int> fetches;
  if (request.filter.empty()) {
    fetches = plan->all_fetches;
  } else {
    for (const request_wire::FilterKey& key : request.filter)
      fetches.push_back(plan->outputs[key.output].fetch);
    std::sort(fetches.begin(), fetches.end());
    fetches.erase(std::unique(fetches.begin(), fetches.end()), fetches.end());
  }
  Lane* lane = SelectLane(plan, forced_lane);
  bool serving = forced_lane < 0 || t_how == kDispatched;  // not the check: callers may move
  if (lane->mode == kPinCaller && serving && !PinCaller(*lane)) return -1;
  Run run;
  if (!RunFor(plan, lane, fetches, &run)) return -1;
  if (timeout_s >= 0 &&
      std::chrono::steady_clock::now() - started >= std::chrono::duration<double>(timeout_s))
    return -1;  // expired: Python answers DEADLINE_EXCEEDED
  Outputs result;
  int64_t batch = request.batch;
  Batcher* batcher = lane->batcher.get();
  if (batcher && rows_shared && batcher->limits.Admits(batch, feed_bytes)) {
    int code = RunBatched(plan, batcher, run, &feeds, batch, feed_bytes, &result, out);
    if (code == kResourceExhausted && counted) {
      plan->refused[api]->Observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    }
    if (code != 0) return code;
  } else if (!RunAlone(plan, run, feeds, &result)) {
    return -1;
  }
  out->clear();
  std::string array;
  size_t entries = request.filter.empty() ? plan->outputs.size() : request.filter.size();
  for (size_t e = 0; e < entries; ++e) {
    const OutputSpec& spec =
        plan->outputs[request.filter.empty() ? e : static_cast<size_t>(request.filter[e].output)];
    size_t at = static_cast<size_t>(
        std::lower_bound(fetches.begin(), fetches.end(), spec.fetch) - fetches.begin());
    const Tensor& whole = (*result.tensors)[at];
    // A merged run's outputs are shared: this request encodes only its rows (a view, no copy).
    const Tensor t = result.rows < 0 ? whole : whole.Slice(result.start, result.start + result.rows);
    if (static_cast<int>(t.dtype()) != spec.wire) return -1;
    array.clear();
    if (api == kTfs) {
      EncodeTensorProto(t, spec.wire, request.raw, &array);
    } else {
      EncodeArray(t, spec.wire, request.raw, &array);
    }
    std::string entry;
    if (request.filter.empty()) {
      PutBytes(&entry, 1, spec.alias.data(), spec.alias.size());
    } else {
      const request_wire::FilterKey& key = request.filter[e];
      PutBytes(&entry, 1, reinterpret_cast<const char*>(key.key), key.size);
    }
    PutBytes(&entry, 2, array.data(), array.size());
    PutBytes(out, 1, entry.data(), entry.size());  // outputs is field 1 in both responses
  }
  if (api == kTfs) {  // model_spec, as the Python adapter fills it
    std::string spec, version;
    PutBytes(&spec, 1, plan->spec.tfs_model.data(), plan->spec.tfs_model.size());
    if (plan->spec.tfs_version != 0) {
      PutVarint(&version, (1 << 3) | 0);
      PutVarint(&version, static_cast<uint64_t>(plan->spec.tfs_version));
    }
    PutBytes(&spec, 2, version.data(), version.size());
    const std::string& signature = plan->spec.signature;
    if (!signature.empty()) PutBytes(&spec, 3, signature.data(), signature.size());
    PutBytes(out, 2, spec.data(), spec.size());
  }
  lane->runs.fetch_add(1);
  if (!counted) {
    plan->offered_answered.fetch_add(1);
    return 0;
  }
  if (batch >= 0) plan->rows->Observe(static_cast<double>(batch));
  plan->latency[api]->Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  return 0;
}

thread_local std::string t_answer;

// One Predict call on `plan` (see drf_predict_on). `wait_blocked`: a call that holds nothing (the
// front end's) waits for a delta blocking the plan to end (WaitUnblocked, within its deadline);
// other callers may hold the version's read gate the delta is waiting for, so they go to Python.
int PredictOn(const std::shared_ptr<Plan>& plan, int api, int lane, int how, const char* data,
              size_t size, double timeout_s, bool counted, bool wait_blocked, const char** out,
              size_t* out_size) {
  if (api != kDeepRec && api != kTfs) return -1;
  if (how != kAuto && how != kPooled && how != kInPlace && how != kDispatched) return -1;
  struct Placing {  // this call's placement, for RunAlone (a merged batch's leader places it)
    explicit Placing(int how) { t_how = static_cast<How>(how); }
    ~Placing() { t_how = kAuto; }
  } placing(how);
  if (!plan || plan->lanes.empty()) return -1;
  auto started = std::chrono::steady_clock::now();  // its latency and deadline count the wait
  if (wait_blocked && plan->blocked.load() != 0) {
    plan->api_waiting[api].fetch_add(1);  // in flight for the metrics, not a user of the plan
    bool unblocked = WaitUnblocked(plan.get(), timeout_s);
    plan->api_waiting[api].fetch_sub(1);
    if (!unblocked) return -1;  // closed, or expired: Python answers
  }
  Use use(plan.get(), api, counted);
  if (!use.open()) return -1;  // blocked again, or closed: Python answers
  int code = Predict(plan.get(), static_cast<Api>(api), counted, lane, data, size, started,
                     timeout_s, &t_answer);
  if (code >= 0) {
    *out = t_answer.data();
    *out_size = t_answer.size();
  }
  return code;
}

}  // namespace

extern "C" {

// The type pybind11's cpp_conduit is asked for (fast_predict.py, tf_handles.py): TensorFlow's
// TF_Session, as its own header defines it, and the names the conduit's capsules carry.
const void* drf_tf_session_type() { return &typeid(TF_Session); }
const char* drf_tf_session_type_name() { return typeid(TF_Session).name(); }
const char* drf_type_info_name() { return typeid(std::type_info).name(); }

// Whether a TF_Session* the conduit gave holds a session (a closed one holds none).
int drf_session_ok(const void* tf_session) {
  return tf_session != nullptr && static_cast<const TF_Session*>(tf_session)->session != nullptr;
}

// A plan for one version. `tf_session` is the TF_Session* of its tf.compat.v1.Session (from the
// conduit). Inputs are listed in signature order with their wire dtype, rank (-1 unknown) and dims
// (flattened, -1 unknown) and their position in `feed_names`; outputs sorted by alias, with their
// tensor name, wire dtype and position in `fetch_names` (every output tensor, ascending). Lanes
// are added with drf_plan_lane, in the group's order; `round_robin` selects RR, else MOD. A
// request whose inputs decode to more than `max_decoded_bytes` (the Python path's cap, which must
// be the same) is refused as Python would refuse it (RefuseOverCap). Returns an owned
// handle for drf_* calls.
void* drf_plan_new(const void* tf_session, const char* signature, int num_inputs,
                   const char** input_aliases, const int* input_wire, const int* input_rank,
                   const int64_t* input_dims, const int* input_feed, int num_outputs,
                   const char** output_aliases, const char** output_names, const int* output_wire,
                   const int* output_fetch, int num_feeds, const char** feed_names,
                   int num_fetches, const char** fetch_names, int round_robin,
                   const double* latency_bounds, int num_latency_bounds, const double* row_bounds,
                   int num_row_bounds, uint64_t max_decoded_bytes) {
  auto plan = std::make_shared<Plan>();
  plan->session = static_cast<const TF_Session*>(tf_session)->session;
  plan->spec.signature = signature;
  plan->spec.max_decoded_bytes = max_decoded_bytes;
  const int64_t* dims = input_dims;
  for (int i = 0; i < num_inputs; ++i) {
    request_wire::InputSpec spec;
    spec.alias = input_aliases[i];
    spec.wire = input_wire[i];
    spec.rank = input_rank[i];
    for (int d = 0; d < spec.rank; ++d) spec.dims.push_back(*dims++);
    spec.feed = input_feed[i];
    plan->spec.inputs.push_back(std::move(spec));
  }
  for (int i = 0; i < num_outputs; ++i) {
    plan->outputs.push_back({output_aliases[i], output_fetch[i], output_wire[i]});
    plan->spec.outputs.push_back({output_aliases[i], output_names[i]});
  }
  plan->num_feeds = num_feeds;
  plan->feed_names.assign(feed_names, feed_names + num_feeds);
  plan->num_fetches = num_fetches;
  plan->fetch_names.assign(fetch_names, fetch_names + num_fetches);
  for (int f = 0; f < num_fetches; ++f) plan->all_fetches.push_back(f);
  plan->round_robin = round_robin != 0;
  std::vector<double> bounds(latency_bounds, latency_bounds + num_latency_bounds);
  for (int api = 0; api < kNumApis; ++api) {
    plan->latency[api] = std::make_unique<Histogram>(bounds);
    plan->refused[api] = std::make_unique<Histogram>(bounds);
    plan->invalid[api] = std::make_unique<Histogram>(bounds);
  }
  plan->rows = std::make_unique<Histogram>(std::vector<double>(row_bounds, row_bounds + num_row_bounds));
  return new std::shared_ptr<Plan>(std::move(plan));
}

// Adds the plan's next lane (before it is published): `callable`, the handle of the Python path's
// callable for every fetch on this lane; `run_options`, the serialized RunOptions of its
// callables; `mode` a LaneMode and `cpus` its cpuset (kPinCaller, kBound). A bound lane's inline
// callable for every fetch is made here, so a TensorFlow that refuses it refuses the plan, not a
// request. Returns the lane's index, or -1 when the RunOptions do not parse, a CPU is out of
// range or that callable cannot be made.
int drf_plan_lane(void* handle, int64_t callable, const char* run_options, size_t run_options_size,
                  int mode, const int* cpus, int num_cpus) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  auto lane = std::make_unique<Lane>();
  lane->callable = callable;
  if (!lane->run_options.ParseFromArray(run_options, static_cast<int>(run_options_size))) return -1;
  if (mode != kUnbound && mode != kPinCaller && mode != kBound) return -1;
  lane->mode = static_cast<LaneMode>(mode);
  CPU_ZERO(&lane->cpus);
  for (int i = 0; i < num_cpus; ++i) {
    if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return -1;
    CPU_SET(cpus[i], &lane->cpus);
  }
  if (lane->mode != kUnbound && num_cpus == 0) return -1;
  if (lane->mode == kBound &&
      MadeCallable(plan, lane.get(), plan->all_fetches, true) == kNoCallable)
    return -1;
  plan->lanes.push_back(std::move(lane));
  return static_cast<int>(plan->lanes.size()) - 1;
}

// Requests lane `lane` answered (which = 0), or the TensorFlow runs of a bound lane that ran
// inline in their caller (which = 1); and the callables it made for output subsets (their
// inline twins on a bound lane not counted).
uint64_t drf_lane_runs(void* handle, int lane, int which) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  if (lane < 0 || static_cast<size_t>(lane) >= plan->lanes.size()) return 0;
  const Lane& l = *plan->lanes[static_cast<size_t>(lane)];
  return which == 1 ? l.in_place_runs.load() : l.runs.load();
}

int drf_lane_subsets(void* handle, int lane) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  if (lane < 0 || static_cast<size_t>(lane) >= plan->lanes.size()) return 0;
  Lane* l = plan->lanes[static_cast<size_t>(lane)].get();
  std::lock_guard<std::mutex> lock(l->mu);
  return static_cast<int>(std::count_if(l->subsets.begin(), l->subsets.end(),
                                        [](const SubsetCallable& s) { return !s.in_place; }));
}

// Makes `handle` (or nothing, with NULL) the plan that DeepRec's Predict calls use: the default
// model's.
void drf_publish(void* handle) {
  std::shared_ptr<Plan> plan = handle ? *static_cast<std::shared_ptr<Plan>*>(handle) : nullptr;
  std::lock_guard<std::mutex> lock(g_mu);
  std::atomic_store(&g_current, plan);
}

// Makes `handle` (or nothing, with NULL) the plan that TF Serving's Predict calls naming model
// `name` use.
void drf_publish_model(const char* name, void* handle) {
  std::shared_ptr<Plan> plan = handle ? *static_cast<std::shared_ptr<Plan>*>(handle) : nullptr;
  std::lock_guard<std::mutex> lock(g_mu);
  SetModelPlan(name, std::move(plan));
}

void CloseBatches(Plan* plan) {
  for (auto& lane : plan->lanes)
    if (lane->batcher) lane->batcher->CloseAll();  // calls waiting for company run now
}

// Requests stop using the plan until drf_unblock; returns once none is using it. On a closed
// plan both are no-ops: no request uses it any more (a delta may still be ending during shutdown).
void drf_block(void* handle) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  if (plan->closed.load()) return;
  plan->blocked.fetch_add(1);
  CloseBatches(plan);
  WaitIdle(plan);
}

void drf_unblock(void* handle) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  if (plan->closed.load()) return;
  plan->blocked.fetch_sub(1);
  WakeWaiters(plan);
}

// No request uses the plan after this returns (it is unpublished if it was the current one), and
// the callables made here are released: the session may be closed next.
void drf_close(void* handle) {
  auto& plan = *static_cast<std::shared_ptr<Plan>*>(handle);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    if (std::atomic_load(&g_current) == plan) std::atomic_store(&g_current, std::shared_ptr<Plan>());
    std::shared_ptr<const ModelPlans> models = std::atomic_load(&g_models);
    for (const auto& [name, published] : *models)
      if (published == plan) SetModelPlan(name, nullptr);
  }
  if (plan->closed.exchange(true)) return;
  WakeWaiters(plan.get());
  CloseBatches(plan.get());
  WaitIdle(plan.get());
  ReleaseSubsets(plan.get());
}

// Turns on server-side batching for the plan (after its lanes are added, before it is
// published): each lane merges its calls into batches of at most `max_batch_size` rows and
// `max_batch_bytes` feed bytes (padding included), `timeout_us` for the first request to wait,
// `num_threads` merged runs at once, at most `max_enqueued` batches; merged runs padded up to the
// next of `allowed` (ascending).
void drf_plan_batching(void* handle, int64_t max_batch_size, int64_t timeout_us, int num_threads,
                       int max_enqueued, const int64_t* allowed, int num_allowed,
                       uint64_t max_batch_bytes) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  for (auto& lane : plan->lanes) {
    auto b = std::make_unique<Batcher>();
    b->limits.max_batch_size = max_batch_size;
    b->limits.max_batch_bytes = max_batch_bytes;
    b->limits.allowed.assign(allowed, allowed + num_allowed);
    b->timeout = std::chrono::microseconds(timeout_us);
    b->num_threads = std::max(1, num_threads);
    b->max_enqueued = std::max(1, max_enqueued);
    lane->batcher = std::move(b);
  }
}

// Requests waiting in the plan's open batches (0 without batching).
int drf_queued(void* handle) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  size_t n = 0;
  for (auto& lane : plan->lanes)
    if (lane->batcher) n += lane->batcher->Queued();
  return static_cast<int>(n);
}

// Calls of `api` (0 DeepRec, 1 TF Serving) using the plan now (answered in C++, or being decoded
// before Python takes them), or waiting for a delta to end.
int drf_active(void* handle, int api) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  return plan->api_active[api].load() + plan->api_waiting[api].load();
}

// Lets the plan answer TF Serving's Predict for model `name` (NULL: not at all), its answers
// naming version `number`; `default_model` nonzero: also requests naming no model, which mean the
// default one. Requests may pin the version by `number` or by `label` (its name). Before the plan
// is published.
void drf_plan_tfs(void* handle, const char* name, int64_t number, int default_model,
                  const char* label) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  plan->spec.tfs_on = name != nullptr;
  plan->spec.tfs_model = name ? name : "";
  plan->spec.tfs_default = name != nullptr && default_model != 0;
  plan->spec.tfs_version = number;
  plan->spec.tfs_label = label ? label : "";
}

// Gives the plan a lookup hook (before it is checked and published): its last `num_rows` feeds
// are embedding rows the hook looks up in a feature store for each request (see LookUp).
void drf_plan_lookup(void* handle, drf_lookup_fn fn, int num_rows) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  plan->lookup = fn;
  plan->num_lookup_feeds = num_rows;
}

// Called by a lookup hook for each looked-up tensor `index`: copies `bytes` bytes of `data`, a
// C-order tensor of `dtype` (a TensorFlow DataType number; a type copied by memcpy) and shape
// `dims`, into the request's feed. 0, or -1 when refused (the request then goes to Python).
int drf_lookup_put(void* sink_handle, int index, int dtype, int rank, const int64_t* dims,
                   const void* data, size_t bytes) {
  auto* sink = static_cast<LookupSink*>(sink_handle);
  if (index < 0 || static_cast<size_t>(index) >= sink->rows.size() || sink->filled[index])
    return -1;
  if (!tensorflow::DataType_IsValid(dtype) || dtype == tensorflow::DT_INVALID ||
      tensorflow::IsRefType(static_cast<DataType>(dtype)) ||
      !tensorflow::DataTypeCanUseMemcpy(static_cast<DataType>(dtype)))
    return -1;  // a plain numeric type only (no strings, resources, variants)
  if (rank < 0 || rank > request_wire::kMaxRank) return -1;
  TensorShape shape;
  if (!TensorShape::BuildTensorShape(std::vector<int64_t>(dims, dims + rank), &shape).ok())
    return -1;
  Tensor t;
  if (!Tensor::BuildTensor(static_cast<DataType>(dtype), shape, &t).ok() || !t.IsInitialized() ||
      t.TotalBytes() != bytes)
    return -1;
  if (bytes != 0) std::memcpy(const_cast<char*>(t.tensor_data().data()), data, bytes);
  sink->rows[index] = std::move(t);
  sink->filled[index] = true;
  return 0;
}

// Merged runs of the plan so far and the rows they carried (padding excluded).
void drf_merged(void* handle, uint64_t* runs, uint64_t* rows) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  *runs = 0;
  *rows = 0;
  for (auto& lane : plan->lanes) {
    if (!lane->batcher) continue;
    *runs += lane->batcher->merged_runs.load();
    *rows += lane->batcher->merged_rows.load();
  }
}

// Calls the Python data plane offered that this plan answered (see Plan::offered_answered).
uint64_t drf_offered(void* handle) {
  return static_cast<std::shared_ptr<Plan>*>(handle)->get()->offered_answered.load();
}

void drf_free(void* handle) { delete static_cast<std::shared_ptr<Plan>*>(handle); }

// Cumulative figures of the requests this plan answered: which = 0 latency (seconds) of DeepRec
// calls, 1 rows (both APIs), 2 latency of the DeepRec calls it refused (a full batching queue),
// 3 and 4 the same as 0 and 2 for TF Serving calls, 5 and 6 the DeepRec and TF Serving calls it
// refused over the cap on decoded bytes.
// Writes count, sum and then one count per bucket (the last is +Inf), not cumulative.
void drf_stats(void* handle, int which, uint64_t* count, double* sum, uint64_t* buckets) {
  Plan* plan = static_cast<std::shared_ptr<Plan>*>(handle)->get();
  Histogram* h = which == 1   ? plan->rows.get()
                : which == 0 ? plan->latency[kDeepRec].get()
                : which == 2 ? plan->refused[kDeepRec].get()
                : which == 3 ? plan->latency[kTfs].get()
                : which == 4 ? plan->refused[kTfs].get()
                : which == 5 ? plan->invalid[kDeepRec].get()
                             : plan->invalid[kTfs].get();
  std::lock_guard<std::mutex> lock(h->mu);
  *count = h->count;
  *sum = h->sum;
  std::memcpy(buckets, h->counts.data(), h->counts.size() * sizeof(uint64_t));
}

// One Predict call on `handle`'s plan (the published one when NULL), on lane `lane` (-1: the
// lane the plan's policy picks), placed as `how` says (a How: on a bound lane, 1 runs it on the
// lane's pool, 2 inline with the caller held on the lane's cpuset, 0 as the caller's CPU allows).
// `counted` 0: a call the Python data plane offers (its adapter counts it; see Plan).
// Returns -1 when not handled, else a gRPC status code with *out pointing at the response (0) or
// the error message, valid until this thread's next call.
int drf_predict_on(void* handle, int api, int lane, int how, const char* data, size_t size,
                   double timeout_s, int counted, const char** out, size_t* out_size) {
  std::shared_ptr<Plan> plan = handle ? *static_cast<std::shared_ptr<Plan>*>(handle)
                                      : std::atomic_load(&g_current);
  return PredictOn(plan, api, lane, how, data, size, timeout_s, counted != 0, false, out,
                   out_size);
}

// The front end's entry points (grpc_frontend.cc's dr_fast_fn) for DeepRec's and TF Serving's
// Predict: the published plan, on the lane the front end's worker serves (-1: the plan's
// policy picks one).
int drf_predict(const char* data, size_t size, double timeout_s, int lane, const char** out,
                size_t* out_size) {
  return PredictOn(std::atomic_load(&g_current), kDeepRec, lane, lane >= 0 ? kDispatched : kAuto,
                   data, size, timeout_s, true, true, out, out_size);
}

int drf_predict_tfs(const char* data, size_t size, double timeout_s, int lane, const char** out,
                    size_t* out_size) {
  std::shared_ptr<Plan> plan = TfsPlanFor(data, size);
  if (!plan) return -1;
  // The front end's workers serve the default model's lanes; another model's plan picks its own.
  if (plan != std::atomic_load(&g_current)) lane = -1;
  return PredictOn(plan, kTfs, lane, lane >= 0 ? kDispatched : kAuto, data, size, timeout_s, true,
                   true, out, out_size);
}

}  // extern "C"
