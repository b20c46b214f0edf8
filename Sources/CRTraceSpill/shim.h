#ifndef RTRACE_CSPILL_SHIM_H
#define RTRACE_CSPILL_SHIM_H
/* Gives back the disk space of a range of a file (Swift's Glibc module does not export fallocate). */
#if defined(__linux__)
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <linux/falloc.h>
/* Punches a hole over [offset, offset + length) keeping the file size: 0 on success, -1 where the file
   system has no holes (the bytes then stay allocated until the file is closed). */
static inline int rtrace_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}
#else
static inline int rtrace_punch_hole(int fd, long long offset, long long length) { (void)fd; (void)offset; (void)length; return -1; }
#endif
#endif
