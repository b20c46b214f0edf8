import Foundation
import RTraceAnalysis

/// Plots of a routing comparison, from the result of `rtrace diff` (spec/cli-json.md) and a ``FlipGrid``.
public enum DiffFigures {
    static func pct(_ v: Double?) -> Double? { v.map { $0 * 100 } }
    static func pctText(_ v: Double?) -> String { v.map { formatNumber($0 * 100, digits: 3) + " %" } ?? "n/a" }

    /// The section: headline figures, flip rate per layer, layer × position heatmap, router KL per layer,
    /// policy KL summary and the most divergent sequences. `idPrefix` keeps plot ids unique on a page.
    public static func section(diff j: DiffResult, grid: FlipGrid?, nameA: String, nameB: String, idPrefix: String = "") -> ReportSection {
        let per = j.perLayer
        let layers = per.map { "\($0.layer)" }
        let ab = "A = \(nameA), B = \(nameB)"
        var plots: [Plot] = []

        // 1. Flip rate per layer.
        var bars = BarChart(
            title: "Routing flip rate per MoE layer",
            subtitle: "Share of tokens whose top-\(j.topK) experts differ between A and B · \(ab)",
            xLabel: "MoE layer (decoder index)", yLabel: "flip rate (% of tokens)", categories: layers,
            series: [BarSeries(name: "expert set differs", values: per.map { pct($0.sets.flipRate) }),
                     BarSeries(name: "slot order differs (incl. set)", values: per.map { pct($0.sets.orderedFlipRate) })])
        bars.showValues = layers.count <= 8
        plots.append(Plot(id: idPrefix + "flip-rate-per-layer", title: bars.title,
                          caption: "Bars: for each MoE layer, the percentage of compared tokens routed to a different set of experts (dark) or to the same experts in a different slot order (light). Lower is better; 0 means B replays A exactly.",
                          svg: bars.svg))

        // 2. Layer × position heatmap.
        if let g = grid, !g.layers.isEmpty {
            let cols = (0..<g.buckets).map { b in "\(b * 100 / g.buckets)–\((b + 1) * 100 / g.buckets)" }
            let vals = (0..<g.layers.count).map { l in (0..<g.buckets).map { pct(g.rate(layer: l, bucket: $0)) } }
            var h = Heatmap(title: "Flip rate by layer and position in the sequence",
                            subtitle: "Cell: % of tokens in that layer and position range whose expert set differs · \(ab)",
                            xLabel: "position in sequence (% of its length)", yLabel: "MoE layer",
                            rowLabels: g.layers.map { "\($0)" }, colLabels: cols, values: vals, colorbarLabel: "flip rate (%)",
                            domain: (0, max(1e-9, vals.flatMap { $0.compactMap { $0 } }.max() ?? 1)))
            h.digits = 2
            h.width = 600
            plots.append(Plot(id: idPrefix + "flip-heatmap", title: h.title,
                              caption: "Rows are MoE layers, columns equal slices of each sequence (0 % = first token). Brighter cells flip more (viridis scale, readable in grey); grey cells had no compared tokens.",
                              svg: h.svg))
        }

        // 3. Router KL per layer.
        let kl = per.map(\.routerKL)
        let hasKL = kl.contains { $0 != nil }
        let klChart = BarChart(
            title: "Router KL divergence per MoE layer",
            subtitle: hasKL ? "Mean KL(softmax(router logits A) ‖ softmax(router logits B)) per token · \(ab)"
                : "Not available: both traces need the router_logits column",
            xLabel: "MoE layer (decoder index)", yLabel: "router KL (nats/token)", categories: layers,
            series: [BarSeries(name: "router KL", values: kl)])
        plots.append(Plot(id: idPrefix + "router-kl", title: klChart.title,
                          caption: "How far apart the two routers' full probability distributions are, in nats (0 = identical). It grows before the top-k choice flips.",
                          svg: klChart.svg))

        // 4. Policy KL summary.
        let policy = j.policy
        let ext = policy?.extremeFrac.values ?? [nil, nil, nil]
        let taus = ["1.5", "2", "5"]
        let k3 = policy?.k3, k1 = policy?.k1, tokens = policy?.tokens
        let pol = BarChart(
            title: "Policy mismatch: share of tokens with an extreme probability ratio",
            subtitle: policy == nil ? "Not available: both traces need logprobs"
                : "F(τ) = % of \(tokens ?? 0) response tokens with max(r, 1/r) > τ, r = π_B/π_A · k3 = \(k3.map { formatNumber($0, digits: 3) } ?? "n/a"), k1 = \(k1.map { formatNumber($0, digits: 3) } ?? "n/a")",
            xLabel: "threshold τ on the probability ratio", yLabel: "F(τ) (% of response tokens)",
            categories: taus.map { "τ = \($0)" }, series: [BarSeries(name: "F(τ)", values: ext.map { pct($0) })],
            yMax: policy == nil || ext.allSatisfy({ ($0 ?? 0) == 0 }) ? 1 : nil)
        plots.append(Plot(id: idPrefix + "policy-kl", title: pol.title,
                          caption: "k3 = mean(r − 1 − log r) estimates KL(π_A ‖ π_B) per token in nats; F(τ) is the share of tokens whose probability changed by more than a factor τ between the engines (0 % is ideal).",
                          svg: pol.svg))

        // 5. Most divergent sequences.
        let top = j.top
        var rows: [[String]] = []
        var cats: [String] = [], vals: [Double?] = []
        for t in top {
            let uid = t.uid
            let f = t.flippedRows, r = t.rows
            rows.append([uid, "\(f)", "\(r)", r > 0 ? formatNumber(Double(f) * 100 / Double(r), digits: 3) + " %" : "n/a"])
            cats.append(uid.count > 10 ? String(uid.prefix(9)) + "…" : uid)
            vals.append(r > 0 ? Double(f) * 100 / Double(r) : nil)
        }
        var seq = BarChart(title: "Most divergent sequences",
                           subtitle: top.isEmpty ? "No sequence has a flipped token" : "Sequences with the most tokens flipped in at least one layer · \(ab)",
                           xLabel: "sequence uid (most flipped tokens first)", yLabel: "tokens with a flip (% of its tokens)",
                           categories: cats, series: [BarSeries(name: "flipped", values: vals)])
        seq.showValues = cats.count <= 12
        plots.append(Plot(id: idPrefix + "divergent-sequences", title: seq.title,
                          caption: "The sequences where routing differs most: the share of each sequence's tokens with at least one MoE layer routed to a different expert set. Inspect one with `rtrace view --uid`.",
                          svg: seq.svg))

        let facts: [(label: String, value: String)] = [
            ("sequences matched", "\(j.matched.sequences)"),
            ("flip rate (all layers)", pctText(j.all.sets.flipRate)),
            ("tokens with any layer flipped", pctText(j.all.tokenAnyLayerFlip)),
            ("router KL (nats)", j.routerKL.map { formatNumber($0) } ?? "n/a"),
            ("policy k3", k3.map { formatNumber($0) } ?? "n/a"),
            ("F(2)", pctText(ext[1])),
        ]
        return ReportSection(
            id: idPrefix + "diff", title: "Routing drift: A vs B",
            intro: "A (behaviour / rollout engine): \(nameA). B (training engine): \(nameB). Sequences are joined on uid and tokens on position; a token flips in a layer when its top-k expert set differs.",
            facts: facts, plots: plots,
            table: rows.isEmpty ? nil : ("Most divergent sequences", ["uid", "tokens with a flip", "tokens compared", "share"], rows))
    }
}
