// C interface of pack_cuda.cu, callable from code compiled without nvcc.
#pragma once
#include <cstdint>

#define HVDCUT_BATCH 64  // tensors per launch; keeps the kernel argument well under 4 KiB

extern "C" {
// dst[i][j] = src[i][j] * scale for every tensor i; returns 0, or -1 on a launch error.
int hvdcut_scaled_copy(const float* const* src, float* const* dst, const int64_t* numel, int count,
                       float scale, void* stream);
// A CUDA event recorded on `stream` (nullptr on failure); query: 1 done, 0 pending, -1 error.
void* hvdcut_event_record(void* stream);
int hvdcut_event_query(void* event);
void hvdcut_event_destroy(void* event);
}
