#if canImport(Glibc)
import Glibc
#endif
import RTraceCLI

// A closed pipe surfaces as an EPIPE write error (reported, or quiet for `| head`) instead of killing us.
signal(SIGPIPE, SIG_IGN)
RTraceCommand.main()
