#if canImport(Glibc)
import Glibc
#endif
import CRTraceMalloc
import RTraceCLI

// A closed pipe surfaces as an EPIPE write error (reported, or quiet for `| head`) instead of killing us.
signal(SIGPIPE, SIG_IGN)
// Chunk decoding allocates column buffers of a few MiB per chunk. glibc would map and unmap each one
// (page faults and zeroed pages: ~15% of `rtrace check`'s time, bench/README.md); keep them in the heap,
// in one arena (per-thread arenas made `diff`'s resident memory grow with the trace: 156 -> 206 MB for
// 5x the rows; one arena: 118 -> 125 MB, no slower, bench/diff_stats/README.md).
_ = rtrace_keep_large_blocks_in_heap()
RTraceCommand.main()
