/// Where a chunk is in the file (an index entry, spec/format.md §7).
public struct ChunkLocation: Sendable, Equatable {
    /// Byte offset of the chunk frame.
    public var offset: Int
    /// Total bytes of the frame.
    public var frameLength: Int
    /// Ordinal of the record of the chunk's first piece.
    public var firstRecord: Int
    public var pieceCount: Int
    public var rowCount: Int
}

/// Where a record is (an index entry, spec/format.md §7).
public struct RecordLocation: Sendable, Equatable {
    /// Index of the chunk holding the record's first piece.
    public var firstChunk: Int
    /// Chunks the record spans.
    public var chunkCount: Int
    public var rowCount: Int
    public var tokenCount: Int
    public var uid: String
}

/// The index frame: every chunk and record, so a reader finds a uid without a scan.
public struct TraceIndex: Sendable, Equatable {
    public var chunks: [ChunkLocation] = []
    public var records: [RecordLocation] = []
    public var totalRows: Int = 0
    public var totalTokens: Int = 0

    public init() {}

    static let maxBody = 1 << 30
    static let trailerSize = 32
    static let endMagic: [UInt8] = Array("RTRCEND\n".utf8)

    /// The index frame bytes.
    func encodeFrame() -> [UInt8] {
        var body = ByteWriter()
        body.u64(UInt64(chunks.count))
        for c in chunks {
            body.u64(UInt64(c.offset)); body.u64(UInt64(c.frameLength)); body.u64(UInt64(c.firstRecord))
            body.u32(UInt32(c.pieceCount)); body.u32(UInt32(c.rowCount))
        }
        body.u64(UInt64(records.count))
        for r in records {
            body.u32(UInt32(r.firstChunk)); body.u32(UInt32(r.chunkCount)); body.u32(UInt32(r.rowCount))
            body.u32(UInt32(r.tokenCount)); body.string(r.uid)
        }
        body.u64(UInt64(totalRows)); body.u64(UInt64(totalTokens))
        var f = ByteWriter(capacity: body.bytes.count + 20)
        f.append(Array("RTIX".utf8)); f.u32(0); f.u64(UInt64(body.bytes.count)); f.append(body.bytes)
        f.u32(Zlib.crc32(f.bytes))
        return f.bytes
    }

    /// The 32-byte trailer for an index frame at `offset`.
    static func trailer(indexOffset: Int, indexLength: Int, chunkCount: Int) -> [UInt8] {
        var t = ByteWriter(capacity: 32)
        t.u64(UInt64(indexOffset)); t.u64(UInt64(indexLength)); t.u32(UInt32(chunkCount))
        t.u32(Zlib.crc32(t.bytes))
        t.append(endMagic)
        return t.bytes
    }

    /// Parses a trailer; nil when the bytes are not a valid trailer.
    static func parseTrailer(_ t: [UInt8]) -> (indexOffset: Int, indexLength: Int, chunkCount: Int)? {
        guard t.count == trailerSize, Array(t[24..<32]) == endMagic, Zlib.crc32(Array(t[0..<20])) == loadU32(t, 20) else { return nil }
        let off = loadU64(t, 0), len = loadU64(t, 8)
        guard off < UInt64(Int.max / 2), len < UInt64(Int.max / 2) else { return nil }
        return (Int(off), Int(len), Int(loadU32(t, 16)))
    }

    /// The body length announced by an index frame's first 16 bytes.
    static func bodyLength(prefix p: [UInt8]) throws(TraceError) -> Int {
        guard p.count >= 16, p[0] == 0x52, p[1] == 0x54, p[2] == 0x49, p[3] == 0x58 else {
            throw TraceError(.corrupt, "expected index magic RTIX")
        }
        let flags = loadU32(p, 4)
        guard flags == 0 else { throw TraceError(.corrupt, "index flags are \(hex32(flags)), expected 0", offset: 4) }
        let n = loadU64(p, 8)
        guard n <= UInt64(maxBody) else { throw TraceError(.limit, "index body_len \(n) exceeds 1 GiB", offset: 8) }
        return Int(n)
    }

