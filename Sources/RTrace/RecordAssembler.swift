/// Joins the pieces of records across chunks, checking ordinals and row offsets (spec/format.md §5.2).
struct RecordAssembler {
    let header: TraceHeader
    let file: String
    /// When set, only this ordinal is emitted and the stream need not start at ordinal 0.
    var only: UInt64? = nil
    /// When set, only these ordinals are emitted: pieces before the first piece of the first are
    /// skipped, and pieces after the last record are ignored (chunks read for a run of records).
    var records: Range<UInt64>? = nil
    /// Set once the last of ``records`` was emitted.
    private(set) var done = false
    private var expected: UInt64 = 0
    private var started = false
    private var partial: (meta: RecordMeta, ordinal: UInt64, pieces: [DecodedPiece], rows: Int)? = nil

    init(header: TraceHeader, file: String, only: UInt64? = nil, records: Range<UInt64>? = nil) {
        self.header = header
        self.file = file
        self.only = only
        self.records = records
        done = records?.isEmpty ?? false
    }

    mutating func add(_ chunk: DecodedChunk, at offset: Int, _ emit: (TraceRecord) throws -> Void) throws {
        func bad(_ m: String) -> TraceError { TraceError(.corrupt, m, file: file, offset: offset) }
        for d in chunk.pieces {
            if done { return }
            let p = d.piece
            if let w = records, !started {
                guard p.first && p.ordinal == w.lowerBound else { continue }
                expected = p.ordinal
            }
            if only != nil && !started && !p.first { continue }
            if only != nil && !started { expected = p.ordinal }
            started = true
            if p.first {
                if let part = partial { throw bad("record \(part.ordinal) (\(part.meta.uid)) ends without its last piece") }
                guard p.ordinal == expected else { throw bad("record ordinal \(p.ordinal), expected \(expected): a chunk is missing or out of order") }
                expected &+= 1
                partial = (d.meta!, p.ordinal, [d], p.rowCount)
            } else {
                guard let part = partial, part.ordinal == p.ordinal else {
                    throw bad("piece of record \(p.ordinal) continues a record that did not start")
                }
                guard p.rowOffset == part.rows else { throw bad("record \(p.ordinal) piece starts at row \(p.rowOffset), expected \(part.rows)") }
                partial!.pieces.append(d)
                partial!.rows += p.rowCount
            }
            if partial!.rows > partial!.meta.rowCount {
                throw bad("record \(p.ordinal) pieces hold more rows than its \(partial!.meta.rowCount)")
            }
            if p.last {
                let part = partial!
                partial = nil
                guard part.rows == part.meta.rowCount else {
                    throw bad("record \(p.ordinal) ends with \(part.rows) rows, it declares \(part.meta.rowCount)")
                }
                if only == nil || only == part.ordinal { try emit(makeRecord(part.meta, part.pieces)) }
                if only != nil && only == part.ordinal { return }
                if let w = records, part.ordinal + 1 >= w.upperBound { done = true; return }
            }
        }
    }

    /// Throws when a record is still open at the end: `truncated` when the input ended without a trailer,
    /// `corrupt` when it reached the index (`complete`).
    mutating func finish(complete: Bool = false) throws {
        if let part = partial, !done {
            if complete {
                throw TraceError(.corrupt, "record \(part.ordinal) (\(part.meta.uid)) has no LAST piece before the index", file: file)
            }
            throw TraceError(.truncated, "record \(part.ordinal) (\(part.meta.uid)) has \(part.rows) of \(part.meta.rowCount) rows: its last piece is missing", file: file)
        }
    }

    func makeRecord(_ m: RecordMeta, _ pieces: [DecodedPiece]) -> TraceRecord {
        let L = header.model.moeLayers, k = header.model.topK
        var ids: [UInt16]
        var w: [UInt8], g: [UInt8]
        if pieces.count == 1 {
            ids = pieces[0].ids; w = pieces[0].weights; g = pieces[0].logits
        } else {
            ids = []; w = []; g = []
            ids.reserveCapacity(m.rowCount * L * k)
            for p in pieces { ids += p.ids; w += p.weights; g += p.logits }
        }
        return TraceRecord(
            uid: m.uid, group: m.group, tokens: pieces[0].tokens, promptLength: m.promptLength, start: m.start,
            rowCount: m.rowCount, layers: L, topK: k, expertIDs: ids,
            weights: header.columns.topkWeights.map { FloatArray(dtype: $0, bytes: w) },
            logits: header.columns.routerLogits.map { FloatArray(dtype: $0, bytes: g) },
            logprobs: pieces[0].logprobs, reward: m.reward, attributes: m.attributes)
    }
}
