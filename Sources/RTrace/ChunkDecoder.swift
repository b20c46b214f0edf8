import Dispatch

/// The per-record fields of a RECORDS entry (spec/format.md §5.3).
struct RecordMeta: Sendable {
    var uid: String
    var group: String?
    var tokenCount: Int
    var promptLength: Int
    var start: Int
    var rowCount: Int
    var logprobCount: Int
    var reward: Double?
    var attributes: String?
}

/// One piece of a decoded chunk, its rows row-major as in ``TraceRecord``.
struct DecodedPiece: Sendable {
    var piece: Piece
    /// The record's fields, tokens and logprobs: present on a FIRST piece.
    var meta: RecordMeta?
    var tokens: [Int32] = []
    var logprobs: [Float] = []
    var ids: [UInt16]
    var weights: [UInt8] = []
    var logits: [UInt8] = []
    /// The workers' check of the ids (only when the decoder was asked to check).
    var idCheck: IDCheck? = nil
}

/// What a decoding worker found checking a piece's ids (see ``TraceChecker/idCheck(_:rows:L:k:E:)``).
struct IDCheck: Sendable {
    var clean: Bool
    var layerOr: [UInt16]
    var layerPresent: [Bool]
}

/// A decoded chunk frame.
struct DecodedChunk: Sendable {
    var header: ChunkHeader
    var pieces: [DecodedPiece]
    /// Extension columns this reader skipped.
    var unknownColumns: [UInt16]
}

/// Decodes and validates one chunk frame (spec/format.md §4–§6). Errors carry offsets within the frame.
struct ChunkDecoder: Sendable {
    let header: TraceHeader
    /// Check each piece's ids in the worker (``DecodedPiece/idCheck``): for `rtrace check`.
    var checkIDs = false

    init(header: TraceHeader, checkIDs: Bool = false) {
        self.header = header
        self.checkIDs = checkIDs
    }

