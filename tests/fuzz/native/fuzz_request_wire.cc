// libFuzzer target: bytes -> a DeepRec (FUZZ_API=0) or TF Serving (FUZZ_API=1) PredictRequest ->
// request_wire's parser and admission checks (runtime/deeprec_runtime/native/request_wire.h),
// against plans with fixed, unknown (including [-1, -1]) and unknown-rank inputs of every dtype
// the fast path carries and outputs an output_filter may name, and then the batcher's byte
// arithmetic; and the scan that routes a TF Serving request to its model's plan.
//
// Each input is used twice: as the request's bytes, and as choices for a request assembled by a
// small grammar (BuildRequest). Random bytes rarely keep every nested length prefix right, so
// the first way mostly exercises the parser; the second reaches the admission arithmetic with
// well-framed messages whose dims, dtypes, value fields and lengths come from the edges of that
// arithmetic (the overflow of issue 17 needs two large dims and a value field of just the
// wrapped length).
//
// Built with -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
// (tests/fuzz/test_native_fuzz.py): a memory error, an overflow or any undefined behaviour is a
// crash, and so is an admitted request that breaks the contract fast_predict.cc relies on before
// it allocates (Check below): a shape TensorShape could not hold, a size not backed by the bytes
// sent, decoded bytes past the plan's cap, or an output_filter entry that is not a known output
// named once (or past the bound on entries); and so is a request refused over the cap that
// Python would not refuse with the same figures.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "request_wire.h"

#ifndef FUZZ_API
#define FUZZ_API 0
#endif

namespace {

using namespace request_wire;

constexpr Api kApi = FUZZ_API == 0 ? kDeepRec : kTfs;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "contract broken: %s\n", what);
    std::abort();
  }
}

InputSpec Input(const char* alias, int wire, std::vector<int64_t> dims, int rank = -2) {
  InputSpec s;
  s.alias = alias;
  s.wire = wire;
  s.rank = rank == -2 ? static_cast<int>(dims.size()) : rank;
  s.dims = std::move(dims);
  return s;
}

RequestSpec Plan(std::vector<InputSpec> inputs, uint64_t max_decoded_bytes,
                 std::vector<OutputName> outputs = {}) {
  RequestSpec spec;
  spec.outputs = std::move(outputs);
  spec.signature = "serving_default";
  spec.tfs_on = true;
  spec.tfs_model = "default";
  spec.tfs_default = true;
  spec.tfs_version = 1;
  spec.tfs_label = "checkpoint_1";
  spec.max_decoded_bytes = max_decoded_bytes;
  for (size_t i = 0; i < inputs.size(); ++i) inputs[i].feed = static_cast<int>(i);
  spec.inputs = std::move(inputs);
  return spec;
}

const std::vector<RequestSpec>& Plans() {
  static const std::vector<RequestSpec> plans = {
      // The overflow reproducer's shape: history / sequence features, two unknown dims.
      Plan({Input("history", kInt64, {-1, -1})}, 1 << 20,
           {{"rows", "rows:0"}, {"score", "score:0"}}),
      // Fixed trailing dims, a tiny cap on decoded bytes.
      // An alias equal to another output's tensor name (the alias wins), two aliases of one
      // tensor.
      Plan({Input("dense", kFloat, {-1, 4}), Input("ids", kInt32, {-1})}, 256,
           {{"p", "y:0"}, {"q", "y:0"}, {"y:0", "z:0"}}),
      // Unknown rank, no cap to speak of (the sum of sizes must still never overflow).
      Plan({Input("x", kDouble, {}, -1)}, std::numeric_limits<uint64_t>::max()),
      // Everything at once: the batching-relevant case of several inputs sharing rows.
      Plan({Input("history", kInt64, {-1, -1}), Input("weights", kFloat, {-1, -1}),
            Input("x", kDouble, {-1}), Input("n", kInt32, {})},
           1 << 16, {{"y", "y:0"}}),
  };
  return plans;
}

