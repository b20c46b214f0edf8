import Foundation

/// The layout of one plot: canvas size, margins, title block and axes.
struct PlotFrame {
    var width: Double, height: Double
    var left: Double = 70, right: Double = 24, top: Double = 64, bottom: Double = 56

    /// The plotting rectangle.
    var x0: Double { left }
    var x1: Double { width - right }
    var y0: Double { top }
    var y1: Double { height - bottom }

    /// The subtitle cut into lines that fit the width (at most three; breaks at " · " first, then at spaces).
    static func wrap(_ text: String?, width: Double) -> [String] {
        guard let text, !text.isEmpty else { return [] }
        let maxChars = max(20, Int((width - 24) / 6.3))
        var lines: [String] = []
        var cur = ""
        for word in text.split(separator: " ", omittingEmptySubsequences: false) {
            let cand = cur.isEmpty ? String(word) : cur + " " + word
            if cand.count > maxChars && !cur.isEmpty {
                lines.append(cur)
                cur = String(word)
            } else {
                cur = cand
            }
        }
        if !cur.isEmpty { lines.append(cur) }
        if lines.count > 3 { lines = Array(lines.prefix(3)); lines[2] += " …" }
        return lines
    }

    /// Makes room above the plot for a subtitle of several lines; call before drawing.
    mutating func reserve(subtitle: String?) {
        top += 15 * Double(max(0, Self.wrap(subtitle, width: width).count - 1))
    }

    /// Widens the left margin so that the y tick labels and the axis title do not overlap.
    mutating func fitLeft(_ s: AxisScale) {
        let chars = s.ticks(count: 5).map { s.label($0).count }.max() ?? 3
        left = max(left, 36 + Double(chars) * 6.6)
    }

    /// Title (bold) and subtitle (grey, wrapped) at the top left.
    func drawTitle(_ c: inout SVGCanvas, _ title: String, _ subtitle: String?) {
        c.text(title, x: 12, y: 22, size: 15, weight: "bold", fill: "#111")
        for (i, l) in Self.wrap(subtitle, width: width).enumerated() {
            c.text(l, x: 12, y: 40 + 15 * Double(i), size: 11.5, fill: "#555")
        }
    }

    /// Y axis: ticks, labels, light grid lines and the rotated axis title.
    func drawYAxis(_ c: inout SVGCanvas, _ s: AxisScale, label: String) {
        for t in s.ticks(count: 5) {
            let y = s.pixel(t)
            c.line(x1: x0, y1: y, x2: x1, y2: y, stroke: "#e3e3e3")
            c.line(x1: x0 - 4, y1: y, x2: x0, y2: y, stroke: "#444")
            c.text(s.label(t), x: x0 - 7, y: y + 4, anchor: "end", size: 11, fill: "#333")
        }
        c.line(x1: x0, y1: y0, x2: x0, y2: y1, stroke: "#444")
        c.text(label, x: 16, y: (y0 + y1) / 2, anchor: "middle", size: 12, fill: "#222", rotate: -90)
    }

    /// X axis line and its title.
    func drawXAxis(_ c: inout SVGCanvas, label: String) {
        c.line(x1: x0, y1: y1, x2: x1, y2: y1, stroke: "#444")
        c.text(label, x: (x0 + x1) / 2, y: height - 12, anchor: "middle", size: 12, fill: "#222")
    }

    /// A horizontal legend on the line below the subtitle, right-aligned; `swatch` draws each key at (x, y).
    func drawLegend(_ c: inout SVGCanvas, _ names: [String], swatch: (inout SVGCanvas, Int, Double, Double) -> Void) {
        guard !names.isEmpty else { return }
        let widths = names.map { 34 + Double($0.count) * 6.6 }
        var x = max(12, x1 - widths.reduce(0, +))
        let y = top - 12
        for (i, n) in names.enumerated() {
            swatch(&c, i, x, y)
            c.text(n, x: x + 28, y: y + 4, size: 11.5, fill: "#222")
            x += widths[i]
        }
    }
}