    func decode(frame b: [UInt8]) throws(TraceError) -> DecodedChunk {
        let ch = try ChunkHeader.parse(b)
        guard b.count >= ch.frameLength else {
            throw TraceError(.truncated, "chunk frame needs \(ch.frameLength) bytes, \(b.count) available")
        }
        let L = header.model.moeLayers, k = header.model.topK, E = header.model.numExperts
        let R = ch.rowCount
        // Step 7 of spec/format.md §8: the chunk against the file header.
        try DecodeLimits.check(rows: R, header, limit: DecodeLimits.maxChunkDecodedBytes, "chunk", offset: 12)
        var byID: [UInt16: ColumnEntry] = [:]
        for e in ch.columns {
            byID[e.id] = e
            guard e.transform == 2, let c = ColumnID(rawValue: e.id) else { continue }
            if c != .idSlots {
                throw TraceError(.corrupt, "column \(c.name) has transform 2 (nibble-pack), which only \(ColumnID.idSlots.name) (ID_SLOTS) may use", offset: e.offsetInFrame)
            }
            if k > NibblePack.maxTopK {
                throw TraceError(.corrupt, "column \(c.name) is nibble-packed but top_k \(k) > \(NibblePack.maxTopK)", offset: e.offsetInFrame)
            }
        }
        let declared: [(ColumnID, Bool)] = [
            (.pieces, true), (.records, true), (.tokens, true), (.logprobs, header.columns.logprobs),
            (.idSlots, true), (.idNew, true), (.weights, header.columns.topkWeights != nil),
            (.logits, header.columns.routerLogits != nil),
        ]
        for (c, wanted) in declared where wanted != (byID[c.rawValue] != nil) {
            if wanted { throw TraceError(.corrupt, "chunk lacks the required column \(c.name)", offset: 0) }
            throw TraceError(.corrupt, "chunk has a \(c.name) column, which the header does not declare", offset: byID[c.rawValue]!.offsetInFrame)
        }
        // Step 8: every column's CRC, extension columns' included.
        var unknown: [UInt16] = []
        for e in ch.columns {
            let stored = Zlib.crc32(b[e.offsetInFrame..<e.offsetInFrame + e.storedLength])
            guard stored == e.crc else {
                throw TraceError(.checksum, "column \(columnName(e.id)) CRC mismatch: directory says \(hex32(e.crc)), data gives \(hex32(stored))", offset: e.offsetInFrame)
            }
            if ColumnID(rawValue: e.id) == nil { unknown.append(e.id) }
        }
        /// A column step 7 found present (or nil for an optional one that is absent).
        func entry(_ c: ColumnID) -> ColumnEntry? { byID[c.rawValue] }
        /// Inflates and un-shuffles a column after checking its raw length against what its content implies.
        func column(_ e: ColumnEntry, expected: Int?, width: Int) throws(TraceError) -> [UInt8] {
            if let expected, e.rawLength != expected {
                throw TraceError(.corrupt, "column \(columnName(e.id)) raw_len is \(e.rawLength), its content needs \(expected)", offset: e.offsetInFrame)
            }
            if e.transform == 1 && width > 1 && e.rawLength % width != 0 {
                throw TraceError(.corrupt, "column \(columnName(e.id)) raw_len \(e.rawLength) is not a multiple of \(width)", offset: e.offsetInFrame)
            }
            let stored = b[e.offsetInFrame..<e.offsetInFrame + e.storedLength]
            var raw: [UInt8]
            if e.codec == 1 {
                do { raw = try Zlib.inflate(stored, rawLength: e.rawLength) } catch {
                    throw TraceError(.corrupt, "column \(columnName(e.id)): \(error.message)", offset: e.offsetInFrame)
                }
            } else {
                raw = Array(stored)
            }
            if e.transform == 1 { raw = Shuffle.unshuffle(raw, width: width) }
            return raw
        }

        // Step 9: the columns in increasing id order, each length checked before it is inflated.
        // PIECES
        let pe = entry(.pieces)!
        let pb = try column(pe, expected: ch.pieceCount * 20, width: 1)
        var pieces: [Piece] = []
        pieces.reserveCapacity(ch.pieceCount)
        var rowsSum = 0
        for i in 0..<ch.pieceCount {
            let o = i * 20
            let flags = loadU32(pb, o + 8)
            let p = Piece(ordinal: loadU64(pb, o), first: flags & 1 != 0, last: flags & 2 != 0,
                          rowOffset: Int(loadU32(pb, o + 12)), rowCount: Int(loadU32(pb, o + 16)))
            func bad(_ m: String) -> TraceError { TraceError(.corrupt, "piece \(i) (record \(p.ordinal)): \(m)", offset: pe.offsetInFrame) }
            if flags & ~3 != 0 { throw bad("unknown flag bits \(hex32(flags))") }
            if !p.first && i > 0 { throw bad("only the first piece of a chunk may continue a record") }
            if !p.last && i < ch.pieceCount - 1 { throw bad("only the last piece of a chunk may continue into the next") }
            if p.first && p.rowOffset != 0 { throw bad("a record's first piece must start at row 0, not \(p.rowOffset)") }
            if p.rowCount == 0 && !(p.first && p.last) {
                throw bad("holds no rows; only the single piece of a record with no rows may (spec §5.2)")
            }
            if i > 0 && p.ordinal != pieces[i - 1].ordinal &+ 1 {
                throw bad("ordinal follows \(pieces[i - 1].ordinal); ordinals must increase by 1")
            }
            rowsSum += p.rowCount
            if rowsSum > R { throw bad("pieces hold more rows than the chunk's n_rows \(R)") }
            pieces.append(p)
        }
        guard rowsSum == R else {
            throw TraceError(.corrupt, "pieces hold \(rowsSum) rows, chunk header says \(R)", offset: pe.offsetInFrame)
        }

        // RECORDS
        let re = entry(.records)!
        let rb = try column(re, expected: nil, width: 1)
        var rr = ByteReader(rb, base: 0, what: "records column")
        var metas: [RecordMeta?] = []
        var tokenTotal = 0, logprobTotal = 0
        for p in pieces {
            guard p.first else { metas.append(nil); continue }
            func bad(_ m: String, _ kind: TraceError.Kind = .corrupt) -> TraceError {
                TraceError(kind, "record \(p.ordinal): \(m)", offset: re.offsetInFrame)
            }
            var m: RecordMeta
            do throws(TraceError) {
                let uid = try rr.string("uid", limit: 65_535)
                if uid.isEmpty { throw TraceError(.corrupt, "uid is empty") }
                let groupLen = try rr.u32("group length")
                var group: String? = nil
                if groupLen != 0xFFFF_FFFF {
                    guard groupLen <= 65_535 else { throw TraceError(.limit, "group length \(groupLen) exceeds 65535") }
                    let g = try rr.take(Int(groupLen), "group")
                    guard let s = String(validating: g, as: UTF8.self) else { throw TraceError(.corrupt, "group is not UTF-8") }
                    group = s
                }
                let nt = Int(try rr.u32("n_tokens")), pl = Int(try rr.u32("prompt_len"))
                let st = Int(try rr.u32("start")), nr = Int(try rr.u32("n_rows")), nl = Int(try rr.u32("n_logprobs"))
                let flags = try rr.u8("flags")
                let reward = try rr.u64("reward")
                let al = Int(try rr.u32("attrs length"))
                guard al <= 16 << 20 else { throw TraceError(.limit, "attributes length \(al) exceeds 16 MiB") }
                var attrs: String? = nil
                if al > 0 {
                    let ab = try rr.take(al, "attributes")
                    guard let s = String(validating: ab, as: UTF8.self) else { throw TraceError(.corrupt, "attributes are not UTF-8") }
                    do { _ = try HeaderJSON.object(ab, what: "attributes") } catch { throw TraceError(.corrupt, error.message) }
                    attrs = s
                }
                if flags & ~1 != 0 { throw TraceError(.corrupt, "unknown record flag bits \(flags)") }
                if flags & 1 == 0 && reward != 0 {
                    throw TraceError(.corrupt, "reward bytes are not zero but the has-reward flag is clear")
                }
                m = RecordMeta(uid: uid, group: group, tokenCount: nt, promptLength: pl, start: st, rowCount: nr,
                               logprobCount: nl, reward: flags & 1 != 0 ? Double(bitPattern: reward) : nil, attributes: attrs)
            } catch { throw bad(error.message, error.kind == .limit ? .limit : .corrupt) }
            if m.tokenCount > 0 {
                if m.start + m.rowCount > m.tokenCount {
                    throw bad("rows cover positions \(m.start)…\(m.start + m.rowCount - 1) but n_tokens is \(m.tokenCount)")
                }
                if m.promptLength > m.tokenCount { throw bad("prompt_len \(m.promptLength) > n_tokens \(m.tokenCount)") }
                if m.logprobCount > m.tokenCount { throw bad("n_logprobs \(m.logprobCount) > n_tokens \(m.tokenCount)") }
            }
            if !header.columns.logprobs && m.logprobCount != 0 { throw bad("n_logprobs is \(m.logprobCount) but the trace has no logprobs column") }
            try DecodeLimits.check(rows: m.rowCount, header, limit: DecodeLimits.maxRecordDecodedBytes, "record \(p.ordinal)", offset: re.offsetInFrame)
            if p.last && p.rowCount != m.rowCount { throw bad("single piece holds \(p.rowCount) rows, record says \(m.rowCount)") }
            if !p.last && p.rowCount > m.rowCount { throw bad("piece holds \(p.rowCount) rows, record says \(m.rowCount)") }
            tokenTotal += m.tokenCount
            logprobTotal += m.logprobCount
            if tokenTotal > ChunkHeader.maxColumnBytes / 4 || logprobTotal > ChunkHeader.maxColumnBytes / 4 {
                throw bad("the tokens or logprobs of the records starting in this chunk exceed 2^28 values (1 GiB)", .limit)
            }
            metas.append(m)
        }
        guard rr.atEnd else {
            throw TraceError(.corrupt, "records column has \(rr.remaining) bytes after the last record", offset: re.offsetInFrame)
        }

        // TOKENS, LOGPROBS
        let tb = try column(entry(.tokens)!, expected: tokenTotal * 4, width: 4)
        var lb: [UInt8] = []
        if let le = entry(.logprobs) {
            lb = try column(le, expected: logprobTotal * 4, width: 4)
        }

        // MISSING
        var missing: [UInt8]? = nil
        var present = L * R
        if let me = entry(.missing) {
            let mb = try column(me, expected: (L * R + 7) / 8, width: 1)
            let bits = L * R
            if bits % 8 != 0, mb[mb.count - 1] >> UInt8(bits % 8) != 0 {
                throw TraceError(.corrupt, "missing bitmap has bits set past layer × row count \(bits)", offset: me.offsetInFrame)
            }
            present -= mb.reduce(0) { $0 + $1.nonzeroBitCount }
            missing = mb
        }

        // IDS
        let se = entry(.idSlots)!
        let slots: [UInt8]
        if se.transform == 2 {
            let packed = try column(se, expected: (present * k + 1) / 2, width: 1)
            guard let codes = NibblePack.unpack(packed, count: present * k) else {
                throw TraceError(.corrupt, "column \(ColumnID.idSlots.name): the unused high nibble of its last byte is not 0", offset: se.offsetInFrame)
            }
            slots = codes
        } else {
            slots = try column(se, expected: present * k, width: 1)
        }
        let ne = entry(.idNew)!
        let width = header.idWidth
        let starts = LayerStarts(missing: missing, layers: L, chunkRows: R, slots: slots, topK: k)
        var fresh = try column(ne, expected: starts.newBefore[L] * width.size, width: width.size)
        fresh += [0, 0]  // IDCoding.decode may read (never use) two bytes past the last new id
        var out: [DecodedPiece] = []
        out.reserveCapacity(pieces.count)
        var t = 0, lp = 0
        for (p, m) in zip(pieces, metas) {
            var d = DecodedPiece(piece: p, meta: m, ids: [UInt16](repeating: TraceRecord.missing, count: p.rowCount * L * k))
            if let m {
                d.tokens = (0..<m.tokenCount).map { Int32(bitPattern: loadU32(tb, (t + $0) * 4)) }
                t += m.tokenCount
                d.logprobs = (0..<m.logprobCount).map { Float(bitPattern: loadU32(lb, (lp + $0) * 4)) }
                lp += m.logprobCount
            }
            out.append(d)
        }
        // With checkIDs, the decoder also checks each piece's ids (TraceChecker.idCheck's result).
        if let err = IDCoding.decode(slots: slots, fresh: fresh, width: width, missing: missing, pieces: &out,
                                     layers: L, topK: k, chunkRows: R, starts: starts, checkExperts: checkIDs ? E : nil) {
            throw TraceError(.corrupt, err, offset: se.offsetInFrame)
        }
        if let d = header.columns.topkWeights, let we = entry(.weights) {
            let wb = try column(we, expected: present * k * d.size, width: d.size)
            Self.scatter(wb, into: &out, per: k * d.size, L: L, missing: missing, chunkRows: R, starts: starts, \.weights)
        }
        if let d = header.columns.routerLogits, let ge = entry(.logits) {
            let gb = try column(ge, expected: present * E * d.size, width: d.size)
            Self.scatter(gb, into: &out, per: E * d.size, L: L, missing: missing, chunkRows: R, starts: starts, \.logits)
        }
        return DecodedChunk(header: ch, pieces: out, unknownColumns: unknown)
    }