bool Within(const uint8_t* p, size_t n, const uint8_t* data, size_t size) {
  return n == 0 || (p >= data && n <= size && p - data <= static_cast<ptrdiff_t>(size - n));
}

// What fast_predict.cc relies on before it builds a tensor of an admitted input.
void CheckInput(const InputSpec& spec, const WireArray& a, const uint8_t* data, size_t size) {
  Check(a.dims.size() <= static_cast<size_t>(kMaxRank), "rank within kMaxRank");
  Check(spec.rank < 0 || a.dims.size() == static_cast<size_t>(spec.rank), "rank of the spec");
  __int128 count = 1;
  for (size_t d = 0; d < a.dims.size(); ++d) {
    Check(a.dims[d] >= 1, "positive dims");
    Check(spec.rank < 0 || spec.dims[d] < 0 || spec.dims[d] == a.dims[d], "fixed dims kept");
    count *= a.dims[d];
    Check(count <= std::numeric_limits<int64_t>::max(), "element count fits int64");
  }
  Check(count == a.count, "count is the product of the dims");
  Check(static_cast<__int128>(a.bytes) == count * ItemSize(spec.wire), "bytes = count x item");
  if (a.has_content) {
    Check(a.values == nullptr && a.content_size == a.bytes, "tensor_content is exactly the bytes");
    Check(Within(a.content, a.content_size, data, size), "tensor_content inside the request");
  } else {
    Check(a.values != nullptr && Within(a.values, a.values_size, data, size),
          "values inside the request");
    bool varints = spec.wire == kInt32 || spec.wire == kInt64;
    Check(varints ? static_cast<uint64_t>(a.count) <= a.values_size : a.values_size == a.bytes,
          "values back the count");
  }
}

// What fast_predict.cc relies on when it answers an output_filter: each entry a known output,
// found as the Python path finds it (alias first), named once, inside the request.
void CheckFilter(const RequestSpec& spec, const Decoded& d, const uint8_t* data, size_t size) {
  Check(d.filter.size() <= 2 * spec.outputs.size(), "at most one entry per alias and tensor name");
  for (size_t i = 0; i < d.filter.size(); ++i) {
    const FilterKey& k = d.filter[i];
    Check(Within(k.key, k.size, data, size), "the key inside the request");
    Check(k.output >= 0 && static_cast<size_t>(k.output) < spec.outputs.size(), "a known output");
    std::string key(reinterpret_cast<const char*>(k.key), k.size);
    int alias = -1;
    for (size_t o = 0; o < spec.outputs.size() && alias < 0; ++o)
      if (spec.outputs[o].alias == key) alias = static_cast<int>(o);
    const OutputName& named = spec.outputs[static_cast<size_t>(k.output)];
    Check(alias >= 0 ? k.output == alias : named.tensor == key, "alias first, else tensor name");
    for (size_t j = 0; j < i; ++j) {
      const FilterKey& other = d.filter[j];
      Check(std::string(reinterpret_cast<const char*>(other.key), other.size) != key,
            "each name once");
    }
  }
}

void CheckBatching(const Decoded& d) {
  if (!d.rows_shared || d.batch <= 0) return;
  Check(d.bytes % static_cast<uint64_t>(d.batch) == 0, "rows of one request are the same size");
  uint64_t row_bytes = d.bytes / static_cast<uint64_t>(d.batch);
  const BatchLimits limits[] = {
      {64, 1 << 20, {8, 32, 64}},
      {1 << 30, 1 << 12, {1 << 30}},
      {std::numeric_limits<int64_t>::max(), std::numeric_limits<uint64_t>::max(),
       {std::numeric_limits<int64_t>::max()}},
  };
  for (const BatchLimits& l : limits) {
    if (!l.Admits(d.batch, d.bytes)) continue;
    Check(d.bytes <= l.max_batch_bytes, "an admitted request fits the byte cap");
    // Two such requests in one batch, then the padding decision.
    if (!l.Fits(d.batch, d.bytes, d.batch, d.bytes)) continue;
    int64_t rows = 2 * d.batch;
    uint64_t bytes = 2 * d.bytes;
    Check(bytes <= l.max_batch_bytes && rows <= l.max_batch_size, "a joined batch fits");
    if (l.MayPad(rows, bytes)) {
      __int128 padded = static_cast<__int128>(l.PaddedSize(rows)) * row_bytes;
      Check(padded <= static_cast<__int128>(l.max_batch_bytes), "padding within the byte cap");
    }
  }
}

