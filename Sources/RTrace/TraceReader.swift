import Dispatch

/// A frame read from a trace, with its byte offset.
enum Frame {
    case chunk(offset: Int, bytes: [UInt8])
    case index(offset: Int, bytes: [UInt8])
}

/// Reads a trace: its header, its index, and its records, from a file or a pipe.
///
/// A complete regular file is read through its index (random access by uid); a pipe or an
/// incomplete file is read frame by frame from the start. Chunks are decoded in parallel, and at
/// most a few chunks per core are held at once, whatever the file's size.
///
/// ```swift
/// let r = try TraceReader(path: "rollout.rtrace")
/// try r.forEachRecord { rec in print(rec.uid, rec.rowCount) }
/// ```
public final class TraceReader {
    /// The input.
    public let source: InputSource
    /// The parsed header.
    public let header: TraceHeader
    /// Byte offset of the first frame.
    public let dataStart: Int
    /// The index, when the file is complete and seekable.
    public private(set) var index: TraceIndex?
    /// Why the file is incomplete (no trailer, bad index), when it is and that is known up front.
    public private(set) var incompleteReason: String?
    /// Notices for the user (skipped extension columns).
    public private(set) var notices: [String] = []
    /// Worker threads for decoding.
    public var threads: Int = max(1, min(ProcessInfoCores.count, 8))

    /// Opens `path` (`-` = standard input) and reads the header, and the index when the file is seekable.
    public convenience init(path: String) throws(TraceError) {
        let s: InputSource
        do { s = try InputSource(path: path) } catch { throw error.inFile(path) }
        try self.init(source: s)
    }

    /// Reads a trace held in memory, as a regular file (`seekable`) or as a pipe would deliver it.
    public convenience init(bytes: [UInt8], name: String = "<memory>", seekable: Bool = true) throws(TraceError) {
        try self.init(source: InputSource(bytes: bytes, name: name, seekable: seekable))
    }

    /// Reads the header (and index, when seekable) from an opened source.
    public init(source: InputSource) throws(TraceError) {
        self.source = source
        do {
            let (h, start) = try TraceReader.readHeader(source)
            header = h
            dataStart = start
            notices += TraceReader.headerNotices(h)
            if source.isSeekable { try loadIndex() }
        } catch { throw error.inFile(source.name) }
    }

    /// What a reader says about a header it reads but does not fully know (spec/format.md §3.2).
    static func headerNotices(_ h: TraceHeader) -> [String] {
        var out: [String] = []
        if !h.unknownColumns.isEmpty {
            out.append("header declares columns this reader does not know, skipped: \(h.unknownColumns.joined(separator: ", "))")
        }
        if let r = h.unknownRole { out.append("engine.role \"\(r)\" is unknown to this reader, read as other") }
        return out
    }

    static func readHeader(_ s: InputSource) throws(TraceError) -> (TraceHeader, Int) {
        let base = s.position
        let fixed = try s.read(upTo: 16)
        guard fixed.count >= 8, Array(fixed[0..<8]) == TraceFile.magic else {
            if fixed.isEmpty { throw TraceError(.truncated, "empty input: expected an rtrace header (20 bytes or more)", offset: base) }
            if fixed.count < 8 && TraceFile.magic.starts(with: fixed) {
                throw TraceError(.truncated, "input ends after \(fixed.count) bytes, inside the 8-byte magic", offset: base + fixed.count)
            }
            throw TraceError(.notATrace, "not an rtrace file: \(sniff(fixed))", offset: base)
        }
        guard fixed.count == 16 else { throw TraceError(.truncated, "header ends after \(fixed.count) bytes, needs 16", offset: base + fixed.count) }
        let major = loadU16(fixed, 8), minor = loadU16(fixed, 10)
        guard major == TraceHeader.majorVersion else {
            throw TraceError(.unsupportedVersion, "format version \(major).\(minor); this reader reads version \(TraceHeader.majorVersion).x", offset: base + 8)
        }
        let n = Int(loadU32(fixed, 12))
        guard n >= 2, n <= TraceFile.maxHeaderJSON else {
            throw TraceError(.limit, "header json_len is \(n), expected 2…\(TraceFile.maxHeaderJSON)", offset: base + 12)
        }
        if let size = s.size, base + 20 + n > size {
            throw TraceError(.truncated, "header needs \(20 + n) bytes, the file has \(size - base)", offset: base + 16)
        }
        let rest = try s.read(upTo: n + 4)
        guard rest.count == n + 4 else { throw TraceError(.truncated, "header needs \(20 + n) bytes, input ends at \(16 + rest.count)", offset: base + 16 + rest.count) }
        let json = Array(rest[0..<n])
        let crc = Zlib.crc32(json, seed: Zlib.crc32(fixed))
        guard crc == loadU32(rest, n) else {
            throw TraceError(.checksum, "header CRC mismatch: stored \(hex32(loadU32(rest, n))), computed \(hex32(crc))", offset: base + 16 + n)
        }
        var h: TraceHeader
        do { h = try TraceHeader.parse(json: json) } catch { throw error.shifted(by: base + 16) }
        h.version = (major, minor)
        return (h, base + 20 + n)
    }

