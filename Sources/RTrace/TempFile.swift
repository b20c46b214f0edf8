#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A temporary file in `$TMPDIR` (default `/tmp`), removed from the directory as soon as it is
/// created, so nothing is left behind however the process ends: written in order, then read back.
///
/// `rtrace import --from npz -` spools standard input into one (a zip's directory is at its end),
/// and `rtrace export --to npz` spools the arrays after the first into them while it writes the first.
public final class TempFile {
    /// The descriptor, open for reading and writing.
    let fd: Int32
    /// What the file holds, for errors.
    let what: String
    /// Bytes written so far.
    private(set) var size = 0
    /// Where the next sequential read starts.
    private var readOffset = 0

    /// The directory temporary files go to.
    static var directory: String {
        if let t = getenv("TMPDIR"), t.pointee != 0 { return String(cString: t) }
        return "/tmp"
    }

    /// Creates a file named `prefix` plus a unique suffix in `directory` and unlinks it at once: a
    /// descriptor open for reading and writing whose file goes when it is closed, or -1 (`errno` set).
    public static func createUnlinked(in directory: String, prefix: String) -> Int32 {
        var template = Array("\(directory)/\(prefix)XXXXXX".utf8CString)
        let f = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        if f >= 0 { template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) } }
        return f
    }

    /// Creates an empty temporary file; `what` names it in errors.
    init(what: String) throws(TraceError) {
        let dir = TempFile.directory
        let f = TempFile.createUnlinked(in: dir, prefix: "rtrace-spool-")
        guard f >= 0 else { throw TraceError(.io, "cannot create a temporary file for \(what) in \(dir): \(errnoText()) (set TMPDIR)") }
        fd = f
        self.what = what
    }

    deinit { _ = close(fd) }

    /// Appends `bytes`.
    func write(_ bytes: UnsafeRawBufferPointer) throws(TraceError) {
        let (done, err) = PositionedIO.write(fd, bytes, at: size)
        if err != 0 {
            throw TraceError(.io, "cannot write the temporary file for \(what) in \(TempFile.directory) after \(size + done) bytes: \(String(cString: strerror(err))) (set TMPDIR to a larger disk)")
        }
        size += done
    }

    /// Reads up to `buffer.count` bytes from the sequential read position; fewer only at the end.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        let (got, err) = PositionedIO.read(fd, into: buffer, at: readOffset)
        if err != 0 { throw TraceError(.io, "cannot read back the temporary file for \(what): \(String(cString: strerror(err)))") }
        readOffset += got
        return got
    }
}
