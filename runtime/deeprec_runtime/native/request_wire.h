// Request wire decoding for the fast predict path (fast_predict.cc): everything that turns the
// bytes of a DeepRec or TF Serving PredictRequest into a checked description of the tensors to
// build -- dtype, dims, element count, decoded size and where the values lie in the request --
// and the batcher's row and byte arithmetic.
//
// Nothing here knows TensorFlow, so all of the code that request bytes reach before a tensor is
// allocated compiles on its own and is fuzzed with sanitizers (tests/fuzz/native/). Example: a
// DeepRec request {inputs: {"ids": {dtype: DT_INT64, array_shape: [2^40, 2^40],
// tensor_content: ""}}} against an input of shape [-1, -1] is declined here (its element count
// overflows), instead of reaching TensorShape::AddDim's CHECK.
//
// The contract with fast_predict.cc: an admitted request's every input has at most kMaxRank
// dims, each in [1, 2^63), a product that fits int64, and decoded bytes (count x item size) that
// fit the request's cap and are backed by the bytes actually sent -- exactly count x item size for
// fixed-width values and tensor_content, at least one byte per value for varints -- so sizes are
// known to be sane before anything is allocated. Anything else is "not handled": the Python path
// answers, with its own codes and messages.

#ifndef DEEPREC_RUNTIME_NATIVE_REQUEST_WIRE_H_
#define DEEPREC_RUNTIME_NATIVE_REQUEST_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace request_wire {

// ArrayDataType codes of the wire types this path carries (proto/deeprec/serving/predict.proto);
// they equal TensorFlow's DataType numbers.
constexpr int kFloat = 1, kDouble = 2, kInt32 = 3, kInt64 = 9;

// The most dims an admitted input may have: numpy's limit (NPY_MAXDIMS), which the Python path
// cannot exceed, so a longer shape is left to it; below TensorShape::MaxDimensions() (254),
// which fast_predict.cc checks at compile time.
constexpr int kMaxRank = 64;

// The two request formats a plan answers: DeepRec's PredictRequest (ArrayProto values) and TF
// Serving's (TensorProto values, a model_spec instead of a signature_name).
enum Api { kDeepRec = 0, kTfs = 1, kNumApis = 2 };

int ItemSize(int wire);
// The ArrayProto field that carries values of a wire dtype.
int ValueField(int wire);
// The TensorProto field (tensorflow/core/framework/tensor.proto) that carries values of a dtype.
int TfsValueField(int wire);
int ValueFieldOf(Api api, int wire);

// Protobuf wire format reader (proto3: packed repeated scalars), as strict as the Python path's
// parser (upb), so that nothing it refuses is answered here: values are varints of at most 10
// bytes; tags and lengths at most 5 bytes and 32 bits; lengths within the data.
struct Reader {
  const uint8_t* p;
  const uint8_t* end;
  bool Varint(uint64_t* v);
  bool Tag(uint64_t* v);
  bool Bytes(const uint8_t** data, size_t* size);
};

// One input the plan takes.
struct InputSpec {
  std::string alias;
  int wire = 0;
  int rank = -1;               // -1: unknown rank
  std::vector<int64_t> dims;   // -1: unknown dimension
  int feed = 0;                // position in the callable's feeds
};

// One output of the signature, as an output_filter entry may name it: by alias ("probability")
// or by tensor name ("prob:0"); an alias wins over a tensor name equal to it, as in the Python
// path (model/signature.py).
struct OutputName {
  std::string alias;
  std::string tensor;
};

// What a plan admits: its signature, its inputs in signature order, its outputs (what an
// output_filter may name), the model TF Serving requests may name (when tfs_on), and the most
// bytes one request's inputs may decode to.
struct RequestSpec {
  std::string signature;
  std::vector<InputSpec> inputs;
  std::vector<OutputName> outputs;
  bool tfs_on = false;
  std::string tfs_model;
  bool tfs_default = false;  // tfs_model is the runtime's default model: an empty name means it
  // The version the plan serves, as a model_spec may pin it: its number (`version`) and its
  // label (`version_label`, the version's name). A request pinning another is declined.
  int64_t tfs_version = 0;
  std::string tfs_label;
  uint64_t max_decoded_bytes = 0;
};

