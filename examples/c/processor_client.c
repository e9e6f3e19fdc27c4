/*
 * A C host for libserving_processor.so, written the way a serving framework uses DeepRec's
 * Processor: dlopen() the library, initialize() once with the model_config JSON text, then
 * process() serialized PredictRequests and free() every returned buffer.
 *
 * Build:  gcc -O2 -Wall -I"$(deeprec-runtime capi-include)" processor_client.c -o processor_client -ldl -lpthread
 * Run:    ./processor_client "$(deeprec-runtime capi-path)" model_config.json COMMAND...
 * Commands, run in order:
 *   predict REQUEST.pb [RESPONSE_OUT.pb]  run one request; print status and outputs
 *   raw TEXT | raw @FILE                  send TEXT's (or FILE's) bytes as the request, e.g. a
 *                                         garbage one; a failure does not change the exit code
 *   batch REQUEST.pb                      the same request through batch_process()
 *   info [INFO_OUT.pb]                    print the serving model info
 *   bench REQUEST.pb CALLS THREADS        call process() CALLS times from THREADS threads
 * The program needs no protobuf library: a request is read from a file (written by any protobuf
 * binding), and the few fields printed here are decoded by hand below.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "processor.h"

typedef void* (*initialize_fn)(const char*, const char*, int*);
typedef int (*process_fn)(void*, const void*, int, void**, int*);
typedef int (*info_fn)(void*, void**, int*);
typedef int (*batch_fn)(void*, const void* [], int*, void* [], int*);

static initialize_fn p_initialize;
static process_fn p_process;
static info_fn p_info;

static char* read_file(const char* path, long* size) {
  FILE* f = fopen(path, "rb");
  if (!f) { perror(path); return NULL; }
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* buf = malloc(*size + 1);
  if (buf && fread(buf, 1, *size, f) != (size_t)*size) { free(buf); buf = NULL; }
  if (buf) buf[*size] = '\0';
  fclose(f);
  return buf;
}

static int write_file(const char* path, const void* data, int size) {
  FILE* f = fopen(path, "wb");
  if (!f) { perror(path); return -1; }
  int ok = fwrite(data, 1, size, f) == (size_t)size;
  fclose(f);
  return ok ? 0 : -1;
}

/* --- just enough protobuf wire format to print a response ---------------------------------- */
typedef struct { const uint8_t* p; const uint8_t* end; } reader;

static int read_varint(reader* r, uint64_t* out) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64 && r->p < r->end; shift += 7) {
    uint8_t b = *r->p++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) { *out = v; return 1; }
  }
  return 0;
}

/* Reads one field header and, for length-delimited fields, the sub-range. */
static int next_field(reader* r, int* field, int* wire, reader* sub, uint64_t* scalar) {
  uint64_t tag, len;
  if (r->p >= r->end || !read_varint(r, &tag)) return 0;
  *field = (int)(tag >> 3);
  *wire = (int)(tag & 7);
  switch (*wire) {
    case 0: return read_varint(r, scalar);
    case 1: if (r->end - r->p < 8) return 0; memcpy(scalar, r->p, 8); r->p += 8; return 1;
    case 5: if (r->end - r->p < 4) return 0; *scalar = 0; memcpy(scalar, r->p, 4); r->p += 4; return 1;
    case 2:
      if (!read_varint(r, &len) || (uint64_t)(r->end - r->p) < len) return 0;
      sub->p = r->p; sub->end = r->p + len; r->p += len; return 1;
    default: return 0;
  }
}

static const char* dtype_name(int dtype) {
  switch (dtype) {
    case 1: return "DT_FLOAT"; case 2: return "DT_DOUBLE"; case 3: return "DT_INT32";
    case 7: return "DT_STRING"; case 9: return "DT_INT64"; case 10: return "DT_BOOL";
    default: return "DT_OTHER";
  }
}

