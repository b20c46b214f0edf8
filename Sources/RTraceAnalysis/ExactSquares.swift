import Foundation

/// An exactly associative sum of squares x², kept exact over a wider range than ``WideSum`` alone.
///
/// Each x² is added as its rounded value p = x·x and the error e = fma(x, x, −p), whose last bit lies as far
/// below x²'s as x's own last bit squared. Squares below 2⁻⁸ go, scaled by 2⁶⁴, into ``low``; the others into
/// ``high``: both parts land on ``WideSum``'s 2⁻¹²⁰ grid (so exactly) for every |x| ≥ 2⁻⁴⁰; below that,
/// each square is within 2⁻¹⁸⁵ of exact. Partial sums merge exactly, in any order. Squares at or beyond ``WideSum/limit`` count
/// as +∞.
public struct ExactSquares: Codable, Equatable, Sendable {
    /// Σ of the squares ≥ 2⁻⁸ (rounded value and error).
    public private(set) var high = WideSum()
    /// Σ of the squares < 2⁻⁸ (rounded value and error), times 2⁶⁴.
    public private(set) var low = WideSum()
    static let split = 0x1p-8, scale = 0x1p64, unscale = 0x1p-64

    /// An empty sum (zero).
    public init() {}

    /// Adds x² (the per-token path: plain ``WideSum/add(_:)``s).
    @inline(__always) public mutating func add(squareOf x: Double) {
        let p = x * x
        let e = p < WideSum.limit ? (-p).addingProduct(x, x) : 0
        if p < ExactSquares.split {
            low.add(p * ExactSquares.scale); low.add(e * ExactSquares.scale)
        } else {
            high.add(p)
            if e != 0 { high.add(e) }
        }
    }

    /// Adds `n` copies of x² (`n` ≥ 0), or subtracts them when `negate`.
    public mutating func add(squareOf x: Double, count n: Int, negate: Bool = false) {
        let p = x * x
        let e = p < WideSum.limit ? (-p).addingProduct(x, x) : 0
        let sign = negate ? -1.0 : 1.0
        if p < ExactSquares.split {
            low.add(sign * p * ExactSquares.scale, count: n); low.add(sign * e * ExactSquares.scale, count: n)
        } else {
            high.add(sign * p, count: n)
            if e != 0 { high.add(sign * e, count: n) }
        }
    }

    /// Adds another partial sum (exact, commutative and associative).
    public mutating func merge(_ o: ExactSquares) { high.merge(o.high); low.merge(o.low) }

    /// The sum as a double (within a few roundings).
    public var value: Double { high.value + low.value * ExactSquares.unscale }

    /// Doubles whose exact sum is the sum (see ``WideSum/components``); empty unless finite.
    var components: [Double] { high.components + low.components.map { $0 * ExactSquares.unscale } }
}
