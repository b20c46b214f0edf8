import Foundation

/// Escapes `&`, `<`, `>`, `"` and `'` so that text is safe inside XML/HTML text and attribute values.
public func xmlEscape(_ s: String) -> String {
    var out = ""
    out.reserveCapacity(s.count)
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(c)
        }
    }
    return out
}

/// A coordinate with at most two decimals and no trailing zeros (compact, locale-independent SVG).
func coord(_ x: Double) -> String {
    guard x.isFinite else { return "0" }
    let r = (x * 100).rounded() / 100
    if r == r.rounded() { return String(Int(r)) }
    var s = String(format: "%.2f", r)
    while s.hasSuffix("0") { s.removeLast() }
    return s
}

/// A number for people: `digits` significant digits, scientific notation for very small or large magnitudes.
public func formatNumber(_ x: Double, digits: Int = 3) -> String {
    guard x.isFinite else { return x.isNaN ? "n/a" : (x > 0 ? "∞" : "−∞") }
    if x == 0 { return "0" }
    let a = abs(x)
    if a < 1e-3 || a >= 1e6 {
        // 1.80e-04 → 1.8e-4
        let parts = String(format: "%.\(max(0, digits - 1))e", x).split(separator: "e")
        var m = String(parts[0])
        if m.contains(".") {
            while m.hasSuffix("0") { m.removeLast() }
            if m.hasSuffix(".") { m.removeLast() }
        }
        return m + "e" + String(Int(parts[1]) ?? 0)
    }
    let decimals = max(0, digits - 1 - Int(floor(log10(a))))
    var s = String(format: "%.\(decimals)f", x)
    if s.contains(".") {
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
    }
    return s
}

/// An SVG document under construction: a fixed-size canvas that collects elements in drawing order.
///
/// The text it produces is a standalone SVG file (with `xmlns`), which can also be inlined in HTML.
public struct SVGCanvas {
    /// Width and height in CSS pixels.
    public let width: Double, height: Double
    /// Elements in drawing order (later ones on top).
    public private(set) var elements: [String] = []
    /// An accessible description read by screen readers and shown by some viewers as a tooltip.
    public var title: String

    /// Creates an empty canvas.
    public init(width: Double, height: Double, title: String) {
        self.width = width
        self.height = height
        self.title = title
    }

    /// Adds a raw SVG element (the caller escapes its text).
    public mutating func add(_ element: String) { elements.append(element) }

    /// A rectangle.
    public mutating func rect(x: Double, y: Double, w: Double, h: Double, fill: String, stroke: String? = nil,
                              extra: String = "", tooltip: String? = nil) {
        var s = "<rect x=\"\(coord(x))\" y=\"\(coord(y))\" width=\"\(coord(max(0, w)))\" height=\"\(coord(max(0, h)))\" fill=\"\(fill)\""
        if let stroke { s += " stroke=\"\(stroke)\"" }
        if !extra.isEmpty { s += " " + extra }
        if let tooltip { s += "><title>\(xmlEscape(tooltip))</title></rect>" } else { s += "/>" }
        add(s)
    }

    /// A straight line.
    public mutating func line(x1: Double, y1: Double, x2: Double, y2: Double, stroke: String, width: Double = 1, dash: String? = nil) {
        var s = "<line x1=\"\(coord(x1))\" y1=\"\(coord(y1))\" x2=\"\(coord(x2))\" y2=\"\(coord(y2))\" stroke=\"\(stroke)\" stroke-width=\"\(coord(width))\""
        if let dash { s += " stroke-dasharray=\"\(dash)\"" }
        add(s + "/>")
    }

    /// Text; `anchor` is start, middle or end; `rotate` turns it about its anchor point (degrees).
    public mutating func text(_ t: String, x: Double, y: Double, anchor: String = "start", size: Double = 12,
                              weight: String? = nil, fill: String = "#222", rotate: Double? = nil, baseline: String? = nil) {
        var s = "<text x=\"\(coord(x))\" y=\"\(coord(y))\" text-anchor=\"\(anchor)\" font-size=\"\(coord(size))\" fill=\"\(fill)\""
        if let weight { s += " font-weight=\"\(weight)\"" }
        if let baseline { s += " dominant-baseline=\"\(baseline)\"" }
        if let rotate { s += " transform=\"rotate(\(coord(rotate)) \(coord(x)) \(coord(y)))\"" }
        add(s + ">\(xmlEscape(t))</text>")
    }

    /// A polyline through `points`.
    public mutating func polyline(_ points: [(Double, Double)], stroke: String, width: Double = 2, dash: String? = nil) {
        guard !points.isEmpty else { return }
        let p = points.map { "\(coord($0.0)),\(coord($0.1))" }.joined(separator: " ")
        var s = "<polyline points=\"\(p)\" fill=\"none\" stroke=\"\(stroke)\" stroke-width=\"\(coord(width))\" stroke-linejoin=\"round\""
        if let dash { s += " stroke-dasharray=\"\(dash)\"" }
        add(s + "/>")
    }

    /// A closed filled polygon.
    public mutating func polygon(_ points: [(Double, Double)], fill: String, opacity: Double = 1) {
        guard points.count > 2 else { return }
        let p = points.map { "\(coord($0.0)),\(coord($0.1))" }.joined(separator: " ")
        add("<polygon points=\"\(p)\" fill=\"\(fill)\" fill-opacity=\"\(coord(opacity))\" stroke=\"none\"/>")
    }

    /// The standalone SVG text.
    public var svg: String {
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(coord(width))\" height=\"\(coord(height))\" "
        s += "viewBox=\"0 0 \(coord(width)) \(coord(height))\" role=\"img\" "
        s += "font-family=\"DejaVu Sans, Liberation Sans, Helvetica, Arial, sans-serif\">\n"
        s += "<title>\(xmlEscape(title))</title>\n"
        s += "<rect x=\"0\" y=\"0\" width=\"\(coord(width))\" height=\"\(coord(height))\" fill=\"#ffffff\"/>\n"
        s += elements.joined(separator: "\n")
        s += "\n</svg>\n"
        return s
    }
}
