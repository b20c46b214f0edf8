import Foundation

/// Training curves of `rtrace replay-train` runs: k3, flip rates and reward against step, one line per mode.
public enum RunFigures {
    /// Runs grouped by mode, in the order none, r2, r3, then others by name; each group's style index is stable.
    static func groups(_ runs: [RunMetrics]) -> [(mode: String, runs: [RunMetrics], style: Int)] {
        let known = ["none", "r2", "r3"]
        var modes: [String] = []
        for r in runs where !modes.contains(r.mode) { modes.append(r.mode) }
        modes.sort { a, b in
            let ia = known.firstIndex(of: a) ?? 99, ib = known.firstIndex(of: b) ?? 99
            return ia != ib ? ia < ib : a < b
        }
        return modes.enumerated().map { i, m in (m, runs.filter { $0.mode == m }, i) }
    }

    /// One line per mode: the mean over its runs at each step, with a min–max band when there are several.
    static func series(_ runs: [RunMetrics], key: String) -> [LineSeries] {
        groups(runs).compactMap { g in
            var byStep: [Double: [Double]] = [:]
            for r in g.runs { for p in r.series(key) where p.y.isFinite { byStep[p.x, default: []].append(p.y) } }
            guard !byStep.isEmpty else { return nil }
            let xs = byStep.keys.sorted()
            let pts = xs.map { x in (x: x, y: byStep[x]!.reduce(0, +) / Double(byStep[x]!.count)) }
            let band = g.runs.count > 1 ? xs.map { x in (x: x, lo: byStep[x]!.min()!, hi: byStep[x]!.max()!) } : []
            let name = g.runs.count > 1 ? "\(g.mode) (mean of \(g.runs.count) runs)" : g.mode
            return LineSeries(name: name, points: pts, band: band, style: g.style)
        }
    }

    /// The section: k3, natural and applied flip rate, and reward against step.
    public static func section(runs: [RunMetrics]) -> ReportSection {
        let several = runs.count > groups(runs).count
        let bandNote = several ? " Shaded: min–max over the runs of a mode." : ""
        var plots: [Plot] = []
        func add(_ id: String, _ key: String, _ title: String, _ y: String, _ sub: String, _ caption: String, log: Bool = false) {
            let s = series(runs, key: key)
            let allPos = s.allSatisfy { $0.points.allSatisfy { $0.y > 0 } }
            let c = LineChart(title: title, subtitle: sub, xLabel: "training step", yLabel: y, series: s,
                              logY: log && allPos && !s.isEmpty)
            plots.append(Plot(id: id, title: title, caption: caption + bandNote, svg: c.svg))
        }
        add("run-k3", "k3", "Train–inference policy KL (k3) per step", "k3 (nats per token, log scale)",
            "k3 = mean(r − 1 − log r), r = π_train/π_rollout over response tokens",
            "Lower is better: how far the training engine's token probabilities are from the rollout engine's. Routing replay (r2, r3) should pull it down.", log: true)
        add("run-flip-natural", "flip_rate_natural", "Natural routing flip rate per step", "flip rate (fraction of token-layers)",
            "Share of (token, layer)s where the training router alone would pick other experts than the rollout",
            "The mismatch routing replay has to fix: it exists in every mode.")
        add("run-flip-applied", "flip_rate_applied", "Applied routing flip rate per step", "flip rate (fraction of token-layers)",
            "Share of (token, layer)s trained with other experts than the rollout used, after replay",
            "With r3 replay this should be 0; with no replay it equals the natural flip rate.")
        add("run-reward", "reward", "Reward per step", "mean reward (0–1)",
            "Mean task reward of the step's rollouts",
            "Higher is better; it shows whether replay changes learning.")
        let facts: [(label: String, value: String)] = groups(runs).map { g in
            let last = g.runs.compactMap { $0.series("reward").last?.y }
            let v = last.isEmpty ? "n/a" : formatNumber(last.reduce(0, +) / Double(last.count))
            return ("final reward · \(g.mode)", v)
        }
        return ReportSection(id: "runs", title: "Training runs (replay-train)",
                             intro: "Runs: " + runs.map { "\($0.directory) (\($0.mode), \($0.steps.count) steps)" }.joined(separator: "; ") + ".",
                             facts: facts, plots: plots)
    }
}
