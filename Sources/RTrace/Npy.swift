/// A NumPy array as stored in a `.npy` file: little-endian, C order.
public struct NpyArray: Sendable, Equatable {
    /// The element kind and size, normalised from the npy descr: `i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8 b1`,
    /// or `U<n>` for fixed-width unicode strings.
    public var dtype: String
    public var shape: [Int]
    /// The raw little-endian element bytes, C order.
    public var data: [UInt8]

    public init(dtype: String, shape: [Int], data: [UInt8]) {
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    /// Elements in the array (1 for a scalar).
    public var count: Int { shape.reduce(1, *) }

    /// Bytes per element.
    public var itemSize: Int {
        if dtype.hasPrefix("U") { return 4 * (Int(dtype.dropFirst()) ?? 0) }
        return Int(dtype.dropFirst()) ?? 0
    }

    /// Whether the elements are integers (signed, unsigned or bool).
    public var isInteger: Bool { dtype.first == "i" || dtype.first == "u" || dtype == "b1" }

    /// Element `i` as a 64-bit integer (integer dtypes).
    public func int(_ i: Int) -> Int64 {
        switch dtype {
        case "i1": return Int64(Int8(bitPattern: data[i]))
        case "u1", "b1": return Int64(data[i])
        case "i2": return Int64(Int16(bitPattern: loadU16(data, i * 2)))
        case "u2": return Int64(loadU16(data, i * 2))
        case "i4": return Int64(Int32(bitPattern: loadU32(data, i * 4)))
        case "u4": return Int64(loadU32(data, i * 4))
        case "i8", "u8": return Int64(bitPattern: loadU64(data, i * 8))
        default: preconditionFailure("int(_:) on \(dtype)")
        }
    }

    /// Element `i` as a Double (float or integer dtypes).
    public func double(_ i: Int) -> Double {
        switch dtype {
        case "f2": return Double(halfToFloat(loadU16(data, i * 2)))
        case "f4": return Double(Float(bitPattern: loadU32(data, i * 4)))
        case "f8": return Double(bitPattern: loadU64(data, i * 8))
        default: return Double(int(i))
        }
    }

    /// Element `i` of a unicode array.
    public func string(_ i: Int) -> String {
        let n = itemSize / 4
        var s = ""
        for c in 0..<n {
            let v = loadU32(data, (i * n + c) * 4)
            if v == 0 { break }
            if let u = Unicode.Scalar(v) { s.unicodeScalars.append(u) }
        }
        return s
    }

    /// A unicode array of `strings`.
    public static func strings(_ strings: [String]) -> NpyArray {
        let n = max(1, strings.map { $0.unicodeScalars.count }.max() ?? 1)
        var w = ByteWriter(capacity: strings.count * n * 4)
        for s in strings {
            let sc = Array(s.unicodeScalars)
            for c in 0..<n { w.u32(c < sc.count ? sc[c].value : 0) }
        }
        return NpyArray(dtype: "U\(n)", shape: [strings.count], data: w.bytes)
    }

    /// An integer or float array from 64-bit values, stored as `dtype`.
    public static func ints(_ values: [Int64], dtype: String, shape: [Int]) -> NpyArray {
        var w = ByteWriter(capacity: values.count * 8)
        for v in values {
            switch dtype {
            case "i1", "u1": w.u8(UInt8(truncatingIfNeeded: v))
            case "i2", "u2": w.u16(UInt16(truncatingIfNeeded: v))
            case "i4", "u4": w.u32(UInt32(truncatingIfNeeded: v))
            default: w.u64(UInt64(bitPattern: v))
            }
        }
        return NpyArray(dtype: dtype, shape: shape, data: w.bytes)
    }

    /// The `.npy` header of this array.
    public var header: NpyHeader { NpyHeader(dtype: dtype, shape: shape) }

    /// The `.npy` file bytes (format 1.0, or 2.0 for a header over 64 KiB).
    public func npyBytes() -> [UInt8] { header.encoded() + data }

    /// Parses `.npy` bytes; `name` is used in errors.
    public static func parse(_ b: [UInt8], name: String) throws(TraceError) -> NpyArray {
        let (h, hl) = try NpyHeader.parse(b, name: name)
        guard hl + h.dataSize <= b.count else {
            throw TraceError(.invalidInput, "\(name): data is truncated: shape \(h.shape) needs \(h.dataSize) bytes, \(b.count - hl) present")
        }
        return NpyArray(dtype: h.dtype, shape: h.shape, data: Array(b[hl..<(hl + h.dataSize)]))
    }
}

/// What a `.npy` header says: the element type and the shape (C order, little-endian).
public struct NpyHeader: Sendable, Equatable {
    /// The normalised element type (see ``NpyArray/dtype``).
    public var dtype: String
    public var shape: [Int]

    public init(dtype: String, shape: [Int]) {
        self.dtype = dtype
        self.shape = shape
    }

