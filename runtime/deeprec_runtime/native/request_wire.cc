// Request wire decoding for the fast predict path; see request_wire.h for the contract.

#include "request_wire.h"

#include <cstring>

namespace request_wire {

int ItemSize(int wire) {
  switch (wire) {
    case kFloat: case kInt32: return 4;
    case kDouble: case kInt64: return 8;
    default: return 0;
  }
}

int ValueField(int wire) {
  switch (wire) {
    case kFloat: return 3;
    case kDouble: return 4;
    case kInt32: return 5;
    case kInt64: return 7;
    default: return 0;
  }
}

int TfsValueField(int wire) {
  switch (wire) {
    case kFloat: return 5;
    case kDouble: return 6;
    case kInt32: return 7;
    case kInt64: return 10;
    default: return 0;
  }
}

int ValueFieldOf(Api api, int wire) { return api == kTfs ? TfsValueField(wire) : ValueField(wire); }

bool Reader::Varint(uint64_t* v) {
  uint64_t out = 0;
  // Ten bytes carry 64 bits; the tenth's high bits are dropped, as protobuf's parsers drop them.
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    uint8_t b = *p++;
    out |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = out;
      return true;
    }
  }
  return false;
}

bool Reader::Tag(uint64_t* v) {
  const uint8_t* start = p;
  return Varint(v) && p - start <= 5 && *v <= 0xffffffffu;
}

bool Reader::Bytes(const uint8_t** data, size_t* size) {
  uint64_t n;
  if (!Tag(&n) || n > static_cast<uint64_t>(end - p)) return false;  // upb limits lengths as tags
  *data = p;
  *size = static_cast<size_t>(n);
  p += n;
  return true;
}

