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

    /// The arrays `rtrace export --to npz` writes for `records` (the inverse of ``makeTrace(_:options:)``),
    /// in memory (``NpzExport`` streams them to a file).
    public static func makeArrays(header h: TraceHeader, records: [TraceRecord]) -> [(String, NpyArray)] {
        NpzExport.arrays(header: h, records: records)
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
