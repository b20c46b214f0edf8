/// An integer array as an engine hands it over: little-endian elements of one integer type, and a shape.
public struct EngineIntArray: Sendable, Equatable {
    /// The integer types engines send routing in, by their numpy names.
    public enum Element: String, Sendable, CaseIterable {
        case int8, uint8, int16, uint16, int32, uint32, int64, uint64

        /// Bytes per element.
        public var size: Int {
            switch self {
            case .int8, .uint8: 1
            case .int16, .uint16: 2
            case .int32, .uint32: 4
            case .int64, .uint64: 8
            }
        }

        /// Whether the type is signed (and so can hold vLLM 0.21's and NeMo RL's `-1`).
        public var signed: Bool { [.int8, .int16, .int32, .int64].contains(self) }

        /// A numpy or torch dtype name (`int32`, `torch.uint8`), or an npy kind (`i4`, `u2`).
        public init?(name: String) {
            let s = name.hasPrefix("torch.") ? String(name.dropFirst(6)) : name
            if let e = Element(rawValue: s) { self = e; return }
            let npy: [String: Element] = ["i1": .int8, "u1": .uint8, "b1": .uint8, "i2": .int16, "u2": .uint16,
                                          "i4": .int32, "u4": .uint32, "i8": .int64, "u8": .uint64]
            guard let e = npy[s] else { return nil }
            self = e
        }
    }

    public var element: Element
    /// `count × element.size` little-endian bytes, row-major.
    public var bytes: [UInt8]
    public var shape: [Int]

    public init(element: Element, bytes: [UInt8], shape: [Int]) {
        self.element = element
        self.bytes = bytes
        self.shape = shape
    }

    /// An int64 array of `values`.
    public init(values: [Int64], shape: [Int]) {
        var b = [UInt8](repeating: 0, count: values.count * 8)
        b.withUnsafeMutableBytes { p in
            for (i, v) in values.enumerated() { p.storeBytes(of: v.littleEndian, toByteOffset: i * 8, as: Int64.self) }
        }
        self.init(element: .int64, bytes: b, shape: shape)
    }

    /// Elements held.
    public var count: Int { bytes.count / element.size }

    /// Element `i`, widened.
    public func value(at i: Int) -> Int64 {
        bytes.withUnsafeBytes { p in EngineIntArray.load(p, element, i) }
    }

    /// Every element, widened.
    public var values: [Int64] {
        bytes.withUnsafeBytes { p in (0..<count).map { EngineIntArray.load(p, element, $0) } }
    }

    @inline(__always)
    static func load(_ p: UnsafeRawBufferPointer, _ e: Element, _ i: Int) -> Int64 {
        switch e {
        case .int8: Int64(Int8(bitPattern: p[i]))
        case .uint8: Int64(p[i])
        case .int16: Int64(Int16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: Int16.self)))
        case .uint16: Int64(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self)))
        case .int32: Int64(Int32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)))
        case .uint32: Int64(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
        case .int64: Int64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))
        case .uint64: Int64(clamping: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)))
        }
    }
}

/// Decoders for the encodings engines use for routing arrays: raw little-endian bytes (SGLang,
/// NeMo RL), `.npy` buffers (vLLM ≥ 0.22), nested JSON lists (vLLM 0.21), all but the last base64.
public enum EngineArrays {
    /// Decodes standard base64 (whitespace allowed), naming `what` on failure.
    public static func base64(_ s: String, what: String) throws(TraceError) -> [UInt8] {
        var s = s
        return try s.withUTF8 { p in Result { () throws(TraceError) in try base64(UnsafeRawBufferPointer(p), what: what) } }.get()
    }

    /// Decodes standard base64 bytes (whitespace allowed), naming `what` on failure.
    static func base64(_ text: UnsafeRawBufferPointer, what: String) throws(TraceError) -> [UInt8] {
        func attempt(_ t: UnsafeRawBufferPointer) -> Result<[UInt8], Base64.Failure> {
            var pad = 0
            if t.count >= 2 && t[t.count - 1] == UInt8(ascii: "=") { pad = t[t.count - 2] == UInt8(ascii: "=") ? 2 : 1 }
            guard let n = Base64.decodedCount(characters: t.count, padding: pad) else {
                return .failure(Base64.Failure(at: t.count, reason: "\(t.count) characters is not a multiple of 4"))
            }
            var failure: Base64.Failure? = nil
            let out = [UInt8](unsafeUninitializedCapacity: n) { buf, done in
                switch Base64.decode(t, into: UnsafeMutableRawBufferPointer(buf)) {
                case .success(let m): done = m
                case .failure(let f): failure = f; done = 0
                }
            }
            if let failure { return .failure(failure) }
            return .success(out)
        }
        switch attempt(text) {
        case .success(let b): return b
        case .failure(let f):
            let isSpace = { (c: UInt8) in c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 }
            if text.contains(where: isSpace) {
                let clean = text.filter { !isSpace($0) }
                if case .success(let b) = clean.withUnsafeBytes({ attempt($0) }) { return b }
            }
            let head = String(decoding: text.prefix(16), as: UTF8.self)
            throw TraceError(.invalidInput, "\(what): not valid base64: \(f.reason) (\(text.count) characters starting \"\(head)\")")
        }
    }

