#ifndef RTRACE_CDEFLATE_SHIM_H
#define RTRACE_CDEFLATE_SHIM_H
/* libdeflate: whole-buffer raw-deflate decompression and CRC-32, 1.3-2x faster than zlib's on
   rtrace's columns (bench/README.md). rtrace still deflates with zlib, whose Huffman-only mode
   libdeflate lacks. */
#include <libdeflate.h>
#endif
