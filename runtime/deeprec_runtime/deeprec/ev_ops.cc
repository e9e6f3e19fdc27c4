// EmbeddingVariable lookups for stock TensorFlow: a key index laid out for the cache, and one
// fused op that turns ids into rows.
//
// deeprec/rewrite.py serves each DeepRec EV from two pieces of state in the version's session: an
// index (int64 key -> row) and a float [rows, dim] resource variable whose first rows are the
// EV's default rows. With stock ops a lookup is FloorMod (the default row of an unseen id),
// LookupTableFindV2 on a MutableHashTable and ResourceGather: three kernels, and, with a
// million random keys, two cache misses in the hash map (control bytes, then slot) before the
// row's own (figures in docs/performance.md, "DeepRec EmbeddingVariables"). Here:
//
// * DeepRecKeyIndex is a LookupInterface (so LookupTableInsertV2 / FindV2 / SizeV2 /
//   ExportV2 / ImportV2 work on it unchanged) stored as one array of 16-byte slots {key, row}
//   with linear probing at most 3/4 full: a key and its row share a cache line, so a hit costs
//   one miss. Finds over a batch prefetch the slots of the ids a few places ahead, so the misses
//   of one request overlap instead of queueing.
// * DeepRecEVGather(values, index, ids) does find + default row + gather in one kernel: per id
//   its row, or `default_offset + floormod(id, default_rows)` when the index does not hold it
//   (DeepRec's default for unseen ids; default_rows = 1 is the no-permission row), then copies
//   the rows, prefetching them while the next ids are probed.
//
// Concurrency: lookups take the index's and the variable's locks shared; inserts (a delta, under
// the servable's write gate) take the index's exclusively, and the variable's writers
// (ResourceScatterUpdate, AssignVariableOp) take its lock exclusively, so a lookup sees either all
// of a write or none. Request ids are only ever hashed and compared: no id reaches an index
// unchecked, and a row outside the variable is an error (a corrupt table), never a read.
//
// Built as a custom-op library (toolchain.py, with the flags TensorFlow gives custom ops) and
// loaded with tf.load_op_library before a DeepRec graph is imported (deeprec/kernels.py); a
// runtime that cannot build it serves the same graph with the stock ops.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "tensorflow/core/framework/lookup_interface.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/lookup_table_op.h"

namespace deeprec_ev {

using tensorflow::DataType;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;
using Status = absl::Status;

// How many ids ahead a batched find prefetches: enough to keep about as many misses in flight as
// a core can track, few enough that the lines are still in L1 when the probe reaches them.
constexpr int64_t kPrefetchAhead = 12;
// Ids per block of DeepRecEVGather: rows are found (and prefetched) for a block, then copied.
constexpr int64_t kGatherBlock = 64;

inline uint64_t Mix(uint64_t key) {
  // splitmix64's finalizer: sequential keys (ids 0..N) spread over the whole table.
  key ^= key >> 30;
  key *= 0xbf58476d1ce4e5b9ULL;
  key ^= key >> 27;
  key *= 0x94d049bb133111ebULL;
  key ^= key >> 31;
  return key;
}

class KeyIndex : public tensorflow::lookup::LookupInterface {
 public:
  // The slot marker for "empty"; the one key the index refuses.
  static constexpr int64_t kEmpty = std::numeric_limits<int64_t>::min();

  KeyIndex(OpKernelContext*, OpKernel*) {}

  struct Slot {
    int64_t key;
    int64_t row;
  };

  size_t size() const override {
    tensorflow::tf_shared_lock l(mu_);
    return size_;
  }

  Status Find(OpKernelContext*, const Tensor& keys, Tensor* values,
              const Tensor& default_value) override {
    const auto k = keys.flat<int64_t>();
    auto v = values->flat<int64_t>();
    const auto d = default_value.flat<int64_t>();
    const bool per_key = d.size() == k.size();
    const int64_t n = k.size();
    tensorflow::tf_shared_lock l(mu_);
    for (int64_t i = 0; i < n; ++i) {
      if (i + kPrefetchAhead < n) Prefetch(k(i + kPrefetchAhead));
      const int64_t row = Probe(k(i));
      v(i) = row >= 0 ? row : (per_key ? d(i) : d(0));
    }
    return absl::OkStatus();
  }