// --- the request grammar -----------------------------------------------------------------------
void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void PutTag(std::string* out, uint64_t field, int type) { PutVarint(out, field << 3 | type); }

void PutBytes(std::string* out, uint64_t field, const std::string& body) {
  PutTag(out, field, 2);
  PutVarint(out, body.size());
  out->append(body);
}

uint64_t Number(FuzzedDataProvider& in) {
  static const uint64_t kEdges[] = {0, 1, 2, 3, 4, 7, 64, 65, 255, 1ull << 16, 1ull << 20,
                                    1ull << 24, 1ull << 31, 1ull << 32, 1ull << 40, 1ull << 62,
                                    1ull << 63, (1ull << 63) - 1, ~0ull, ~0ull << 31};
  if (in.ConsumeBool()) return in.PickValueInArray(kEdges);
  return in.ConsumeIntegral<uint64_t>();
}

// Wire dtypes: the four carried, others, nonsense.
uint64_t Dtype(FuzzedDataProvider& in) {
  static const uint64_t kDtypes[] = {kFloat, kDouble, kInt32, kInt64, 0, 7, 10,
                                     1ull << 32 | kFloat};
  return in.ConsumeBool() ? in.PickValueInArray(kDtypes) : in.ConsumeIntegral<uint8_t>();
}

// A varint, sometimes in more bytes than it needs (10 is still valid protobuf, 11 is not).
void PutPaddedVarint(FuzzedDataProvider& in, std::string* out, uint64_t v) {
  if (!in.ConsumeBool()) return PutVarint(out, v);
  int length = in.ConsumeIntegralInRange(1, 11);
  for (int i = 1; i < length; ++i, v >>= 7) out->push_back(static_cast<char>((v & 0x7f) | 0x80));
  out->push_back(static_cast<char>(v & 0x7f));
}

// The values of an array: `count` elements of `item` bytes as the naive arithmetic (wrapping)
// would size them, give or take a few bytes, or none, or anything.
std::string Values(FuzzedDataProvider& in, uint64_t count, uint64_t item, bool varints) {
  uint64_t length = 0;
  switch (in.ConsumeIntegralInRange(0, 3)) {
    case 0: length = varints ? count : count * item; break;
    case 1: length = (varints ? count : count * item) + in.ConsumeIntegralInRange(-3, 3); break;
    case 2: length = 0; break;
    default: length = in.ConsumeIntegralInRange(0, 300);
  }
  if (length > (1u << 16)) length = in.ConsumeIntegralInRange(0, 16);
  std::string body(length, varints ? '\x01' : '\0');
  if (in.ConsumeBool()) {
    std::string noise = in.ConsumeBytesAsString(in.ConsumeIntegralInRange(0, 16));
    body.replace(0, std::min(noise.size(), body.size()), noise);
  }
  return body;
}

