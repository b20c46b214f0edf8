import Foundation
import RTraceAnalysis

/// Plots of the policy mismatch (`rtrace diff`'s ``PolicyReport``) and of its link to routing flips.
public enum PolicyFigures {
    static func pct(_ v: Double?) -> Double? { v.map { $0 * 100 } }
    static func num(_ v: Double?, _ digits: Int = 3) -> String { v.map { formatNumber($0, digits: digits) } ?? "n/a" }

    /// Share of a group's tokens whose ρ lies outside [1/C, C] (nil for C < 1, which verl refuses as a band).
    static func outside(_ t: PolicyGroupThreshold) -> Double? {
        guard t.threshold >= 1, let h = t.rolloutIsRatioFractionHigh, let l = t.rolloutIsRatioFractionLow else { return nil }
        return h + l
    }

    /// The section: k3 and |log ρ| against the number of flipped layers, the share of tokens outside
    /// [1/C, C] by routing, verl's headline figures and a table of the routing groups.
    public static func section(policy p: PolicyReport, nameA: String, nameB: String, idPrefix: String = "") -> ReportSection {
        let ab = "A = \(nameA), B = \(nameB)"
        let r = p.routing
        var plots: [Plot] = []

        // 1. k3 and mean |log ρ| against flipped layers.
        let used = r.byFlippedLayers.filter { $0.tokens > 0 && $0.meanFlippedLayers != nil }
        func line(_ name: String, _ style: Int, _ v: (PolicyGroupReport) -> Double?) -> LineSeries {
            LineSeries(name: name, points: used.compactMap { g in v(g).map { (x: g.meanFlippedLayers!, y: $0) } }, style: style)
        }
        let series = [line("k3 = mean(ρ − 1 − log ρ), nats", 0) { $0.k3 }, line("mean |log ρ|", 1) { $0.absLogRatio }]
        let positive = series.allSatisfy { $0.points.allSatisfy { $0.y > 0 } } && series.contains { !$0.points.isEmpty }
        let counts = used.map { "\(PolicyReport.rangeLabel($0.from, $0.to)): \($0.tokens)" }.joined(separator: ", ")
        var chart = LineChart(title: "Policy mismatch by number of flipped layers",
                              subtitle: "Response tokens grouped by the layers whose experts differ in the row that produced them (tokens: \(counts)) · \(ab)",
                              xLabel: "flipped MoE layers (mean within the group)",
                              yLabel: positive ? "per-token mismatch (log scale)" : "per-token mismatch", series: series, logY: positive)
        chart.width = 600
        plots.append(Plot(id: idPrefix + "policy-by-flipped-layers", title: chart.title,
                          caption: "Each point is a group of tokens by how many MoE layers routed them to a different expert set (0, 1, 2, 3–4, 5–8, …). If routing flips drive the mismatch, k3 (KL estimate, nats) and |log ρ| (ρ = π_B/π_A) rise from left to right. Groups with few tokens are noisy.",
                          svg: chart.svg))

        // 2. Share of tokens outside [1/C, C], by routing.
        let ths = p.thresholds.map(\.threshold)
        let all = p.thresholds.map { t -> Double? in
            guard t.threshold >= 1, let h = t.rolloutIsToken.rolloutIsRatioFractionHigh, let l = t.rolloutIsToken.rolloutIsRatioFractionLow else { return nil }
            return (h + l) * 100
        }
        var bars = BarChart(title: "Tokens an importance-sampling band [1/C, C] would clip or mask",
                            subtitle: "% of response tokens with ρ = π_B/π_A outside [1/C, C] (verl rollout_is=token; IcePop masks them, TIS clips the upper side) · \(ab)",
                            xLabel: "threshold C", yLabel: "tokens outside the band (%)",
                            categories: ths.map { "C = \(PolicyReport.thresholdLabel($0))" },
                            series: [BarSeries(name: "all tokens", values: all),
                                     BarSeries(name: "no layer flipped", values: r.unflipped.thresholds.map { pct(outside($0)) }),
                                     BarSeries(name: "≥ 1 layer flipped", values: r.flipped.thresholds.map { pct(outside($0)) })])
        if (all + r.unflipped.thresholds.map { pct(outside($0)) } + r.flipped.thresholds.map { pct(outside($0)) }).allSatisfy({ ($0 ?? 0) == 0 }) {
            bars.yMax = 1
        }
        plots.append(Plot(id: idPrefix + "policy-clip-shares", title: bars.title,
                          caption: "For each --is-threshold C ≥ 1: the share of tokens whose probability ratio between the engines leaves [1/C, C], for all tokens and split by whether any MoE layer of the token's row flipped. A higher bar for flipped tokens ties the clipped weights to routing.",
                          svg: bars.svg))

        let ratio: String = {
            guard let f = r.flipped.k3, let u = r.unflipped.k3, u > 0 else { return "n/a" }
            return formatNumber(f / u) + "×"
        }()
        let facts: [(label: String, value: String)] = [
            ("response tokens / sequences", "\(p.tokens) / \(p.sequences)"),
            ("k3_kl (nats/token)", num(p.k3Kl)),
            ("chi2_token", num(p.chi2Token)),
            ("chi2_seq", num(p.chi2Seq)),
            ("ppl_ratio (training ÷ rollout)", num(p.pplRatio, 6)),
            ("log_ppl_diff (mean)", num(p.logPplDiff)),
            ("k3 flipped ÷ unflipped tokens", ratio),
        ]
        var rows: [[String]] = []
        func row(_ name: String, _ g: PolicyGroupReport) {
            rows.append([name, "\(g.tokens)", num(g.k1), num(g.k3), num(g.absLogRatio), num(g.chi2Token)]
                        + g.thresholds.map { t in outside(t).map { formatNumber($0 * 100, digits: 3) + " %" } ?? "n/a" })
        }
        for g in r.byFlippedLayers { row(PolicyReport.rangeLabel(g.from, g.to) + " flipped", g) }
        row("≥ 1 flipped", r.flipped)
        let header = ["tokens by flipped layers", "tokens", "k1", "k3", "mean |log ρ|", "chi2_token"]
            + ths.map { "ρ ∉ [1/C, C], C = \(PolicyReport.thresholdLabel($0))" }
        return ReportSection(
            id: idPrefix + "policy", title: "Policy mismatch and routing",
            intro: "Over \(p.tokens) response tokens with a logprob on both sides (ρ = π_B/π_A, A = \(nameA) rollout, B = \(nameB) training). verl's rollout_corr/ metrics under their names (rtrace diff --json, key policy); below, the per-token mismatch split by how many MoE layers flipped in the row that produced each token.",
            facts: facts, plots: plots, table: ("Policy mismatch by flipped layers", header, rows))
    }
}
