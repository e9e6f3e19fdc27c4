/*
 * deeprec-serving: the DeepRec Processor C API (libserving_processor.so).
 *
 * Drop-in for DeepRec's serving/processor/serving/processor.h: the same four functions with the
 * same signatures and status codes, so a serving framework written for DeepRec's Processor can
 * dlopen() or link this library unchanged. `deeprec-runtime capi-path` prints the library's path,
 * `deeprec-runtime capi-include` this header's folder. Messages are DeepRec's predict.proto
 * (PredictRequest, PredictResponse, ServingModelInfo), byte-compatible.
 *
 * Memory: every *output_data this library returns was allocated with malloc(); the caller frees
 * it with free(), on success (200) and on failure (500) alike. Inputs are never retained.
 * Threads: process(), batch_process() and get_serving_model_info() may be called concurrently
 * from any number of threads on the same model_buf.
 */
#ifndef DEEPREC_SERVING_PROCESSOR_H
#define DEEPREC_SERVING_PROCESSOR_H

#ifdef __cplusplus
extern "C" {
#endif

/* BEGIN-API (the declarations below are also the library's export list) */

/* Loads the model that model_config (the JSON text of a DeepRec model_config, not a path)
 * describes and waits up to init_timeout_minutes for its first version to serve.
 * model_entry is accepted for compatibility and ignored ("" is fine; NULL too).
 * On success *state = 0 and the result is the model_buf handle for the calls below;
 * on failure *state = -1, NULL is returned and the reason is written to stderr. */
void* initialize(const char* model_entry, const char* model_config, int* state);

/* Runs one serialized PredictRequest (input_data, input_size bytes). Returns 200 with a
 * serialized PredictResponse in *output_data, or 500 with a text message
 * ("Processor predict failed: <reason>") in *output_data. input_size == 0 returns 200 with a
 * text description of the model and its signatures, as DeepRec does. */
int process(void* model_buf, const void* input_data, int input_size,
            void** output_data, int* output_size);

/* DeepRec's batch entry point, with DeepRec's own meaning: the array carries no count, so the
 * batch is the one request in input_data[0] (size input_size[0]) whose tensors hold all rows;
 * the result goes to output_data[0] / output_size[0] exactly as process() would return it. */
int batch_process(void* model_buf, const void* input_data[], int* input_size,
                  void* output_data[], int* output_size);

/* Returns 200 with a serialized ServingModelInfo (model_path, serving version, steps, every known
 * version's state, last update error), or 500 with a text message. */
int get_serving_model_info(void* model_buf, void** output_data, int* output_size);

/* END-API */

#ifdef __cplusplus
}
#endif

#endif /* DEEPREC_SERVING_PROCESSOR_H */
