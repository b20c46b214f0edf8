/// Reads `.npz` arrays (the layout ``NpzConversion`` describes) as trace records, one sequence at a
/// time: `rtrace import --from npz` and `--from npy`.
///
/// The large arrays (`topk_ids`, `topk_weights`, `router_logits`, `tokens`, `logprobs`) are read
/// through one cursor each, in blocks of rows, and a record is handed out as soon as its sequence
/// is read; the per-sequence arrays (`prompt_len`, `uids`, ...) are read whole. Memory is one
/// sequence (its record) plus one block per array, whatever the archive's size. A member is never
/// inflated past what its `.npy` header declares (see ``NpyStream``), and its CRC is checked when
/// the last record has been read.
///
/// ```swift
/// let imp = try NpzImport(npz: "rollout.npz", options: ImportOptions())
/// let w = try TraceWriter(path: "rollout.rtrace", header: imp.header)
/// while let r = try imp.next() { try w.append(r) }
/// try w.close()
/// ```
public final class NpzImport {
    /// The trace header the arrays describe.
    public let header: TraceHeader
    /// Sequences (records) in the arrays.
    public let sequences: Int
    /// The input, for errors (nil for arrays in memory).
    public let file: String?

    private let archive: NpzArchive?
    private let ids: NpyStream
    private let weights: NpyStream?, logits: NpyStream?, tokens: NpyStream?, logprobs: NpyStream?
    private let promptLen: NpyArray?, starts: NpyArray?, nRows: NpyArray?, nTokens: NpyArray?
    private let nLogprobs: NpyArray?, rewards: NpyArray?, uids: NpyArray?, groups: NpyArray?
    /// Geometry: rows per sequence, layer-axis length, top-k, MoE layers, experts, tokens and logprobs per sequence.
    private let R: Int, LA: Int, k: Int, L: Int, E: Int, T: Int, N: Int
    private let fullAxis: Bool
    private let layerMap: [Int]
    private let uidPrefix: String
    private let idKind: IntKind
    /// Rows read per block (about 4 MiB of the widest row-shaped array).
    private let blockRows: Int
    /// The next sequence.
    private var s = 0
    /// Reused buffers: a block of raw elements, and its ids widened.
    private var raw: [UInt8] = [], wide: [Int64] = []
    /// Checks ids and maps them to MoE layers.
    private var checker: IDChecker

    /// Opens an `.npz` at `path` (`-` = standard input, spooled to a temporary file).
    public convenience init(npz path: String, options: ImportOptions) throws(TraceError) {
        try self.init(npz: path, options: options, blockBytes: 4 << 20)
    }

    /// Opens an `.npz`, reading blocks of about `blockBytes` (tests use small blocks).
    convenience init(npz path: String, options: ImportOptions, blockBytes: Int) throws(TraceError) {
        let a = try NpzArchive(path: path)
        try self.init(names: a.names, file: path, archive: a, options: options, blockBytes: blockBytes) { name throws(TraceError) in try a.stream(name) }
    }

    /// Opens a single `.npy` of `topk_ids` at `path` (`-` = standard input, read as it arrives).
    public convenience init(npy path: String, options: ImportOptions) throws(TraceError) {
        let stream: NpyStream
        do { stream = try NpyStream(source: InputByteSource(try InputSource(path: path)), name: path) } catch { throw error.inFile(path) }
        try self.init(names: ["topk_ids"], file: path, archive: nil, options: options, blockBytes: 4 << 20) { name in name == "topk_ids" ? stream : nil }
    }

    /// Reads arrays held in memory.
    public convenience init(arrays: [String: NpyArray], options: ImportOptions) throws(TraceError) {
        try self.init(names: arrays.keys.sorted(), file: nil, archive: nil, options: options, blockBytes: 4 << 20) { name in
            arrays[name].map { NpyStream(array: $0, name: name) }
        }
    }

