/// An error reading or writing a trace, with the file, byte offset and field it concerns.
///
/// Every error a reader reports names where it happened, so a user can find the bad bytes
/// with `xxd -s OFFSET` or `rtrace check`. The `kind` is stable; the `message` is for people.
public struct TraceError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, in categories a program can branch on.
    public enum Kind: String, Sendable, Equatable {
        /// The data ended inside a structure (header, frame, column): truncated or still being written.
        case truncated
        /// The bytes are not an rtrace file at all (another format, text, empty).
        case notATrace
        /// The file's major version is newer than this reader.
        case unsupportedVersion
        /// A CRC-32 did not match.
        case checksum
        /// The header JSON is invalid or breaks a rule of spec/format.md §3.2.
        case badHeader
        /// A structure is inconsistent (sizes, orders, codes).
        case corrupt
        /// A declared length or count exceeds a limit of spec/format.md §8.
        case limit
        /// Files given together disagree on the model geometry.
        case geometryMismatch
        /// A record or array given to a writer or importer is invalid.
        case invalidInput
        /// The operating system refused a read or write (full disk, closed pipe, permissions).
        case io
    }

    /// The category.
    public var kind: Kind
    /// The file (path, or `-` for standard input/output), if known.
    public var file: String?
    /// The byte offset in the file, if known.
    public var offset: Int?
    /// What was wrong, naming the field and what was expected.
    public var message: String

    /// Creates an error.
    public init(_ kind: Kind, _ message: String, file: String? = nil, offset: Int? = nil) {
        self.kind = kind
        self.message = message
        self.file = file
        self.offset = offset
    }

    /// `file: offset N: message`, as printed by the command-line tools.
    public var description: String {
        var s = ""
        if let file { s += "\(file): " }
        if let offset { s += "offset \(offset): " }
        return s + message
    }

    /// The same error with the file name filled in where it was not known yet.
    public func inFile(_ name: String) -> TraceError {
        var e = self
        if e.file == nil { e.file = name }
        return e
    }

    /// The same error with the base offset added (for errors raised inside a frame).
    func shifted(by base: Int) -> TraceError {
        var e = self
        e.offset = (e.offset ?? 0) + base
        return e
    }
}