// One input as sent: pointers into the request's bytes, which must outlive it.
struct WireArray {
  uint64_t dtype = 0;
  bool has_shape = false;
  std::vector<int64_t> dims;         // at most kMaxRank + 1 kept (more is declined)
  const uint8_t* values = nullptr;   // packed values of the dtype's field
  size_t values_size = 0;
  int values_field = 0;
  const uint8_t* content = nullptr;  // tensor_content
  size_t content_size = 0;
  bool has_content = false;
  // Set by admission.
  int64_t count = 0;   // elements
  uint64_t bytes = 0;  // decoded size: count x item size
};

// One output_filter entry: its bytes in the request (the answer's key) and the RequestSpec output
// it names.
struct FilterKey {
  const uint8_t* key = nullptr;
  size_t size = 0;
  int output = 0;
};

// A request the plan admitted.
struct Decoded {
  std::vector<WireArray> arrays;  // one per RequestSpec input, in its order
  // The output_filter, in request order; empty: every output. Each entry names a known output and
  // no entry comes twice (anything else is Python's to answer: an unknown name is
  // INVALID_ARGUMENT naming it, a repeated one too), so there are at most 2 x outputs.
  std::vector<FilterKey> filter;
  bool raw = false;               // some input came as tensor_content (answers use it too)
  int64_t batch = -1;             // the first input's leading dimension (-1: a scalar)
  bool rows_shared = true;        // every input has that leading dimension (batching needs it)
  uint64_t bytes = 0;             // decoded bytes of all inputs
};

// The one refusal the fast path writes itself (everything else is Python's to answer): a request
// valid in every respect but the cap on decoded bytes. Python would parse it first, which costs up
// to 8 bytes per one-byte varint (512 MiB for a 64 MiB message); here it costs nothing. The
// figures are those the Python path's DecodeBudget names (runtime/deeprec_runtime/codec.py), which
// charges the inputs in the order of their keys, as `spec.inputs` is sorted: the first input
// whose bytes bring the running total over the cap, its bytes and that total.
struct OverCap {
  int input = -1;
  uint64_t input_bytes = 0;
  uint64_t total = 0;
};

enum class Verdict {
  kDeclined,  // not handled: the Python path answers
  kAdmitted,  // `out` describes the request
  kOverCap,   // valid but over the cap on decoded bytes (a nonzero cap): `over` says by what
};

// Parses a PredictRequest of `api` and checks it against `spec`. kOverCap only when every input
// is admitted and its varints (if any) number exactly its element count: then nothing but the cap
// stands in the way, and Python would refuse it with the same figures.
Verdict DecodeRequest(const RequestSpec& spec, Api api, const uint8_t* data, size_t size,
                      Decoded* out, OverCap* over);

// The model a TF Serving PredictRequest names: model_spec.name as protobuf would parse it (the
// last name wins, across repeated model_specs too; empty when none). The view points into
// `data`. False when the request's top level or its model_specs are not well framed.
bool TfsModelName(const uint8_t* data, size_t size, std::string_view* name);

// Writes the values of an admitted input (its dtype `wire`) to `dst`, which holds exactly
// `a.bytes`. False when the varints do not decode to exactly `a.count` values.
bool FillValues(const WireArray& a, int wire, char* dst, size_t dst_size);

// The batcher's limits: merged batches of at most max_batch_size rows and max_batch_bytes feed
// bytes (padding included), padded up to the next of `allowed` (ascending).
struct BatchLimits {
  int64_t max_batch_size = 0;
  uint64_t max_batch_bytes = 0;
  std::vector<int64_t> allowed;

  int64_t PaddedSize(int64_t rows) const;
  // Whether a request of `rows` rows and `bytes` feed bytes may be batched at all.
  bool Admits(int64_t rows, uint64_t bytes) const;
  // Whether it may join an open batch of `batch_rows` rows and `batch_bytes` bytes.
  bool Fits(int64_t batch_rows, uint64_t batch_bytes, int64_t rows, uint64_t bytes) const;
  // Whether a closed batch of `rows` rows and `bytes` bytes (all rows the same size) may run
  // merged and padded; false: its requests run one by one, so padding never multiplies a
  // request's size past the cap.
  bool MayPad(int64_t rows, uint64_t bytes) const;
};

}  // namespace request_wire

#endif  // DEEPREC_RUNTIME_NATIVE_REQUEST_WIRE_H_