    /// What the first bytes of a non-trace input look like.
    static func sniff(_ b: [UInt8]) -> String {
        if b.starts(with: [0x50, 0x4B, 0x03, 0x04]) { return "it is a zip archive (an .npz?); use `rtrace import --from npz`" }
        if b.starts(with: [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]) { return "it is a .npy array; use `rtrace import --from npy`" }
        if b.starts(with: [0x1F, 0x8B]) { return "it is gzip-compressed data" }
        if b.starts(with: [0x89, 0x52, 0x54, 0x52]) { return "the magic is damaged (\(hexPreview(b.prefix(8))))" }
        let printable = b.prefix(16).allSatisfy { $0 == 9 || $0 == 10 || $0 == 13 || (32..<127).contains($0) }
        if printable { return "it looks like text (\"\(String(decoding: b.prefix(16), as: UTF8.self))…\")" }
        return "first bytes are \(hexPreview(b.prefix(8))), expected 89 52 54 52 0d 0a 1a 0a"
    }

    private func loadIndex() throws(TraceError) {
        guard let size = source.size else { return }
        guard size >= dataStart + TraceIndex.trailerSize else {
            incompleteReason = "no trailer: truncated or still being written"
            return
        }
        let t = try source.read(at: size - TraceIndex.trailerSize, count: TraceIndex.trailerSize)
        guard let tr = TraceIndex.parseTrailer(t) else {
            incompleteReason = "no trailer: truncated or still being written"
            return
        }
        guard tr.indexOffset >= dataStart, tr.indexOffset + tr.indexLength + TraceIndex.trailerSize == size,
            tr.indexLength >= 20, tr.indexLength <= TraceIndex.maxBody + 20
        else {
            incompleteReason = "trailer points outside the file (index at \(tr.indexOffset), \(tr.indexLength) bytes)"
            return
        }
        let f = try source.read(at: tr.indexOffset, count: tr.indexLength)
        do throws(TraceError) {
            let ix = try TraceIndex.decodeFrame(f)
            var expect = dataStart
            for c in ix.chunks {
                guard c.offset == expect, c.frameLength >= 28 else {
                    throw TraceError(.corrupt, "index lists a chunk at \(c.offset), frames run to \(expect)")
                }
                expect += c.frameLength
            }
            guard expect == tr.indexOffset, ix.chunks.count == tr.chunkCount else {
                throw TraceError(.corrupt, "index chunks end at \(expect), the index starts at \(tr.indexOffset)")
            }
            index = ix
        } catch {
            incompleteReason = "index unusable (\(error.shifted(by: tr.indexOffset).description)); reading by scan"
        }
    }

    /// Set when a sequential read (a pipe, or a file whose index was not used) reached a valid index and trailer.
    private var streamReachedTrailer = false

    /// Whether the input ended with a valid index and trailer: known up front for regular files,
    /// and for a pipe once a full pass (``forEachRecord(_:)``, ``summary()``) has reached its end.
    public var isComplete: Bool { index != nil || streamReachedTrailer }

    // MARK: Frames