    /// Decodes `frames` on up to `threads` workers; one result per frame, in order.
    func decodeConcurrently(_ frames: [[UInt8]], threads: Int) -> [Result<DecodedChunk, TraceError>] {
        let slots = SendableBuffer<Result<DecodedChunk, TraceError>?>(count: frames.count, initial: nil)
        defer { slots.free() }
        let run: @Sendable (Int) -> Void = { i in
            let results = slots.buffer
            do { results[i] = .success(try self.decode(frame: frames[i])) } catch { results[i] = .failure(error as! TraceError) }
        }
        if frames.count > 1 && threads > 1 {
            DispatchQueue.concurrentPerform(iterations: frames.count) { run($0) }
        } else {
            for i in 0..<frames.count { run(i) }
        }
        return slots.buffer.map { $0! }
    }

    /// A window of frames being decoded in the background (``decodeInBackground(_:threads:)``).
    final class BackgroundDecode: @unchecked Sendable {
        fileprivate let done = DispatchSemaphore(value: 0)
        fileprivate var results: [Result<DecodedChunk, TraceError>] = []

        /// Waits for the window and returns one result per frame, in order.
        func wait() -> [Result<DecodedChunk, TraceError>] {
            done.wait()
            done.signal()
            return results
        }
    }

    /// Starts decoding `frames` on up to `threads` workers and returns at once, so that the caller
    /// can use the previous window's chunks (or read the next frames) meanwhile.
    func decodeInBackground(_ frames: [[UInt8]], threads: Int) -> BackgroundDecode {
        let job = BackgroundDecode()
        DispatchQueue.global().async {
            job.results = self.decodeConcurrently(frames, threads: threads)
            job.done.signal()
        }
        return job
    }
}

