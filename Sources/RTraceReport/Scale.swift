import Foundation

/// A map from data values to pixels along one axis, linear or base-10 logarithmic.
public struct AxisScale {
    /// The data range shown.
    public var lo: Double, hi: Double
    /// The pixel range (`from` corresponds to `lo`).
    public var from: Double, to: Double
    /// Logarithmic (values must be > 0).
    public var log: Bool

    /// Creates a scale; a degenerate range is widened so that the scale stays invertible.
    public init(lo: Double, hi: Double, from: Double, to: Double, log: Bool = false) {
        var a = lo, b = hi
        if log { a = max(a, 1e-300); b = max(b, a * 10) }
        if !(b > a) { b = a == 0 ? 1 : a + abs(a) * 0.1 }
        self.lo = a; self.hi = b; self.from = from; self.to = to; self.log = log
    }

    /// The pixel of a value (values outside the range extrapolate).
    public func pixel(_ v: Double) -> Double {
        let t: Double
        if log { t = (log10(max(v, lo * 1e-3)) - log10(lo)) / (log10(hi) - log10(lo)) } else { t = (v - lo) / (hi - lo) }
        return from + (to - from) * t
    }

    /// Tick values with round steps (1, 2, 5 × 10ⁿ), about `count` of them; decades for a log scale.
    public func ticks(count: Int = 5) -> [Double] {
        if log {
            let a = Int(floor(log10(lo) + 1e-9)), b = Int(ceil(log10(hi) - 1e-9))
            let stepDecades = max(1, (b - a + count - 1) / max(1, count))
            return stride(from: a, through: b, by: stepDecades).map { pow(10, Double($0)) }.filter { $0 >= lo * 0.999 && $0 <= hi * 1.001 }
        }
        let step = niceStep((hi - lo) / Double(max(1, count)))
        let first = (lo / step).rounded(.up) * step
        var out: [Double] = []
        var v = first
        while v <= hi + step * 1e-9 {
            out.append(abs(v) < step * 1e-9 ? 0 : v)
            v += step
        }
        return out
    }

    /// Label of a tick value: enough digits to tell neighbouring ticks apart.
    public func label(_ v: Double) -> String {
        if log {
            let e = Int(log10(v).rounded())
            return (-2...3).contains(e) ? formatNumber(v) : "1e\(e)"
        }
        return formatNumber(v, digits: 3)
    }
}

/// A round step (1, 2, 2.5 or 5 × 10ⁿ) at least `raw`.
func niceStep(_ raw: Double) -> Double {
    guard raw > 0, raw.isFinite else { return 1 }
    let p = pow(10, floor(log10(raw)))
    for m in [1.0, 2, 2.5, 5, 10] where m * p >= raw * 0.999 { return m * p }
    return 10 * p
}

/// A round upper bound for a data maximum (for axes that start at 0).
func niceMax(_ v: Double) -> Double {
    guard v > 0, v.isFinite else { return 1 }
    let s = niceStep(v / 5)
    return (v / s).rounded(.up) * s
}
