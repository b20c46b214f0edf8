import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import RTraceReport

/// Whether `text` parses as XML (SVG files must be well-formed to open anywhere).
func isWellFormedXML(_ text: String) -> Bool {
    let p = XMLParser(data: Data(text.utf8))
    return p.parse()
}

@Suite struct PrimitiveTests {
    @Test func colourScalesGetBrighterMonotonically() {
        for scale in [ColorScale.viridis, ColorScale.cividis] {
            var last = -1.0
            for i in 0...100 {
                let l = scale.color(at: Double(i) / 100).luminance
                #expect(l > last, "\(scale.name) luminance not increasing at \(i)")
                last = l
            }
            #expect(scale.color(at: -3) == scale.color(at: 0))
            #expect(scale.color(at: .nan) == scale.color(at: 0))
        }
        #expect(ColorScale.viridis.color(at: 0).hex == "#440154")
        #expect(ColorScale.viridis.color(at: 1).hex == "#fde725")
    }

    @Test func ticksAreRoundAndCoverTheRange() {
        let s = AxisScale(lo: 0, hi: 0.0137, from: 300, to: 0)
        let t = s.ticks(count: 5)
        #expect(t.first == 0)
        #expect(t.count >= 3 && t.count <= 8)
        #expect(t.last! <= 0.0137 + 1e-12)
        #expect(s.pixel(0) == 300 && s.pixel(0.0137) == 0)
        let lg = AxisScale(lo: 1e-7, hi: 1e-2, from: 300, to: 0, log: true)
        #expect(lg.ticks(count: 6).map { lg.label($0) } == ["1e-7", "1e-6", "1e-5", "1e-4", "1e-3", "0.01"])
        #expect(niceMax(4.92) == 5 && abs(niceMax(0.0112) - 0.0125) < 1e-12)
        // A degenerate range stays invertible.
        #expect(AxisScale(lo: 2, hi: 2, from: 0, to: 10).pixel(2).isFinite)
    }

    @Test func numbersAndEscaping() {
        #expect(formatNumber(0.013123) == "0.0131")
        #expect(formatNumber(4.92) == "4.92")
        #expect(formatNumber(12) == "12")
        #expect(formatNumber(6.16e-5) == "6.16e-5" && formatNumber(1.8e-4) == "1.8e-4")
        #expect(formatNumber(.nan) == "n/a")
        #expect(xmlEscape("a<b & \"c\"") == "a&lt;b &amp; &quot;c&quot;")
        #expect(coord(1.005) == "1" || coord(1.005) == "1.01")
        #expect(coord(2.5) == "2.5" && coord(3) == "3")
    }

    @Test func chartsAreWellFormedSVGWithLabels() {
        var bars = BarChart(title: "T <1>", subtitle: "s & t", xLabel: "layer", yLabel: "rate (%)", categories: ["0", "1", "2"],
                            series: [BarSeries(name: "a", values: [1, nil, 3]), BarSeries(name: "b", values: [0.5, 2, .nan])],
                            reference: (1, "uniform = 1"))
        bars.showValues = true
        let h = Heatmap(title: "H", xLabel: "expert id", yLabel: "MoE layer", rowLabels: ["0", "1"], colLabels: ["0", "1", "2"],
                        values: [[0, 1, 2], [nil, 0.5, 4]], colorbarLabel: "load ÷ uniform")
        let lc = LineChart(title: "L", xLabel: "training step", yLabel: "k3 (nats)", series: [
            LineSeries(name: "none", points: [(0, 1e-3), (1, 2e-4), (2, .nan), (3, 1e-5)], band: [(0, 1e-4, 1e-2), (3, 1e-6, 1e-4)], style: 0),
            LineSeries(name: "r3", points: [(0, 1e-6), (1, 0), (3, 1e-7)], style: 2),
        ], logY: true)
        for svg in [bars.svg, h.svg, lc.svg] {
            #expect(isWellFormedXML(svg))
            #expect(svg.hasPrefix("<svg xmlns=\"http://www.w3.org/2000/svg\""))
        }
        #expect(bars.svg.contains("T &lt;1&gt;") && bars.svg.contains("rate (%)") && bars.svg.contains("uniform = 1"))
        #expect(bars.svg.contains("n/a"))
        #expect(h.svg.contains("load ÷ uniform") && h.svg.contains("expert id") && h.svg.contains("#d9d9d9"))
        #expect(h.svg.contains(ColorScale.viridis.color(at: 1).hex))
        #expect(lc.svg.contains("<polyline") && lc.svg.contains("<polygon") && lc.svg.contains("none") && lc.svg.contains("r3"))
    }
}

@Suite struct RunMetricsTests {
    @Test func loadsMetricsAndGroupsByMode() throws {
        let root = tempDir()
        let a = writeRun(root + "/none-1", steps: 5, k3: 1e-3, flip: 0.02)
        let b = writeRun(root + "/none-2", steps: 5, k3: 2e-3, flip: 0.03)
        let c = writeRun(root + "/r3-seed1", steps: 5, k3: 1e-5, flip: 0.02)
        let runs = try [a, b, c].map { try RunMetrics.load(directory: $0) }
        #expect(runs.map(\.mode) == ["none", "none", "r3"])
        #expect(runs[0].series("k3").count == 5)
        let s = RunFigures.series(runs, key: "k3")
        #expect(s.map(\.name) == ["none (mean of 2 runs)", "r3"])
        #expect(abs(s[0].points[0].y - 1.5e-3) < 1e-12)
        #expect(s[0].band.count == 5 && s[1].band.isEmpty)
        let sec = RunFigures.section(runs: runs)
        #expect(sec.plots.map(\.id) == ["run-k3", "run-flip-natural", "run-flip-applied", "run-reward"])
        for p in sec.plots { #expect(isWellFormedXML(p.svg)) }
    }

    @Test func modeFromMetricsWinsOverName() throws {
        let d = tempDir() + "/whatever"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try "{\"step\":0,\"mode\":\"r2\",\"k3\":null,\"reward\":0.5}\n\n".write(toFile: d + "/metrics.jsonl", atomically: true, encoding: .utf8)
        let r = try RunMetrics.load(directory: d)
        #expect(r.mode == "r2" && r.steps.count == 1 && r.steps[0]["k3"] == nil && r.steps[0]["reward"] == 0.5)
        #expect(RunMetrics.modeFromName("/x/y/exp_none_seed3") == "none")
        #expect(RunMetrics.modeFromName("/x/y/baseline") == "baseline")
    }

    @Test func errorsNameTheFileAndLine() throws {
        let d = tempDir()
        do {
            _ = try RunMetrics.load(directory: d)
            Issue.record("expected an error")
        } catch {
            let s = "\(error)"
            #expect(s.contains("metrics.jsonl") && s.contains("no metrics.jsonl"), "\(s)")
        }
        try "{\"step\":0}\n{not json\n".write(toFile: d + "/metrics.jsonl", atomically: true, encoding: .utf8)
        do {
            _ = try RunMetrics.load(directory: d)
            Issue.record("expected an error")
        } catch {
            let s = "\(error)"
            #expect(s.contains(d + "/metrics.jsonl") && s.contains("line 2"), "\(s)")
        }
        do {
            _ = try RunMetrics.load(directory: d + "/missing")
            Issue.record("expected an error")
        } catch {
            #expect("\(error)".contains("does not exist"))
        }
    }
}