namespace {

bool Equals(const uint8_t* data, size_t size, const std::string& s) {
  return size == s.size() && (size == 0 || std::memcmp(data, s.data(), size) == 0);
}

// A request may repeat dims without end (one byte each); past kMaxRank it is declined anyway, so
// no more are kept: parsing never allocates in proportion to the request.
bool AddDim(WireArray* a, uint64_t dim) {
  if (a->dims.size() > static_cast<size_t>(kMaxRank)) return false;
  a->dims.push_back(static_cast<int64_t>(dim));
  return true;
}

// DeepRec's ArrayShape: dims packed (as proto3 writes them) or one per field.
bool ParseShape(const uint8_t* data, size_t size, WireArray* a) {
  Reader r{data, data + size};
  while (r.p < r.end) {
    uint64_t tag;
    if (!r.Tag(&tag)) return false;
    if (tag == ((1 << 3) | 2)) {  // packed dims
      const uint8_t* d;
      size_t n;
      if (!r.Bytes(&d, &n)) return false;
      Reader dr{d, d + n};
      while (dr.p < dr.end) {
        uint64_t v;
        if (!dr.Varint(&v) || !AddDim(a, v)) return false;
      }
    } else if (tag == ((1 << 3) | 0)) {  // one unpacked dim
      uint64_t v;
      if (!r.Varint(&v) || !AddDim(a, v)) return false;
    } else {
      return false;
    }
  }
  return true;
}

// TensorShapeProto: dims with a size and no name; unknown_rank (only ever sent as true) and
// anything else is left to Python.
bool ParseTensorShape(const uint8_t* data, size_t size, WireArray* a) {
  Reader r{data, data + size};
  while (r.p < r.end) {
    uint64_t tag;
    if (!r.Tag(&tag) || tag != ((2 << 3) | 2)) return false;
    const uint8_t* d;
    size_t n;
    if (!r.Bytes(&d, &n)) return false;
    Reader dr{d, d + n};
    uint64_t dim = 0;  // an absent size is 0
    while (dr.p < dr.end) {
      uint64_t dtag;
      if (!dr.Tag(&dtag) || dtag != ((1 << 3) | 0) || !dr.Varint(&dim)) return false;
    }
    if (!AddDim(a, dim)) return false;
  }
  return true;
}

// Whether `field` carries the values of one of the dtypes this path takes, in `api`'s array.
bool IsValueField(Api api, uint64_t field) {
  for (int wire : {kFloat, kDouble, kInt32, kInt64})
    if (static_cast<uint64_t>(ValueFieldOf(api, wire)) == field) return true;
  return false;
}

// One input: DeepRec's ArrayProto (dtype 1, array_shape 2, values 3/4/5/7, tensor_content 100) or
// TF Serving's TensorProto (dtype 1, tensor_shape 2, tensor_content 4, values 5-10; no
// tensor_shape is a scalar). String values, unpacked values, repeated fields and unknown fields
// are left to Python.
bool ParseArray(Api api, const uint8_t* data, size_t size, WireArray* a) {
  const uint64_t content_field = api == kTfs ? 4 : 100;
  a->has_shape = api == kTfs;
  bool shape_seen = false;
  Reader r{data, data + size};
  while (r.p < r.end) {
    uint64_t tag;
    if (!r.Tag(&tag)) return false;
    uint64_t field = tag >> 3, type = tag & 7;
    if (field == 1 && type == 0) {
      if (!r.Varint(&a->dtype)) return false;
    } else if (field == 2 && type == 2 && !shape_seen) {
      const uint8_t* d;
      size_t n;
      if (!r.Bytes(&d, &n) || !(api == kTfs ? ParseTensorShape(d, n, a) : ParseShape(d, n, a)))
        return false;
      shape_seen = a->has_shape = true;
    } else if (field == content_field && type == 2 && !a->has_content) {
      if (!r.Bytes(&a->content, &a->content_size)) return false;
      a->has_content = true;
    } else if (IsValueField(api, field) && type == 2 && a->values == nullptr) {
      if (!r.Bytes(&a->values, &a->values_size)) return false;
      a->values_field = static_cast<int>(field);
    } else {
      return false;
    }
  }
  return true;
}

// google.protobuf.Int64Value: its value (field 1, a varint; absent: 0), each field once.
bool ParseInt64Value(const uint8_t* data, size_t size, int64_t* value) {
  Reader r{data, data + size};
  *value = 0;
  bool seen = false;
  while (r.p < r.end) {
    uint64_t tag, v;
    if (!r.Tag(&tag) || tag != ((1 << 3) | 0) || seen || !r.Varint(&v)) return false;
    *value = static_cast<int64_t>(v);
    seen = true;
  }
  return true;
}

// A TF Serving ModelSpec: this model (an empty name: the default one), this plan's signature,
// and, if it pins a version, this plan's version -- by number or by label, not both (the Python
// path resolves a label first and ignores the number: left to it). Each field once.
bool ParseModelSpec(const RequestSpec& spec, const uint8_t* data, size_t size) {
  Reader r{data, data + size};
  bool number = false, label = false;
  while (r.p < r.end) {
    uint64_t tag;
    const uint8_t* body;
    size_t n;
    if (!r.Tag(&tag)) return false;
    if (tag == ((1 << 3) | 2)) {  // name
      if (!r.Bytes(&body, &n)) return false;
      if (n == 0 ? !spec.tfs_default : !Equals(body, n, spec.tfs_model)) return false;
    } else if (tag == ((2 << 3) | 2) && !number) {  // version, an Int64Value
      int64_t version;
      if (!r.Bytes(&body, &n) || !ParseInt64Value(body, n, &version) ||
          version != spec.tfs_version)
        return false;
      number = true;
    } else if (tag == ((3 << 3) | 2)) {  // signature_name
      if (!r.Bytes(&body, &n)) return false;
      if (n != 0 && !Equals(body, n, spec.signature)) return false;
    } else if (tag == ((4 << 3) | 2) && !label) {  // version_label
      if (!r.Bytes(&body, &n)) return false;
      if (n != 0) {  // an empty label pins nothing (proto3: as if absent)
        if (!Equals(body, n, spec.tfs_label)) return false;
        label = true;
      }
    } else {
      return false;
    }
  }
  return !(number && label);
}

// One `inputs` map entry: key 1, value 2, each once. Marks the input it names as seen and parses
// its value into `out` (an absent value stays empty, which admission declines).
bool ParseEntry(const RequestSpec& spec, Api api, const uint8_t* data, size_t size,
                std::vector<bool>* seen, Decoded* out) {
  Reader e{data, data + size};
  const uint8_t* key = nullptr;
  size_t key_size = 0;
  const uint8_t* value = nullptr;
  size_t value_size = 0;
  while (e.p < e.end) {
    uint64_t tag;
    if (!e.Tag(&tag)) return false;
    if (tag == ((1 << 3) | 2) && key == nullptr) {
      if (!e.Bytes(&key, &key_size)) return false;
    } else if (tag == ((2 << 3) | 2) && value == nullptr) {
      if (!e.Bytes(&value, &value_size)) return false;
    } else {
      return false;
    }
  }
  if (key == nullptr) return false;
  size_t i = 0;
  while (i < spec.inputs.size() && !Equals(key, key_size, spec.inputs[i].alias)) ++i;
  // Tensor names, unknown keys and repeated keys (protobuf keeps the last) are Python's.
  if (i == spec.inputs.size() || (*seen)[i]) return false;
  (*seen)[i] = true;
  return value == nullptr || ParseArray(api, value, value_size, &out->arrays[i]);
}

// The RequestSpec output an output_filter entry names: by alias first, else by tensor name; -1
// when none.
int FindOutput(const RequestSpec& spec, const uint8_t* key, size_t size) {
  for (size_t i = 0; i < spec.outputs.size(); ++i)
    if (Equals(key, size, spec.outputs[i].alias)) return static_cast<int>(i);
  for (size_t i = 0; i < spec.outputs.size(); ++i)
    if (Equals(key, size, spec.outputs[i].tensor)) return static_cast<int>(i);
  return -1;
}

// One output_filter entry, appended to `out`. Unknown and repeated names are left to Python,
// which answers them INVALID_ARGUMENT; so valid filters have at most one entry per alias and one
// per tensor name, and nothing longer is kept.
bool AddFilterKey(const RequestSpec& spec, const uint8_t* key, size_t size, Decoded* out) {
  if (out->filter.size() >= 2 * spec.outputs.size()) return false;
  int output = FindOutput(spec, key, size);
  if (output < 0) return false;
  for (const FilterKey& seen : out->filter)
    if (seen.size == size && (size == 0 || std::memcmp(seen.key, key, size) == 0)) return false;
  out->filter.push_back({key, size, output});
  return true;
}

// The element count and decoded size of one input, checked against its spec and the bytes
// sent, without ever overflowing.
bool AdmitArray(const InputSpec& spec, Api api, WireArray* a) {
  if (a->dtype != static_cast<uint64_t>(spec.wire) || !a->has_shape) return false;
  if (a->has_content == (a->values != nullptr)) return false;  // exactly one way of sending values
  if (a->values != nullptr && a->values_field != ValueFieldOf(api, spec.wire)) return false;
  if (a->dims.size() > static_cast<size_t>(kMaxRank)) return false;
  if (spec.rank >= 0 && a->dims.size() != static_cast<size_t>(spec.rank)) return false;
  int64_t count = 1;
  for (size_t d = 0; d < a->dims.size(); ++d) {
    // Zero-size inputs are rare and left to Python; negative ones are invalid.
    if (a->dims[d] <= 0) return false;
    if (spec.rank >= 0 && spec.dims[d] >= 0 && spec.dims[d] != a->dims[d]) return false;
    if (__builtin_mul_overflow(count, a->dims[d], &count)) return false;
  }
  uint64_t bytes;
  uint64_t item = static_cast<uint64_t>(ItemSize(spec.wire));
  if (__builtin_mul_overflow(static_cast<uint64_t>(count), item, &bytes)) return false;
  // The values must be there before anything is allocated (a request's shape is only a claim):
  // exact bytes for fixed-width values and tensor_content, 1 to 10 bytes per varint.
  uint64_t sent = a->has_content ? a->content_size : a->values_size;
  bool varints = !a->has_content && (spec.wire == kInt32 || spec.wire == kInt64);
  if (varints) {
    uint64_t most;
    if (sent < static_cast<uint64_t>(count)) return false;
    if (!__builtin_mul_overflow(static_cast<uint64_t>(count), uint64_t{10}, &most) && sent > most)
      return false;
  } else if (sent != bytes) {
    return false;
  }
  a->count = count;
  a->bytes = bytes;
  return true;
}

}  // namespace

