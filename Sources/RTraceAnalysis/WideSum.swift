import Foundation

/// An exactly associative sum of doubles over a wide range, at 2⁻¹²⁰ resolution, with infinities counted.
///
/// Each finite term x with |x| < 2⁸⁰ is split, as ±|x|, into the integer part of |x| and its fraction, and
/// the fraction into two 60-bit halves: the upper 60 bits exactly, the rest rounded once to a multiple of
/// 2⁻¹²⁰ (every split of a non-negative double is exact in double arithmetic). The three parts, with x's
/// sign, add up in separate 128-bit integers,
/// so partial sums merge exactly in any order: the sum of shards is the sum of the union, bit for bit.
/// A term is exact when its last significant bit is at or above 2⁻¹²⁰ (every double above 2⁻⁶⁷ ≈ 7·10⁻²¹),
/// so sums of small terms, such as squares of weights of 10⁻⁴, keep their relative precision (``ExactSum``'s
/// 2⁻⁶⁰ grid would not).
///
/// Terms ≥ 2⁸⁰ (and +∞) count as +∞, terms ≤ −2⁸⁰ (and −∞) as −∞, NaN as NaN; ``value`` then follows IEEE
/// addition (+∞ and −∞ together give NaN). 2⁸⁰ ≈ 1.2·10²⁴, beyond any perplexity or weight that is not
/// already meaningless; 2⁴⁷ terms at that bound still fit the integer part.
public struct WideSum: Sendable, Equatable {
    /// Terms at or beyond this magnitude count as infinite.
    public static let limit = 0x1p80
    static let bits = 60
    static let scale = 0x1p60

    /// Σ ±⌊|x|⌋ over the finite terms.
    public private(set) var whole: Int128 = 0
    /// Σ of the fractions' upper 60 bits, in units of 2⁻⁶⁰ (each term within ±(2⁶⁰ − 1)).
    public private(set) var fracHigh: Int128 = 0
    /// Σ of the fractions' rest, rounded, in units of 2⁻¹²⁰ (each term within ±2⁶⁰).
    public private(set) var fracLow: Int128 = 0
    /// Terms counted as +∞, −∞ and NaN.
    public private(set) var positiveInfinities = 0, negativeInfinities = 0, nans = 0

    /// An empty sum (zero).
    public init() {}

    /// Adds one term.
    @inline(__always) public mutating func add(_ x: Double) {
        guard x > -WideSum.limit && x < WideSum.limit else {
            if x.isNaN { nans += 1 } else if x > 0 { positiveInfinities += 1 } else { negativeInfinities += 1 }
            return
        }
        let a = abs(x)
        let w = a.rounded(.down)
        let f = (a - w) * WideSum.scale  // in [0, 2⁶⁰), exact
        let h = f.rounded(.down)
        let l = ((f - h) * WideSum.scale).rounded()
        // Through Int64 where the value fits: one instruction, where Int128(Double) takes a generic path.
        let wi = w < 0x1p62 ? Int128(Int64(w)) : Int128(w)
        let hi = Int128(Int64(h)), li = Int128(Int64(l))  // both ≤ 2⁶⁰
        if x < 0 {
            whole &-= wi; fracHigh &-= hi; fracLow &-= li
        } else {
            whole &+= wi; fracHigh &+= hi; fracLow &+= li
        }
    }

    /// Adds `n` ≥ 0 copies of a term: the same state as `n` calls of ``add(_:)``, in one step.
    public mutating func add(_ x: Double, count n: Int) {
        guard n != 1 else { add(x); return }
        var one = WideSum()
        one.add(x)
        let k = Int128(n)
        whole &+= one.whole &* k; fracHigh &+= one.fracHigh &* k; fracLow &+= one.fracLow &* k
        positiveInfinities += one.positiveInfinities * n; negativeInfinities += one.negativeInfinities * n; nans += one.nans * n
    }

    /// Adds another partial sum (exact, commutative and associative).
    public mutating func merge(_ o: WideSum) {
        whole &+= o.whole; fracHigh &+= o.fracHigh; fracLow &+= o.fracLow
        positiveInfinities += o.positiveInfinities; negativeInfinities += o.negativeInfinities; nans += o.nans
    }

    /// The sum as a double: rounded once below 64 in magnitude, otherwise within one rounding of it.
    public var value: Double {
        if nans > 0 || (positiveInfinities > 0 && negativeInfinities > 0) { return .nan }
        if positiveInfinities > 0 { return .infinity }
        if negativeInfinities > 0 { return -.infinity }
        // Carry with floor shifts: hi and lo end in 0…2⁶⁰ − 1 whatever the signs of the parts.
        let mask: Int128 = (1 << WideSum.bits) - 1
        let h1 = fracHigh &+ (fracLow >> WideSum.bits), lo = fracLow & mask
        let w = whole &+ (h1 >> WideSum.bits), hi = h1 & mask
        if w > -64 && w < 64 { return Double((w << (2 * WideSum.bits)) | (hi << WideSum.bits) | lo) / 0x1p120 }
        let bound: Int128 = 1 << 66
        if w > -bound && w < bound { return Double((w << WideSum.bits) | hi) / WideSum.scale }
        return Double(w)
    }

    /// The state as text: `whole fracHigh fracLow +inf −inf nan`, decimal integers separated by one space.
    public var text: String { "\(whole) \(fracHigh) \(fracLow) \(positiveInfinities) \(negativeInfinities) \(nans)" }

    /// Reads ``text``; nil when it is not six decimal integers (the last three ≥ 0).
    public init?(text: String) {
        let p = text.split(separator: " ", omittingEmptySubsequences: false)
        guard p.count == 6, let w = Int128(p[0]), let h = Int128(p[1]), let l = Int128(p[2]),
              let a = Int(p[3]), let b = Int(p[4]), let c = Int(p[5]), a >= 0, b >= 0, c >= 0 else { return nil }
        whole = w; fracHigh = h; fracLow = l; positiveInfinities = a; negativeInfinities = b; nans = c
    }
}

extension WideSum: TextCodable {
    public static let textForm = "a WideSum (\"whole fracHigh fracLow +inf -inf nan\")"
}

/// The least and the greatest of a set of doubles (NaN left out); merges exactly.
public struct MinMax: Sendable, Equatable {
    /// The least value, +∞ while empty.
    public private(set) var min = Double.infinity
    /// The greatest value, −∞ while empty.
    public private(set) var max = -Double.infinity

    /// An empty range.
    public init() {}

    /// Whether no value was added.
    public var isEmpty: Bool { min > max }

    /// Adds a value.
    @inline(__always) public mutating func add(_ x: Double) {
        if x < min { min = x }
        if x > max { max = x }
    }

    /// Adds another range.
    public mutating func merge(_ o: MinMax) {
        if o.isEmpty { return }
        add(o.min); add(o.max)
    }

    /// The largest |x|, nil while empty.
    public var maxAbs: Double? { isEmpty ? nil : Swift.max(abs(min), abs(max)) }
}

extension MinMax: Codable {
    /// Decodes `[min, max]` written as Swift's shortest round-trip texts (`"inf"`, `"-inf"` allowed).
    public init(from decoder: any Decoder) throws {
        var c = try decoder.unkeyedContainer()
        let a = try c.decode(String.self), b = try c.decode(String.self)
        guard let lo = Double(a), let hi = Double(b) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a [min, max] pair of numbers: \(a), \(b)")
        }
        min = lo; max = hi
    }

    /// Encodes `[min, max]` as texts (exact, and ±∞ survive).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(min.description)
        try c.encode(max.description)
    }
}