    private init(names: [String], file: String?, archive: NpzArchive?, options o: ImportOptions, blockBytes: Int,
                 column: (String) throws(TraceError) -> NpyStream?) throws(TraceError) {
        self.file = file
        self.archive = archive
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, m, file: file) }
        do throws(TraceError) {
            guard let ids = try column("topk_ids") else {
                throw bad("the archive has no topk_ids array (found: \(names.joined(separator: ", ")))")
            }
            self.ids = ids
            let ih = ids.header
            guard ih.isInteger, let kind = IntKind(ih.dtype) else { throw bad("topk_ids must be an integer array, found \(ih.dtype)") }
            idKind = kind
            var attrs = o.attributes
            attrs[NpzConversion.attrPrefix + "topk_ids.dtype"] = ih.dtype
            var shape = ih.shape
            let single = shape.count == 3
            if single {
                shape.insert(1, at: 0)
                attrs[NpzConversion.attrPrefix + "layout"] = "single"
            }
            guard shape.count == 4 else { throw bad("topk_ids must be [seqs, rows, layers, k] or [rows, layers, k], found shape \(ih.shape)") }
            let (S, R, LA, k) = (shape[0], shape[1], shape[2], shape[3])
            (sequences, self.R, self.LA, self.k) = (S, R, LA, k)
            // With a layer map and no layer count, an axis longer than the map is the decoder axis.
            let numLayers = o.numLayers ?? o.layerMap.map { m in LA > m.count ? LA : (m.last ?? 0) + 1 } ?? LA
            let layerMap = o.layerMap ?? Array(0..<numLayers)
            let L = layerMap.count
            (self.layerMap, self.L) = (layerMap, L)
            guard LA == L || LA == numLayers else {
                throw bad("topk_ids has \(LA) layers; the layer map has \(L) MoE layers of \(numLayers) decoder layers: the axis must be one of these")
            }
            fullAxis = LA != L
            if fullAxis { attrs[NpzConversion.attrPrefix + "layers"] = "decoder" }
            func shapeCheck(_ name: String, _ h: NpyHeader, _ last: Int) throws(TraceError) {
                let want = single ? [R, LA, last] : [S, R, LA, last]
                guard h.shape == want else { throw bad("\(name) has shape \(h.shape), expected \(want) to match topk_ids") }
            }
            let logits = try column("router_logits")
            self.logits = logits
            var experts = o.numExperts
            if let g = logits?.header {
                let e = g.shape.last ?? 0
                try shapeCheck("router_logits", g, e)
                if let x = experts, x != e { throw bad("--num-experts \(x) but router_logits has \(e) experts") }
                experts = e
            }
            guard let E = experts else { throw bad("cannot infer the number of experts (no router_logits): pass --num-experts") }
            self.E = E
            let model = ModelGeometry(name: o.modelName, numLayers: numLayers, numExperts: E, topK: k, layerMap: layerMap)
            do { try model.validate() } catch { throw bad(error.message) }
            func floatType(_ name: String, _ h: NpyHeader) throws(TraceError) -> FloatDType {
                switch h.dtype {
                case "f2": return .f16
                case "f4": return .f32
                case "u2": return .bf16
                default: throw bad("\(name) must be float16, float32 or uint16 (bf16 bits), found \(h.dtype)")
                }
            }
            let weights = try column("topk_weights")
            self.weights = weights
            if let w = weights?.header { try shapeCheck("topk_weights", w, k) }
            let wType = try weights.map { w throws(TraceError) in try floatType("topk_weights", w.header) }
            let gType = try logits.map { g throws(TraceError) in try floatType("router_logits", g.header) }
            let tokens = try column("tokens")
            self.tokens = tokens
            if let t = tokens?.header {
                guard t.isInteger, t.shape.count == 2 || (t.shape.count == 1 && S == 1) else { throw bad("tokens must be an integer [seqs, T] array, found \(t.dtype) \(t.shape)") }
                if t.shape.count == 2 && t.shape[0] != S { throw bad("tokens has \(t.shape[0]) sequences, topk_ids \(S)") }
                attrs[NpzConversion.attrPrefix + "tokens.dtype"] = t.dtype
                if t.shape.count == 1 { attrs[NpzConversion.attrPrefix + "tokens.layout"] = "single" }
            }
            T = tokens?.header.shape.last ?? 0
            let logprobs = try column("logprobs")
            self.logprobs = logprobs
            if let l = logprobs?.header {
                guard l.dtype.first == "f", l.shape.count == 2 || (l.shape.count == 1 && S == 1) else { throw bad("logprobs must be a float [seqs, n] array, found \(l.dtype) \(l.shape)") }
                if l.shape.count == 2 && l.shape[0] != S { throw bad("logprobs has \(l.shape[0]) sequences, topk_ids \(S)") }
                attrs[NpzConversion.attrPrefix + "logprobs.dtype"] = l.dtype
                if l.shape.count == 1 { attrs[NpzConversion.attrPrefix + "logprobs.layout"] = "single" }
            }
            N = logprobs?.header.shape.last ?? 0
            /// A per-sequence array, read whole once its shape is checked.
            func perSeq(_ name: String, _ kind: String) throws(TraceError) -> NpyArray? {
                guard let x = try column(name) else { return nil }
                let h = x.header
                guard h.count == S || h.shape.isEmpty else { throw bad("\(name) must be a scalar or have one value per sequence (\(S)), found shape \(h.shape)") }
                let ok = switch kind {
                case "int": h.isInteger
                case "string": h.dtype.hasPrefix("U")
                default: h.isInteger || h.dtype.first == "f"
                }
                guard ok else { throw bad("\(name) must be \(kind == "int" ? "an integer" : kind == "string" ? "a unicode string" : "a numeric") array, found \(h.dtype)") }
                return try x.readAll()
            }
            promptLen = try perSeq("prompt_len", "int")
            if let p = promptLen {
                attrs[NpzConversion.attrPrefix + "prompt_len.shape"] = p.shape.isEmpty ? "scalar" : "vector"
                attrs[NpzConversion.attrPrefix + "prompt_len.dtype"] = p.dtype
            }
            starts = try perSeq("start", "int")
            nRows = try perSeq("n_rows", "int")
            nTokens = try perSeq("n_tokens", "int")
            nLogprobs = try perSeq("n_logprobs", "int")
            rewards = try perSeq("rewards", "number")
            uids = try perSeq("uids", "string")
            groups = try perSeq("groups", "string")
            uidPrefix = o.uidPrefix
            checker = IDChecker(k: k, L: L, LA: LA, E: E, layerMap: fullAxis ? layerMap : nil, validate: o.validate)
            let h = TraceHeader(engine: o.engine, model: model,
                                columns: ColumnTypes(topkWeights: wType, routerLogits: gType, logprobs: logprobs != nil),
                                policyVersion: o.policyVersion, attributes: attrs)
            header = h
            // A record is held whole: refuse one over the format's record limit before allocating it.
            try DecodeLimits.check(rows: R, h, limit: DecodeLimits.maxRecordDecodedBytes, "a sequence of topk_ids", offset: nil)
            let widest = max(LA * k * ih.itemSize, LA * k * (wType?.size ?? 0), LA * E * (gType?.size ?? 0), 1)
            blockRows = max(1, blockBytes / widest)
        } catch { throw file.map { error.inFile($0) } ?? error }
    }

    /// The next record, nil after the last (when every array's end and checksum has been checked).
    public func next() throws(TraceError) -> TraceRecord? {
        do throws(TraceError) {
            guard s < sequences else {
                if s == sequences {
                    s += 1
                    for c in [ids, weights, logits, tokens, logprobs] { try c?.finish() }
                }
                return nil
            }
            defer { s += 1 }
            return try record(s)
        } catch { throw file.map { error.inFile($0) } ?? error }
    }

    private func bad(_ m: String) -> TraceError { TraceError(.invalidInput, m, file: file) }

    /// Value `i` of a per-sequence array (or its scalar).
    private func at(_ x: NpyArray, _ i: Int) -> Int { Int(x.shape.isEmpty ? x.int(0) : x.int(i)) }

    /// Reads sequence `s` from every array.
    private func record(_ s: Int) throws(TraceError) -> TraceRecord {
        let rows = nRows.map { at($0, s) } ?? R
        guard rows >= 0, rows <= R else { throw bad("n_rows[\(s)] = \(rows) is outside 0…\(R)") }
        var recIDs = [UInt16](repeating: 0, count: rows * L * k)
        let wSize = header.columns.topkWeights?.size ?? 0, gSize = header.columns.routerLogits?.size ?? 0
        var wBytes = [UInt8](repeating: 0, count: weights == nil ? 0 : rows * L * k * wSize)
        var gBytes = [UInt8](repeating: 0, count: logits == nil ? 0 : rows * L * E * gSize)
        var r = 0
        while r < rows {
            let n = min(blockRows, rows - r)
            try ids.read(n * LA * k, into: &raw)
            try readIDs(s, firstRow: r, rows: n, into: &recIDs)
            if let w = weights { try copyLayers(w, firstRow: r, rows: n, per: k * wSize, into: &wBytes) }
            if let g = logits { try copyLayers(g, firstRow: r, rows: n, per: E * gSize, into: &gBytes) }
            r += n
        }
        // The padding rows past n_rows.
        try ids.skip((R - rows) * LA * k)
        try weights?.skip((R - rows) * LA * k)
        try logits?.skip((R - rows) * LA * E)

        var toks: [Int32] = []
        if let (row, n) = try row(tokens, width: T, count: nTokens, "n_tokens", s) {
            toks = (0..<n).map { Int32(truncatingIfNeeded: row.int($0)) }
        }
        var lps: [Float] = []
        if let (row, n) = try row(logprobs, width: N, count: nLogprobs, "n_logprobs", s) {
            lps = (0..<n).map { Float(row.double($0)) }
        }
        var reward: Double? = nil
        if let rw = rewards { let v = rw.shape.isEmpty ? rw.double(0) : rw.double(s); if !v.isNaN { reward = v } }
        let group = groups.map { $0.string(s) }.flatMap { $0.isEmpty ? nil : $0 }
        let rec = TraceRecord(
            uid: uids.map { $0.string(s) } ?? "\(uidPrefix)\(s)", group: group, tokens: toks,
            promptLength: promptLen.map { at($0, s) } ?? 0, start: starts.map { at($0, s) } ?? 0,
            rowCount: rows, layers: L, topK: k, expertIDs: recIDs,
            weights: header.columns.topkWeights.map { FloatArray(dtype: $0, bytes: wBytes) },
            logits: header.columns.routerLogits.map { FloatArray(dtype: $0, bytes: gBytes) },
            logprobs: lps, reward: reward)
        do { try rec.validateShape(header) } catch { throw bad("sequence \(s): \(error.message)") }
        return rec
    }

    /// Sequence `s`'s row of a `[seqs, width]` array (tokens, logprobs) and how many of its values are
    /// the sequence's (`count[s]`, else all); nil without the array.
    private func row(_ c: NpyStream?, width: Int, count: NpyArray?, _ countName: String, _ s: Int) throws(TraceError) -> (NpyArray, Int)? {
        guard let c else { return nil }
        try c.read(width, into: &raw)
        let n = count.map { at($0, s) } ?? width
        guard n >= 0, n <= width else { throw bad("\(countName)[\(s)] = \(n) is outside 0…\(width)") }
        return (NpyArray(dtype: c.header.dtype, shape: [width], data: raw), n)
    }

    /// Checks and stores the ids of `rows` rows (in `raw`) from `firstRow` of sequence `s`.
    private func readIDs(_ s: Int, firstRow: Int, rows: Int, into recIDs: inout [UInt16]) throws(TraceError) {
        idKind.widen(raw, count: rows * LA * k, into: &wide)
        do { try checker.check(wide, sequence: s, firstRow: firstRow, rows: rows, into: &recIDs) } catch { throw bad(error.message) }
    }

    /// Reads `rows` rows of a float array and copies the MoE layers' `per` bytes each into `out`.
    private func copyLayers(_ c: NpyStream, firstRow: Int, rows: Int, per: Int, into out: inout [UInt8]) throws(TraceError) {
        try c.read(rows * LA * per / c.header.itemSize, into: &raw)
        if !fullAxis {
            wCopy(raw, 0, &out, firstRow * L * per, rows * L * per)
            return
        }
        for rr in 0..<rows {
            for li in 0..<L { wCopy(raw, (rr * LA + layerMap[li]) * per, &out, ((firstRow + rr) * L + li) * per, per) }
        }
    }
}

