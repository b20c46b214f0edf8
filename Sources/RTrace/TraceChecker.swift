/// One problem `rtrace check` found.
public struct CheckIssue: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Sendable { case error, warning }
    public var severity: Severity
    /// Byte offset of the frame or structure concerned.
    public var offset: Int?
    /// The record (uid, or ordinal) concerned.
    public var record: String?
    public var message: String

    public var description: String {
        var s = "\(severity.rawValue):"
        if let offset { s += " offset \(offset):" }
        if let record { s += " record \(record):" }
        return s + " " + message
    }
}

/// What `rtrace check` found in a file.
public struct CheckReport: Sendable {
    public var issues: [CheckIssue] = []
    public var chunks = 0
    public var badChunks = 0
    /// Records fully intact (all pieces in intact chunks).
    public var records = 0
    public var rows = 0
    /// Records that could not be recovered (they touch a damaged chunk).
    public var lostRecords = 0
    /// The file ended with a valid index and trailer.
    public var complete = false
    /// Whether nothing is wrong.
    public var clean: Bool { !issues.contains { $0.severity == .error } }
}

/// Verifies every checksum and invariant of a trace, and recovers what is intact (spec/format.md §8).
public enum TraceChecker {
    /// Scans `path` frame by frame. With `salvage`, writes every intact record to that path.
    ///
    /// Damage never stops the scan on a regular file: after a bad chunk the checker looks for the
    /// next chunk whose header checksum holds. On a pipe the scan stops at the first damage.
    public static func check(path: String, salvage: String? = nil, maxIssues: Int = 1000) throws -> CheckReport {
        try check(source: try InputSource(path: path), salvage: salvage, maxIssues: maxIssues)
    }

