#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Positioned reads and writes of whole buffers: the loops every file of rtrace needs around `pread`
/// and `pwrite` (short transfers continued, interrupted calls retried), with the error left to the
/// caller, who knows what to call the file.
public enum PositionedIO {
    /// Reads into `buffer` at `offset` until it is full or the file ends. Returns the bytes read, and
    /// `errno` of a failed call (0 when none failed; `count` then says how far it got).
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) -> (count: Int, error: Int32) {
        guard let base = buffer.baseAddress else { return (0, 0) }
        var got = 0
        while got < buffer.count {
            let n = pread(fd, base + got, buffer.count - got, off_t(offset + got))
            if n < 0 {
                if errno == EINTR { continue }
                return (got, errno)
            }
            if n == 0 { break }
            got += n
        }
        return (got, 0)
    }

    /// Writes all of `bytes` at `offset`. Returns the bytes written, and `errno` of a failed call (0 when
    /// none failed).
    public static func write(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, at offset: Int) -> (count: Int, error: Int32) {
        guard let base = bytes.baseAddress else { return (0, 0) }
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, base + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                return (done, errno)
            }
            done += n
        }
        return (done, 0)
    }
}
