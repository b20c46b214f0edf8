import Foundation

/// Standard deviations from exact sums: the variance's numerator d · Σx² − (Σx)² is computed exactly from
/// the exact sums (``WideSum``, ``ExactSquares``) and rounded once, so the result is accurate however much the two terms cancel (values
/// near 1 with a tiny spread), and depends on the sums alone (partials merge to the same bits).
///
/// Only the final division and square root round: the standard deviations are within a few units in the
/// last place of the exact value of the formula over the summed terms.
enum ExactVariance {
    /// verl's masked standard deviation over n tokens (`rollout_is_std`, `rollout_rs_RULE_std`):
    /// sqrt(max(masked_mean(x²) − masked_mean(x)², 0)) with masked_mean = Σ / D, D = n + 10⁻⁸ rounded to a
    /// double; that is (D·Σx² − (Σx)²) / D². 0 when n ≤ 1 (as verl); NaN when a sum is not finite.
    static func maskedStd(count n: Int, sum: WideSum, squares: ExactSquares) -> Double {
        guard n > 1 else { return 0 }
        let d = Double(n) + 1e-8
        return (max(numerator(d, sum: sum, squares: squares) / d / d, 0)).squareRoot()
    }

    /// torch's `Tensor.std()` (unbiased) over m values: sqrt((m·Σx² − (Σx)²) / (m (m − 1))); 0 when m ≤ 1 (as
    /// verl writes it); NaN when a sum is not finite.
    static func sampleStd(count m: Int, sum: WideSum, squares: ExactSquares) -> Double {
        guard m > 1 else { return 0 }
        let md = Double(m)
        return (max(numerator(md, sum: sum, squares: squares) / md / (md - 1), 0)).squareRoot()
    }

    /// d · S2 − S1², correctly rounded from the exact values of the sums (NaN when one is not finite).
    ///
    /// Each sum is split into a few doubles whose exact total it is (``WideSum/components``); every product
    /// of two doubles is split into its rounded value and its exact error (``twoProduct(_:_:)``); the
    /// resulting list of doubles adds up exactly to the numerator and is summed with one rounding
    /// (``roundedSum(_:)``).
    static func numerator(_ d: Double, sum: WideSum, squares: ExactSquares) -> Double {
        guard sum.value.isFinite, squares.value.isFinite, d.isFinite else { return .nan }
        let s1 = sum.components, s2 = squares.components
        var terms: [Double] = []
        terms.reserveCapacity(2 * s2.count + 2 * s1.count * s1.count)
        for c in s2 {
            let (p, e) = twoProduct(d, c)
            terms.append(p); terms.append(e)
        }
        for a in s1 {
            for b in s1 {
                let (p, e) = twoProduct(a, b)
                terms.append(-p); terms.append(-e)
            }
        }
        return roundedSum(terms)
    }

    /// a · b as p + e exactly: p = a·b rounded, e = fma(a, b, −p) (exact unless the product under- or overflows).
    @inline(__always) static func twoProduct(_ a: Double, _ b: Double) -> (Double, Double) {
        let p = a * b
        return (p, (-p).addingProduct(a, b))
    }

    /// Σ xs rounded once to the nearest double (ties to even), for finite terms with a finite sum:
    /// Shewchuk's exact partials, as Python's `math.fsum`.
    static func roundedSum(_ xs: [Double]) -> Double {
        var partials: [Double] = []
        for x0 in xs {
            var x = x0, i = 0
            for j in partials.indices {
                var y = partials[j]
                if abs(x) < abs(y) { swap(&x, &y) }
                let hi = x + y, lo = y - (hi - x)
                if lo != 0 { partials[i] = lo; i += 1 }
                x = hi
            }
            partials.removeSubrange(i...)
            partials.append(x)
        }
        // The partials are non-overlapping and increasing in magnitude: add from the top, stop at the first
        // inexact step, and correct a tie that the rest of the partials breaks.
        guard var n = partials.indices.last else { return 0 }
        var hi = partials[n], lo = 0.0
        while n > 0 {
            n -= 1
            let x = hi, y = partials[n]
            hi = x + y
            lo = y - (hi - x)
            if lo != 0 { break }
        }
        if n > 0 && ((lo < 0 && partials[n - 1] < 0) || (lo > 0 && partials[n - 1] > 0)) {
            let y = lo * 2, x = hi + y
            if y == x - hi { hi = x }
        }
        return hi
    }
}

extension WideSum {
    /// Doubles whose exact sum is this (finite) sum, largest first: each is the rest's ``value``, subtracted
    /// exactly with ``add(_:)`` (a double within one rounding of a multiple of 2⁻¹²⁰ lies on that grid).
    /// Empty for zero; at most a handful for the ~200 bits a sum holds.
    var components: [Double] {
        var rest = self, out: [Double] = []
        for _ in 0..<12 {
            let v = rest.value
            if v == 0 || !v.isFinite { break }
            out.append(v)
            if abs(v) < WideSum.limit {
                rest.add(-v)
            } else {  // 2^j copies of v / 2^j, each below the limit
                let j = Int(v.exponent) - 78
                rest.add(-v * Double(sign: .plus, exponent: -j, significand: 1), count: 1 << j)
            }
        }
        return out
    }
}