bool TfsModelName(const uint8_t* data, size_t size, std::string_view* name) {
  *name = std::string_view();
  Reader r{data, data + size};
  while (r.p < r.end) {
    uint64_t tag;
    if (!r.Tag(&tag)) return false;
    const uint8_t* body;
    size_t body_size;
    if ((tag & 7) == 2) {  // length-delimited: model_spec, inputs or output_filter
      if (!r.Bytes(&body, &body_size)) return false;
      if (tag >> 3 != 1) continue;
      Reader spec{body, body + body_size};
      while (spec.p < spec.end) {
        uint64_t spec_tag;
        const uint8_t* field;
        size_t field_size;
        if (!spec.Tag(&spec_tag) || (spec_tag & 7) != 2 || !spec.Bytes(&field, &field_size))
          return false;  // every ModelSpec field is length-delimited
        if (spec_tag >> 3 == 1) *name = std::string_view(reinterpret_cast<const char*>(field),
                                                         field_size);
      }
    } else {
      return false;  // no other wire type is in a request the plans answer
    }
  }
  return true;
}

Verdict DecodeRequest(const RequestSpec& spec, Api api, const uint8_t* data, size_t size,
                      Decoded* out, OverCap* over) {
  if (api == kTfs && !spec.tfs_on) return Verdict::kDeclined;
  *out = Decoded();
  *over = OverCap();
  out->arrays.resize(spec.inputs.size());
  std::vector<bool> seen(spec.inputs.size(), false);
  // The fields of the two PredictRequests: DeepRec's signature_name 1, inputs 2; TF Serving's
  // model_spec 1, inputs 2; output_filter is 3 in both.
  Reader r{data, data + size};
  while (r.p < r.end) {
    uint64_t tag;
    if (!r.Tag(&tag)) return Verdict::kDeclined;
    const uint8_t* body;
    size_t body_size;
    if (tag == ((1 << 3) | 2)) {  // signature_name, or TF Serving's model_spec
      if (!r.Bytes(&body, &body_size)) return Verdict::kDeclined;
      if (api == kTfs) {
        if (!ParseModelSpec(spec, body, body_size)) return Verdict::kDeclined;
      } else if (body_size != 0 && !Equals(body, body_size, spec.signature)) {
        return Verdict::kDeclined;
      }
    } else if (tag == ((2 << 3) | 2)) {  // one inputs map entry
      if (!r.Bytes(&body, &body_size) || !ParseEntry(spec, api, body, body_size, &seen, out))
        return Verdict::kDeclined;
    } else if (tag == ((3 << 3) | 2)) {  // one output_filter entry
      if (!r.Bytes(&body, &body_size) || !AddFilterKey(spec, body, body_size, out))
        return Verdict::kDeclined;
    } else {
      return Verdict::kDeclined;  // unknown fields
    }
  }
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    WireArray& a = out->arrays[i];
    if (!seen[i] || !AdmitArray(spec.inputs[i], api, &a)) return Verdict::kDeclined;
    if (__builtin_add_overflow(out->bytes, a.bytes, &out->bytes)) return Verdict::kDeclined;
    if (out->bytes > spec.max_decoded_bytes && over->input < 0)
      *over = {static_cast<int>(i), a.bytes, out->bytes};
    if (i == 0) out->batch = a.dims.empty() ? -1 : a.dims[0];
    out->rows_shared = out->rows_shared && !a.dims.empty() && a.dims[0] == out->batch;
    out->raw = out->raw || a.has_content;
  }
  if (over->input < 0) return Verdict::kAdmitted;
  // Python refuses it only after parsing the whole message (so every varint must be well formed)
  // and checking each input's element count up to the one over the cap; with a cap of 0 (none)
  // it has no cap to refuse by. Anything short of that is Python's to answer.
  if (spec.max_decoded_bytes == 0) return Verdict::kDeclined;
  for (size_t i = 0; i < spec.inputs.size(); ++i) {
    const WireArray& a = out->arrays[i];
    int wire = spec.inputs[i].wire;
    if (a.has_content || (wire != kInt32 && wire != kInt64)) continue;
    Reader values{a.values, a.values + a.values_size};
    int64_t count = 0;
    uint64_t v;
    while (values.p < values.end && count <= a.count) {
      if (!values.Varint(&v)) return Verdict::kDeclined;  // unterminated: protobuf fails to parse
      ++count;
    }
    if (values.p != values.end || count != a.count) return Verdict::kDeclined;
  }
  return Verdict::kOverCap;
}

