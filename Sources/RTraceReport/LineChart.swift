import Foundation

/// One line of a line chart, optionally with a shaded band (e.g. the min–max over repeated runs).
public struct LineSeries {
    /// Legend name.
    public var name: String
    /// Points in x order; non-finite y values break the line.
    public var points: [(x: Double, y: Double)]
    /// A shaded band around the line: (x, low, high).
    public var band: [(x: Double, lo: Double, hi: Double)]
    /// Style index into ``SeriesStyle`` (colour and dash).
    public var style: Int
    /// Creates a series.
    public init(name: String, points: [(x: Double, y: Double)], band: [(x: Double, lo: Double, hi: Double)] = [], style: Int) {
        self.name = name; self.points = points; self.band = band; self.style = style
    }
}

/// Lines against a numeric x axis, linear or logarithmic y.
public struct LineChart {
    /// The title drawn at the top.
    public var title: String
    /// A grey line under the title.
    public var subtitle: String?
    /// Axis titles (with units).
    public var xLabel: String, yLabel: String
    /// The lines, each with its legend entry.
    public var series: [LineSeries]
    /// Logarithmic y axis (non-positive values are left out).
    public var logY = false
    /// Canvas size in CSS pixels.
    public var width: Double = 600, height: Double = 320

    /// Creates a chart.
    public init(title: String, subtitle: String? = nil, xLabel: String, yLabel: String, series: [LineSeries], logY: Bool = false) {
        self.title = title; self.subtitle = subtitle; self.xLabel = xLabel; self.yLabel = yLabel
        self.series = series; self.logY = logY
    }

    func usable(_ y: Double) -> Bool { y.isFinite && (!logY || y > 0) }

    /// The chart as standalone SVG.
    public var svg: String {
        var f = PlotFrame(width: width, height: height)
        f.top = 74
        f.reserve(subtitle: subtitle)
        var c = SVGCanvas(width: width, height: height, title: title)
        f.drawTitle(&c, title, subtitle)
        let xs = series.flatMap { $0.points.map(\.x) }
        var ysAll = series.flatMap { $0.points.map(\.y) } + series.flatMap { $0.band.flatMap { [$0.lo, $0.hi] } }
        ysAll = ysAll.filter(usable)
        let xlo = xs.min() ?? 0, xhi = xs.max() ?? 1
        let xsc0 = AxisScale(lo: xlo, hi: xhi > xlo ? xhi : xlo + 1, from: f.x0, to: f.x1)
        let ysc: AxisScale
        if logY {
            let lo = ysAll.min() ?? 1e-6, hi = ysAll.max() ?? 1
            ysc = AxisScale(lo: pow(10, floor(log10(lo))), hi: pow(10, ceil(log10(hi))), from: f.y1, to: f.y0, log: true)
        } else {
            let lo = min(0, ysAll.min() ?? 0), hi = ysAll.max() ?? 1
            ysc = AxisScale(lo: lo, hi: niceMax(hi), from: f.y1, to: f.y0)
        }
        f.fitLeft(ysc)
        let xsc = AxisScale(lo: xsc0.lo, hi: xsc0.hi, from: f.x0, to: f.x1)
        f.drawYAxis(&c, ysc, label: yLabel)
        for t in xsc.ticks(count: 8) {
            let x = xsc.pixel(t)
            c.line(x1: x, y1: f.y1, x2: x, y2: f.y1 + 4, stroke: "#444")
            c.text(xsc.label(t), x: x, y: f.y1 + 16, anchor: "middle", size: 11, fill: "#333")
        }
        f.drawXAxis(&c, label: xLabel)
        for s in series where !s.band.isEmpty {
            let b = s.band.filter { usable($0.lo) && usable($0.hi) }
            let upper = b.map { (xsc.pixel($0.x), ysc.pixel($0.hi)) }, lower = b.reversed().map { (xsc.pixel($0.x), ysc.pixel($0.lo)) }
            c.polygon(upper + lower, fill: SeriesStyle.color(s.style), opacity: 0.15)
        }
        for s in series {
            var run: [(Double, Double)] = []
            var runs: [[(Double, Double)]] = []
            for p in s.points {
                if usable(p.y) { run.append((xsc.pixel(p.x), ysc.pixel(p.y))) } else if !run.isEmpty { runs.append(run); run = [] }
            }
            if !run.isEmpty { runs.append(run) }
            for r in runs { c.polyline(r, stroke: SeriesStyle.color(s.style), width: 2, dash: SeriesStyle.dash(s.style)) }
            if s.points.count <= 60 {
                for p in s.points where usable(p.y) {
                    c.add("<circle cx=\"\(coord(xsc.pixel(p.x)))\" cy=\"\(coord(ysc.pixel(p.y)))\" r=\"2.2\" fill=\"\(SeriesStyle.color(s.style))\"><title>\(xmlEscape("\(s.name): \(xLabel) \(formatNumber(p.x)), \(formatNumber(p.y, digits: 4))"))</title></circle>")
                }
            }
        }
        let styles = series.map(\.style)
        f.drawLegend(&c, series.map(\.name)) { c, i, x, y in
            c.line(x1: x, y1: y, x2: x + 24, y2: y, stroke: SeriesStyle.color(styles[i]), width: 2.5, dash: SeriesStyle.dash(styles[i]))
        }
        return c.svg
    }
}
