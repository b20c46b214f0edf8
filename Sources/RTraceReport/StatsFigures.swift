import Foundation
import RTraceAnalysis

/// Plots of expert load (`rtrace stats`): load heatmap, imbalance, entropy and expert-parallel rank load.
public enum StatsFigures {
    /// The section for one set of traces. `ep` adds the per-rank plots; `idPrefix` keeps ids unique on a page.
    public static func section(stats p: StatsPartial, name: String, ep: Int?, idPrefix: String) -> ReportSection {
        let L = p.layers.count, E = p.model.numExperts
        let d = (0..<L).map { p.derived($0) }
        let layers = d.map { "\($0.layer)" }
        var plots: [Plot] = []

        // Expert load heatmap, relative to uniform.
        let rel: [[Double?]] = d.map { s in s.load.isEmpty ? Array(repeating: nil, count: E) : s.load.map { $0 * Double(E) } }
        let hi = max(2, rel.flatMap { $0.compactMap { $0 } }.max() ?? 2)
        var h = Heatmap(title: "Expert load relative to uniform",
                        subtitle: "Cell: share of the layer's token-expert assignments going to the expert × \(E) experts (1 = uniform, 0 = dead) · \(name)",
                        xLabel: "expert id", yLabel: "MoE layer", rowLabels: layers, colLabels: (0..<E).map { "\($0)" },
                        values: rel, colorbarLabel: "load ÷ uniform load", domain: (0, hi))
        h.width = max(760, min(1400, 130 + Double(E) * 20))
        h.cellHeight = L > 24 ? 14 : 26
        plots.append(Plot(id: idPrefix + "expert-load", title: h.title,
                          caption: "Each row is an MoE layer, each column an expert. Dark cells are starved experts, bright cells overloaded ones (viridis, readable in grey); a balanced router gives a uniform colour near 1.",
                          svg: h.svg))

        // Imbalance.
        let imb = BarChart(title: "Load imbalance per MoE layer",
                           subtitle: "Tokens routed to the busiest expert ÷ mean tokens per expert · \(name)",
                           xLabel: "MoE layer (decoder index)", yLabel: "max ÷ mean expert load", categories: layers,
                           series: [BarSeries(name: "max/mean", values: d.map(\.maxOverMean))], reference: (1, "perfect balance = 1"))
        plots.append(Plot(id: idPrefix + "imbalance", title: imb.title,
                          caption: "The busiest expert's load relative to the average: with expert parallelism, the slowest GPU's work. 1 is perfect balance; the dashed line marks it.",
                          svg: imb.svg))

        // Entropy.
        let effMean = d.compactMap(\.effectiveExperts).reduce(0, +) / Double(max(1, d.compactMap(\.effectiveExperts).count))
        let ent = BarChart(title: "Routing entropy per MoE layer",
                           subtitle: "Entropy of the expert load ÷ ln \(E) (1 = all experts used equally) · mean effective experts \(formatNumber(effMean)) of \(E) · \(name)",
                           xLabel: "MoE layer (decoder index)", yLabel: "normalised load entropy (0–1)", categories: layers,
                           series: [BarSeries(name: "normalised entropy", values: d.map(\.normEntropy))], yMax: 1)
        plots.append(Plot(id: idPrefix + "entropy", title: ent.title,
                          caption: "How evenly each layer spreads tokens across experts: 1 means every expert gets the same share, lower values mean a few experts take most tokens.",
                          svg: ent.svg))

        if let n = ep, n >= 1 {
            let eps = (0..<L).map { p.ep($0, ranks: n) }
            let epBars = BarChart(title: "Expert-parallel load imbalance (\(n) ranks)",
                                  subtitle: "Busiest rank's token-expert assignments ÷ mean per rank · \(name)",
                                  xLabel: "MoE layer (decoder index)", yLabel: "max ÷ mean rank load", categories: layers,
                                  series: [BarSeries(name: "contiguous placement", values: eps.map(\.contiguousMaxOverMean)),
                                           BarSeries(name: "balanced placement", values: eps.map(\.balancedMaxOverMean))],
                                  reference: (1, "perfect balance = 1"))
            plots.append(Plot(id: idPrefix + "ep-imbalance", title: epBars.title,
                              caption: "With --ep \(n), experts are spread over \(n) GPUs. The busiest GPU sets the step time. Dark: contiguous placement (expert e on rank ⌊e·\(n)/\(E)⌋); light: experts placed greedily by this trace's load (heaviest first onto the least-loaded rank).",
                              svg: epBars.svg))
            let vals: [[Double?]] = eps.map { e in
                let tot = e.contiguous.reduce(0, +)
                return e.contiguous.map { tot > 0 ? Double($0) * Double(n) / Double(tot) : nil }
            }
            var rh = Heatmap(title: "Load per expert-parallel rank (contiguous placement)",
                             subtitle: "Cell: the rank's token-expert assignments ÷ the mean over \(n) ranks (1 = balanced) · \(name)",
                             xLabel: "EP rank", yLabel: "MoE layer", rowLabels: layers, colLabels: (0..<n).map { "\($0)" },
                             values: vals, colorbarLabel: "load ÷ mean rank load",
                             domain: (0, max(2, vals.flatMap { $0.compactMap { $0 } }.max() ?? 2)))
            rh.cellHeight = L > 24 ? 14 : 26
            rh.width = min(760, 260 + Double(n) * 70)
            plots.append(Plot(id: idPrefix + "ep-rank-load", title: rh.title,
                              caption: "Which GPU is overloaded in which layer when expert e lives on rank ⌊e·N/E⌋. Bright cells are the bottleneck ranks.",
                              svg: rh.svg))
        }

        func mean(_ xs: [Double?]) -> String {
            let v = xs.compactMap { $0 }
            return v.isEmpty ? "n/a" : formatNumber(v.reduce(0, +) / Double(v.count))
        }
        let facts: [(label: String, value: String)] = [
            ("sequences", "\(p.records)"), ("tokens", "\(p.rows)"),
            ("layers × experts", "\(L) × \(E), top-\(p.model.topK)"),
            ("mean max/mean load", mean(d.map(\.maxOverMean))),
            ("mean normalised entropy", mean(d.map(\.normEntropy))),
            ("dead experts (sum)", "\(d.map(\.dead).reduce(0, +))"),
        ]
        return ReportSection(id: idPrefix + "stats", title: "Expert load: \(name)",
                             intro: "How the router spreads the tokens of \(name) over experts: \(p.files.count) file(s), \(p.records) sequences, \(p.rows) tokens.",
                             facts: facts, plots: plots)
    }
}