    /// Scans an opened source (a file, a pipe, or bytes in memory) as ``check(path:salvage:maxIssues:)`` does.
    public static func check(source: InputSource, salvage: String? = nil, maxIssues: Int = 1000) throws -> CheckReport {
        var report = CheckReport()
        let header: TraceHeader, start: Int
        do { (header, start) = try TraceReader.readHeader(source) } catch {
            report.issues.append(CheckIssue(severity: .error, offset: error.offset, record: nil, message: error.message))
            return report
        }
        let writer = try salvage.map { try TraceWriter(path: $0, header: header) }
        for n in TraceReader.headerNotices(header) {
            report.issues.append(CheckIssue(severity: .warning, offset: nil, record: nil, message: n))
        }
        let decoder = ChunkDecoder(header: header, checkIDs: true)
        var state = Assembly(header: header)
        let log = IssueLog(limit: maxIssues)
        let issue = log.add
        var pos = start
        // The index the intact chunks imply, compared field by field with the file's when nothing was damaged.
        var rebuilt = TraceIndex()
        var allZero = [Bool](repeating: true, count: header.model.moeLayers)
        var anyPresent = [Bool](repeating: false, count: header.model.moeLayers)
        var capture = CaptureCheck(header: header)
        let size = source.size
        // Intact frames wait here and are decoded a window at a time on every core, then checked in
        // file order. One window decodes in the background while the previous one is checked and the
        // next one read (``launch()``); ``drain()`` finishes both.
        var pending: [(offset: Int, frame: [UInt8])] = []
        let threads = min(ProcessInfoCores.count, 8)
        var pipeline = DecodePipeline(decoder: decoder, threads: threads)
        let window = max(1, threads)
        func launch() throws {
            let previous = pipeline.push(pending)
            pending.removeAll(keepingCapacity: true)
            if let (o, r) = previous { try process(o, r) }
        }
        func drain() throws {
            try launch()
            if let (o, r) = pipeline.finish() { try process(o, r) }
        }
        func process(_ offsets: [Int], _ results: [Result<DecodedChunk, TraceError>]) throws {
            for (at, result) in zip(offsets, results) {
                do {
                    let d = try result.get()
                    for id in d.unknownColumns { issue(.warning, at, nil, "skipped unknown extension column #\(id)") }
                    try state.add(d, at: at, log) { rec, clean in
                        // Records the workers found clean skip the slow path, which names each problem.
                        if !clean { validate(rec, header, at, &allZero, &anyPresent, issue) }
                        for i in capture.add(rec, offset: at) { issue(i.severity, i.offset, i.record, i.message) }
                        try writer?.append(rec)
                    }
                    rebuilt.addChunk(offset: at, d)
                } catch {
                    guard let e = error as? TraceError, e.kind != .io else { throw error }
                    issue(.error, at + (e.offset ?? 0), nil, "chunk at \(at): \(e.message)")
                    report.badChunks += 1
                    state.damage(log, at: at)
                }
            }
        }

        func readAt(_ off: Int, _ n: Int) throws -> [UInt8] {
            if size != nil { return try source.read(at: off, count: n) }
            return try source.read(upTo: n)
        }
        /// The forward search of a salvage (spec/format.md §8): the next offset from `from` holding a chunk whose
        /// header passes its checks or an index frame whose CRC holds (seekable files only; a pipe stops).
        var searched = false
        func resync(from: Int) throws -> Int? {
            searched = true
            guard let size else {
                issue(.error, from, nil, "a pipe cannot be searched: the rest of the input was not examined")
                return nil
            }
            var at = from
            let block = 1 << 20
            while at + 20 <= size {
                let buf = try source.read(at: at, count: min(block + 4096, size - at))
                var i = 0
                while i < block && i + 4 <= buf.count {
                    if buf[i] == 0x52, buf[i + 1] == 0x54, buf[i + 2] == 0x43, buf[i + 3] == 0x4B {
                        if let hl = try? ChunkHeader.headerLength(fixed: try source.read(at: at + i, count: 24)[...]),
                           (try? ChunkHeader.parse(try source.read(at: at + i, count: hl))) != nil {
                            return at + i
                        }
                    } else if buf[i] == 0x52, buf[i + 1] == 0x54, buf[i + 2] == 0x49, buf[i + 3] == 0x58,
                              let n = try? TraceIndex.bodyLength(prefix: try source.read(at: at + i, count: 16)),
                              at + i + 20 + n <= size {
                        let f = try source.read(at: at + i, count: 20 + n)
                        if Zlib.crc32(Array(f[0..<16 + n])) == loadU32(f, 16 + n) { return at + i }
                    }
                    i += 1
                }
                at += block
            }
            return nil
        }

        scan: while true {
            if let size, pos >= size {
                try drain()
                issue(.error, pos, nil, "file ends after \(pos) bytes without index and trailer: truncated or still being written")
                break
            }
            let magic = try readAt(pos, 4)
            // Every chunk before `pos` is checked before anything at `pos` is reported.
            if magic != Array("RTCK".utf8) { try drain() }
            if magic.isEmpty {
                issue(.error, pos, nil, "input ends after \(pos) bytes without index and trailer: truncated or still being written")
                break
            }
            if magic == Array("RTIX".utf8) {
                var frame = magic + (try readAt(pos + 4, 12))
                guard let n = try? TraceIndex.bodyLength(prefix: frame), size.map({ pos + 20 + n <= $0 }) ?? true else {
                    issue(.error, pos, nil, "index frame header is damaged or runs past the end")
                    break
                }
                frame += try readAt(pos + 16, n + 4)
                var listed: Int? = nil
                do {
                    let ix = try TraceIndex.decodeFrame(frame)
                    listed = ix.chunks.count
                    // The chunks win (spec/format.md §7). After damage the scan holds less than the file, and the
                    // damage is reported already: the index is compared with a scan that found nothing wrong.
                    if report.badChunks == 0 && !searched, let why = rebuilt.firstDifference(from: ix) {
                        issue(.error, pos, nil, "index disagrees with the chunks: \(why)")
                    }
                } catch {
                    issue(.error, pos + (error.offset ?? 0), nil, "index: \(error.message)")
                }
                let t = try readAt(pos + 20 + n, 32)
                if let tr = TraceIndex.parseTrailer(t), tr.indexOffset != pos || tr.indexLength != 20 + n || (listed.map { $0 != tr.chunkCount } ?? false) {
                    issue(.error, pos + 20 + n, nil, "trailer names an index at \(tr.indexOffset) of \(tr.indexLength) bytes and \(tr.chunkCount) chunks; the index is at \(pos), \(20 + n) bytes")
                } else if TraceIndex.parseTrailer(t) == nil {
                    issue(.error, pos + 20 + n, nil, "index is not followed by a valid trailer")
                } else if let size, pos + 20 + n + 32 != size {
                    issue(.error, pos + 20 + n + 32, nil, "\(size - pos - 20 - n - 32) bytes follow the trailer")
                } else if size == nil, !(try readAt(pos + 20 + n + 32, 1)).isEmpty {
                    issue(.error, pos + 20 + n + 32, nil, "bytes follow the trailer")
                } else if listed != nil {
                    // A valid index (CRC and body) and trailer: the file is complete (spec/format.md §7).
                    report.complete = true
                }
                break
            }
            guard magic == Array("RTCK".utf8) else {
                issue(.error, pos, nil, "expected a frame (RTCK or RTIX), found \(hexPreview(magic))")
                state.damage(log, at: pos)
                if let next = try resync(from: pos + 1) { pos = next; continue } else { break }
            }
            let fixed = magic + (try readAt(pos + 4, 20))
            let parsed = try parseChunkHeader(fixed, at: pos, readAt)
            if case .failure(let why) = parsed {
                try drain()
                issue(.error, why.offset, nil, why.message)
                report.badChunks += 1
                state.damage(log, at: pos)
                if why.kind == .truncated { break }
                if let next = try resync(from: pos + 1) { pos = next; continue } else { break }
            }
            guard case .success(let (ch, headerBytes)) = parsed else { break }
            if let size, pos + ch.frameLength > size {
                try drain()
                issue(.error, pos, nil, "chunk needs \(ch.frameLength) bytes but the file ends \(size - pos) bytes after its start: truncated")
                report.badChunks += 1
                state.damage(log, at: pos)
                break
            }
            // parseChunkHeader read the whole header (a pipe cannot read it again): read the payload after it.
            let frame = headerBytes + (try readAt(pos + ch.headerLength, ch.payloadLength))
            guard frame.count == ch.frameLength else {
                try drain()
                issue(.error, pos, nil, "input ends inside a chunk: truncated")
                report.badChunks += 1
                state.damage(log, at: pos)
                break
            }
            report.chunks += 1
            pending.append((pos, frame))
            if pending.count >= window { try launch() }
            pos += ch.frameLength
        }
        try drain()
        state.finish(log)
        for l in 0..<header.model.moeLayers where state.layerPresent[l] {
            anyPresent[l] = true
            if state.layerOr[l] != 0 { allZero[l] = false }
        }
        for (l, z) in allZero.enumerated() where z && anyPresent[l] && header.model.numExperts > 1 {
            issue(.error, nil, nil, "MoE layer \(header.model.layerMap[l]): every expert id is 0 — the routing of this layer was never captured")
        }
        for i in capture.finish() { issue(i.severity, i.offset, i.record, i.message) }
        report.issues = log.issues
        report.lostRecords = log.lostRecords
        report.records = state.emitted
        report.rows = state.rows
        try writer?.close()
        return report
    }