bool FillValues(const WireArray& a, int wire, char* dst, size_t dst_size) {
  if (dst_size != a.bytes) return false;
  if (a.has_content) {
    if (a.content_size != dst_size) return false;
    if (dst_size != 0) std::memcpy(dst, a.content, dst_size);
    return true;
  }
  if (wire == kFloat || wire == kDouble) {
    if (a.values_size != dst_size) return false;
    if (dst_size != 0) std::memcpy(dst, a.values, dst_size);
    return true;
  }
  Reader r{a.values, a.values + a.values_size};
  for (int64_t i = 0; i < a.count; ++i, dst += ItemSize(wire)) {
    uint64_t v;
    if (!r.Varint(&v)) return false;
    // Truncation to int32 is protobuf's reading of an int32 varint (negatives are sign-extended).
    if (wire == kInt64) {
      int64_t x = static_cast<int64_t>(v);
      std::memcpy(dst, &x, sizeof x);
    } else {
      int32_t x = static_cast<int32_t>(v);
      std::memcpy(dst, &x, sizeof x);
    }
  }
  return r.p == r.end;  // exactly `count` values
}

int64_t BatchLimits::PaddedSize(int64_t rows) const {
  for (int64_t size : allowed)
    if (size >= rows) return size;
  return rows;
}

bool BatchLimits::Admits(int64_t rows, uint64_t bytes) const {
  return rows > 0 && rows <= max_batch_size && bytes <= max_batch_bytes;
}

bool BatchLimits::Fits(int64_t batch_rows, uint64_t batch_bytes, int64_t rows,
                       uint64_t bytes) const {
  int64_t total_rows;
  uint64_t total_bytes;
  return !__builtin_add_overflow(batch_rows, rows, &total_rows) && total_rows <= max_batch_size &&
         !__builtin_add_overflow(batch_bytes, bytes, &total_bytes) &&
         total_bytes <= max_batch_bytes;
}

bool BatchLimits::MayPad(int64_t rows, uint64_t bytes) const {
  if (rows <= 0 || bytes % static_cast<uint64_t>(rows) != 0) return false;
  uint64_t padded;
  return !__builtin_mul_overflow(static_cast<uint64_t>(PaddedSize(rows)),
                                 bytes / static_cast<uint64_t>(rows), &padded) &&
         padded <= max_batch_bytes;
}

}  // namespace request_wire
