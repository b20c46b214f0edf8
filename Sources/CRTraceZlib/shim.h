#ifndef RTRACE_CZLIB_SHIM_H
#define RTRACE_CZLIB_SHIM_H
#include <zlib.h>

/* deflateInit2 is a macro, which Swift cannot import (inflating is libdeflate's: CRTraceDeflate). */
static inline int rtrace_deflateInit2(z_streamp s, int level, int windowBits, int memLevel, int strategy) {
    return deflateInit2(s, level, Z_DEFLATED, windowBits, memLevel, strategy);
}
#endif