    /// Parses `.npy` bytes holding integers.
    static func npy(_ b: [UInt8], what: String) throws(TraceError) -> EngineIntArray {
        let a = try NpyArray.parse(b, name: what)
        guard a.isInteger, let e = EngineIntArray.Element(name: a.dtype) else {
            throw TraceError(.invalidInput, "\(what): .npy dtype \(a.dtype) is not an integer type")
        }
        return EngineIntArray(element: e, bytes: a.data, shape: a.shape)
    }

    /// Whether `b` starts with the `.npy` magic.
    static func isNpy(_ b: [UInt8]) -> Bool { b.starts(with: [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]) }

    /// A JSON value holding an integer array: nested lists, a base64 `.npy` buffer, or base64 raw
    /// bytes of `raw` (shape then `[count]`; the caller knows the rest).
    static func decode(_ v: JSONValue, raw: EngineIntArray.Element, what: String) throws(TraceError) -> EngineIntArray {
        switch v.kind {
        case .string:
            let b: [UInt8]
            if let text = v.rawStringBytes, !v.node.flag {
                b = try base64(text, what: what)
            } else {
                b = try (v.stringBytes ?? []).withUnsafeBytes { p in Result { () throws(TraceError) in try base64(p, what: what) } }.get()
            }
            if isNpy(b) { return try npy(b, what: what) }
            guard b.count % raw.size == 0 else {
                throw TraceError(.invalidInput, "\(what): \(b.count) bytes is not a whole number of \(raw.rawValue) values")
            }
            return EngineIntArray(element: raw, bytes: b, shape: [b.count / raw.size])
        case .array:
            return try nested(v, what: what)
        default:
            throw TraceError(.invalidInput, "\(what): expected a list of integers or a base64 string, found \(v.summary)")
        }
    }

    /// Flattens a rectangular nested JSON list of integers.
    static func nested(_ v: JSONValue, what: String) throws(TraceError) -> EngineIntArray {
        var shape: [Int] = []
        var probe = v
        while probe.kind == .array {
            shape.append(probe.count)
            guard probe.count > 0 else { break }
            probe = JSONValue(tape: probe.tape, index: probe.index + 1)
        }
        var out: [Int64] = []
        out.reserveCapacity(shape.reduce(1, *))
        func walk(_ x: JSONValue, _ depth: Int, _ path: [Int]) throws(TraceError) {
            if depth == shape.count {
                guard let i = x.int else {
                    throw TraceError(.invalidInput, "\(what)\(path.map { "[\($0)]" }.joined()) is \(x.summary), not an integer")
                }
                out.append(i)
                return
            }
            guard x.kind == .array, x.count == shape[depth] else {
                throw TraceError(.invalidInput, "\(what)\(path.map { "[\($0)]" }.joined()) is \(x.summary), not a list of \(shape[depth]) (the array is not rectangular, shape \(shape))")
            }
            try x.forEachElement { (i, e) throws(TraceError) in try walk(e, depth + 1, path + [i]) }
        }
        try walk(v, 0, [])
        return EngineIntArray(values: out, shape: shape)
    }

