@testable import RTrace

/// The npz conversion as it was before streaming (commit 0c3f276: `NpzConversion.makeTrace` and
/// `makeArrays`, which held every array whole), kept verbatim as the oracle that the streaming
/// import and export are compared with (NpzStreamingTests). Only `public` was dropped.
enum NpzReference {
    static let attrPrefix = "npz."

    static func makeTrace(_ a: [String: NpyArray], options o: ImportOptions) throws(TraceError) -> (TraceHeader, [TraceRecord]) {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, m) }
        guard var ids = a["topk_ids"] else {
            throw bad("the archive has no topk_ids array (found: \(a.keys.sorted().joined(separator: ", ")))")
        }
        guard ids.isInteger else { throw bad("topk_ids must be an integer array, found \(ids.dtype)") }
        var attrs = o.attributes
        attrs[attrPrefix + "topk_ids.dtype"] = ids.dtype
        if ids.shape.count == 3 {
            ids.shape.insert(1, at: 0)
            attrs[attrPrefix + "layout"] = "single"
        }
        guard ids.shape.count == 4 else { throw bad("topk_ids must be [seqs, rows, layers, k] or [rows, layers, k], found shape \(ids.shape)") }
        let (S, R, LA, k) = (ids.shape[0], ids.shape[1], ids.shape[2], ids.shape[3])
        let numLayers = o.numLayers ?? LA
        let layerMap = o.layerMap ?? Array(0..<numLayers)
        let L = layerMap.count
        guard LA == L || LA == numLayers else {
            throw bad("topk_ids has \(LA) layers; the layer map has \(L) MoE layers of \(numLayers) decoder layers: the axis must be one of these")
        }
        let fullAxis = LA != L
        if fullAxis { attrs[attrPrefix + "layers"] = "decoder" }
        func shapeCheck(_ name: String, _ arr: NpyArray, _ last: Int) throws(TraceError) {
            var want = [S, R, LA, last]
            if attrs[attrPrefix + "layout"] == "single" { want.removeFirst() }
            guard arr.shape == want else { throw bad("\(name) has shape \(arr.shape), expected \(want) to match topk_ids") }
        }
        let logits = a["router_logits"]
        var E = o.numExperts
        if let g = logits {
            try shapeCheck("router_logits", g, g.shape.last ?? 0)
            if let e = E, e != g.shape.last! { throw bad("--num-experts \(e) but router_logits has \(g.shape.last!) experts") }
            E = g.shape.last!
        }
        guard let E else { throw bad("cannot infer the number of experts (no router_logits): pass --num-experts") }
        let model = ModelGeometry(name: o.modelName, numLayers: numLayers, numExperts: E, topK: k, layerMap: layerMap)
        do { try model.validate() } catch { throw bad(error.message) }
        func floatType(_ name: String, _ arr: NpyArray) throws(TraceError) -> FloatDType {
            switch arr.dtype {
            case "f2": return .f16
            case "f4": return .f32
            case "u2": return .bf16
            default: throw bad("\(name) must be float16, float32 or uint16 (bf16 bits), found \(arr.dtype)")
            }
        }
        let weights = a["topk_weights"]
        if let w = weights { try shapeCheck("topk_weights", w, k) }
        let wType = try weights.map { arr throws(TraceError) in try floatType("topk_weights", arr) }
        let gType = try logits.map { arr throws(TraceError) in try floatType("router_logits", arr) }
        let tokens = a["tokens"]
        if let t = tokens {
            guard t.isInteger, t.shape.count == 2 || (t.shape.count == 1 && S == 1) else { throw bad("tokens must be an integer [seqs, T] array, found \(t.dtype) \(t.shape)") }
            if t.shape.count == 2 && t.shape[0] != S { throw bad("tokens has \(t.shape[0]) sequences, topk_ids \(S)") }
            attrs[attrPrefix + "tokens.dtype"] = t.dtype
            if t.shape.count == 1 { attrs[attrPrefix + "tokens.layout"] = "single" }
        }
        let T = tokens.map { $0.shape.last! } ?? 0
        let lp = a["logprobs"]
        if let l = lp {
            guard l.dtype.first == "f", l.shape.count == 2 || (l.shape.count == 1 && S == 1) else { throw bad("logprobs must be a float [seqs, n] array, found \(l.dtype) \(l.shape)") }
            if l.shape.count == 2 && l.shape[0] != S { throw bad("logprobs has \(l.shape[0]) sequences, topk_ids \(S)") }
            attrs[attrPrefix + "logprobs.dtype"] = l.dtype
            if l.shape.count == 1 { attrs[attrPrefix + "logprobs.layout"] = "single" }
        }
        let N = lp.map { $0.shape.last! } ?? 0
        func perSeq(_ name: String) throws(TraceError) -> NpyArray? {
            guard let x = a[name] else { return nil }
            guard x.count == S || x.shape.isEmpty else { throw bad("\(name) must be a scalar or have one value per sequence (\(S)), found shape \(x.shape)") }
            return x
        }
        let promptLen = try perSeq("prompt_len")
        if let p = promptLen { attrs[attrPrefix + "prompt_len.shape"] = p.shape.isEmpty ? "scalar" : "vector"; attrs[attrPrefix + "prompt_len.dtype"] = p.dtype }
        let starts = try perSeq("start"), nRows = try perSeq("n_rows"), nTok = try perSeq("n_tokens")
        let nLp = try perSeq("n_logprobs"), rewards = try perSeq("rewards")
        let uids = try perSeq("uids"), groups = try perSeq("groups")
        func at(_ x: NpyArray, _ i: Int) -> Int { Int(x.shape.isEmpty ? x.int(0) : x.int(i)) }

        let header = TraceHeader(engine: o.engine, model: model,
                                 columns: ColumnTypes(topkWeights: wType, routerLogits: gType, logprobs: lp != nil),
                                 policyVersion: o.policyVersion, attributes: attrs)
        var records: [TraceRecord] = []
        records.reserveCapacity(S)
        let wSize = wType?.size ?? 0, gSize = gType?.size ?? 0
        for s in 0..<S {
            let rows = nRows.map { at($0, s) } ?? R
            guard rows >= 0, rows <= R else { throw bad("n_rows[\(s)] = \(rows) is outside 0…\(R)") }
            var recIDs = [UInt16](repeating: 0, count: rows * L * k)
            var wBytes = [UInt8](repeating: 0, count: weights == nil ? 0 : rows * L * k * wSize)
            var gBytes = [UInt8](repeating: 0, count: logits == nil ? 0 : rows * L * E * gSize)
            for r in 0..<rows {
                for (li, layer) in layerMap.enumerated() {
                    let srcLayer = fullAxis ? layer : li
                    let src = ((s * R + r) * LA + srcLayer) * k
                    let dst = (r * L + li) * k
                    var nMissing = 0
                    for j in 0..<k {
                        let v = ids.int(src + j)
                        if v < 0 {
                            guard v == -1 else { throw bad("topk_ids[\(s), \(r), \(srcLayer), \(j)] is \(v): negative ids other than -1 (missing) are invalid") }
                            recIDs[dst + j] = TraceRecord.missing
                            nMissing += 1
                        } else {
                            guard v < 65_535 else { throw bad("topk_ids[\(s), \(r), \(srcLayer), \(j)] = \(v) is too large") }
                            if o.validate && v >= E {
                                throw bad("topk_ids[\(s), \(r), \(srcLayer), \(j)] = \(v) is not below num_experts \(E)")
                            }
                            recIDs[dst + j] = UInt16(v)
                        }
                    }
                    if nMissing != 0 && nMissing != k {
                        throw bad("topk_ids[\(s), \(r), \(srcLayer)] mixes -1 and expert ids; a (row, layer) is wholly present or wholly missing")
                    }
                    if o.validate && nMissing == 0 {
                        for j in 1..<max(k, 1) where recIDs[dst..<dst + j].contains(recIDs[dst + j]) {
                            throw bad("topk_ids[\(s), \(r), \(srcLayer)] chooses expert \(recIDs[dst + j]) twice (duplicates break all-to-all dispatch)")
                        }
                    }
                    if let w = weights {
                        let so = src * wSize, dO = dst * wSize
                        for b in 0..<(k * wSize) { wBytes[dO + b] = w.data[so + b] }
                    }
                    if let g = logits {
                        let so = ((s * R + r) * LA + srcLayer) * E * gSize, dO = (r * L + li) * E * gSize
                        wCopy(g.data, so, &gBytes, dO, E * gSize)
                    }
                }
            }
            let nt = nTok.map { at($0, s) } ?? T
            guard nt >= 0, nt <= T else { throw bad("n_tokens[\(s)] = \(nt) is outside 0…\(T)") }
            let toks: [Int32] = tokens.map { t in (0..<nt).map { Int32(truncatingIfNeeded: t.int(s * T + $0)) } } ?? []
            let nl = nLp.map { at($0, s) } ?? N
            guard nl >= 0, nl <= N else { throw bad("n_logprobs[\(s)] = \(nl) is outside 0…\(N)") }
            let lps: [Float] = lp.map { l in (0..<nl).map { Float(l.double(s * N + $0)) } } ?? []
            var reward: Double? = nil
            if let rw = rewards { let v = rw.shape.isEmpty ? rw.double(0) : rw.double(s); if !v.isNaN { reward = v } }
            let group = groups.map { $0.string(s) }.flatMap { $0.isEmpty ? nil : $0 }
            let rec = TraceRecord(
                uid: uids.map { $0.string(s) } ?? "\(o.uidPrefix)\(s)", group: group, tokens: toks,
                promptLength: promptLen.map { at($0, s) } ?? 0, start: starts.map { at($0, s) } ?? 0,
                rowCount: rows, layers: L, topK: k, expertIDs: recIDs,
                weights: wType.map { FloatArray(dtype: $0, bytes: wBytes) }, logits: gType.map { FloatArray(dtype: $0, bytes: gBytes) },
                logprobs: lps, reward: reward)
            do { try rec.validateShape(header) } catch { throw bad("sequence \(s): \(error.message)") }
            records.append(rec)
        }
        return (header, records)
    }

    /// The arrays `rtrace export --to npz` writes for `records` (the inverse of ``makeTrace(_:options:)``).
    static func makeArrays(header h: TraceHeader, records: [TraceRecord]) -> [(String, NpyArray)] {
        let attr = h.attributes
        let S = records.count, L = h.model.moeLayers, k = h.model.topK, E = h.model.numExperts
        let R = records.map(\.rowCount).max() ?? 0
        let fullAxis = attr[attrPrefix + "layers"] == "decoder"
        let LA = fullAxis ? h.model.numLayers : L
        let single = attr[attrPrefix + "layout"] == "single" && S == 1
        func shape(_ last: Int) -> [Int] { single ? [R, LA, last] : [S, R, LA, last] }
        var out: [(String, NpyArray)] = []

        let idType = attr[attrPrefix + "topk_ids.dtype"] ?? "i4"
        var idv = [Int64](repeating: -1, count: S * R * LA * k)
        for (s, rec) in records.enumerated() {
            for r in 0..<rec.rowCount {
                for (li, layer) in h.model.layerMap.enumerated() {
                    let dst = ((s * R + r) * LA + (fullAxis ? layer : li)) * k
                    let src = (r * L + li) * k
                    for j in 0..<k {
                        let e = rec.expertIDs[src + j]
                        idv[dst + j] = e == TraceRecord.missing ? -1 : Int64(e)
                    }
                }
            }
        }
        out.append(("topk_ids", NpyArray.ints(idv, dtype: idType, shape: shape(k))))

        if !records.allSatisfy({ $0.tokens.isEmpty }) || attr[attrPrefix + "tokens.dtype"] != nil {
            let T = records.map(\.tokens.count).max() ?? 0
            var tv = [Int64](repeating: -1, count: S * T)
            for (s, rec) in records.enumerated() { for (i, t) in rec.tokens.enumerated() { tv[s * T + i] = Int64(t) } }
            let tShape = attr[attrPrefix + "tokens.layout"] == "single" && S == 1 ? [T] : [S, T]
            out.append(("tokens", NpyArray.ints(tv, dtype: attr[attrPrefix + "tokens.dtype"] ?? "i4", shape: tShape)))
            if Set(records.map(\.tokens.count)).count > 1 {
                out.append(("n_tokens", NpyArray.ints(records.map { Int64($0.tokens.count) }, dtype: "i4", shape: [S])))
            }
        }
        func floatColumn(_ name: String, _ d: FloatDType, per: Int, _ get: (TraceRecord) -> FloatArray?) {
            let size = d.size
            var bytes = [UInt8](repeating: 0, count: S * R * LA * per * size)
            for (s, rec) in records.enumerated() {
                guard let src = get(rec) else { continue }
                for r in 0..<rec.rowCount {
                    for (li, layer) in h.model.layerMap.enumerated() {
                        let dO = ((s * R + r) * LA + (fullAxis ? layer : li)) * per * size
                        wCopy(src.bytes, (r * L + li) * per * size, &bytes, dO, per * size)
                    }
                }
            }
            let dt = d == .f16 ? "f2" : d == .f32 ? "f4" : "u2"
            out.append((name, NpyArray(dtype: dt, shape: shape(per), data: bytes)))
        }
        if let d = h.columns.topkWeights { floatColumn("topk_weights", d, per: k) { $0.weights } }
        if let d = h.columns.routerLogits { floatColumn("router_logits", d, per: E) { $0.logits } }
        if h.columns.logprobs {
            let N = records.map(\.logprobs.count).max() ?? 0
            let dt = attr[attrPrefix + "logprobs.dtype"] ?? "f4"
            var w = ByteWriter(capacity: S * N * 8)
            for rec in records {
                for i in 0..<N {
                    let v = i < rec.logprobs.count ? rec.logprobs[i] : 0
                    switch dt {
                    case "f8": w.f64(Double(v))
                    case "f2": w.u16(Float16(v).bitPattern)
                    default: w.u32(v.bitPattern)
                    }
                }
            }
            let lShape = attr[attrPrefix + "logprobs.layout"] == "single" && S == 1 ? [N] : [S, N]
            out.append(("logprobs", NpyArray(dtype: dt, shape: lShape, data: w.bytes)))
            if Set(records.map(\.logprobs.count)).count > 1 {
                out.append(("n_logprobs", NpyArray.ints(records.map { Int64($0.logprobs.count) }, dtype: "i4", shape: [S])))
            }
        }
        let pls = records.map { Int64($0.promptLength) }
        let plType = attr[attrPrefix + "prompt_len.dtype"] ?? "i4"
        if attr[attrPrefix + "prompt_len.shape"] == "scalar" && Set(pls).count <= 1 {
            out.append(("prompt_len", NpyArray.ints([pls.first ?? 0], dtype: plType, shape: [])))
        } else if attr[attrPrefix + "prompt_len.shape"] != nil || pls.contains(where: { $0 != 0 }) {
            out.append(("prompt_len", NpyArray.ints(pls, dtype: plType, shape: [S])))
        }
        if records.contains(where: { $0.rowCount != R }) {
            out.append(("n_rows", NpyArray.ints(records.map { Int64($0.rowCount) }, dtype: "i4", shape: [S])))
        }
        if records.contains(where: { $0.start != 0 }) {
            out.append(("start", NpyArray.ints(records.map { Int64($0.start) }, dtype: "i4", shape: [S])))
        }
        if records.enumerated().contains(where: { $0.element.uid != "\($0.offset)" }) {
            out.append(("uids", NpyArray.strings(records.map(\.uid))))
        }
        if records.contains(where: { $0.group != nil }) {
            out.append(("groups", NpyArray.strings(records.map { $0.group ?? "" })))
        }
        if records.contains(where: { $0.reward != nil }) {
            var w = ByteWriter()
            for r in records { w.f64(r.reward ?? .nan) }
            out.append(("rewards", NpyArray(dtype: "f8", shape: [S], data: w.bytes)))
        }
        return out
    }
}