    /// Reads and parses a chunk header at `pos`, as a result so the scan can go on after damage.
    static func parseChunkHeader(
        _ fixed: [UInt8], at pos: Int, _ readAt: (Int, Int) throws -> [UInt8]
    ) throws -> Result<(ChunkHeader, [UInt8]), TraceError> {
        if fixed.count < 24 { return .failure(TraceError(.truncated, "input ends inside a chunk header: truncated", offset: pos)) }
        let l: Int
        do { l = try ChunkHeader.headerLength(fixed: fixed[...]) } catch {
            return .failure(TraceError(.corrupt, "chunk header: \(error.message)", offset: pos + (error.offset ?? 0)))
        }
        let hb = fixed + (try readAt(pos + 24, l - 24))
        if hb.count < l { return .failure(TraceError(.truncated, "input ends inside a chunk header: truncated", offset: pos)) }
        do { return .success((try ChunkHeader.parse(hb), hb)) } catch {
            return .failure(TraceError(error.kind, "chunk header: \(error.message)", offset: pos + (error.offset ?? 0)))
        }
    }

    /// Checks a record's invariants: ids below num_experts, no expert twice in a (row, layer), logprob/prompt bounds.
    static func validate(
        _ rec: TraceRecord, _ h: TraceHeader, _ offset: Int, _ allZero: inout [Bool], _ anyPresent: inout [Bool],
        _ issue: (CheckIssue.Severity, Int?, String?, String) -> Void
    ) {
        let L = h.model.moeLayers, k = h.model.topK, E = h.model.numExperts
        var reported = 0
        rec.expertIDs.withUnsafeBufferPointer { ids in
            for r in 0..<rec.rowCount {
                for l in 0..<L {
                    let b = (r * L + l) * k
                    let first = ids[b]
                    var partial = false
                    for j in 0..<k {
                        let e = ids[b + j]
                        if (e == TraceRecord.missing) != (first == TraceRecord.missing) { partial = true }
                        if e == TraceRecord.missing { continue }
                        anyPresent[l] = true
                        if e != 0 { allZero[l] = false }
                        if Int(e) >= E, reported < 20 {
                            issue(.error, offset, rec.uid, "row \(r) (position \(rec.start + r)) layer \(h.model.layerMap[l]) slot \(j): expert id \(e) is not below num_experts \(E)")
                            reported += 1
                        }
                        for q in 0..<j where ids[b + q] == e {
                            if reported < 20 {
                                issue(.error, offset, rec.uid, "row \(r) (position \(rec.start + r)) layer \(h.model.layerMap[l]): expert \(e) chosen twice (slots \(q) and \(j)); duplicates break all-to-all dispatch")
                            }
                            reported += 1
                        }
                    }
                    if partial && reported < 20 {
                        issue(.error, offset, rec.uid, "row \(r) layer \(h.model.layerMap[l]): some slots missing, some present")
                        reported += 1
                    }
                }
            }
        }
    }