/* Prints an ArrayProto: dtype, shape and the first values (float/double/int32/int64). */
static void print_array(reader a) {
  int field, wire, dtype = 0, shown = 0;
  reader sub;
  uint64_t v;
  char shape[128] = "", values[512] = "";
  while (next_field(&a, &field, &wire, &sub, &v)) {
    if (field == 1 && wire == 0) dtype = (int)v;
    if (field == 2 && wire == 2) {
      reader s = sub; int f2, w2; reader dims; uint64_t d;
      while (next_field(&s, &f2, &w2, &dims, &d)) {
        if (f2 != 1) continue;
        if (w2 == 2) { while (dims.p < dims.end && read_varint(&dims, &d))
                         snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%lld,", (long long)d); }
        else snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%lld,", (long long)d);
      }
    }
    if ((field == 3 || field == 4) && wire == 2) {  /* packed float / double */
      size_t width = field == 3 ? 4 : 8;
      for (const uint8_t* p = sub.p; p + width <= sub.end; p += width) {
        double x;
        if (width == 4) { float f; memcpy(&f, p, 4); x = f; } else memcpy(&x, p, 8);
        if (shown++ < 8) snprintf(values + strlen(values), sizeof values - strlen(values), "%.6g ", x);
      }
    }
    if ((field == 5 || field == 7) && wire == 2) {  /* packed int32 / int64 */
      while (sub.p < sub.end && read_varint(&sub, &v))
        if (shown++ < 8) snprintf(values + strlen(values), sizeof values - strlen(values), "%lld ", (long long)v);
    }
  }
  printf("%s shape [%s] values %s%s\n", dtype_name(dtype), shape, values, shown > 8 ? "..." : "");
}

static void print_response(const void* data, int size) {
  reader r = {data, (const uint8_t*)data + size}, entry, value;
  int field, wire;
  uint64_t v;
  while (next_field(&r, &field, &wire, &entry, &v)) {
    if (field != 1 || wire != 2) continue;  /* map<string, ArrayProto> outputs = 1 */
    char key[256] = "";
    int f, w;
    reader e = entry, array = {0, 0};
    while (next_field(&e, &f, &w, &value, &v)) {
      if (f == 1 && w == 2) snprintf(key, sizeof key, "%.*s", (int)(value.end - value.p), value.p);
      if (f == 2 && w == 2) array = value;
    }
    printf("output %s: ", key);
    print_array(array);
  }
}

static void print_info(const void* data, int size) {
  reader r = {data, (const uint8_t*)data + size}, s;
  int field, wire;
  uint64_t v;
  while (next_field(&r, &field, &wire, &s, &v)) {
    if (field == 1 && wire == 2) printf("model_path: %.*s\n", (int)(s.end - s.p), s.p);
    if (field == 2 && wire == 2) printf("version: %.*s\n", (int)(s.end - s.p), s.p);
    if (field == 3 && wire == 0) printf("full_step: %lld\n", (long long)v);
    if (field == 4 && wire == 0) printf("delta_step: %lld\n", (long long)v);
  }
}

/* --- commands ------------------------------------------------------------------------------- */
static int run_once(void* model, const void* req, int size, const char* out_path) {
  void* out = NULL;
  int out_size = 0;
  int status = p_process(model, req, size, &out, &out_size);
  printf("process status %d, %d bytes\n", status, out_size);
  if (status == 200 && size == 0) {
    printf("%.*s", out_size, (const char*)out);  /* an empty request returns a text description */
  } else if (status == 200) {
    print_response(out, out_size);
    if (out_path && write_file(out_path, out, out_size) != 0) status = -1;
  } else {
    printf("message: %.*s\n", out_size, (const char*)out);
  }
  free(out);  /* the library malloc()s every output buffer; the caller frees it */
  return status;
}

typedef struct { void* model; const char* req; int size; int calls; int failures; } bench_job;

static void* bench_worker(void* arg) {
  bench_job* job = arg;
  for (int i = 0; i < job->calls; i++) {
    void* out = NULL;
    int out_size = 0;
    if (p_process(job->model, job->req, job->size, &out, &out_size) != 200) job->failures++;
    free(out);
  }
  return NULL;
}

static int bench(void* model, const char* req, int size, int calls, int threads) {
  pthread_t tid[64];
  bench_job jobs[64];
  if (threads < 1 || threads > 64) threads = 1;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < threads; i++) {
    jobs[i] = (bench_job){model, req, size, calls / threads, 0};
    pthread_create(&tid[i], NULL, bench_worker, &jobs[i]);
  }
  int failures = 0, done = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(tid[i], NULL);
    failures += jobs[i].failures;
    done += jobs[i].calls;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("bench calls %d threads %d failures %d seconds %.3f calls_per_second %.0f us_per_call %.1f\n",
         done, threads, failures, secs, done / secs, secs * 1e6 / done * threads);
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s LIBRARY.so MODEL_CONFIG.json COMMAND...\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
  p_initialize = (initialize_fn)dlsym(lib, "initialize");
  p_process = (process_fn)dlsym(lib, "process");
  p_info = (info_fn)dlsym(lib, "get_serving_model_info");
  if (!p_initialize || !p_process || !p_info) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 1; }
  /* Linking against the header's declarations works too; this line only proves they match. */
  (void)sizeof(&initialize == (initialize_fn)0);

  long config_size;
  char* config = read_file(argv[2], &config_size);
  if (!config) return 1;
  int state = -1;
  void* model = p_initialize("", config, &state);
  free(config);
  printf("initialize state %d\n", state);
  if (state != 0 || model == NULL) return 3;

  int rc = 0;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "predict") && i + 1 < argc) {
      long size;
      char* req = read_file(argv[++i], &size);
      if (!req) return 1;
      const char* out_path = (i + 1 < argc && strstr(argv[i + 1], ".pb")) ? argv[++i] : NULL;
      if (run_once(model, req, (int)size, out_path) != 200) rc = 4;
      free(req);
    } else if (!strcmp(argv[i], "batch") && i + 1 < argc) {
      /* batch_process: DeepRec's signature has no count; the batch is one request (element 0)
         whose tensors carry all the rows. */
      batch_fn p_batch = (batch_fn)dlsym(lib, "batch_process");
      long size;
      char* req = read_file(argv[++i], &size);
      if (!req || !p_batch) return 1;
      const void* inputs[1] = {req};
      int input_sizes[1] = {(int)size};
      void* outputs[1] = {NULL};
      int output_sizes[1] = {0};
      int status = p_batch(model, inputs, input_sizes, outputs, output_sizes);
      printf("batch_process status %d, %d bytes\n", status, output_sizes[0]);
      if (status == 200) print_response(outputs[0], output_sizes[0]); else rc = 7;
      free(outputs[0]);
      free(req);
    } else if (!strcmp(argv[i], "raw") && i + 1 < argc) {
      /* Failures here are expected by the caller: they do not change the exit code. */
      const char* text = argv[++i];
      if (text[0] == '@') {
        long size;
        char* bytes = read_file(text + 1, &size);
        if (!bytes) return 1;
        run_once(model, bytes, (int)size, NULL);
        free(bytes);
      } else {
        run_once(model, text, (int)strlen(text), NULL);
      }
    } else if (!strcmp(argv[i], "info")) {
      void* out = NULL;
      int out_size = 0;
      int status = p_info(model, &out, &out_size);
      printf("info status %d, %d bytes\n", status, out_size);
      if (status == 200) print_info(out, out_size); else rc = 5;
      if (i + 1 < argc && strstr(argv[i + 1], ".pb") && write_file(argv[++i], out, out_size)) rc = 5;
      free(out);
    } else if (!strcmp(argv[i], "bench") && i + 3 < argc) {
      long size;
      char* req = read_file(argv[++i], &size);
      if (!req) return 1;
      int calls = atoi(argv[++i]), threads = atoi(argv[++i]);
      if (bench(model, req, (int)size, calls, threads)) rc = 6;
      free(req);
    } else {
      fprintf(stderr, "unknown or incomplete command: %s\n", argv[i]);
      return 2;
    }
  }
  fflush(stdout);
  return rc;
}
