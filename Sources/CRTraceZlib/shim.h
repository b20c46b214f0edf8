#ifndef RTRACE_CZLIB_SHIM_H
#define RTRACE_CZLIB_SHIM_H
#include <zlib.h>

/* deflateInit2 and inflateInit2 are macros, which Swift cannot import. Whole-buffer inflating (the
   trace's columns) is libdeflate's (CRTraceDeflate); zlib's streaming inflate reads npz members. */
static inline int rtrace_deflateInit2(z_streamp s, int level, int windowBits, int memLevel, int strategy) {
    return deflateInit2(s, level, Z_DEFLATED, windowBits, memLevel, strategy);
}
static inline int rtrace_inflateInit2(z_streamp s, int windowBits) {
    return inflateInit2(s, windowBits);
}
#endif