    /// The common case, checked by the decoding workers: every (row, layer) of `rows` rows wholly
    /// present or wholly missing, ids below `E`, no expert twice. Per layer, whether any row is
    /// present and the OR of its ids (zero means every id is 0: a capture that never happened).
    /// For top_k ≤ 8 the SIMD id decoder checks the same while it decodes (``IDCoding/decode``), and
    /// calls this only for a piece it flags, so that an unclean piece gets exactly this result.
    static func idCheck(_ ids: UnsafeBufferPointer<UInt16>, rows: Int, L: Int, k: Int, E: Int) -> IDCheck {
        var c = IDCheck(clean: true, layerOr: [UInt16](repeating: 0, count: L), layerPresent: [Bool](repeating: false, count: L))
        var seen = [UInt64](repeating: 0, count: (E + 63) / 64)
        c.clean = seen.withUnsafeMutableBufferPointer { seen in
            var b = 0
            for _ in 0..<rows {
                for l in 0..<L {
                    defer { b += k }
                    if ids[b] == TraceRecord.missing {
                        for j in 1..<max(k, 1) where ids[b + j] != TraceRecord.missing { return false }
                        continue
                    }
                    c.layerPresent[l] = true
                    var or: UInt16 = 0, dup: UInt64 = 0, high = 0
                    for j in 0..<k {
                        let e = Int(ids[b &+ j])
                        high |= (E &- 1 &- e) >> 63  // 1 when e ≥ E
                        let w = min(e, E &- 1) >> 6, bit: UInt64 = 1 << UInt64(e & 63)
                        dup |= seen[w] & bit
                        seen[w] |= bit
                        or |= UInt16(e)
                    }
                    for j in 0..<k { seen[min(Int(ids[b &+ j]), E &- 1) >> 6] = 0 }
                    if dup != 0 || high != 0 { return false }
                    c.layerOr[l] |= or
                }
            }
            return true
        }
        return c
    }

    /// Record assembly that survives damage: records touching a bad chunk are counted as lost.
    struct Assembly {
        let header: TraceHeader
        var expected: UInt64 = 0
        var resyncing = false
        /// A record already counted as lost whose later pieces may still appear.
        var droppedOrdinal: UInt64? = nil
        var emitted = 0
        var rows = 0
        var partial: (meta: RecordMeta, ordinal: UInt64, pieces: [DecodedPiece], rows: Int)? = nil
        /// Per MoE layer, over the clean records emitted: any row present, and the OR of the ids.
        var layerPresent: [Bool]
        var layerOr: [UInt16]

        init(header: TraceHeader) {
            self.header = header
            layerPresent = [Bool](repeating: false, count: header.model.moeLayers)
            layerOr = [UInt16](repeating: 0, count: header.model.moeLayers)
        }

        /// Damage at `at`: the frames up to the next intact chunk are lost. The record left open is kept
        /// until the next intact chunk shows whether it continues it exactly (spec/format.md §8).
        mutating func damage(_ log: IssueLog, at: Int) {
            resyncing = true
        }

