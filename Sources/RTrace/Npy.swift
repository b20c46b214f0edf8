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

    /// The `.npy` file bytes (format 1.0, or 2.0 for a header over 64 KiB).
    public func npyBytes() -> [UInt8] {
        let descr: String
        if dtype.hasPrefix("U") { descr = "<\(dtype)" } else if dtype == "b1" { descr = "|b1" } else if itemSize == 1 { descr = "|\(dtype)" } else { descr = "<\(dtype)" }
        let shapeText = shape.isEmpty ? "()" : shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = "{'descr': '\(descr)', 'fortran_order': False, 'shape': \(shapeText), }"
        let pre = 10
        let total = ((pre + header.utf8.count + 1 + 63) / 64) * 64
        header += String(repeating: " ", count: total - pre - header.utf8.count - 1) + "\n"
        var w = ByteWriter(capacity: total + data.count)
        w.append([0x93] + Array("NUMPY".utf8) + [1, 0])
        w.u16(UInt16(header.utf8.count))
        w.append(Array(header.utf8))
        w.append(data)
        return w.bytes
    }

    /// Parses `.npy` bytes; `name` is used in errors.
    public static func parse(_ b: [UInt8], name: String) throws(TraceError) -> NpyArray {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, "\(name): \(m)") }
        guard b.count >= 10, b[0] == 0x93, Array(b[1..<6]) == Array("NUMPY".utf8) else { throw bad("not an .npy array (no \\x93NUMPY magic)") }
        let major = b[6]
        var hl: Int, off: Int
        switch major {
        case 1: hl = Int(loadU16(b, 8)); off = 10
        case 2, 3:
            guard b.count >= 12 else { throw bad("truncated .npy header") }
            hl = Int(loadU32(b, 8)); off = 12
        default: throw bad("unsupported .npy version \(major)")
        }
        guard off + hl <= b.count else { throw bad("truncated .npy header") }
        let h = String(decoding: b[off..<off + hl], as: UTF8.self)
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
        let order = descr.first!
        var kind = String(descr.dropFirst())
        if order == ">" && !kind.hasSuffix("1") { throw bad("big-endian dtype \(descr) is not supported") }
        if !"<>|=".contains(order) { kind = descr }
        if kind == "?" { kind = "b1" }
        let known = ["i1", "u1", "b1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"]
        guard known.contains(kind) || (kind.hasPrefix("U") && Int(kind.dropFirst()) != nil) else {
            throw bad("unsupported dtype \(descr)")
        }
        var a = NpyArray(dtype: kind, shape: shape, data: [])
        var n = a.itemSize
        for s in shape {
            let (m, o) = n.multipliedReportingOverflow(by: s)
            guard !o, m <= 1 << 40 else { throw bad("shape \(shape) is too large") }
            n = m
        }
        guard off + hl + n <= b.count else { throw bad("data is truncated: shape \(shape) needs \(n) bytes, \(b.count - off - hl) present") }
        a.data = Array(b[(off + hl)..<(off + hl + n)])
        return a
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
