/// Options of a ``TraceWriter``.
public struct WriterOptions: Sendable {
    /// Target raw bytes of row data (ids, weights, logits, tokens) per chunk.
    public var chunkBytes: Int = 4 << 20
    /// Deflate columns (off: every column raw, for the fastest pipes).
    public var compress: Bool = true
    /// Force each chunk to stable storage after writing it (fsync).
    public var syncEachChunk: Bool = false
    /// Nibble-pack ID_SLOTS when top_k ≤ 15 (spec/format.md §6.3); off only in tests, which read
    /// the one-byte-per-code layout older files have.
    var nibblePackSlots = true

    public init(chunkBytes: Int = 4 << 20, compress: Bool = true, syncEachChunk: Bool = false) {
        self.chunkBytes = chunkBytes
        self.compress = compress
        self.syncEachChunk = syncEachChunk
    }
}

/// Writes a trace: the header at once, each chunk as soon as it is full, the index and trailer at close.
///
/// Memory stays bounded by one chunk of rows plus the index tables. Nothing is ever rewritten or
/// seeked, so the output may be a pipe, and a writer killed mid-way leaves every complete chunk
/// readable (`rtrace check --salvage`).
///
/// ```swift
/// let w = try TraceWriter(path: "rollout.rtrace", header: header)
/// try w.append(record)
/// try w.close()
/// ```
public final class TraceWriter {
    /// The header written at the start.
    public let header: TraceHeader
    /// The options in force.
    public let options: WriterOptions
    /// Where bytes go.
    public let sink: OutputSink
    /// The index of what has been written so far.
    public private(set) var index = TraceIndex()

    private let encoder: ChunkEncoder
    private let rowBytes: Int
    private var pendingPieces: [Piece] = []
    private var pendingRecords: [TraceRecord] = []
    private var pendingBytes = 0
    private var nextOrdinal: UInt64 = 0
    private var closed = false

    /// Starts a trace on `sink`, writing the header.
    public init(sink: OutputSink, header: TraceHeader, options: WriterOptions = WriterOptions()) throws(TraceError) {
        try header.validate()
        self.header = header
        self.options = options
        self.sink = sink
        var enc = ChunkEncoder(header: header)
        enc.compress = options.compress
        enc.nibblePackSlots = options.nibblePackSlots
        self.encoder = enc
        let m = header.model
        rowBytes = max(1, m.moeLayers * m.topK * (1 + (header.columns.topkWeights?.size ?? 0))
            + m.moeLayers * m.numExperts * (header.columns.routerLogits?.size ?? 0))
        // One row must fit a chunk within the readers' decoded-size limit (spec/format.md §8).
        try DecodeLimits.check(rows: 1, header, limit: DecodeLimits.maxChunkDecodedBytes, "a chunk of this geometry", offset: nil)
        let json = header.jsonBytes()
        var h = ByteWriter(capacity: json.count + 20)
        h.append(TraceFile.magic)
        h.u16(TraceHeader.majorVersion)
        h.u16(TraceHeader.minorVersion)
        h.u32(UInt32(json.count))
        h.append(json)
        h.u32(Zlib.crc32(h.bytes))
        try sink.write(h.bytes)
    }

    /// Starts a trace at `path` (`-` = standard output).
    public convenience init(path: String, header: TraceHeader, options: WriterOptions = WriterOptions()) throws(TraceError) {
        try self.init(sink: try OutputSink(path: path), header: header, options: options)
    }

    /// Records written (or pending) so far.
    public var recordCount: Int { Int(nextOrdinal) }

    /// Adds one record; writes chunks as they fill. The record's shapes are checked first.
    public func append(_ record: TraceRecord) throws(TraceError) {
        precondition(!closed, "append after close")
        try record.validateShape(header)
        try DecodeLimits.check(rows: record.rowCount, header, limit: DecodeLimits.maxRecordDecodedBytes, "record \(record.uid)", offset: nil)
        let ordinal = nextOrdinal
        nextOrdinal += 1
        // Decoded, a row takes at most twice `rowBytes` (ids widen to u16): half the readers' decoded
        // limit per chunk keeps every chunk readable (spec/format.md §8).
        let budget = min(max(options.chunkBytes, rowBytes), DecodeLimits.maxChunkDecodedBytes / 2)
        var extra = (record.tokens.count + record.logprobs.count) * 4 + record.uid.utf8.count + 64
        var offset = 0
        repeat {
            if pendingBytes > 0 && pendingBytes + extra + rowBytes > budget && offset == 0 && record.rowCount > 0 {
                try flush()
            }
            let room = max(1, (budget - pendingBytes - extra) / rowBytes)
            let n = min(record.rowCount - offset, room)
            let last = offset + n == record.rowCount
            pendingPieces.append(Piece(ordinal: ordinal, first: offset == 0, last: last, rowOffset: offset, rowCount: n))
            pendingRecords.append(record)
            pendingBytes += n * rowBytes + extra
            extra = 0
            offset += n
            if !last || pendingBytes >= budget || pendingPieces.count >= 65_536 { try flush() }
        } while offset < record.rowCount
    }

    /// Writes the pending rows as a chunk now (a smaller chunk), so they survive a crash.
    public func flush() throws(TraceError) {
        guard !pendingPieces.isEmpty else { return }
        let frame = encoder.encode(pieces: pendingPieces, records: pendingRecords)
        let offset = sink.offset
        try sink.write(frame)
        if options.syncEachChunk { sink.sync() }
        index.addChunk(offset: offset, frameLength: frame.count, pieces: pendingPieces,
                       firstRecords: zip(pendingPieces, pendingRecords).filter { $0.0.first }.map { ($0.1.uid, $0.1.rowCount, $0.1.tokens.count) })
        pendingPieces.removeAll(keepingCapacity: true)
        pendingRecords.removeAll(keepingCapacity: true)
        pendingBytes = 0
    }

    /// Writes the last chunk, the index and the trailer, and closes the file.
    public func close() throws(TraceError) {
        guard !closed else { return }
        try flush()
        closed = true
        let frame = index.encodeFrame()
        let at = sink.offset
        try sink.write(frame)
        try sink.write(TraceIndex.trailer(indexOffset: at, indexLength: frame.count, chunkCount: index.chunks.count))
        try sink.close()
    }
}

/// Constants of the file layout.
public enum TraceFile {
    /// The 8-byte magic at offset 0: `\x89RTR\r\n\x1a\n`.
    public static let magic: [UInt8] = [0x89, 0x52, 0x54, 0x52, 0x0D, 0x0A, 0x1A, 0x0A]
    /// The header JSON size limit.
    public static let maxHeaderJSON = 16 << 20
}
