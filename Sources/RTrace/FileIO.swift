#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file or pipe being written, with errors that name it (full disk, closed pipe).
public final class OutputSink {
    /// `-` for standard output, else the path.
    public let name: String
    private let fd: Int32
    private let owned: Bool
    /// Bytes written so far.
    public private(set) var offset: Int = 0

    /// Opens `path` for writing (creating or truncating it); `-` is standard output.
    public init(path: String) throws(TraceError) {
        name = path
        if path == "-" {
            fd = STDOUT_FILENO
            owned = false
        } else {
            let f = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard f >= 0 else { throw TraceError(.io, "cannot create: \(errnoText())", file: path) }
            fd = f
            owned = true
        }
    }

    /// Wraps an open descriptor that the caller keeps ownership of.
    public init(fileDescriptor: Int32, name: String) {
        self.fd = fileDescriptor
        self.name = name
        self.owned = false
    }

    private var closed = false

    deinit { if owned && !closed { _ = Glibc.close(fd) } }

    /// Writes all of `bytes`, retrying partial writes; throws `io` naming the file and offset.
    public func write(_ bytes: [UInt8]) throws(TraceError) {
        try withBytes(bytes) { raw throws(TraceError) in try write(raw) }
    }

    /// Writes all of `raw`, retrying partial writes; throws `io` naming the file and offset.
    public func write(_ raw: UnsafeRawBufferPointer) throws(TraceError) {
        var done = 0
        var err: Int32 = 0
        while done < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                err = errno
                break
            }
            done += n
        }
        offset += done
        if err != 0 {
            let what = err == EPIPE ? "the reader closed the pipe" : String(cString: strerror(err))
            throw TraceError(.io, "write failed after \(offset) bytes: \(what)", file: name, offset: offset)
        }
    }

    /// Forces written data to stable storage (a no-op on pipes).
    public func sync() { _ = fsync(fd) }

    /// Closes the file; reports errors a deferred write surfaces only at close.
    public func close() throws(TraceError) {
        guard owned, !closed else { return }
        closed = true
        if Glibc.close(fd) != 0 { throw TraceError(.io, "close failed: \(errnoText())", file: name) }
    }
}

/// A file or pipe being read: sequential reads for any input, positioned reads for regular files.
public final class InputSource {
    /// `-` for standard input, else the path.
    public let name: String
    private let fd: Int32
    private let owned: Bool
    /// The file size for regular files; nil for pipes.
    public let size: Int?
    /// Bytes consumed by sequential reads.
    public private(set) var position: Int = 0
    /// The bytes of an in-memory source (nil for a file or pipe).
    private let memory: [UInt8]?

    /// Reads `bytes` from memory, as a regular file (`seekable`) or as a pipe (sequential reads only).
    ///
    /// For tests and fuzzing: every path of the reader and checker runs as it does on a file or a pipe.
    public init(bytes: [UInt8], name: String = "<memory>", seekable: Bool = true) {
        self.name = name
        self.fd = -1
        self.owned = false
        self.memory = bytes
        self.size = seekable ? bytes.count : nil
    }

    /// Opens `path` (`-` = standard input).
    public convenience init(path: String) throws(TraceError) {
        if path == "-" {
            try self.init(descriptor: STDIN_FILENO, owned: false, name: path)
            return
        }
        let f = open(path, O_RDONLY | O_CLOEXEC)
        guard f >= 0 else { throw TraceError(.io, "cannot open: \(errnoText())", file: path) }
        try self.init(descriptor: f, owned: true, name: path)
    }