    /// Reads the next frame sequentially. Returns nil at the trailer (a complete input).
    /// Throws `truncated` when the input ends without one.
    func nextFrame() throws(TraceError) -> Frame? {
        let at = source.position
        let magic = try source.read(upTo: 4)
        if magic.isEmpty { throw TraceError(.truncated, "input ends after \(at) bytes without index and trailer: truncated or still being written", file: source.name, offset: at) }
        guard magic.count == 4 else { throw TraceError(.truncated, "input ends inside a frame magic", file: source.name, offset: at) }
        if magic == Array("RTCK".utf8) {
            let fixed = try source.read(upTo: ChunkHeader.fixedSize - 4)
            let head = magic + fixed
            let hl: Int
            do { hl = try ChunkHeader.headerLength(fixed: head[...]) } catch { throw error.shifted(by: at).inFile(source.name) }
            let restHeader = try source.read(upTo: hl - head.count)
            let full = head + restHeader
            guard full.count == hl else { throw TraceError(.truncated, "input ends inside a chunk header", file: source.name, offset: at + full.count) }
            let ch: ChunkHeader
            do { ch = try ChunkHeader.parse(full) } catch { throw error.shifted(by: at).inFile(source.name) }
            if let size = source.size, at + ch.frameLength > size {
                throw TraceError(.truncated, "chunk needs \(ch.frameLength) bytes, the file ends \(size - at) bytes after its start", file: source.name, offset: at)
            }
            let payload = try source.read(upTo: ch.payloadLength)
            guard payload.count == ch.payloadLength else {
                throw TraceError(.truncated, "input ends inside a chunk payload (\(payload.count) of \(ch.payloadLength) bytes)", file: source.name, offset: at + hl + payload.count)
            }
            return .chunk(offset: at, bytes: full + payload)
        }
        if magic == Array("RTIX".utf8) {
            let prefix = magic + (try source.read(upTo: 12))
            guard prefix.count == 16 else { throw TraceError(.truncated, "input ends inside the index frame header", file: source.name, offset: at + prefix.count) }
            let n: Int
            do { n = try TraceIndex.bodyLength(prefix: prefix) } catch { throw error.shifted(by: at).inFile(source.name) }
            let rest = try source.read(upTo: n + 4)
            guard rest.count == n + 4 else { throw TraceError(.truncated, "input ends inside the index", file: source.name, offset: at + 16 + rest.count) }
            return .index(offset: at, bytes: prefix + rest)
        }
        throw TraceError(.corrupt, "expected a frame (RTCK or RTIX), found \(hexPreview(magic))", file: source.name, offset: at)
    }

    // MARK: Records

    /// Calls `body` with every record in file order, decoding chunks in parallel.
    ///
    /// Reads the whole input; throws at the first damage (use ``TraceChecker`` to salvage).
    public func forEachRecord(_ body: (TraceRecord) throws -> Void) throws {
        var assembler = RecordAssembler(header: header, file: source.name)
        try forEachChunk { offset, chunk in
            try assembler.add(chunk, at: offset, body)
        }
        try assembler.finish(complete: streamReachedTrailer)
    }

    /// All records (convenience for small traces).
    public func readAll() throws -> [TraceRecord] {
        var out: [TraceRecord] = []
        try forEachRecord { out.append($0) }
        return out
    }

    /// Calls `body` with each decoded chunk in file order, decoding up to `threads` chunks at once.
    func forEachChunk(_ body: (Int, DecodedChunk) throws -> Void) throws {
        if source.isSeekable { source.seek(to: dataStart) }
        // Two windows are in memory at once (one decoding, one delivered): one chunk per worker each.
        let window = max(1, threads)
        var done = false
        var pipeline = DecodePipeline(decoder: ChunkDecoder(header: header), threads: threads)
        // The index the chunks imply, compared with the file's when the pass reaches it (spec/format.md §7).
        var rebuilt = TraceIndex()
        var fileIndex: (offset: Int, index: TraceIndex)? = nil
        /// Hands a window's chunks to `body` in file order, up to the first that failed to decode.
        func deliver(_ offsets: [Int], _ results: [Result<DecodedChunk, TraceError>]) throws {
            for (at, r) in zip(offsets, results) {
                switch r {
                case .success(let d):
                    for id in d.unknownColumns where !notices.contains(where: { $0.hasSuffix("column #\(id)") }) {
                        notices.append("chunk at offset \(at): skipped unknown extension column #\(id)")
                    }
                    try body(at, d)
                    rebuilt.addChunk(offset: at, d)
                case .failure(let e):
                    throw e.shifted(by: at).inFile(source.name)
                }
            }
        }
        while !done {
            var batch: [(offset: Int, frame: [UInt8])] = []
            // A read error (truncation, a bad index) comes after every chunk read before it.
            var readError: (any Error)? = nil
            do {
                while batch.count < window {
                    guard let f = try nextFrame() else { done = true; break }
                    switch f {
                    case .chunk(let off, let bytes): batch.append((off, bytes))
                    case .index(let off, let bytes):
                        let ix: TraceIndex
                        do { ix = try TraceIndex.decodeFrame(bytes) } catch { throw error.shifted(by: off).inFile(source.name) }
                        try readTrailer(indexAt: off, length: bytes.count, chunks: ix.chunks.count)
                        fileIndex = (off, ix)
                        done = true
                    }
                    if done { break }
                }
            } catch {
                readError = error
                done = true
            }
            // This window decodes in the background while the previous one goes to `body`.
            if let (offsets, results) = pipeline.push(batch) { try deliver(offsets, results) }
            if let readError {
                if let (offsets, results) = pipeline.finish() { try deliver(offsets, results) }
                throw readError
            }
        }
        if let (offsets, results) = pipeline.finish() { try deliver(offsets, results) }
        if let (off, ix) = fileIndex {
            if let why = rebuilt.firstDifference(from: ix) {
                throw TraceError(.corrupt, "index disagrees with the chunks: \(why)", file: source.name, offset: off)
            }
            streamReachedTrailer = true
        }
    }

