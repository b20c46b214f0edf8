import Foundation

/// A matrix of values as coloured cells with a colour bar; rows run top to bottom.
public struct Heatmap {
    /// The title drawn at the top.
    public var title: String
    /// A grey line under the title.
    public var subtitle: String?
    /// Axis titles (with units).
    public var xLabel: String, yLabel: String
    /// Labels of the rows (top to bottom) and columns (left to right).
    public var rowLabels: [String], colLabels: [String]
    /// `values[row][col]`; nil cells are drawn grey and marked n/a.
    public var values: [[Double?]]
    /// What the colour means (with unit), written along the colour bar.
    public var colorbarLabel: String
    /// The colour scale (monotone luminance).
    public var scale: ColorScale = .viridis
    /// The value range of the colour scale (default: the data's minimum and maximum).
    public var domain: (lo: Double, hi: Double)?
    /// Write each cell's value in it when cells are large enough.
    public var annotate = true
    /// Significant digits of annotations.
    public var digits = 2
    /// Canvas width in CSS pixels (the height follows from the rows).
    public var width: Double = 760
    /// Cell height in pixels.
    public var cellHeight: Double = 30

    /// Creates a heatmap.
    public init(title: String, subtitle: String? = nil, xLabel: String, yLabel: String, rowLabels: [String], colLabels: [String],
                values: [[Double?]], colorbarLabel: String, domain: (lo: Double, hi: Double)? = nil) {
        self.title = title; self.subtitle = subtitle; self.xLabel = xLabel; self.yLabel = yLabel
        self.rowLabels = rowLabels; self.colLabels = colLabels; self.values = values
        self.colorbarLabel = colorbarLabel; self.domain = domain
    }

    /// The data range the colours span.
    var range: (lo: Double, hi: Double) {
        if let domain { return domain }
        let all = values.flatMap { $0.compactMap { $0 } }.filter { $0.isFinite }
        let lo = all.min() ?? 0, hi = all.max() ?? 1
        return hi > lo ? (lo, hi) : (lo, lo + 1)
    }

    /// The heatmap as standalone SVG.
    public var svg: String {
        let rows = max(1, rowLabels.count), cols = max(1, colLabels.count)
        var f = PlotFrame(width: width, height: 0)
        f.right = 110
        f.left = 74
        f.reserve(subtitle: subtitle)
        let height = f.top + Double(rows) * cellHeight + f.bottom
        f.height = height
        var c = SVGCanvas(width: width, height: height, title: title)
        f.drawTitle(&c, title, subtitle)
        let cw = (f.x1 - f.x0) / Double(cols)
        let (lo, hi) = range
        let showText = annotate && cw >= 34 && cellHeight >= 16
        for r in 0..<rows {
            let y = f.y0 + Double(r) * cellHeight
            for col in 0..<cols {
                let x = f.x0 + Double(col) * cw
                let v = r < values.count && col < values[r].count ? values[r][col] : nil
                let rl = r < rowLabels.count ? rowLabels[r] : "", cl = col < colLabels.count ? colLabels[col] : ""
                guard let v, v.isFinite else {
                    c.rect(x: x, y: y, w: cw, h: cellHeight, fill: "#d9d9d9", stroke: "#ffffff",
                           extra: "stroke-width=\"0.5\"", tooltip: "\(yLabel) \(rl), \(xLabel) \(cl): n/a")
                    if showText { c.text("n/a", x: x + cw / 2, y: y + cellHeight / 2 + 4, anchor: "middle", size: 10, fill: "#555") }
                    continue
                }
                let col0 = scale.color(at: (v - lo) / (hi - lo))
                c.rect(x: x, y: y, w: cw, h: cellHeight, fill: col0.hex, stroke: "#ffffff", extra: "stroke-width=\"0.5\"",
                       tooltip: "\(yLabel) \(rl), \(xLabel) \(cl): \(formatNumber(v, digits: 4))")
                if showText {
                    c.text(formatNumber(v, digits: digits), x: x + cw / 2, y: y + cellHeight / 2 + 4, anchor: "middle", size: 10.5,
                           fill: col0.textColor)
                }
            }
            c.text(r < rowLabels.count ? rowLabels[r] : "", x: f.x0 - 6, y: y + cellHeight / 2 + 4, anchor: "end", size: 11, fill: "#333")
        }
        let every = max(1, Int((Double(cols) * 28 / (f.x1 - f.x0)).rounded(.up)))
        for col in stride(from: 0, to: cols, by: every) {
            c.text(col < colLabels.count ? colLabels[col] : "", x: f.x0 + (Double(col) + 0.5) * cw, y: f.y1 + 15, anchor: "middle", size: 11, fill: "#333")
        }
        c.text(xLabel, x: (f.x0 + f.x1) / 2, y: height - 14, anchor: "middle", size: 12, fill: "#222")
        c.text(yLabel, x: 16, y: (f.y0 + f.y1) / 2, anchor: "middle", size: 12, fill: "#222", rotate: -90)
        // Colour bar: a vertical gradient of stacked bands with ticks.
        let bx = f.x1 + 18, bw = 14.0, by0 = f.y0, by1 = max(f.y1, f.y0 + 90)
        let bands = 48
        for i in 0..<bands {
            let t = Double(i) / Double(bands - 1)
            let h = (by1 - by0) / Double(bands)
            c.rect(x: bx, y: by1 - h * Double(i + 1), w: bw, h: h + 0.5, fill: scale.color(at: t).hex)
        }
        c.rect(x: bx, y: by0, w: bw, h: by1 - by0, fill: "none", stroke: "#444", extra: "stroke-width=\"0.6\"")
        let bs = AxisScale(lo: lo, hi: hi, from: by1, to: by0)
        for t in bs.ticks(count: 4) {
            let y = bs.pixel(t)
            c.line(x1: bx + bw, y1: y, x2: bx + bw + 4, y2: y, stroke: "#444")
            c.text(bs.label(t), x: bx + bw + 6, y: y + 4, size: 10.5, fill: "#333")
        }
        c.text(colorbarLabel, x: width - 10, y: (by0 + by1) / 2, anchor: "middle", size: 11, fill: "#222", rotate: -90)
        return c.svg
    }
}
