/// Appends little-endian integers and bytes to a growing buffer.
struct ByteWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func f64(_ v: Double) { u64(v.bitPattern) }
    mutating func append(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func append<S: Sequence>(contentsOf s: S) where S.Element == UInt8 { bytes.append(contentsOf: s) }
    /// A u32 length followed by the UTF-8 bytes.
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// Reads little-endian integers from a byte buffer, throwing `truncated` with the offset
/// instead of reading past the end.
struct ByteReader {
    let bytes: [UInt8]
    private(set) var position: Int
    /// Added to positions in errors, so they name the offset in the file.
    let base: Int
    let what: String

    init(_ bytes: [UInt8], base: Int = 0, what: String) {
        self.bytes = bytes
        self.position = 0
        self.base = base
        self.what = what
    }

    var remaining: Int { bytes.count - position }
    var atEnd: Bool { position == bytes.count }

    private mutating func need(_ n: Int, _ field: String) throws(TraceError) {
        if n < 0 || n > remaining {
            throw TraceError(.corrupt, "\(what): \(field) needs \(n) bytes, \(remaining) left", offset: base + position)
        }
    }

    mutating func u8(_ field: String) throws(TraceError) -> UInt8 {
        try need(1, field)
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u32(_ field: String) throws(TraceError) -> UInt32 {
        try need(4, field)
        defer { position += 4 }
        return loadU32(bytes, position)
    }
    mutating func u64(_ field: String) throws(TraceError) -> UInt64 {
        try need(8, field)
        defer { position += 8 }
        return loadU64(bytes, position)
    }
    mutating func f64(_ field: String) throws(TraceError) -> Double { Double(bitPattern: try u64(field)) }
    mutating func take(_ n: Int, _ field: String) throws(TraceError) -> ArraySlice<UInt8> {
        try need(n, field)
        defer { position += n }
        return bytes[position..<position + n]
    }
    /// A u32 length (at most `limit`) and that many UTF-8 bytes.
    mutating func string(_ field: String, limit: Int) throws(TraceError) -> String {
        let at = base + position
        let n = Int(try u32("\(field) length"))
        if n > limit { throw TraceError(.limit, "\(what): \(field) length \(n) exceeds \(limit)", offset: at) }
        let b = try take(n, field)
        guard let s = String(validating: b, as: UTF8.self) else {
            throw TraceError(.corrupt, "\(what): \(field) is not valid UTF-8", offset: at + 4)
        }
        return s
    }
}

@inline(__always) func loadU16(_ b: [UInt8], _ i: Int) -> UInt16 {
    UInt16(b[i]) | UInt16(b[i + 1]) << 8
}
@inline(__always) func loadU32(_ b: [UInt8], _ i: Int) -> UInt32 {
    UInt32(b[i]) | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2]) << 16 | UInt32(b[i + 3]) << 24
}
@inline(__always) func loadU64(_ b: [UInt8], _ i: Int) -> UInt64 {
    UInt64(loadU32(b, i)) | UInt64(loadU32(b, i + 4)) << 32
}
@inline(__always) func storeU32(_ v: UInt32, _ b: inout [UInt8], _ i: Int) {
    b[i] = UInt8(truncatingIfNeeded: v); b[i + 1] = UInt8(truncatingIfNeeded: v >> 8)
    b[i + 2] = UInt8(truncatingIfNeeded: v >> 16); b[i + 3] = UInt8(truncatingIfNeeded: v >> 24)
}