    /// Parses and checks a whole index frame.
    static func decodeFrame(_ f: [UInt8]) throws(TraceError) -> TraceIndex {
        let n = try bodyLength(prefix: f)
        guard f.count == 20 + n else { throw TraceError(.truncated, "index frame needs \(20 + n) bytes, has \(f.count)") }
        let stored = loadU32(f, 16 + n), actual = Zlib.crc32(Array(f[0..<16 + n]))
        guard stored == actual else {
            throw TraceError(.checksum, "index CRC mismatch: stored \(hex32(stored)), computed \(hex32(actual))", offset: 16 + n)
        }
        var r = ByteReader(Array(f[16..<16 + n]), base: 16, what: "index")
        var ix = TraceIndex()
        let nc = try r.u64("n_chunks")
        guard nc <= UInt64(r.remaining / 32) else { throw TraceError(.corrupt, "index n_chunks \(nc) does not fit its body", offset: 16) }
        for _ in 0..<Int(nc) {
            let off = try r.u64("chunk offset"), len = try r.u64("chunk frame_len"), fr = try r.u64("chunk first_record")
            let pc = try r.u32("chunk n_pieces"), rc = try r.u32("chunk n_rows")
            guard off < 1 << 62, len < 1 << 62, fr < 1 << 62 else { throw TraceError(.corrupt, "index chunk entry out of range", offset: 16) }
            ix.chunks.append(ChunkLocation(offset: Int(off), frameLength: Int(len), firstRecord: Int(fr), pieceCount: Int(pc), rowCount: Int(rc)))
        }
        let nr = try r.u64("n_records")
        guard nr <= UInt64(r.remaining / 20) else { throw TraceError(.corrupt, "index n_records \(nr) does not fit its body", offset: 16) }
        for _ in 0..<Int(nr) {
            let fc = Int(try r.u32("first_chunk")), cc = Int(try r.u32("n_chunks"))
            let rows = Int(try r.u32("n_rows")), toks = Int(try r.u32("n_tokens"))
            let uid = try r.string("uid", limit: 65_535)
            guard !uid.isEmpty else { throw TraceError(.corrupt, "index record \(ix.records.count) has an empty uid", offset: 16) }
            guard cc >= 1, fc < ix.chunks.count, fc + cc <= ix.chunks.count else {
                throw TraceError(.corrupt, "index record \(uid) names chunks \(fc)…\(fc + cc - 1) of \(ix.chunks.count)", offset: 16)
            }
            ix.records.append(RecordLocation(firstChunk: fc, chunkCount: cc, rowCount: rows, tokenCount: toks, uid: uid))
        }
        let tr = try r.u64("total_rows"), tt = try r.u64("total_tokens")
        guard tr < 1 << 62, tt < 1 << 62 else { throw TraceError(.corrupt, "index totals out of range", offset: 16) }
        ix.totalRows = Int(tr); ix.totalTokens = Int(tt)
        guard r.atEnd else { throw TraceError(.corrupt, "index body has \(r.remaining) bytes after its tables", offset: 16) }
        return ix
    }
}

extension TraceIndex {
    /// Adds a chunk to an index being built, as a writer writes it or a reader reads it: its location, and
    /// per piece the record's uid, rows and tokens when the piece is FIRST. Returns false (adding nothing
    /// for that piece) when a piece continues a record the index does not hold: a chunk stream that does
    /// not follow spec/format.md §5.2, which the caller reports.
    @discardableResult
    mutating func addChunk(
        offset: Int, frameLength: Int, pieces: [Piece], firstRecords: [(uid: String, rows: Int, tokens: Int)]
    ) -> Bool {
        let chunkIndex = chunks.count
        chunks.append(ChunkLocation(
            offset: offset, frameLength: frameLength, firstRecord: Int(clamping: pieces.first?.ordinal ?? 0),
            pieceCount: pieces.count, rowCount: pieces.reduce(0) { $0 + $1.rowCount }))
        var next = firstRecords.makeIterator()
        var consistent = true
        for p in pieces {
            totalRows += p.rowCount
            if p.first, let r = next.next() {
                records.append(RecordLocation(firstChunk: chunkIndex, chunkCount: 1, rowCount: r.rows, tokenCount: r.tokens, uid: r.uid))
                totalTokens += r.tokens
            } else if !p.first, p.ordinal < UInt64(records.count) {
                records[Int(p.ordinal)].chunkCount += 1
            } else {
                consistent = false
            }
        }
        return consistent
    }

    /// Adds a decoded chunk (see ``addChunk(offset:frameLength:pieces:firstRecords:)``).
    @discardableResult
    mutating func addChunk(offset: Int, _ d: DecodedChunk) -> Bool {
        addChunk(offset: offset, frameLength: d.header.frameLength, pieces: d.pieces.map(\.piece),
                 firstRecords: d.pieces.compactMap { $0.meta.map { ($0.uid, $0.rowCount, $0.tokenCount) } })
    }

    /// The first field where `other`, read from a file, differs from this index, rebuilt from its chunks
    /// (spec/format.md §7: the chunks win); nil when they agree.
    func firstDifference(from other: TraceIndex) -> String? {
        if other.chunks.count != chunks.count { return "the index lists \(other.chunks.count) chunks, the file holds \(chunks.count)" }
        for (i, (a, b)) in zip(other.chunks, chunks).enumerated() where a != b {
            return "index chunk \(i) says offset \(a.offset), \(a.frameLength) bytes, first record \(a.firstRecord), \(a.pieceCount) pieces, \(a.rowCount) rows; the chunk has \(b.offset), \(b.frameLength), \(b.firstRecord), \(b.pieceCount), \(b.rowCount)"
        }
        if other.records.count != records.count { return "the index lists \(other.records.count) records, the chunks hold \(records.count)" }
        for (i, (a, b)) in zip(other.records, records).enumerated() where a != b {
            return "index record \(i) says uid \(a.uid), chunks \(a.firstChunk)+\(a.chunkCount), \(a.rowCount) rows, \(a.tokenCount) tokens; the chunks have \(b.uid), \(b.firstChunk)+\(b.chunkCount), \(b.rowCount), \(b.tokenCount)"
        }
        if other.totalRows != totalRows || other.totalTokens != totalTokens {
            return "index totals say \(other.totalRows) rows and \(other.totalTokens) tokens, the chunks hold \(totalRows) and \(totalTokens)"
        }
        return nil
    }
}