  Status Insert(OpKernelContext*, const Tensor& keys, const Tensor& values) override {
    const auto k = keys.flat<int64_t>();
    const auto v = values.flat<int64_t>();
    for (int64_t i = 0; i < k.size(); ++i) {
      if (k(i) == kEmpty) return errors::InvalidArgument("key ", kEmpty, " cannot be stored");
      if (v(i) < 0) return errors::InvalidArgument("row ", v(i), " of key ", k(i), " is negative");
    }
    tensorflow::mutex_lock l(mu_);
    Reserve(size_ + k.size());
    for (int64_t i = 0; i < k.size(); ++i) Put(k(i), v(i));
    return absl::OkStatus();
  }

  Status Remove(OpKernelContext*, const Tensor&) override {
    return errors::Unimplemented("DeepRecKeyIndex does not remove keys (EV rows are never "
                                 "evicted while serving)");
  }

  Status ImportValues(OpKernelContext* ctx, const Tensor& keys, const Tensor& values) override {
    {
      tensorflow::mutex_lock l(mu_);
      slots_.clear();
      size_ = 0;
      mask_ = 0;
    }
    return Insert(ctx, keys, values);
  }

  Status ExportValues(OpKernelContext* ctx) override {
    tensorflow::tf_shared_lock l(mu_);
    Tensor* keys = nullptr;
    Tensor* rows = nullptr;
    const int64_t n = static_cast<int64_t>(size_);
    TF_RETURN_IF_ERROR(ctx->allocate_output("keys", TensorShape({n}), &keys));
    TF_RETURN_IF_ERROR(ctx->allocate_output("values", TensorShape({n}), &rows));
    auto k = keys->flat<int64_t>();
    auto r = rows->flat<int64_t>();
    int64_t at = 0;
    for (const Slot& s : slots_) {
      if (s.key == kEmpty) continue;
      k(at) = s.key;
      r(at) = s.row;
      ++at;
    }
    return absl::OkStatus();
  }

  DataType key_dtype() const override { return tensorflow::DT_INT64; }
  DataType value_dtype() const override { return tensorflow::DT_INT64; }
  TensorShape key_shape() const override { return TensorShape(); }
  TensorShape value_shape() const override { return TensorShape(); }

  int64_t MemoryUsed() const override {
    tensorflow::tf_shared_lock l(mu_);
    return static_cast<int64_t>(sizeof(*this) + slots_.capacity() * sizeof(Slot));
  }

  std::string DebugString() const override { return "DeepRecKeyIndex"; }

  // Rows of `ids` (n of them) into `rows`: each id's row, or default_offset +
  // floormod(id, default_rows) when it has none. Caller holds no lock.
  void Rows(const int64_t* ids, int64_t n, int64_t default_offset, int64_t default_rows,
            int64_t* rows) const {
    tensorflow::tf_shared_lock l(mu_);
    for (int64_t i = 0; i < n; ++i) {
      if (i + kPrefetchAhead < n) Prefetch(ids[i + kPrefetchAhead]);
      const int64_t row = Probe(ids[i]);
      if (row >= 0) {
        rows[i] = row;
      } else {
        const int64_t m = ids[i] % default_rows;  // floormod: unseen negative ids too
        rows[i] = default_offset + (m < 0 ? m + default_rows : m);
      }
    }
  }

 private:
  void Prefetch(int64_t key) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[Mix(static_cast<uint64_t>(key)) & mask_]);
  }

  // The key's row, or -1. Linear probing ends at the first empty slot; the table is never full.
  int64_t Probe(int64_t key) const {
    if (slots_.empty() || key == kEmpty) return -1;
    for (uint64_t at = Mix(static_cast<uint64_t>(key)) & mask_;; at = (at + 1) & mask_) {
      const Slot& s = slots_[at];
      if (s.key == key) return s.row;
      if (s.key == kEmpty) return -1;
    }
  }

  void Reserve(size_t keys) {
    size_t want = slots_.empty() ? 16 : slots_.size();
    while (keys > want / 4 * 3) want *= 2;
    if (want == slots_.size()) return;
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(want, Slot{kEmpty, 0});
    mask_ = want - 1;
    size_ = 0;
    for (const Slot& s : old) {
      if (s.key != kEmpty) Put(s.key, s.row);
    }
  }

  void Put(int64_t key, int64_t row) {
    for (uint64_t at = Mix(static_cast<uint64_t>(key)) & mask_;; at = (at + 1) & mask_) {
      Slot& s = slots_[at];
      if (s.key == key) {
        s.row = row;
        return;
      }
      if (s.key == kEmpty) {
        s = Slot{key, row};
        ++size_;
        return;
      }
    }
  }

  mutable tensorflow::mutex mu_;
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
  size_t size_ = 0;
};

