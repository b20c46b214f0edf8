import Foundation
import Testing
import RTrace
import RTraceAnalysis
@testable import RTraceReport

/// The report's policy section on the bundled real Qwen3-MoE traces.
@Suite struct PolicyFiguresTests {
    @Test func policySectionShowsTheDiffNumbers() throws {
        let th = [2.0, 1.05]
        let page = try buildReport(ReportInputs(traces: [sample("rollout"), sample("train_mixed")], isThresholds: th))
        let sec = try #require(page.sections.first { $0.id == "policy" })
        let p = try #require(try diffTraces(a: [sample("rollout")], b: [sample("train_mixed")], options: DiffOptions(isThresholds: th)).policy)
        #expect(sec.plots.map(\.id) == ["policy-by-flipped-layers", "policy-clip-shares"])
        #expect(sec.facts.first { $0.label == "response tokens / sequences" }?.value == "\(p.tokens) / \(p.sequences)")
        let ratio = p.routing.flipped.k3! / p.routing.unflipped.k3!
        #expect(ratio > 1)  // on these traces flipped tokens disagree more
        #expect(sec.facts.first { $0.label == "k3 flipped ÷ unflipped tokens" }?.value == formatNumber(ratio) + "×")
        // One point per non-empty flipped-layer group and series, on a log axis.
        let used = p.routing.byFlippedLayers.filter { $0.tokens > 0 }
        let line = sec.plots[0].svg
        #expect(line.components(separatedBy: "<circle").count - 1 == 2 * used.count)
        #expect(isWellFormedXML(line) && isWellFormedXML(sec.plots[1].svg))
        // Table: each bucket and the flipped group, with the share outside [1/C, C] per threshold.
        let t = try #require(sec.table)
        #expect(t.rows.count == p.routing.byFlippedLayers.count + 1 && t.header.count == 6 + th.count)
        #expect(t.rows.last?[1] == "\(p.routing.flipped.tokens)")
        // The bars: all tokens at C = 1.05 (share of tokens outside the band, in %).
        let tok = p.thresholds[1].rolloutIsToken
        let share = (tok.rolloutIsRatioFractionHigh! + tok.rolloutIsRatioFractionLow!) * 100
        #expect(sec.plots[1].svg.contains(formatNumber(share, digits: 4)) || sec.plots[1].svg.contains(formatNumber(share)))
    }

    @Test func noFlipsNoLogprobs() throws {
        // R3 replays the rollout's routing: no token flips, the flipped group is empty but the page renders.
        let page = try buildReport(ReportInputs(traces: [sample("rollout"), sample("train_r3")]))
        let sec = try #require(page.sections.first { $0.id == "policy" })
        #expect(sec.facts.first { $0.label == "k3 flipped ÷ unflipped tokens" }?.value == "n/a")
        #expect(sec.table?.rows.last?[1] == "0")
        #expect(sec.plots.allSatisfy { isWellFormedXML($0.svg) })
        // Without logprobs there is no policy section.
        let d = NSTemporaryDirectory() + "rtrace-policyfig-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        let r = try TraceReader(path: sample("rollout"))
        var h = r.header
        h.columns.logprobs = false
        let w = try TraceWriter(path: d + "/n.rtrace", header: h)
        for var rec in try r.readAll() { rec.logprobs = []; try w.append(rec) }
        try w.close()
        let bare = try buildReport(ReportInputs(traces: [d + "/n.rtrace", sample("train_mixed")]))
        #expect(!bare.sections.contains { $0.id == "policy" })
    }
}