// One ArrayProto (DeepRec) or TensorProto (TF Serving).
std::string Array(FuzzedDataProvider& in, Api api) {
  std::string out;
  uint64_t dtype = kInt64, count = 1;
  int parts = in.ConsumeIntegralInRange(0, 6);
  for (int part = 0; part < parts; ++part) {
    switch (in.ConsumeIntegralInRange(0, 4)) {
      case 0:  // dtype
        dtype = Dtype(in);
        PutTag(&out, 1, 0);
        PutPaddedVarint(in, &out, dtype);
        break;
      case 1: {  // shape
        std::string shape, packed;
        int rank = in.ConsumeBool() ? in.ConsumeIntegralInRange(0, 3)
                                    : in.ConsumeIntegralInRange(0, 300);
        count = 1;
        for (int d = 0; d < rank; ++d) {
          uint64_t dim = Number(in);
          count *= dim;  // wrapping, as the arithmetic under test must not
          if (api == kTfs) {
            std::string entry;
            PutTag(&entry, 1, 0);
            PutPaddedVarint(in, &entry, dim);
            if (in.ConsumeProbability<float>() < 0.02f) PutBytes(&entry, 2, "n");  // a name
            PutBytes(&shape, 2, entry);
          } else if (in.ConsumeProbability<float>() < 0.1f) {
            PutTag(&shape, 1, 0);  // unpacked
            PutPaddedVarint(in, &shape, dim);
          } else {
            PutPaddedVarint(in, &packed, dim);
          }
        }
        if (!packed.empty()) PutBytes(&shape, 1, packed);
        if (api == kTfs && in.ConsumeProbability<float>() < 0.05f) {
          PutTag(&shape, 3, 0);  // unknown_rank
          PutVarint(&shape, 1);
        }
        PutBytes(&out, 2, shape);
        break;
      }
      case 2: {  // values in tensor_content or in a value field (right, wrong, or any)
        int wire = static_cast<int>(dtype);
        uint64_t field = api == kTfs ? 4 : 100;
        bool varints = false;
        int which = in.ConsumeIntegralInRange(0, 2);
        if (which == 1 && ValueFieldOf(api, wire) != 0) {
          field = static_cast<uint64_t>(ValueFieldOf(api, wire));
          varints = wire == kInt32 || wire == kInt64;
        } else if (which == 2) {
          field = in.ConsumeIntegralInRange(3, 12);
        }
        int item = ItemSize(wire) ? ItemSize(wire) : 4;
        PutBytes(&out, field, Values(in, count, static_cast<uint64_t>(item), varints));
        break;
      }
      case 3: {  // a known field with the wrong wire type, or an unknown one
        PutTag(&out, in.ConsumeIntegralInRange(1, 101), in.ConsumeIntegralInRange(0, 5));
        out += in.ConsumeBytesAsString(in.ConsumeIntegralInRange(0, 9));
        break;
      }
      default:  // unpacked values (valid protobuf for a packed field)
        PutTag(&out, static_cast<uint64_t>(ValueFieldOf(api, static_cast<int>(dtype))), 0);
        PutVarint(&out, Number(in));
    }
  }
  return out;
}

std::string BuildRequest(FuzzedDataProvider& in, Api api) {
  static const char* const kKeys[] = {"history", "weights", "x", "n", "dense", "ids", "", "h"};
  std::string out;
  int fields = in.ConsumeIntegralInRange(0, 6);
  for (int f = 0; f < fields && in.remaining_bytes() > 0; ++f) {
    switch (in.ConsumeIntegralInRange(0, 3)) {
      case 0: {  // one inputs map entry (the same key may come again)
        std::string entry;
        PutBytes(&entry, 1, in.PickValueInArray(kKeys));
        if (in.ConsumeProbability<float>() > 0.05f) PutBytes(&entry, 2, Array(in, api));
        PutBytes(&out, 2, entry);
        break;
      }
      case 1: {  // signature_name, or a TF Serving model_spec
        std::string spec;
        if (api == kTfs) {
          if (in.ConsumeBool()) PutBytes(&spec, 1, in.ConsumeBool() ? "default" : "other");
          if (in.ConsumeBool()) PutBytes(&spec, 3, "serving_default");
          if (in.ConsumeProbability<float>() < 0.2f)  // version 1 or 2 (or an empty one: 0)
            PutBytes(&spec, 2, in.ConsumeBool() ? "\x08\x01" : in.ConsumeBool() ? "\x08\x02" : "");
          if (in.ConsumeProbability<float>() < 0.2f)  // version_label
            PutBytes(&spec, 4, in.ConsumeBool() ? "checkpoint_1" : in.ConsumeBool() ? "" : "other");
        } else {
          spec = in.ConsumeBool() ? "serving_default" : in.ConsumeRandomLengthString(16);
        }
        PutBytes(&out, 1, spec);
        break;
      }
      case 2: {  // output_filter entries: names of the plans' outputs, near misses, repeats
        static const char* const kNames[] = {"y",      "y:0", "rows", "rows:0", "score:0",
                                             "score",  "p",   "q",    "z:0",    "",
                                             "score:1", "Y"};
        int entries = in.ConsumeIntegralInRange(1, 8);
        for (int e = 0; e < entries; ++e)
          PutBytes(&out, 3, in.ConsumeBool() ? std::string(in.PickValueInArray(kNames))
                                             : in.ConsumeRandomLengthString(8));
        break;
      }
      default:  // anything
        out += in.ConsumeRandomLengthString(12);
    }
  }
  return out;
}