REGISTER_OP("DeepRecKeyIndex")
    .Output("table_handle: resource")
    .Attr("container: string = ''")
    .Attr("shared_name: string = ''")
    .Attr("use_node_name_sharing: bool = false")
    .Attr("key_dtype: {int64} = DT_INT64")
    .Attr("value_dtype: {int64} = DT_INT64")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::ScalarShape);

REGISTER_KERNEL_BUILDER(Name("DeepRecKeyIndex").Device(tensorflow::DEVICE_CPU),
                        tensorflow::LookupTableOp<KeyIndex, int64_t, int64_t>);

REGISTER_OP("DeepRecEVGather")
    .Input("values: resource")
    .Input("index: resource")
    .Input("ids: int64")
    .Output("rows: float")
    .Attr("dim: int >= 1")
    .Attr("default_offset: int >= 0")
    .Attr("default_rows: int >= 1")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      int64_t dim = 0;
      TF_RETURN_IF_ERROR(c->GetAttr("dim", &dim));
      tensorflow::shape_inference::ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->input(2), c->Vector(dim), &out));
      c->set_output(0, out);
      return absl::OkStatus();
    });

class EVGatherOp : public OpKernel {
 public:
  explicit EVGatherOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("default_offset", &default_offset_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("default_rows", &default_rows_));
  }

  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<tensorflow::lookup::LookupInterface> table;
    OP_REQUIRES_OK(ctx, tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, 1),
                                                   &table));
    const auto* index = dynamic_cast<const KeyIndex*>(table.get());
    OP_REQUIRES(ctx, index != nullptr,
                errors::InvalidArgument("DeepRecEVGather's index is not a DeepRecKeyIndex"));
    tensorflow::core::RefCountPtr<tensorflow::Var> var;
    OP_REQUIRES_OK(ctx, tensorflow::LookupResource(ctx, tensorflow::HandleFromInput(ctx, 0),
                                                   &var));
    const Tensor& ids = ctx->input(2);
    TensorShape shape = ids.shape();
    OP_REQUIRES_OK(ctx, shape.AddDimWithStatus(dim_));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, shape, &out));
    const int64_t n = ids.NumElements();

    tensorflow::tf_shared_lock var_lock(*var->mu());
    const Tensor* values = var->tensor();
    OP_REQUIRES(ctx, var->is_initialized && values->dtype() == tensorflow::DT_FLOAT &&
                         values->dims() == 2 && values->dim_size(1) == dim_,
                errors::FailedPrecondition("the EV values variable is not a float [rows, ", dim_,
                                           "] matrix"));
    const int64_t held = values->dim_size(0);
    OP_REQUIRES(ctx, default_offset_ + default_rows_ <= held,
                errors::FailedPrecondition("the EV values variable has ", held,
                                           " rows, fewer than its default rows"));
    const float* src = values->flat<float>().data();
    float* dst = out->flat<float>().data();
    const int64_t* id = ids.flat<int64_t>().data();
    const size_t row_bytes = static_cast<size_t>(dim_) * sizeof(float);
    int64_t rows[kGatherBlock];
    for (int64_t b = 0; b < n; b += kGatherBlock) {
      const int64_t m = std::min(kGatherBlock, n - b);
      index->Rows(id + b, m, default_offset_, default_rows_, rows);
      for (int64_t i = 0; i < m; ++i) {
        OP_REQUIRES(ctx, rows[i] >= 0 && rows[i] < held,
                    errors::Internal("EV index maps id ", id[b + i], " to row ", rows[i],
                                     " of ", held));
        __builtin_prefetch(src + rows[i] * dim_);
      }
      for (int64_t i = 0; i < m; ++i) {
        std::memcpy(dst + (b + i) * dim_, src + rows[i] * dim_, row_bytes);
      }
    }
  }

 private:
  int64_t dim_ = 0;
  int64_t default_offset_ = 0;
  int64_t default_rows_ = 1;
};

REGISTER_KERNEL_BUILDER(Name("DeepRecEVGather").Device(tensorflow::DEVICE_CPU), EVGatherOp);

}  // namespace deeprec_ev