/// Windows of chunk frames decoded one behind the other: while one window decodes in the
/// background, the caller uses the previous one (and reads the next), so no core waits for that.
struct DecodePipeline {
    /// A decoded window: each frame's offset in the file and its result, in file order.
    typealias Window = (offsets: [Int], results: [Result<DecodedChunk, TraceError>])

    let decoder: ChunkDecoder
    let threads: Int
    private var inflight: (offsets: [Int], job: ChunkDecoder.BackgroundDecode)? = nil

    init(decoder: ChunkDecoder, threads: Int) {
        self.decoder = decoder
        self.threads = threads
    }

    /// Starts decoding `window` (offset, frame), then waits for the window before it and returns it.
    mutating func push(_ window: [(offset: Int, frame: [UInt8])]) -> Window? {
        let started = window.isEmpty ? nil : (window.map(\.offset), decoder.decodeInBackground(window.map(\.frame), threads: threads))
        let previous = finish()
        inflight = started
        return previous
    }

    /// Waits for the window still decoding, if any, and returns it.
    mutating func finish() -> Window? {
        guard let (offsets, job) = inflight else { return nil }
        inflight = nil
        return (offsets, job.wait())
    }
}

extension ChunkDecoder {

    /// Scatters a layer-major column of `per` bytes per present (layer, row) into each piece's row-major
    /// bytes, walking rows with one read cursor per layer so that writes are sequential.
    static func scatter(
        _ src: [UInt8], into pieces: inout [DecodedPiece], per: Int, L: Int, missing: [UInt8]?, chunkRows R: Int,
        starts: LayerStarts, _ field: WritableKeyPath<DecodedPiece, [UInt8]>
    ) {
        precondition(src.count == starts.presentBefore[L] * per)
        // One (row, layer) is a few bytes (16 for top-8 bf16 weights): whole words, not a memmove call.
        let words = per % 8 == 0 ? per / 8 : 0
        func copy(to d: UnsafeMutableRawPointer, from s: UnsafeRawPointer) {
            if words == 2 {
                d.storeBytes(of: s.loadUnaligned(as: SIMD16<UInt8>.self), as: SIMD16<UInt8>.self)
            } else if words > 0 {
                for w in 0..<words {
                    d.storeBytes(of: s.loadUnaligned(fromByteOffset: w &* 8, as: UInt64.self), toByteOffset: w &* 8, as: UInt64.self)
                }
            } else {
                d.copyMemory(from: s, byteCount: per)
            }
        }
        var at = (0..<L).map { starts.presentBefore[$0] * per }
        var r0 = 0
        src.withUnsafeBytes { s in
            for i in pieces.indices {
                let n = pieces[i].piece.rowCount
                // Zeros where a (row, layer) is missing; otherwise every byte is written below.
                var out = missing == nil ? [UInt8](unsafeUninitializedCapacity: n * L * per) { $1 = n * L * per }
                                         : [UInt8](repeating: 0, count: n * L * per)
                out.withUnsafeMutableBytes { dst in
                    at.withUnsafeMutableBufferPointer { at in
                        let d = dst.baseAddress!, from = s.baseAddress!, stride = L &* per
                        // Blocks of 32 rows, as in IDCoding.decode: sequential reads per layer, output in cache.
                        for blockStart in Swift.stride(from: 0, to: n, by: 32) {
                            let blockEnd = min(n, blockStart &+ 32)
                            for l in 0..<L {
                                var a = at[l]
                                var o = blockStart &* stride &+ l &* per
                                for r in blockStart..<blockEnd {
                                    defer { o &+= stride }
                                    if let missing {
                                        let bit = l &* R &+ r0 &+ r
                                        if missing[bit >> 3] & (1 << UInt8(bit & 7)) != 0 { continue }
                                    }
                                    copy(to: d + o, from: from + a)
                                    a &+= per
                                }
                                at[l] = a
                            }
                        }
                    }
                }
                pieces[i][keyPath: field] = out
                r0 += n
            }
        }
    }
}