    /// Reads the trailer after an index frame at `off` of `length` bytes holding `chunks` chunk entries,
    /// and checks that nothing follows it (spec/format.md §7).
    private func readTrailer(indexAt off: Int, length: Int, chunks: Int) throws(TraceError) {
        let at = off + length
        let t = try source.read(upTo: TraceIndex.trailerSize)
        guard t.count == TraceIndex.trailerSize else {
            throw TraceError(.truncated, "index is not followed by a trailer (\(t.count) of 32 bytes)", file: source.name, offset: at + t.count)
        }
        guard Array(t[24..<32]) == TraceIndex.endMagic else {
            throw TraceError(.corrupt, "trailer end magic is \(hexPreview(t[24..<32])), expected RTRCEND\\n", file: source.name, offset: at + 24)
        }
        guard let tr = TraceIndex.parseTrailer(t) else {
            throw TraceError(.checksum, "trailer CRC mismatch", file: source.name, offset: at + 20)
        }
        guard tr.indexOffset == off, tr.indexLength == length, tr.chunkCount == chunks else {
            throw TraceError(.corrupt, "trailer names an index at \(tr.indexOffset) of \(tr.indexLength) bytes and \(tr.chunkCount) chunks; the index is at \(off), \(length) bytes, \(chunks) chunks", file: source.name, offset: at)
        }
        let after = try source.read(upTo: 1)
        if !after.isEmpty {
            let n = source.size.map { $0 - at - TraceIndex.trailerSize } ?? 1
            throw TraceError(.corrupt, "\(n)\(source.size == nil ? " or more" : "") bytes follow the trailer", file: source.name, offset: at + TraceIndex.trailerSize)
        }
    }

    /// Decodes frames concurrently; the first error (in file order) is thrown.
    func decodeBatch(_ batch: [(Int, [UInt8])]) throws(TraceError) -> [DecodedChunk] {
        let results = ChunkDecoder(header: header).decodeConcurrently(batch.map(\.1), threads: threads)
        var out: [DecodedChunk] = []
        out.reserveCapacity(batch.count)
        for (i, r) in results.enumerated() {
            switch r {
            case .success(let d): out.append(d)
            case .failure(let e): throw e.shifted(by: batch[i].0).inFile(source.name)
            }
        }
        return out
    }

    /// The record with `uid`, read through the index (nil if absent). Needs a complete regular file.
    public func record(uid: String) throws -> TraceRecord? {
        guard let ix = index else {
            var found: TraceRecord? = nil
            try forEachRecord { if found == nil && $0.uid == uid { found = $0 } }
            return found
        }
        guard let ordinal = ix.records.firstIndex(where: { $0.uid == uid }) else { return nil }
        return try record(ordinal: ordinal)
    }