    /// Converts `[rows, layers, k]` engine ids to a record's row-major ids over the MoE layers.
    ///
    /// The layer axis may hold the MoE layers or all decoder layers (vLLM and SGLang report dense
    /// ones too, as 0); the latter are reduced through the layer map. `-1` marks a missing
    /// (row, layer) (vLLM 0.21's prefix-cached rows, NeMo RL's rows vLLM gave none), which must
    /// then be missing in every slot. With `validate`, ids must be below `num_experts` and
    /// distinct within a (row, layer). `rows` picks a range of the array's rows (default all).
    public static func routingIDs(
        _ a: EngineIntArray, model m: ModelGeometry, validate: Bool, what: String, rows: Range<Int>? = nil
    ) throws(TraceError) -> (ids: [UInt16], rows: Int) {
        let k = m.topK, L = m.moeLayers
        guard a.shape.count == 3 else { throw TraceError(.invalidInput, "\(what): shape \(a.shape), expected [rows, layers, top_k]") }
        let (n, layersIn, kIn) = (a.shape[0], a.shape[1], a.shape[2])
        guard kIn == k else { throw TraceError(.invalidInput, "\(what): \(kIn) experts per row, the model's top_k is \(k)") }
        guard a.count == n * layersIn * kIn else {
            throw TraceError(.invalidInput, "\(what): \(a.count) values for shape \(a.shape)")
        }
        let layerOf: [Int]
        if layersIn == L {
            layerOf = Array(0..<L)
        } else if layersIn == m.numLayers {
            layerOf = m.layerMap
        } else {
            throw TraceError(.invalidInput, "\(what): \(layersIn) layers, expected the model's \(L) MoE layers or all \(m.numLayers) decoder layers")
        }
        let range = rows ?? 0..<n
        precondition(range.lowerBound >= 0 && range.upperBound <= n, "row range outside the array")
        var problem: RoutingProblem? = nil
        let ids = [UInt16](unsafeUninitializedCapacity: range.count * L * k) { out, done in
            a.bytes.withUnsafeBytes { p in
                let c = Conversion(rows: range, layersIn: layersIn, k: k, layerOf: layerOf, numExperts: m.numExperts, validate: validate)
                switch a.element {
                case .int8: problem = c.run(p, Int8.self, out)
                case .uint8: problem = c.run(p, UInt8.self, out)
                case .int16: problem = c.run(p, Int16.self, out)
                case .uint16: problem = c.run(p, UInt16.self, out)
                case .int32: problem = c.run(p, Int32.self, out)
                case .uint32: problem = c.run(p, UInt32.self, out)
                case .int64: problem = c.run(p, Int64.self, out)
                case .uint64: problem = c.run(p, UInt64.self, out)
                }
            }
            done = problem == nil ? out.count : 0
        }
        if let problem {
            let at = "\(what)[\(problem.row), \(problem.layer)"
            switch problem.kind {
            case .notAnID(let slot, let v):
                throw TraceError(.invalidInput, "\(at), \(slot)] = \(v) is not an expert id")
            case .outOfRange(let slot, let v):
                throw TraceError(.invalidInput, "\(at), \(slot)] = \(v) is not below num_experts \(m.numExperts)")
            case .mixed:
                throw TraceError(.invalidInput, "\(at)] mixes -1 and expert ids; a (row, layer) is wholly present or wholly missing")
            case .duplicate(let e, let q, let j):
                throw TraceError(.invalidInput, "\(at)] chooses expert \(e) twice (slots \(q) and \(j)); duplicates break all-to-all dispatch")
            }
        }
        return (ids, range.count)
    }

    /// The first thing wrong in an engine's ids, in the array's own coordinates.
    struct RoutingProblem {
        enum Kind { case notAnID(slot: Int, value: Int64), outOfRange(slot: Int, value: Int64), mixed, duplicate(Int, Int, Int) }
        var row: Int
        var layer: Int
        var kind: Kind
    }

    /// One conversion of `[rows, layersIn, k]` engine ids to `[rows, L, k]` record ids.
    struct Conversion {
        let rows: Range<Int>
        let layersIn: Int
        let k: Int
        let layerOf: [Int]
        let numExperts: Int
        let validate: Bool

        func run<T: FixedWidthInteger>(_ p: UnsafeRawBufferPointer, _: T.Type, _ out: UnsafeMutableBufferPointer<UInt16>) -> RoutingProblem? {
            let L = layerOf.count, size = MemoryLayout<T>.size
            let limit = validate ? Int64(numExperts) : 65_535
            // One bit per expert id seen in the current (row, layer); cleared after each.
            var seen = [UInt64](repeating: 0, count: (numExperts + 63) / 64)
            return seen.withUnsafeMutableBufferPointer { seen in
                layerOf.withUnsafeBufferPointer { layerOf in
                    for r in rows {
                        for l in 0..<L {
                            let src = layerOf[l]
                            let b = (r * layersIn + src) * k, d = ((r - rows.lowerBound) * L + l) * k
                            var missing = 0
                            for j in 0..<k {
                                let v = Int64(T(littleEndian: p.loadUnaligned(fromByteOffset: (b + j) * size, as: T.self)))
                                if v == -1 { missing += 1; out[d + j] = TraceRecord.missing; continue }
                                if v < 0 || v >= 65_535 { return RoutingProblem(row: r, layer: src, kind: .notAnID(slot: j, value: v)) }
                                if v >= limit { return RoutingProblem(row: r, layer: src, kind: .outOfRange(slot: j, value: v)) }
                                out[d + j] = UInt16(truncatingIfNeeded: v)
                            }
                            if missing != 0 {
                                if missing != k { return RoutingProblem(row: r, layer: src, kind: .mixed) }
                                continue
                            }
                            guard validate && k > 1 else { continue }
                            var dup: (Int, Int)? = nil
                            for j in 0..<k {
                                let e = Int(out[d + j]), w = e >> 6, bit: UInt64 = 1 << UInt64(e & 63)
                                if dup == nil && seen[w] & bit != 0 { dup = ((0..<j).first { out[d + $0] == out[d + j] } ?? 0, j) }
                                seen[w] |= bit
                            }
                            for j in 0..<k { seen[Int(out[d + j]) >> 6] = 0 }
                            if let (q, j) = dup { return RoutingProblem(row: r, layer: src, kind: .duplicate(Int(out[d + j]), q, j)) }
                        }
                    }
                    return nil
                }
            }
        }
    }
}