    /// Reads an open descriptor, closed with the source when `owned`; `name` is what errors call it.
    public init(descriptor: Int32, owned: Bool, name: String) throws(TraceError) {
        memory = nil
        self.name = name
        fd = descriptor
        self.owned = owned
        var st = stat()
        if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG {
            size = Int(st.st_size)
            if !owned { position = Int(lseek(fd, 0, SEEK_CUR)) }
        } else if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
            if owned { _ = Glibc.close(fd) }
            throw TraceError(.io, "is a directory, not a trace file", file: name)
        } else {
            size = nil
        }
    }

    deinit { if owned { _ = Glibc.close(fd) } }

    /// Whether positioned reads work (a regular file).
    public var isSeekable: Bool { size != nil }

    /// Reads up to `count` bytes sequentially; fewer only at end of input.
    public func read(upTo count: Int) throws(TraceError) -> [UInt8] {
        if let memory {
            let n = max(0, min(count, memory.count - position))
            defer { position += n }
            return Array(memory[position..<position + n])
        }
        // The buffer grows with the data that arrives (doubling from 1 MiB), so a length declared by
        // damaged input on a pipe cannot make us allocate more than the input really holds.
        var out = [UInt8](repeating: 0, count: min(max(count, 0), InputSource.readStep))
        var got = 0
        var eof = false
        while got < count && !eof {
            if got == out.count { out.append(contentsOf: repeatElement(0, count: min(count - got, out.count))) }
            let want = out.count
            let start = got
            let (n, err): (Int, Int32) = out.withUnsafeMutableBytes { raw in
                var done = 0
                while start + done < want {
                    let r = Glibc.read(fd, raw.baseAddress! + start + done, want - start - done)
                    if r < 0 { if errno == EINTR { continue }; return (done, errno) }
                    if r == 0 { return (done, -1) }
                    done += r
                }
                return (done, 0)
            }
            got += n
            if err > 0 { throw TraceError(.io, "read failed: \(String(cString: strerror(err)))", file: name, offset: position + got) }
            if err < 0 { eof = true }
        }
        position += got
        if got < out.count { out.removeSubrange(got...) }
        return out
    }

    /// Reads up to `buffer.count` bytes sequentially into `buffer`; returns how many (fewer only at
    /// end of input, 0 there).
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        guard buffer.count > 0 else { return 0 }
        if let memory {
            let n = max(0, min(buffer.count, memory.count - position))
            if n > 0 { memory.withUnsafeBytes { m in buffer.baseAddress!.copyMemory(from: m.baseAddress! + position, byteCount: n) } }
            position += n
            return n
        }
        var got = 0
        while got < buffer.count {
            let r = Glibc.read(fd, buffer.baseAddress! + got, buffer.count - got)
            if r < 0 {
                if errno == EINTR { continue }
                throw TraceError(.io, "read failed: \(errnoText())", file: name, offset: position + got)
            }
            if r == 0 { break }
            got += r
        }
        position += got
        return got
    }

    /// The first buffer size of a sequential read.
    static let readStep = 1 << 20

    /// Reads exactly `count` bytes at `offset` of a regular file; fewer only at end of file.
    public func read(at offset: Int, count: Int) throws(TraceError) -> [UInt8] {
        if let memory {
            precondition(isSeekable, "positioned read on a pipe")
            let lo = min(max(0, offset), memory.count)
            return Array(memory[lo..<min(memory.count, lo + max(0, count))])
        }
        // Never allocate past the end of the file, whatever length the caller was told.
        let count = max(0, size.map { min(count, $0 - offset) } ?? count)
        var out = [UInt8](repeating: 0, count: count)
        let (got, err) = out.withUnsafeMutableBytes { PositionedIO.read(fd, into: $0, at: offset) }
        if err != 0 { throw TraceError(.io, "read failed: \(String(cString: strerror(err)))", file: name, offset: offset + got) }
        if got < count { out.removeSubrange(got...) }
        return out
    }

    /// Reads up to `buffer.count` bytes at `offset` of a regular file into `buffer`, without
    /// allocating; returns how many (fewer only at end of file).
    public func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(TraceError) -> Int {
        precondition(isSeekable, "positioned read on a pipe")
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        if let memory {
            let lo = min(max(0, offset), memory.count), n = min(buffer.count, memory.count - lo)
            if n > 0 { memory.withUnsafeBytes { base.copyMemory(from: $0.baseAddress! + lo, byteCount: n) } }
            return n
        }
        let (got, err) = PositionedIO.read(fd, into: UnsafeMutableRawBufferPointer(start: base, count: buffer.count), at: offset)
        if err != 0 { throw TraceError(.io, "read failed: \(String(cString: strerror(err)))", file: name, offset: offset + got) }
        return got
    }

    /// Moves the sequential position of a regular file.
    public func seek(to offset: Int) {
        precondition(isSeekable)
        if memory == nil { lseek(fd, off_t(offset), SEEK_SET) }
        position = offset
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