    /// Elements (1 for a scalar).
    public var count: Int { shape.reduce(1, *) }
    /// Bytes per element.
    public var itemSize: Int { NpyArray(dtype: dtype, shape: [], data: []).itemSize }
    /// Bytes of element data after the header.
    public var dataSize: Int { count * itemSize }
    /// Whether the elements are integers (signed, unsigned or bool).
    public var isInteger: Bool { dtype.first == "i" || dtype.first == "u" || dtype == "b1" }

    /// Headers longer than this are refused (numpy's own reader stops at 10,000 bytes).
    static let maxLength = 1 << 20
    /// Arrays of more data than this are refused (1 TiB).
    static let maxDataSize = 1 << 40

    /// The header bytes, magic to padding, such that the data starts on a 64-byte boundary
    /// (format 1.0, or 2.0 when the text is over 64 KiB).
    public func encoded() -> [UInt8] {
        let item = itemSize
        let descr: String
        if dtype.hasPrefix("U") { descr = "<\(dtype)" } else if dtype == "b1" { descr = "|b1" } else if item == 1 { descr = "|\(dtype)" } else { descr = "<\(dtype)" }
        let shapeText = shape.isEmpty ? "()" : shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var text = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        let v2 = text.utf8.count + 11 > 65_535
        let pre = v2 ? 12 : 10
        let total = ((pre + text.utf8.count + 1 + 63) / 64) * 64
        text += String(repeating: " ", count: total - pre - text.utf8.count - 1) + "\n"
        var w = ByteWriter(capacity: total)
        w.append([0x93] + Array("NUMPY".utf8) + [v2 ? 2 : 1, 0])
        if v2 { w.u32(UInt32(text.utf8.count)) } else { w.u16(UInt16(text.utf8.count)) }
        w.append(Array(text.utf8))
        return w.bytes
    }

    /// The total header length (magic to padding) given its first 12 bytes (10 suffice for format 1.0).
    static func length(prefix b: [UInt8], name: String) throws(TraceError) -> Int {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, "\(name): \(m)") }
        guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw bad("not an .npy array (no \\x93NUMPY magic)") }
        let n: Int
        switch b[6] {
        case 1: n = 10 + Int(loadU16(b, 8))
        case 2, 3:
            guard b.count >= 12 else { throw bad("truncated .npy header") }
            n = 12 + Int(loadU32(b, 8))
        default: throw bad("unsupported .npy version \(b[6])")
        }
        guard n <= maxLength else { throw TraceError(.limit, "\(name): .npy header of \(n) bytes exceeds \(maxLength)") }
        return n
    }

    /// Parses the header at the start of `b` (which holds all of it); returns it and its length.
    public static func parse(_ b: [UInt8], name: String) throws(TraceError) -> (NpyHeader, Int) {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, "\(name): \(m)") }
        let total = try length(prefix: b, name: name)
        let off = b[6] == 1 ? 10 : 12
        guard total <= b.count else { throw bad("truncated .npy header") }
        let h = String(decoding: b[off..<total], as: UTF8.self)
        func field(_ key: String) -> Substring? {
            guard let r = h.range(of: "'\(key)':") else { return nil }
            return h[r.upperBound...].drop { $0 == " " }
        }
        guard let d = field("descr"), d.first == "'" || d.first == "\"" else { throw bad("npy header lacks descr (structured dtypes are not supported)") }
        let q = d.first!
        let descr = String(d.dropFirst().prefix { $0 != q })
        guard let fo = field("fortran_order") else { throw bad("npy header lacks fortran_order") }
        if fo.hasPrefix("True") { throw bad("Fortran-ordered arrays are not supported; save with np.ascontiguousarray") }
        guard let sh = field("shape"), sh.first == "(" else { throw bad("npy header lacks shape") }
        let inner = sh.dropFirst().prefix { $0 != ")" }
        var shape: [Int] = []
        for part in inner.split(separator: ",") {
            let t = part.trimmingCharacters(in: " L")
            if t.isEmpty { continue }
            guard let v = Int(t), v >= 0 else { throw bad("bad shape entry \(t)") }
            shape.append(v)
        }
        guard let order = descr.first else { throw bad("empty descr") }
        var kind = String(descr.dropFirst())
        if order == ">" && !kind.hasSuffix("1") { throw bad("big-endian dtype \(descr) is not supported") }
        if !"<>|=".contains(order) { kind = descr }
        if kind == "?" { kind = "b1" }
        let known = ["i1", "u1", "b1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"]
        guard known.contains(kind) || (kind.hasPrefix("U") && (1...(1 << 24)).contains(Int(kind.dropFirst()) ?? 0)) else {
            throw bad("unsupported dtype \(descr)")
        }
        let header = NpyHeader(dtype: kind, shape: shape)
        var n = header.itemSize
        for s in shape {
            let (m, o) = n.multipliedReportingOverflow(by: s)
            guard !o, m <= maxDataSize else { throw bad("shape \(shape) is too large") }
            n = m
        }
        return (header, total)
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
