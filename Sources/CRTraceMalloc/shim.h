#ifndef RTRACE_CMALLOC_SHIM_H
#define RTRACE_CMALLOC_SHIM_H
/* glibc's allocator settings for the executable (Swift's Glibc module does not export malloc.h). */
#include <limits.h> /* defines __GLIBC__ on glibc */
#if defined(__linux__) && defined(__GLIBC__)
#include <malloc.h>
/* Keeps large blocks in the heap instead of mapping and unmapping each one, in one arena shared by all
   threads (each thread's own arena would keep its own freed blocks: resident memory would grow with the
   number of threads that ever decoded a chunk): 1 on success. */
static inline int rtrace_keep_large_blocks_in_heap(void) {
    return mallopt(M_MMAP_THRESHOLD, 1 << 30) && mallopt(M_TRIM_THRESHOLD, INT_MAX) && mallopt(M_ARENA_MAX, 1);
}
#else
static inline int rtrace_keep_large_blocks_in_heap(void) { return 0; }
#endif
#endif
