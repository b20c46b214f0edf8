#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An `.npz` archive (a zip of `.npy` members, as `np.savez` writes) opened for streaming: its
/// arrays by name, each read through its own cursor (``NpyStream``) so that several are read side
/// by side, a piece at a time.
///
/// A regular file is read in place. Standard input or a pipe is first copied to a temporary file
/// (``TempFile``; the zip directory is at the archive's end), which disappears with the process.
public final class NpzArchive {
    /// The path as given (`-` = standard input), for errors.
    public let path: String
    private let zip: ZipArchive
    /// The `.npy` members by array name (the member path without `.npy`).
    let members: [String: ZipEntry]

    /// Opens `path` (`-` = standard input).
    public init(path: String) throws(TraceError) {
        self.path = path
        var source = try InputSource(path: path)
        if !source.isSeekable { source = try Self.spool(source) }
        zip = try ZipArchive(source: source)
        var members: [String: ZipEntry] = [:]
        for e in zip.entries where !e.name.hasSuffix("/") {
            var name = e.name
            if name.hasSuffix(".npy") { name.removeLast(4) }
            if let other = members[name] {
                throw TraceError(.invalidInput, "array \(name) appears twice (members \(other.name) and \(e.name))", file: path, offset: e.directoryOffset)
            }
            members[name] = e
        }
        self.members = members
    }

    /// Copies a pipe into a temporary file and opens that (named as the pipe in errors).
    private static func spool(_ pipe: InputSource) throws(TraceError) -> InputSource {
        let t = try TempFile(what: "\(pipe.name == "-" ? "standard input" : pipe.name) (an .npz is read from its end)")
        while true {
            let b = try pipe.read(upTo: 1 << 20)
            if b.isEmpty { break }
            try withBytes(b) { raw throws(TraceError) in try t.write(raw) }
        }
        return try InputSource(descriptor: dup(t.fd), owned: true, name: pipe.name)
    }

    /// The array names, sorted.
    public var names: [String] { members.keys.sorted() }

    /// A cursor over array `name`'s elements, nil if absent. The `.npy` header must declare the
    /// size the zip directory gives the member.
    func stream(_ name: String) throws(TraceError) -> NpyStream? {
        guard let e = members[name] else { return nil }
        do {
            return try NpyStream(source: ZipMemberReader(archive: zip, entry: e), name: e.name, expectedSize: e.uncompressedSize)
        } catch { throw error.inFile(path) }
    }

    /// Array `name` read whole (for small arrays), nil if absent.
    public func array(_ name: String) throws(TraceError) -> NpyArray? {
        do { return try stream(name)?.readAll() } catch { throw error.inFile(path) }
    }
}

/// `.npz` archives read and written whole: for small archives (engine batches, tests). The import
/// and export of traces stream instead (``NpzImport``, ``NpzExport``).
public enum Npz {
    /// Reads every array of an `.npz` at `path` (`-` = standard input), keyed by name without `.npy`.
    public static func read(path: String) throws(TraceError) -> [String: NpyArray] {
        let a = try NpzArchive(path: path)
        var out: [String: NpyArray] = [:]
        for name in a.names { out[name] = try a.array(name) }
        return out
    }

    /// Writes `arrays` as an `.npz` at `path` (`-` = standard output), deflating members when `compress`.
    public static func write(_ arrays: [(String, NpyArray)], path: String, compress: Bool = false) throws(TraceError) {
        let sink = try OutputSink(path: path)
        try write(arrays, to: ZipWriter(sink: sink), compress: compress)
        try sink.close()
    }

    /// Writes `arrays` as the members of `zip`, then its directory.
    static func write(_ arrays: [(String, NpyArray)], to zip: ZipWriter, compress: Bool) throws(TraceError) {
        for (name, a) in arrays {
            let h = a.header.encoded()
            try zip.begin(name + ".npy", size: h.count + a.data.count, compress: compress)
            try zip.write(h)
            try zip.write(a.data)
            try zip.end()
        }
        try zip.finish()
    }
}
