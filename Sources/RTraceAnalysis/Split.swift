import Foundation
import RTrace

/// One output of ``splitTrace(_:count:chunks:header:prefix:raw:threads:)``: uid part `index` of `count`.
public struct SplitPart: Codable, Equatable, Sendable {
    public var index: Int
    public var file: String
    public var records: Int, rows: Int
}

/// What ``splitTrace(_:count:chunks:header:prefix:raw:threads:)`` wrote (`rtrace split` prints it as JSON).
public struct SplitSummary: Codable, Equatable, Sendable {
    public var input: String
    /// The part of the input read (`--chunks`); nil for all of it.
    public var chunkRange: ChunkRange?
    public var count: Int
    public var records: Int, rows: Int
    public var parts: [SplitPart]
    enum CodingKeys: String, CodingKey { case input, chunkRange = "chunk_range", count, records, rows, parts }
}

/// Splits the records of `path` (or, with `chunks` `FIRST:END`, of that range of a complete file) into
/// `count` traces by uid: record `r` goes to part `crc32(r.uid) % count` (as `rtrace diff --uid-shard`), so
/// the parts of two sides' files are co-partitioned. Part `i` is written to `prefix.i.rtrace`, every part
/// even when empty, complete when this returns (each is written to a temporary name and renamed).
///
/// `header` (default: the input's) is the header the parts carry: of the input's geometry, its optional
/// columns a subset of the input's, float columns converted to its types (several files' parts then
/// concatenate under one header). `raw` stores columns uncompressed (for parts read back at once);
/// `threads` decode the input.
public func splitTrace(_ path: String, count: Int, chunks: String? = nil, header: TraceHeader? = nil,
                       prefix: String, raw: Bool = false,
                       threads: Int = ProcessInfo.processInfo.activeProcessorCount) throws -> SplitSummary {
    guard count >= 1 else { throw TraceError(.invalidInput, "--uid-shards must be at least 1, got \(count)") }
    let reader = try openAll([path])[0]
    reader.threads = max(1, threads)
    let out = header ?? reader.header
    try checkSameGeometry(reader.header.model, out.model, path, "the header to write")
    let have = reader.header.columns, want = out.columns
    func missing(_ c: String) -> TraceError {
        TraceError(.invalidInput, "the header to write has the column \(c), which the trace does not carry", file: path)
    }
    if want.topkWeights != nil && have.topkWeights == nil { throw missing("topk_weights") }
    if want.routerLogits != nil && have.routerLogits == nil { throw missing("router_logits") }
    if want.logprobs && !have.logprobs { throw missing("logprobs") }

    var range: ChunkRange? = nil
    if let chunks {
        guard let index = reader.index else {
            throw TraceError(.invalidInput, "--chunks needs a complete file with an index (this one is unfinished or a stream)", file: path)
        }
        range = try ChunkRange(parsing: chunks, file: path, chunks: index.chunks.count)
    }
    let names = (0..<count).map { "\(prefix).\($0).rtrace" }
    let staged = names.map { StagedOutput(path: $0) }
    let writers = try staged.map { try TraceWriter(path: $0.writePath, header: out, options: WriterOptions(compress: !raw)) }
    var parts = names.enumerated().map { SplitPart(index: $0.offset, file: $0.element, records: 0, rows: 0) }
    func add(_ r: TraceRecord) throws {
        var r = r
        r.weights = want.topkWeights.flatMap { d in r.weights.map { $0.dtype == d ? $0 : FloatArray(dtype: d, values: $0.floats) } }
        r.logits = want.routerLogits.flatMap { d in r.logits.map { $0.dtype == d ? $0 : FloatArray(dtype: d, values: $0.floats) } }
        if !want.logprobs { r.logprobs = [] }
        let p = Int(TraceRecord.uidHash(r.uid) % UInt32(count))
        try writers[p].append(r)
        parts[p].records += 1
        parts[p].rows += r.rowCount
    }
    do {
        if let range, let index = reader.index {
            let run = range.run(in: index)
            if !run.records.isEmpty {
                try RecordRunReader(readers: [reader], window: max(1, threads)).forEachRecord([(reader: 0, run: run)]) { _, _, r in try add(r) }
            }
        } else {
            try reader.forEachRecord(add)
        }
        for w in writers { try w.close() }
        for s in staged { try s.commit() }
    } catch {
        for s in staged { s.abandon() }
        throw error
    }
    return SplitSummary(input: path, chunkRange: range, count: count, records: parts.reduce(0) { $0 + $1.records },
                        rows: parts.reduce(0) { $0 + $1.rows }, parts: parts)
}
