import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// An output file written under a temporary name next to it and renamed into place on success,
/// so a failed run leaves neither a half-written file nor a damaged earlier one. Standard output
/// (`-`) is written directly.
public struct StagedOutput {
    /// The file's name, and the name it is written under until ``commit()``.
    public let path: String
    public let writePath: String

    /// Stages `path`.
    public init(path: String) {
        self.path = path
        // Only a regular file (or a new one) is staged: a device or a pipe is written in place.
        var st = stat()
        let special = stat(path, &st) == 0 && (st.st_mode & S_IFMT) != S_IFREG
        writePath = path == "-" || special ? path : "\(path).partial-\(getpid())"
    }

    /// Moves the finished file into place.
    public func commit() throws(TraceError) {
        guard writePath != path else { return }
        if rename(writePath, path) != 0 {
            let why = String(cString: strerror(errno))
            abandon()
            throw TraceError(.io, "cannot move the finished trace into place: \(why)", file: path)
        }
    }

    /// Removes what was written.
    public func abandon() {
        if writePath != path { unlink(writePath) }
    }
}
