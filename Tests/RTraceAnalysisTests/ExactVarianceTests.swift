import Foundation
import RTraceTestSupport
import Testing
@testable import RTraceAnalysis

/// Exact sums of values and squares.
func sums(_ xs: [Double]) -> (WideSum, ExactSquares) {
    var s = WideSum(), q = ExactSquares()
    for x in xs { s.add(x); q.add(squareOf: x) }
    return (s, q)
}

@Suite("exact variances: d·Σx² − (Σx)² from exact sums, whatever the cancellation")
struct ExactVarianceTests {
    @Test("roundedSum rounds the exact sum once (ties to even, broken by the rest)")
    func roundedSum() {
        #expect(ExactVariance.roundedSum([1, 1e-16, -1]) == 1e-16)
        #expect(ExactVariance.roundedSum([1, 0x1p-53, 0x1p-106]) == 1 + 0x1p-52)  // a tie broken by 2^-106
        #expect(ExactVariance.roundedSum([1, 0x1p-53]) == 1)  // a tie, to even
        #expect(ExactVariance.roundedSum([0x1p100, 1, -0x1p100, 0x1p-60]) == 1 + 0x1p-60)
        #expect(ExactVariance.roundedSum([]) == 0)
        var naive = 0.0
        for x in [1, 1e-16, -1] { naive += x }
        #expect(naive != 1e-16)  // the test can tell
    }

    @Test("WideSum: components add up exactly to the sum; add(count:) is n adds; ExactSquares keeps x² exact")
    func components() throws {
        var rng = TestRNG(17)
        var w = WideSum()
        for _ in 0..<500 { w.add((rng.unit() - 0.3) * pow(2, Double(rng.int(90)) - 40)) }
        let c = w.components
        #expect(c.count >= 2 && c.count <= 6)
        var rest = w
        for x in c { rest.add(-x) }
        #expect(rest.value == 0 && rest.components.isEmpty)
        var big = WideSum()  // beyond 2^80 in total (each term below)
        for _ in 0..<4 { big.add(0x1p79 + 0.5) }
        var r = big
        for x in big.components { r.add(x < WideSum.limit ? -x : -x / 4, count: x < WideSum.limit ? 1 : 4) }
        #expect(r.value == 0)
        var seven = WideSum(), once = WideSum()
        for _ in 0..<7 { seven.add(-0.1) }
        once.add(-0.1, count: 7)
        #expect(seven == once)
        // x = 1 + 2^-52: x² = 1 + 2^-51 + 2^-104, which a rounded square loses.
        var q = ExactSquares()
        q.add(squareOf: 1 + 0x1p-52)
        #expect(q.components == [1 + 0x1p-51, 0x1p-104])
        // Small values keep their error term too (in the scaled part); subtracting cancels exactly.
        let x = 1e-4 + 0x1p-66
        var s = ExactSquares()
        s.add(squareOf: x, count: 3)
        let p = x * x, e = (-p).addingProduct(x, x)
        #expect(e != 0 && ExactVariance.roundedSum(s.components) == ExactVariance.roundedSum([p, e, p, e, p, e]))
        s.add(squareOf: x, count: 3, negate: true)
        #expect(s.value == 0 && s.components.isEmpty)
        #expect(try JSONDecoder().decode(ExactSquares.self, from: JSONEncoder().encode(q)) == q)
    }

    /// Values 1 + k·h (h = 2⁻⁴⁰): var/mean² ~ 10⁻²⁴, where a double (and a double-double) numerator is noise.
    /// By shift invariance n·Σx² − (Σx)² = h²·(n·Σk² − (Σk)²), exact in integers; D·Σx² − (Σx)² adds (D − n)·Σx².
    @Test("values 1 ± k·2^-40: the std equals the exact-integer reference to 1e-14")
    func cancellation() {
        let h = 0x1p-40
        let ks: [Int] = [3, -1, 0, 2, -4, 1, 1, -2, 5, 0, -3]
        let xs = ks.map { 1 + Double($0) * h }
        let n = xs.count
        let (s, q) = sums(xs)
        let sk = ks.reduce(0, +), skk = ks.map { $0 * $0 }.reduce(0, +)
        let integer = Double(n * skk - sk * sk) * h * h
        // torch's std: (m·Q − S²) / (m (m − 1)).
        let sample = (integer / Double(n) / Double(n - 1)).squareRoot()
        #expect(relClose(ExactVariance.sampleStd(count: n, sum: s, squares: q), sample, 1e-14))
        // verl's masked std: D = n + 1e-8; (D·Q − S²) / D².
        let d = Double(n) + 1e-8
        let masked = ((integer + (d - Double(n)) * q.value) / d / d).squareRoot()
        #expect(relClose(ExactVariance.maskedStd(count: n, sum: s, squares: q), masked, 1e-14))
        // A double numerator is useless here (the test can tell).
        let naive = Double(n) * q.value - s.value * s.value
        #expect(!(abs(naive - integer) <= 1e-3 * integer))
    }

    @Test("values 1 ± 1e-9 and scattered ones: the std equals the shifted two-pass reference")
    func nearOne() {
        var rng = TestRNG(3)
        for scale in [1e-9, 1e-5, 0.3] {
            let xs = (0..<200).map { _ in 1 + scale * (rng.unit() * 2 - 1) }
            let n = xs.count, (s, q) = sums(xs)
            // Shifted by 1 (exact: Sterbenz), no cancellation left: n·Σy² − (Σy)² with |Σy| ≪ √(n·Σy²).
            let ys = xs.map { $0 - 1 }
            let sy = ExactVariance.roundedSum(ys), syy = ExactVariance.roundedSum(ys.map { $0 * $0 })
            let integer = Double(n) * syy - sy * sy
            let sample = (integer / Double(n) / Double(n - 1)).squareRoot()
            #expect(relClose(ExactVariance.sampleStd(count: n, sum: s, squares: q), sample, 1e-13), "scale \(scale)")
            let d = Double(n) + 1e-8
            let masked = ((integer + (d - Double(n)) * q.value) / d / d).squareRoot()
            #expect(relClose(ExactVariance.maskedStd(count: n, sum: s, squares: q), masked, 1e-13), "scale \(scale)")
        }
    }

    @Test("a single value gives 0; equal values give exactly 0 over sequences and verl's ε term over tokens")
    func degenerate() {
        let (s1, q1) = sums([0.7])
        #expect(ExactVariance.sampleStd(count: 1, sum: s1, squares: q1) == 0 && ExactVariance.maskedStd(count: 1, sum: s1, squares: q1) == 0)
        #expect(ExactVariance.sampleStd(count: 0, sum: WideSum(), squares: ExactSquares()) == 0)
        let xs = Array(repeating: 0.1, count: 37)
        let (s, q) = sums(xs)
        #expect(ExactVariance.sampleStd(count: 37, sum: s, squares: q) == 0)
        // Over tokens, verl's D = n + 1e-8: (D·n·x² − n²x²) / D² = n·x²·(D − n) / D² > 0.
        let d = 37 + 1e-8, x = 0.1
        #expect(relClose(ExactVariance.maskedStd(count: 37, sum: s, squares: q), x * (37 * (d - 37)).squareRoot() / d, 1e-13))
        // Non-finite sums give NaN (written null).
        var inf = WideSum()
        inf.add(.infinity); inf.add(1)
        #expect(ExactVariance.maskedStd(count: 2, sum: inf, squares: q).isNaN)
    }
}
