import Foundation
import Testing
import RTrace
import RTraceAnalysis
@testable import RTraceReport

/// Reports of the bundled real Qwen3-MoE traces (rollout vs mixed-precision training has real flips).
@Suite struct SampleReportTests {
    @Test func flipGridAgreesWithDiffBuckets() throws {
        let buckets = 5
        let rep = try diffTraces(a: [sample("rollout")], b: [sample("train_mixed")], options: DiffOptions(buckets: buckets))
        let grid = FlipGrid(diff: rep)
        // Cell by cell, the grid diff accumulated equals a direct pairwise count.
        #expect(grid == (try referenceGrid(sample("rollout"), sample("train_mixed"), buckets: buckets)))
        let j = rep.json
        #expect(grid.layers == [0, 1, 2, 3, 4, 5])
        let bs = j["buckets"] as! [[String: Any]]
        for b in 0..<buckets {
            let n = (0..<grid.layers.count).reduce(0) { $0 + grid.compared[$1 * buckets + b] }
            let f = (0..<grid.layers.count).reduce(0) { $0 + grid.flipped[$1 * buckets + b] }
            #expect(n == (bs[b]["layer_rows"] as! NSNumber).intValue)
            #expect(abs(Double(f) / Double(n) - (bs[b]["flip_rate"] as! NSNumber).doubleValue) < 1e-12)
        }
        // Per layer, summing the buckets gives diff's per-layer flip rate.
        for (l, p) in (j["per_layer"] as! [[String: Any]]).enumerated() {
            let n = (0..<buckets).reduce(0) { $0 + grid.compared[l * buckets + $1] }
            let f = (0..<buckets).reduce(0) { $0 + grid.flipped[l * buckets + $1] }
            #expect(abs(Double(f) / Double(n) - (p["flip_rate"] as! NSNumber).doubleValue) < 1e-12)
        }
        #expect(grid.flipped.reduce(0, +) > 0)
        // A trace against itself never flips.
        let same = FlipGrid(diff: try diffTraces(a: [sample("rollout")], b: [sample("rollout")], options: DiffOptions(buckets: 3)))
        #expect(same.flipped.allSatisfy { $0 == 0 } && same.compared.reduce(0, +) > 0)
    }

    @Test func twoTraceReportHasEveryPlot() throws {
        let page = try buildReport(ReportInputs(traces: [sample("rollout"), sample("train_mixed")], ep: 4))
        let ids = page.plots.map(\.id)
        let expected = ["flip-rate-per-layer", "flip-heatmap", "router-kl", "policy-kl", "divergent-sequences",
                        "policy-by-flipped-layers", "policy-clip-shares"]
            + ["a-", "b-"].flatMap { p in ["expert-load", "imbalance", "entropy", "ep-imbalance", "ep-rank-load"].map { p + $0 } }
        #expect(ids == expected)
        #expect(Set(ids).count == ids.count)
        let html = page.html
        #expect(figureIDs(html) == expected)
        for p in page.plots {
            #expect(isWellFormedXML(p.svg), "\(p.id) is not well-formed")
            #expect(p.svg.contains("<rect"), "\(p.id) draws nothing")
        }
        // Self-contained: no scripts, no external resources.
        #expect(!html.lowercased().contains("<script"))
        let urls = html.components(separatedBy: "http").dropFirst().filter { !$0.hasPrefix("://www.w3.org/2000/svg") }
        #expect(urls.isEmpty, "external references: \(urls.prefix(3))")
        // Real numbers from the traces appear: router KL exists (logits), the top sequence (uid 3, 15 flipped rows).
        let diff = page.sections[0]
        #expect(diff.facts.first { $0.label == "flip rate (all layers)" }?.value == "1.31 %")
        #expect(diff.table?.rows.first?.prefix(2) == ["3", "15"])
        #expect(!diff.plots[2].svg.contains("Not available"))
    }

    @Test func oneTraceReportHasLoadPlotsOnly() throws {
        let page = try buildReport(ReportInputs(traces: [sample("rollout")]))
        #expect(page.plots.map(\.id) == ["expert-load", "imbalance", "entropy"])
        let load = page.plots[0].svg
        #expect(load.contains("load ÷ uniform load") && load.contains("expert id") && load.contains("MoE layer"))
    }

    @Test func inputErrorsAreTyped() throws {
        #expect(throws: TraceError.self) { try buildReport(ReportInputs()) }
        #expect(throws: TraceError.self) { try buildReport(ReportInputs(traces: ["a", "b", "c"])) }
        #expect(throws: TraceError.self) { try buildReport(ReportInputs(traces: ["/nonexistent/x.rtrace"])) }
    }
}

/// The flip grid counted directly: every pair of records with the same uid, every common position,
/// sets compared by nested loops (no stamps, no fast path), missing (row, layer)s skipped.
func referenceGrid(_ pathA: String, _ pathB: String, buckets: Int) throws -> FlipGrid {
    let a = try TraceReader(path: pathA), b = try TraceReader(path: pathB)
    var grid = FlipGrid(layers: a.header.model.layerMap, buckets: buckets)
    var recsB: [String: TraceRecord] = [:]
    for r in try b.readAll() { recsB[r.uid] = r }
    for ra in try a.readAll() {
        guard let rb = recsB[ra.uid] else { continue }
        let L = grid.layers.count, k = ra.topK
        let lo = max(ra.start, rb.start), hi = min(ra.start + ra.rowCount, rb.start + rb.rowCount)
        guard lo < hi else { continue }
        let seqLen = max(1, ra.tokens.count, ra.start + ra.rowCount, rb.start + rb.rowCount)
        for pos in lo..<hi {
            let bk = min(buckets - 1, pos * buckets / seqLen)
            for l in 0..<L {
                let oa = ((pos - ra.start) * L + l) * k, ob = ((pos - rb.start) * L + l) * k
                if ra.expertIDs[oa] == TraceRecord.missing || rb.expertIDs[ob] == TraceRecord.missing { continue }
                let same = (0..<k).filter { j in (0..<k).contains { ra.expertIDs[oa + $0] == rb.expertIDs[ob + j] } }.count
                grid.compared[l * buckets + bk] += 1
                if same < k { grid.flipped[l * buckets + bk] += 1 }
            }
        }
    }
    return grid
}