        /// Counts the open record as lost.
        mutating func loseOpenRecord(_ log: IssueLog, at: Int?, _ why: String) {
            guard let p = partial else { return }
            log.add(.error, at, p.meta.uid, "record \(p.ordinal) is lost: \(why)")
            log.lostRecords += 1
            expected = p.ordinal &+ 1
            droppedOrdinal = p.ordinal
            partial = nil
        }

        mutating func add(
            _ d: DecodedChunk, at off: Int, _ log: IssueLog, _ emit: (TraceRecord, _ clean: Bool) throws -> Void
        ) throws {
            let issue = log.add
            let assembler = RecordAssembler(header: header, file: "")
            for piece in d.pieces {
                let p = piece.piece
                if resyncing {
                    // After damage: go on with the open record if this piece continues it exactly, else count
                    // what was lost and skip to the next record that starts here.
                    if !p.first, let part = partial, part.ordinal == p.ordinal, p.rowOffset == part.rows {
                        resyncing = false
                    } else {
                        loseOpenRecord(log, at: off, "its remaining pieces are in a damaged or missing chunk")
                        if p.ordinal > expected {
                            issue(.error, off, nil, "records \(expected)…\(p.ordinal - 1) are lost with the damaged data")
                            log.lostRecords += min(Int(clamping: p.ordinal - expected), 1 << 48)
                        }
                        if !p.first {
                            if p.ordinal != droppedOrdinal {
                                issue(.error, off, "\(p.ordinal)", "record \(p.ordinal) is lost: its first piece was in a damaged chunk")
                                log.lostRecords += 1
                                droppedOrdinal = p.ordinal
                            }
                            expected = p.ordinal &+ 1
                            continue
                        }
                        expected = p.ordinal
                        resyncing = false
                    }
                }
                if p.first {
                    if let part = partial {
                        throw TraceError(.corrupt, "record \(part.ordinal) ends without its last piece", offset: 0)
                    }
                    guard p.ordinal == expected else {
                        throw TraceError(.corrupt, "record ordinal \(p.ordinal), expected \(expected): a chunk is missing or out of order", offset: 0)
                    }
                    expected &+= 1
                    partial = (piece.meta!, p.ordinal, [piece], p.rowCount)
                } else {
                    guard let part = partial, part.ordinal == p.ordinal, p.rowOffset == part.rows else {
                        throw TraceError(.corrupt, "piece of record \(p.ordinal) at row \(p.rowOffset) does not continue the previous chunk", offset: 0)
                    }
                    partial!.pieces.append(piece)
                    partial!.rows += p.rowCount
                }
                if partial!.rows > partial!.meta.rowCount {
                    throw TraceError(.corrupt, "record \(p.ordinal) pieces hold more rows than its \(partial!.meta.rowCount)", offset: 0)
                }
                if p.last {
                    // Checked before the record is closed, so that a salvage counts it as lost.
                    guard partial!.rows == partial!.meta.rowCount else {
                        throw TraceError(.corrupt, "record \(p.ordinal) ends with \(partial!.rows) rows, it declares \(partial!.meta.rowCount)", offset: 0)
                    }
                    let part = partial!
                    partial = nil
                    emitted += 1
                    rows += part.rows
                    let clean = part.pieces.allSatisfy { $0.idCheck?.clean == true }
                    if clean {
                        for c in part.pieces.compactMap(\.idCheck) {
                            for l in 0..<c.layerOr.count {
                                layerOr[l] |= c.layerOr[l]
                                layerPresent[l] = layerPresent[l] || c.layerPresent[l]
                            }
                        }
                    }
                    try emit(assembler.makeRecord(part.meta, part.pieces), clean)
                }
            }
        }

        mutating func finish(_ log: IssueLog) {
            loseOpenRecord(log, at: nil, "the file ends before its last piece")
        }
    }
}

/// Collects issues (up to a limit) and lost-record counts during a check.
final class IssueLog {
    var issues: [CheckIssue] = []
    var lostRecords = 0
    let limit: Int

    init(limit: Int) { self.limit = limit }

    func add(_ severity: CheckIssue.Severity, _ offset: Int?, _ record: String?, _ message: String) {
        if issues.count < limit { issues.append(CheckIssue(severity: severity, offset: offset, record: record, message: message)) }
    }
}
