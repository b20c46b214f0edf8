/// The on-disk type of a floating-point column, stored bit-exactly as the engine gave it.
public enum FloatDType: String, Sendable, CaseIterable, Codable {
    /// IEEE 754 binary16.
    case f16
    /// bfloat16: the upper 16 bits of a binary32.
    case bf16
    /// IEEE 754 binary32.
    case f32

    /// Bytes per value.
    public var size: Int { self == .f32 ? 4 : 2 }

    /// The value stored at element `i` of little-endian `bytes`, widened to `Float`.
    @inline(__always)
    public func value(_ bytes: [UInt8], _ i: Int) -> Float {
        switch self {
        case .f32:
            return Float(bitPattern: loadU32(bytes, i * 4))
        case .bf16:
            return Float(bitPattern: UInt32(loadU16(bytes, i * 2)) << 16)
        case .f16:
            return halfToFloat(loadU16(bytes, i * 2))
        }
    }

    /// The bits of `v` in this dtype (round to nearest even), as little-endian bytes appended to `out`.
    public func append(_ v: Float, to out: inout [UInt8]) {
        switch self {
        case .f32:
            let b = v.bitPattern
            out.append(contentsOf: [UInt8(b & 0xFF), UInt8(b >> 8 & 0xFF), UInt8(b >> 16 & 0xFF), UInt8(b >> 24)])
        case .bf16:
            let h = floatToBF16(v)
            out.append(UInt8(h & 0xFF)); out.append(UInt8(h >> 8))
        case .f16:
            let h = Float16(v).bitPattern
            out.append(UInt8(h & 0xFF)); out.append(UInt8(h >> 8))
        }
    }
}

@inline(__always) func halfToFloat(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }

/// Rounds a binary32 to bfloat16 bits, to nearest even (NaN stays NaN).
@inline(__always) public func floatToBF16(_ v: Float) -> UInt16 {
    let b = v.bitPattern
    if v.isNaN { return UInt16(b >> 16) | 0x40 }
    let rounded = b &+ 0x7FFF &+ ((b >> 16) & 1)
    return UInt16(rounded >> 16)
}

/// The width of stored expert ids: `u8` when there are at most 256 experts, else `u16`.
public enum IDWidth: String, Sendable, Codable {
    case u8, u16
    /// Bytes per id.
    public var size: Int { self == .u8 ? 1 : 2 }
    /// The width the format requires for `numExperts` experts.
    public static func required(numExperts: Int) -> IDWidth { numExperts <= 256 ? .u8 : .u16 }
}

/// An array of floats kept as the little-endian bits of its dtype, so a round trip is bit-exact.
public struct FloatArray: Sendable, Equatable {
    /// The stored type.
    public var dtype: FloatDType
    /// `count * dtype.size` little-endian bytes.
    public var bytes: [UInt8]

    /// Wraps existing little-endian bytes.
    public init(dtype: FloatDType, bytes: [UInt8]) {
        precondition(bytes.count % dtype.size == 0)
        self.dtype = dtype
        self.bytes = bytes
    }

    /// Rounds `values` into `dtype` (round to nearest even).
    public init(dtype: FloatDType, values: [Float]) {
        self.dtype = dtype
        var b: [UInt8] = []
        b.reserveCapacity(values.count * dtype.size)
        for v in values { dtype.append(v, to: &b) }
        self.bytes = b
    }

    /// `count` zero values.
    public init(dtype: FloatDType, zeros count: Int) {
        self.dtype = dtype
        self.bytes = [UInt8](repeating: 0, count: count * dtype.size)
    }

    /// The number of values.
    public var count: Int { bytes.count / dtype.size }

    /// Value `i`, widened to `Float`.
    @inline(__always) public subscript(i: Int) -> Float { dtype.value(bytes, i) }

    /// All values, widened to `Float`.
    public var floats: [Float] { (0..<count).map { self[$0] } }
}