// What fast_predict.cc relies on when it refuses a request over the cap with the Python path's
// figures: every input admitted and, for varints, exactly its count of well-formed values; the
// named input is the first whose bytes bring the running total (in spec order) over the cap.
void CheckOverCap(const RequestSpec& spec, const Decoded& d, const OverCap& over,
                  const uint8_t* data, size_t size) {
  Check(spec.max_decoded_bytes > 0, "refused by a cap only when there is one");
  Check(over.input >= 0 && static_cast<size_t>(over.input) < spec.inputs.size(), "a known input");
  Check(d.arrays.size() == spec.inputs.size(), "one array per input");
  unsigned __int128 total = 0;
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    const WireArray& a = d.arrays[i];
    CheckInput(spec.inputs[i], a, data, size);
    if (!a.has_content && (spec.inputs[i].wire == kInt32 || spec.inputs[i].wire == kInt64)) {
      std::vector<char> buffer(a.bytes);  // bounded: 8 bytes per varint byte sent
      Check(FillValues(a, spec.inputs[i].wire, buffer.data(), buffer.size()),
            "varints are exactly the count");
    }
    total += a.bytes;
    if (i + 1 == static_cast<size_t>(over.input))
      Check(total <= spec.max_decoded_bytes, "inputs before the named one fit the cap");
    if (i == static_cast<size_t>(over.input)) {
      Check(over.input_bytes == a.bytes, "the named input's bytes");
      Check(total == over.total && over.total > spec.max_decoded_bytes, "the total over the cap");
    }
  }
}

void Decode(const uint8_t* data, size_t size) {
  std::string_view model;
  if (TfsModelName(data, size, &model))
    Check(model.empty() || Within(reinterpret_cast<const uint8_t*>(model.data()), model.size(),
                                  data, size),
          "the model name inside the request");
  for (const RequestSpec& spec : Plans()) {
    Decoded d;
    OverCap over;
    Verdict verdict = DecodeRequest(spec, kApi, data, size, &d, &over);
    if (verdict == Verdict::kOverCap) CheckOverCap(spec, d, over, data, size);
    if (verdict != Verdict::kAdmitted) continue;
    Check(d.arrays.size() == spec.inputs.size(), "one array per input");
    unsigned __int128 total = 0;
    for (size_t i = 0; i < spec.inputs.size(); ++i) {
      const WireArray& a = d.arrays[i];
      CheckInput(spec.inputs[i], a, data, size);
      total += a.bytes;
      // The buffer fast_predict.cc would allocate: bounded by the cap and by the bytes sent.
      Check(a.bytes <= 8 * static_cast<uint64_t>(size), "decoded size bounded by the request");
      std::vector<char> buffer(a.bytes);
      FillValues(a, spec.inputs[i].wire, buffer.data(), buffer.size());
    }
    Check(total == d.bytes && d.bytes <= spec.max_decoded_bytes, "decoded bytes within the cap");
    CheckFilter(spec, d, data, size);
    CheckBatching(d);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Decode(data, size);
  FuzzedDataProvider in(data, size);
  std::string built = BuildRequest(in, kApi);
  Decode(reinterpret_cast<const uint8_t*>(built.data()), built.size());
  return 0;
}
