/// The fixed part and column directory of a chunk frame (spec/format.md §4), parsed and checked.
public struct ChunkHeader: Sendable, Equatable {
    /// Bytes before the column directory.
    static let fixedSize = 24
    static let maxColumns = 64
    static let maxPieces = 1 << 20
    static let maxRows = 1 << 24
    static let maxColumnBytes = 1 << 30

    public var pieceCount: Int
    public var rowCount: Int
    public var payloadLength: Int
    public var columns: [ColumnEntry]

    /// Bytes of the header: fixed part, directory and CRC.
    public var headerLength: Int { Self.fixedSize + 16 * columns.count + 4 }
    /// Bytes of the whole frame.
    public var frameLength: Int { headerLength + payloadLength }

    /// The header length announced by the first 24 bytes (checking the magic and column count).
    static func headerLength(fixed b: ArraySlice<UInt8>) throws(TraceError) -> Int {
        let s = b.startIndex
        guard b.count >= fixedSize else { throw TraceError(.truncated, "chunk header needs \(fixedSize) bytes, \(b.count) left") }
        guard b[s] == 0x52, b[s + 1] == 0x54, b[s + 2] == 0x43, b[s + 3] == 0x4B else {
            throw TraceError(.corrupt, "expected chunk magic RTCK, found \(hexPreview(b.prefix(4)))")
        }
        let c = Int(loadU32(Array(b[s + 4..<s + 8]), 0))
        guard (1...maxColumns).contains(c) else {
            throw TraceError(.limit, "chunk n_columns is \(c), expected 1…\(maxColumns)", offset: 4)
        }
        return fixedSize + 16 * c + 4
    }

    /// Parses a complete chunk header (`headerLength(fixed:)` bytes): steps 1–5 of the order of checks of
    /// spec/format.md §8 (n_columns, CRC, counts, each directory entry, payload_len). A header that passes is
    /// sound: its frame length can be trusted.
    static func parse(_ b: [UInt8]) throws(TraceError) -> ChunkHeader {
        let hl = try headerLength(fixed: b[...])
        guard b.count >= hl else { throw TraceError(.truncated, "chunk header needs \(hl) bytes, \(b.count) left") }
        let stored = loadU32(b, hl - 4)
        let actual = Zlib.crc32(Array(b[0..<hl - 4]))
        guard stored == actual else {
            throw TraceError(.checksum, "chunk header CRC mismatch: stored \(hex32(stored)), computed \(hex32(actual))", offset: hl - 4)
        }
        let c = (hl - 4 - fixedSize) / 16
        let pieces = Int(loadU32(b, 8))
        let rows = Int(loadU32(b, 12))
        let payload = loadU64(b, 16)
        guard (1...maxPieces).contains(pieces) else {
            throw TraceError(.limit, "chunk n_pieces is \(pieces), expected 1…\(maxPieces)", offset: 8)
        }
        guard rows <= maxRows else { throw TraceError(.limit, "chunk n_rows is \(rows), limit \(maxRows)", offset: 12) }
        var entries: [ColumnEntry] = []
        var off = hl
        var seen = Set<UInt16>()
        for i in 0..<c {
            let e = fixedSize + 16 * i
            let id = loadU16(b, e)
            let entry = ColumnEntry(
                id: id, codec: b[e + 2], transform: b[e + 3], rawLength: Int(loadU32(b, e + 4)),
                storedLength: Int(loadU32(b, e + 8)), crc: loadU32(b, e + 12), offsetInFrame: off)
            guard seen.insert(id).inserted else { throw TraceError(.corrupt, "column id \(id) appears twice", offset: e) }
            guard id >= ColumnID.firstExtension || ColumnID(rawValue: id) != nil else {
                throw TraceError(.corrupt, "column id \(id) is reserved and unknown to this reader (a file of a later version lists it in requires)", offset: e)
            }
            guard entry.codec <= 1 else { throw TraceError(.corrupt, "column \(columnName(id)) has unknown codec \(entry.codec)", offset: e + 2) }
            guard entry.transform <= 2 else {
                throw TraceError(.corrupt, "column \(columnName(id)) has unknown transform \(entry.transform)", offset: e + 3)
            }
            guard entry.rawLength <= maxColumnBytes, entry.storedLength <= maxColumnBytes else {
                throw TraceError(.limit, "column \(columnName(id)) declares \(entry.rawLength) raw / \(entry.storedLength) stored bytes, limit 1 GiB", offset: e + 4)
            }
            if entry.codec == 1 && entry.rawLength > DecodeLimits.maxDeflateRatio * entry.storedLength {
                throw TraceError(.limit, "column \(columnName(id)) declares \(entry.rawLength) raw bytes from \(entry.storedLength) deflated bytes; deflate cannot expand more than 1032×", offset: e + 4)
            }
            if entry.codec == 0 && entry.rawLength != entry.storedLength {
                throw TraceError(.corrupt, "raw column \(columnName(id)) has raw_len \(entry.rawLength) ≠ stored_len \(entry.storedLength)", offset: e + 4)
            }
            entries.append(entry)
            off += entry.storedLength
        }
        guard UInt64(off - hl) == payload else {
            throw TraceError(.corrupt, "chunk payload_len \(payload) ≠ sum of stored lengths \(off - hl)", offset: 16)
        }
        return ChunkHeader(pieceCount: pieces, rowCount: rows, payloadLength: off - hl, columns: entries)
    }
}

func columnName(_ id: UInt16) -> String { ColumnID(rawValue: id)?.name ?? "#\(id)" }
func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - s.count) + s
}
func hexPreview<C: Collection<UInt8>>(_ b: C) -> String {
    b.map { let s = String($0, radix: 16); return s.count == 1 ? "0" + s : s }.joined(separator: " ")
}

/// The limits of spec/format.md §8 on what decoding may allocate, checked from declared sizes
/// before any buffer is made, so a decompression bomb or an absurd count fails with a `limit` error.
enum DecodeLimits {
    /// Deflate emits at most 258 bytes per 2 bits of input: a stream of `stored_len` bytes cannot
    /// inflate to more than 1032 × `stored_len` (zlib's "maximum compression ratio").
    static let maxDeflateRatio = 1032
    /// Decoded row data of one chunk (u16 ids, weights, logits): 1 GiB.
    static let maxChunkDecodedBytes = 1 << 30
    /// Decoded row data of one record, over all its pieces: 2 GiB.
    static let maxRecordDecodedBytes = 1 << 31

    /// Bytes one routed row takes once decoded: `top_k` u16 ids, weights and logits per MoE layer.
    static func rowBytes(_ h: TraceHeader) -> Int {
        let m = h.model
        return m.moeLayers * (m.topK * (2 + (h.columns.topkWeights?.size ?? 0)) + m.numExperts * (h.columns.routerLogits?.size ?? 0))
    }

    /// Throws `limit` when `rows` rows decode to more than `limit` bytes.
    static func check(rows: Int, _ h: TraceHeader, limit: Int, _ what: String, offset: Int?) throws(TraceError) {
        let per = max(1, rowBytes(h))
        if rows > limit / per {
            throw TraceError(.limit, "\(what) has \(rows) rows of \(per) decoded bytes each, over the \(limit >> 30) GiB limit (spec §8)", offset: offset)
        }
    }
}