/// Checks a block of `topk_ids` rows (widened to Int64) and stores them as a record's ids: -1 is a
/// missing (row, layer), wholly; other ids below 65535 (and below the experts, distinct, when
/// validating); the MoE layers picked from a decoder axis through the layer map.
struct IDChecker {
    let k: Int, L: Int, LA: Int, E: Int
    /// The decoder index of each MoE layer, when the axis holds every decoder layer.
    let layerMap: [Int]?
    let validate: Bool
    /// The (row, layer) stamp each expert was last seen in (duplicates).
    private var seen: [UInt32] = []
    private var stamp: UInt32 = 0

    init(k: Int, L: Int, LA: Int, E: Int, layerMap: [Int]?, validate: Bool) {
        (self.k, self.L, self.LA, self.E, self.layerMap, self.validate) = (k, L, LA, E, layerMap, validate)
        if validate { seen = [UInt32](repeating: 0, count: E) }
    }

    /// `rows` rows of `wide` become rows `firstRow...` of `out`; errors name `topk_ids[s, r, layer, slot]`
    /// (`invalidInput`, no file).
    mutating func check(_ wide: [Int64], sequence s: Int, firstRow: Int, rows: Int, into out: inout [UInt16]) throws(TraceError) {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, m) }
        for rr in 0..<rows {
            let r = firstRow + rr
            for li in 0..<L {
                let srcLayer = layerMap?[li] ?? li
                let src = (rr * LA + srcLayer) * k, dst = (r * L + li) * k
                var nMissing = 0
                for j in 0..<k {
                    let v = wide[src + j]
                    if v < 0 {
                        guard v == -1 else { throw bad("topk_ids[\(s), \(r), \(srcLayer), \(j)] is \(v): negative ids other than -1 (missing) are invalid") }
                        out[dst + j] = TraceRecord.missing
                        nMissing += 1
                    } else {
                        guard v < 65_535 else { throw bad("topk_ids[\(s), \(r), \(srcLayer), \(j)] = \(v) is too large") }
                        if validate && v >= E { throw bad("topk_ids[\(s), \(r), \(srcLayer), \(j)] = \(v) is not below num_experts \(E)") }
                        out[dst + j] = UInt16(v)
                    }
                }
                if nMissing != 0 && nMissing != k {
                    throw bad("topk_ids[\(s), \(r), \(srcLayer)] mixes -1 and expert ids; a (row, layer) is wholly present or wholly missing")
                }
                if validate && nMissing == 0 {
                    // Duplicates: each expert stamped once per (row, layer).
                    if stamp == .max { seen = [UInt32](repeating: 0, count: E); stamp = 0 }
                    stamp += 1
                    for j in 0..<k {
                        let e = Int(out[dst + j])
                        if seen[e] == stamp { throw bad("topk_ids[\(s), \(r), \(srcLayer)] chooses expert \(e) twice (duplicates break all-to-all dispatch)") }
                        seen[e] = stamp
                    }
                }
            }
        }
    }
}