    /// The record with file ordinal `ordinal`, read through the index.
    public func record(ordinal: Int) throws -> TraceRecord {
        guard let ix = index else { throw TraceError(.io, "random access needs a complete, seekable file", file: source.name) }
        let loc = ix.records[ordinal]
        var batch: [(Int, [UInt8])] = []
        for c in ix.chunks[loc.firstChunk..<loc.firstChunk + loc.chunkCount] {
            batch.append((c.offset, try source.read(at: c.offset, count: c.frameLength)))
        }
        var assembler = RecordAssembler(header: header, file: source.name, only: UInt64(ordinal))
        var out: TraceRecord? = nil
        let decoded: Result<[DecodedChunk], TraceError> = Result { () throws(TraceError) in try decodeBatch(batch) }
        if case .failure(let e) = decoded, e.kind == .truncated {
            throw TraceError(.corrupt, "index record \(ordinal) (\(loc.uid)) points at chunks that are not where it says: \(e.message)", file: source.name, offset: e.offset)
        }
        for (i, d) in try decoded.get().enumerated() {
            // The chunks win (spec/format.md §7): what the index says must be what the chunk holds.
            let c = ix.chunks[loc.firstChunk + i]
            guard d.header.frameLength == c.frameLength, d.pieces.first.map({ Int(clamping: $0.piece.ordinal) }) == c.firstRecord,
                  d.pieces.count == c.pieceCount, d.header.rowCount == c.rowCount else {
                throw TraceError(.corrupt, "index chunk \(loc.firstChunk + i) disagrees with the chunk at offset \(c.offset) (length, first record, pieces or rows)", file: source.name, offset: c.offset)
            }
            try assembler.add(d, at: batch[i].0) { out = $0 }
        }
        guard let out, out.uid == loc.uid, out.rowCount == loc.rowCount, out.tokens.count == loc.tokenCount else {
            throw TraceError(.corrupt, "index record \(ordinal) (\(loc.uid)) disagrees with the chunks it points at\(out.map { ", which hold \($0.uid) with \($0.rowCount) rows and \($0.tokens.count) tokens" } ?? ", which do not hold it")", file: source.name)
        }
        return out
    }

    /// Reads every chunk header (without decoding columns): for `info`.
    public func chunkHeaders() throws -> [(offset: Int, header: ChunkHeader)] {
        var out: [(Int, ChunkHeader)] = []
        if let ix = index {
            for c in ix.chunks {
                let fixed = try source.read(at: c.offset, count: ChunkHeader.fixedSize)
                let hl = try ChunkHeader.headerLength(fixed: fixed[...])
                out.append((c.offset, try ChunkHeader.parse(try source.read(at: c.offset, count: hl))))
            }
            return out
        }
        if source.isSeekable { source.seek(to: dataStart) }
        while let f = try nextFrame() {
            switch f {
            case .chunk(let off, let b): out.append((off, try ChunkHeader.parse(b)))
            case .index:
                let t = try source.read(upTo: TraceIndex.trailerSize)
                if TraceIndex.parseTrailer(t) != nil { streamReachedTrailer = true }
                return out
            }
        }
        return out
    }
}

/// The number of cores to decode on.
enum ProcessInfoCores {
    static let count: Int = {
        #if canImport(Glibc)
        let n = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return n > 0 ? n : 1
        #else
        return 1
        #endif
    }()
}

#if canImport(Glibc)
import Glibc
#endif

/// Counts and per-column sizes of a trace, from one pass.
public struct TraceSummary: Sendable {
    public var sequences = 0
    public var rows = 0
    public var tokens = 0
    public var chunks: [(offset: Int, header: ChunkHeader)] = []
}

extension TraceReader {
    /// Counts (from the index when complete, else from one decoding pass, which also works on a pipe)
    /// and every chunk header. A truncated input is summarised up to its last complete chunk, with
    /// ``incompleteReason`` saying where it ends; other damage throws.
    public func summary() throws -> TraceSummary {
        var s = TraceSummary()
        if let ix = index {
            s.chunks = try chunkHeaders()
            s.sequences = ix.records.count; s.rows = ix.totalRows; s.tokens = ix.totalTokens
            return s
        }
        do {
            try forEachChunk { off, d in
                s.chunks.append((off, d.header))
                for p in d.pieces {
                    s.rows += p.piece.rowCount
                    if let m = p.meta { s.sequences += 1; s.tokens += m.tokenCount }
                }
            }
        } catch let e as TraceError where e.kind == .truncated {
            // A truncated or unfinished file: report what its complete chunks hold.
            incompleteReason = e.description
        }
        return s
    }
}
