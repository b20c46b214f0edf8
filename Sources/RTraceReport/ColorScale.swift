import Foundation

/// An sRGB colour.
public struct RGB: Equatable, Sendable {
    /// Red, green and blue in 0…1.
    public var r: Double, g: Double, b: Double

    /// Components in 0…1.
    public init(_ r: Double, _ g: Double, _ b: Double) { self.r = r; self.g = g; self.b = b }

    /// From `0xRRGGBB`.
    public init(hex: UInt32) {
        self.init(Double((hex >> 16) & 0xff) / 255, Double((hex >> 8) & 0xff) / 255, Double(hex & 0xff) / 255)
    }

    /// `#rrggbb`.
    public var hex: String {
        func c(_ x: Double) -> String {
            let v = Int((min(1, max(0, x)) * 255).rounded())
            let s = String(v, radix: 16)
            return s.count == 1 ? "0" + s : s
        }
        return "#" + c(r) + c(g) + c(b)
    }

    /// Relative luminance (WCAG, linearised sRGB): what a greyscale print keeps.
    public var luminance: Double {
        func lin(_ c: Double) -> Double { c <= 0.04045 ? c / 12.92 : pow((c + 0.055) / 1.055, 2.4) }
        return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)
    }

    /// Black or white, whichever reads better on this colour.
    public var textColor: String { luminance > 0.35 ? "#000000" : "#ffffff" }
}

/// A sequential colour scale whose luminance rises monotonically from 0 to 1, so it reads in grey too.
public struct ColorScale: Sendable {
    /// The scale's name, for captions.
    public let name: String
    let stops: [RGB]

    /// viridis (matplotlib), sampled at 0, 0.1, …, 1.
    public static let viridis = ColorScale(name: "viridis", stops: [
        0x440154, 0x482475, 0x414487, 0x355f8d, 0x2a788e, 0x21918c, 0x22a884, 0x44bf70, 0x7ad151, 0xbddf26, 0xfde725,
    ].map { RGB(hex: $0) })

    /// cividis (colour-vision-deficiency optimised), sampled at 0, 0.25, …, 1.
    public static let cividis = ColorScale(name: "cividis", stops: [
        0x00204c, 0x414d6b, 0x7c7b78, 0xbcaf6f, 0xffe945,
    ].map { RGB(hex: $0) })

    /// The colour at `t` in 0…1 (clamped; NaN gives the low end).
    public func color(at t: Double) -> RGB {
        let x = t.isFinite ? min(1, max(0, t)) : 0
        let p = x * Double(stops.count - 1)
        let i = min(stops.count - 2, Int(p))
        let f = p - Double(i)
        let a = stops[i], b = stops[i + 1]
        return RGB(a.r + (b.r - a.r) * f, a.g + (b.g - a.g) * f, a.b + (b.b - a.b) * f)
    }
}

/// Series colours (Okabe–Ito, distinguishable with colour-vision deficiencies), each paired with a dash
/// pattern and a luminance step so that series also differ in grey.
public enum SeriesStyle {
    /// Colours, darkest first.
    public static let colors = ["#0b3c8c", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000", "#f0e442"]
    /// Dash patterns (SVG `stroke-dasharray`; nil = solid).
    public static let dashes: [String?] = [nil, "7 4", "2 3", "10 3 2 3", "4 2", "12 4", nil, "1 2"]

    /// The colour of series `i`.
    public static func color(_ i: Int) -> String { colors[i % colors.count] }
    /// The dash pattern of series `i`.
    public static func dash(_ i: Int) -> String? { dashes[i % dashes.count] }
}
