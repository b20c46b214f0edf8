/// What `rtrace import --from npz` needs beyond the arrays: metadata the arrays cannot carry.
public struct ImportOptions: Sendable {
    public var engine = EngineInfo(name: "unknown", role: .other)
    public var modelName = ""
    /// Decoder layers. When nil: the ids' layer axis; with a layer map, the axis when it is longer
    /// than the map (it holds every decoder layer), else the map's last layer + 1.
    public var numLayers: Int?
    /// Routed experts; inferred from the logits when nil.
    public var numExperts: Int?
    /// MoE layers' decoder indices; every layer when nil.
    public var layerMap: [Int]?
    public var policyVersion: Int?
    /// Uids are `prefix + i` unless the archive has a `uids` array.
    public var uidPrefix = ""
    /// Check ids (range, duplicates) and refuse bad input.
    public var validate = true
    public var attributes: [String: String] = [:]

    public init() {}
}

/// Converts between `.npz` arrays (the layout SGLang returns, stacked over sequences) and trace records.
///
/// Arrays (spec/format.md §1 explains the fields): `topk_ids` `[seqs, rows, layers, k]` or
/// `[rows, layers, k]` (int8/16/32/64 or uint8/16; -1 = missing); optional `tokens` `[seqs, T]`,
/// `topk_weights` (shape of ids; float16, float32, or uint16 holding bf16 bits), `router_logits`
/// `[seqs, rows, layers, experts]`, `logprobs` `[seqs, n]` (the last n tokens), `prompt_len`
/// (scalar or per sequence). Ragged traces add `uids`, `groups`, `start`, `n_rows`, `n_tokens`,
/// `n_logprobs`, `rewards` (NaN = none). The `layers` axis is either the MoE layers or all decoder
/// layers (dense ones are then dropped through the layer map).
public enum NpzConversion {
    /// Header attributes that remember the source layout so that export gives the same arrays back.
    static let attrPrefix = "npz."

    /// Builds a header and records from arrays held in memory (``NpzImport`` streams them from a file).
    public static func makeTrace(_ a: [String: NpyArray], options o: ImportOptions) throws(TraceError) -> (TraceHeader, [TraceRecord]) {
        let imp = try NpzImport(arrays: a, options: o)
        var records: [TraceRecord] = []
        records.reserveCapacity(imp.sequences)
        while let r = try imp.next() { records.append(r) }
        return (imp.header, records)
    }

    /// The arrays `rtrace export --to npz` writes for `records` (the inverse of ``makeTrace(_:options:)``).
    public static func makeArrays(header h: TraceHeader, records: [TraceRecord]) -> [(String, NpyArray)] {
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

@inline(__always) func wCopy(_ src: [UInt8], _ so: Int, _ dst: inout [UInt8], _ dO: Int, _ n: Int) {
    guard n > 0 else { return }
    src.withUnsafeBytes { s in
        dst.withUnsafeMutableBytes { d in
            d.baseAddress!.advanced(by: dO).copyMemory(from: s.baseAddress!.advanced(by: so), byteCount: n)
        }
    }
}