/// The integer element types of `.npy` arrays, widened to Int64 a block at a time.
enum IntKind {
    case i1, u1, i2, u2, i4, u4, i8, u8

    init?(_ dtype: String) {
        switch dtype {
        case "i1": self = .i1
        case "u1", "b1": self = .u1
        case "i2": self = .i2
        case "u2": self = .u2
        case "i4": self = .i4
        case "u4": self = .u4
        case "i8": self = .i8
        case "u8": self = .u8
        default: return nil
        }
    }

    /// The first `count` little-endian elements of `raw` as Int64 in `out` (resized).
    func widen(_ raw: [UInt8], count: Int, into out: inout [Int64]) {
        if out.count < count { out = [Int64](repeating: 0, count: count) }
        raw.withUnsafeBytes { p in
            out.withUnsafeMutableBufferPointer { o in
                switch self {
                case .i1: for i in 0..<count { o[i] = Int64(p.load(fromByteOffset: i, as: Int8.self)) }
                case .u1: for i in 0..<count { o[i] = Int64(p[i]) }
                case .i2: for i in 0..<count { o[i] = Int64(Int16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: Int16.self))) }
                case .u2: for i in 0..<count { o[i] = Int64(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))) }
                case .i4: for i in 0..<count { o[i] = Int64(Int32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))) }
                case .u4: for i in 0..<count { o[i] = Int64(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self))) }
                case .i8, .u8: for i in 0..<count { o[i] = Int64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: Int64.self)) }
                }
            }
        }
    }
}
