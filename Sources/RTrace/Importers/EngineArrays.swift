import Foundation

/// An integer array as an engine hands it over: values widened to `Int64`, and a shape.
public struct EngineIntArray: Sendable, Equatable {
    public var values: [Int64]
    public var shape: [Int]

    public init(values: [Int64], shape: [Int]) {
        self.values = values
        self.shape = shape
    }
}

/// Decoders for the encodings engines use for routing arrays: raw little-endian bytes (SGLang),
/// `.npy` buffers (vLLM ≥ 0.22), nested JSON lists (vLLM ≤ 0.21), all optionally base64.
public enum EngineArrays {
    /// Little-endian integer dtypes engines send, by their numpy names.
    static let widths: [String: (size: Int, signed: Bool)] = [
        "int8": (1, true), "uint8": (1, false), "int16": (2, true), "uint16": (2, false),
        "int32": (4, true), "uint32": (4, false), "int64": (8, true),
    ]

    /// Decodes standard base64 (whitespace allowed), naming `what` on failure.
    public static func base64(_ s: String, what: String) throws(TraceError) -> [UInt8] {
        let clean = s.filter { !$0.isWhitespace }
        guard let d = Data(base64Encoded: clean) else {
            throw TraceError(.invalidInput, "\(what): not valid base64 (\(clean.count) characters starting \"\(clean.prefix(16))\")")
        }
        return [UInt8](d)
    }

    /// Widens raw little-endian bytes of `dtype` (`int32`, `int16`, `uint8`, …) to integers.
    public static func raw(_ b: [UInt8], dtype: String, what: String) throws(TraceError) -> [Int64] {
        let name = dtype.hasPrefix("torch.") ? String(dtype.dropFirst(6)) : dtype
        guard let (size, signed) = widths[name] else {
            throw TraceError(.invalidInput, "\(what): dtype \"\(dtype)\" is not one of \(widths.keys.sorted().joined(separator: ", "))")
        }
        guard b.count % size == 0 else {
            throw TraceError(.invalidInput, "\(what): \(b.count) bytes is not a whole number of \(name) values")
        }
        var out = [Int64](repeating: 0, count: b.count / size)
        b.withUnsafeBytes { p in
            for i in out.indices {
                var u: UInt64 = 0
                for j in 0..<size { u |= UInt64(p[i * size + j]) << UInt64(8 * j) }
                if signed && size < 8 && u & (1 << UInt64(8 * size - 1)) != 0 { u |= ~0 << UInt64(8 * size) }
                out[i] = Int64(bitPattern: u)
            }
        }
        return out
    }

    /// A JSON value holding an integer array: nested lists, a base64 `.npy` buffer, or base64 raw
    /// bytes of `rawDType` (shape then comes from the caller).
    public static func decode(_ v: Any, rawDType: String?, what: String) throws(TraceError) -> EngineIntArray {
        if let s = v as? String {
            let b = try base64(s, what: what)
            if b.starts(with: [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]) {
                let a = try NpyArray.parse(b, name: what)
                guard a.isInteger else {
                    throw TraceError(.invalidInput, "\(what): .npy dtype \(a.dtype) is not an integer type")
                }
                return EngineIntArray(values: (0..<a.count).map { a.int($0) }, shape: a.shape)
            }
            let vals = try raw(b, dtype: rawDType ?? "int32", what: what)
            return EngineIntArray(values: vals, shape: [vals.count])
        }
        if v is [Any] { return try nested(v, what: what) }
        throw TraceError(.invalidInput, "\(what): expected a list of integers or a base64 string, got \(type(of: v))")
    }

    /// Flattens a rectangular nested JSON list of integers.
    static func nested(_ v: Any, what: String) throws(TraceError) -> EngineIntArray {
        var shape: [Int] = []
        var probe: Any = v
        while let a = probe as? [Any] {
            shape.append(a.count)
            guard let f = a.first else { break }
            probe = f
        }
        var out: [Int64] = []
        out.reserveCapacity(shape.reduce(1, *))
        func walk(_ x: Any, _ depth: Int, _ path: String) throws(TraceError) {
            if depth == shape.count {
                guard let n = x as? NSNumber, let i = Int64(exactly: n.doubleValue) else {
                    throw TraceError(.invalidInput, "\(what)\(path) is \(x), not an integer")
                }
                out.append(i)
                return
            }
            guard let a = x as? [Any], a.count == shape[depth] else {
                throw TraceError(.invalidInput, "\(what)\(path) is not a list of \(shape[depth]) (the array is not rectangular, shape \(shape))")
            }
            for (i, e) in a.enumerated() { try walk(e, depth + 1, path + "[\(i)]") }
        }
        try walk(v, 0, "")
        return EngineIntArray(values: out, shape: shape)
    }

    /// Converts `[rows, layers, k]` engine ids to a record's row-major ids over the MoE layers.
    ///
    /// The layer axis may hold the MoE layers or all decoder layers (SGLang reports dense ones
    /// too); the latter are reduced through the layer map. `-1` marks a missing (row, layer)
    /// (vLLM's prefix-cached rows), which must then be missing in every slot. With `validate`,
    /// ids must be below `num_experts` and distinct within a (row, layer).
    public static func routingIDs(
        _ a: EngineIntArray, model m: ModelGeometry, validate: Bool, what: String
    ) throws(TraceError) -> (ids: [UInt16], rows: Int) {
        let k = m.topK, L = m.moeLayers
        guard a.shape.count == 3 else { throw TraceError(.invalidInput, "\(what): shape \(a.shape), expected [rows, layers, top_k]") }
        let (rows, layersIn, kIn) = (a.shape[0], a.shape[1], a.shape[2])
        guard kIn == k else { throw TraceError(.invalidInput, "\(what): \(kIn) experts per row, the model's top_k is \(k)") }
        let layerOf: [Int]
        if layersIn == L {
            layerOf = Array(0..<L)
        } else if layersIn == m.numLayers {
            layerOf = m.layerMap
        } else {
            throw TraceError(.invalidInput, "\(what): \(layersIn) layers, expected the model's \(L) MoE layers or all \(m.numLayers) decoder layers")
        }
        var ids = [UInt16](repeating: TraceRecord.missing, count: rows * L * k)
        for r in 0..<rows {
            for (l, src) in layerOf.enumerated() {
                let b = (r * layersIn + src) * k, d = (r * L + l) * k
                var nMissing = 0
                for j in 0..<k {
                    let v = a.values[b + j]
                    if v == -1 { nMissing += 1; continue }
                    guard v >= 0, v < 65_535 else { throw TraceError(.invalidInput, "\(what)[\(r), \(src), \(j)] = \(v) is not an expert id") }
                    if validate && v >= Int64(m.numExperts) {
                        throw TraceError(.invalidInput, "\(what)[\(r), \(src), \(j)] = \(v) is not below num_experts \(m.numExperts)")
                    }
                    ids[d + j] = UInt16(v)
                }
                if nMissing != 0 && nMissing != k {
                    throw TraceError(.invalidInput, "\(what)[\(r), \(src)] mixes -1 and expert ids; a (row, layer) is wholly present or wholly missing")
                }
                if validate && nMissing == 0 {
                    for j in 1..<max(k, 1) {
                        for q in 0..<j where ids[d + q] == ids[d + j] {
                            throw TraceError(.invalidInput, "\(what)[\(r), \(src)] chooses expert \(ids[d + j]) twice (slots \(q) and \(j)); duplicates break all-to-all dispatch")
                        }
                    }
                }
            }
        }
        return (ids, rows)
    }
}
