import Foundation

/// One series of a bar chart: a value per category (nil = not available).
public struct BarSeries {
    /// Legend name.
    public var name: String
    /// One value per category.
    public var values: [Double?]
    /// Creates a series.
    public init(name: String, values: [Double?]) { self.name = name; self.values = values }
}

/// A vertical (grouped) bar chart with a y axis starting at 0.
public struct BarChart {
    /// The title drawn at the top.
    public var title: String
    /// A grey line under the title: what is measured, over what.
    public var subtitle: String?
    /// X axis title (with unit).
    public var xLabel: String
    /// Y axis title (with unit).
    public var yLabel: String
    /// Category labels along the x axis.
    public var categories: [String]
    /// The bars: one series per colour, drawn side by side in each category.
    public var series: [BarSeries]
    /// Fixed top of the y axis (default: a round number above the data).
    public var yMax: Double?
    /// A dashed horizontal reference line with its label (e.g. "uniform = 1").
    public var reference: (value: Double, label: String)?
    /// Print values above bars when there is room.
    public var showValues = true
    /// Canvas size in CSS pixels.
    public var width: Double = 600, height: Double = 320

    /// Creates a chart.
    public init(title: String, subtitle: String? = nil, xLabel: String, yLabel: String, categories: [String], series: [BarSeries],
                yMax: Double? = nil, reference: (value: Double, label: String)? = nil) {
        self.title = title; self.subtitle = subtitle; self.xLabel = xLabel; self.yLabel = yLabel
        self.categories = categories; self.series = series; self.yMax = yMax; self.reference = reference
    }

    /// The chart as standalone SVG.
    public var svg: String {
        var f = PlotFrame(width: width, height: height)
        if series.count > 1 || reference != nil { f.top = 74 }
        f.reserve(subtitle: subtitle)
        var c = SVGCanvas(width: width, height: height, title: title)
        f.drawTitle(&c, title, subtitle)
        let all = series.flatMap { $0.values.compactMap { $0 } }.filter { $0.isFinite }
        var top = yMax ?? niceMax(max(all.max() ?? 0, reference?.value ?? 0))
        if top <= 0 { top = 1 }
        let ys = AxisScale(lo: 0, hi: top, from: f.y1, to: f.y0)
        f.fitLeft(ys)
        f.drawYAxis(&c, ys, label: yLabel)
        let n = max(1, categories.count), m = max(1, series.count)
        let slot = (f.x1 - f.x0) / Double(n)
        let groupW = slot * 0.8, barW = groupW / Double(m)
        let labelEvery = max(1, Int((Double(n) * 40 / (f.x1 - f.x0)).rounded(.up)))
        let roomForValues = showValues && barW >= 26
        for (ci, cat) in categories.enumerated() {
            let gx = f.x0 + slot * Double(ci) + (slot - groupW) / 2
            for (si, s) in series.enumerated() {
                let x = gx + barW * Double(si)
                let tip = "\(cat) · \(s.name): " + (s.values.indices.contains(ci) ? s.values[ci].map { formatNumber($0, digits: 4) } ?? "n/a" : "n/a")
                guard ci < s.values.count, let v = s.values[ci], v.isFinite else {
                    c.text("n/a", x: x + barW / 2, y: f.y1 - 4, anchor: "middle", size: 9.5, fill: "#777")
                    continue
                }
                let y = ys.pixel(min(v, top))
                c.rect(x: x + 1, y: y, w: barW - 2, h: f.y1 - y, fill: SeriesStyle.color(si), stroke: "#222",
                       extra: "stroke-width=\"0.5\"", tooltip: tip)
                if roomForValues {
                    c.text(formatNumber(v, digits: 3), x: x + barW / 2, y: y - 4, anchor: "middle", size: 10, fill: "#222")
                }
            }
            if ci % labelEvery == 0 {
                c.text(cat, x: f.x0 + slot * (Double(ci) + 0.5), y: f.y1 + 16, anchor: "middle", size: 11, fill: "#333")
            }
        }
        if let r = reference {
            let y = ys.pixel(r.value)
            c.line(x1: f.x0, y1: y, x2: f.x1, y2: y, stroke: "#b00020", width: 1.5, dash: "6 4")
        }
        f.drawXAxis(&c, label: xLabel)
        let m2 = series.count
        let names = (series.count > 1 ? series.map(\.name) : []) + (reference.map { [$0.label] } ?? [])
        if !names.isEmpty {
            f.drawLegend(&c, names) { c, i, x, y in
                if i < m2 && m2 > 1 {
                    c.rect(x: x, y: y - 5, w: 22, h: 10, fill: SeriesStyle.color(i), stroke: "#222", extra: "stroke-width=\"0.5\"")
                } else {
                    c.line(x1: x, y1: y, x2: x + 22, y2: y, stroke: "#b00020", width: 1.5, dash: "6 4")
                }
            }
        }
        return c.svg
    }
}
