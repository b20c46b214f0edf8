import Foundation
import RTrace
import RTraceAnalysis

/// What goes into a report: traces, replay-train run directories and options.
public struct ReportInputs {
    /// One trace (expert load) or two, A (rollout) and B (training): also the drift between them.
    public var traces: [String]
    /// replay-train output directories (each with metrics.jsonl).
    public var runs: [String]
    /// Expert-parallel ranks for the per-rank plots.
    public var ep: Int?
    /// Position buckets of the layer × position heatmap.
    public var buckets: Int
    /// Most divergent sequences to show.
    public var top: Int
    /// Page title.
    public var title: String
    /// Thresholds C of the policy section's IS/RS shares (``DiffOptions/isThresholds``).
    public var isThresholds: [Double]

    /// Creates the inputs.
    public init(traces: [String] = [], runs: [String] = [], ep: Int? = nil, buckets: Int = 10, top: Int = 10, title: String = "rtrace report",
                isThresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.traces = traces; self.runs = runs; self.ep = ep; self.buckets = buckets; self.top = top; self.title = title
        self.isThresholds = isThresholds
    }
}

/// Runs the analyses (diff, flip grid, stats, metrics) and lays out the page.
///
/// Errors are ``TraceError``s naming the file (and line, for metrics.jsonl).
public func buildReport(_ inp: ReportInputs) throws -> ReportPage {
    guard !inp.traces.isEmpty || !inp.runs.isEmpty else { throw TraceError(.invalidInput, "nothing to report: give traces or run directories") }
    guard inp.traces.count <= 2 else { throw TraceError(.invalidInput, "give at most two traces (A and B), got \(inp.traces.count)") }
    var sections: [ReportSection] = []
    let names = inp.traces.map { ($0 as NSString).lastPathComponent }
    if inp.traces.count == 2 {
        let rep = try diffTraces(a: [inp.traces[0]], b: [inp.traces[1]],
                                 options: DiffOptions(buckets: inp.buckets, top: inp.top, isThresholds: inp.isThresholds))
        let grid = FlipGrid(diff: rep)
        sections.append(DiffFigures.section(diff: rep.result, grid: grid, nameA: names[0], nameB: names[1]))
        if let p = rep.policy { sections.append(PolicyFigures.section(policy: p, nameA: names[0], nameB: names[1])) }
    }
    for (i, t) in inp.traces.enumerated() {
        let p = try statsTraces([t], options: StatsOptions(ep: inp.ep))
        let one = inp.traces.count == 1
        sections.append(StatsFigures.section(stats: p, name: one ? names[i] : (i == 0 ? "A = " : "B = ") + names[i],
                                             ep: inp.ep, idPrefix: one ? "" : (i == 0 ? "a-" : "b-")))
    }
    if !inp.runs.isEmpty {
        sections.append(RunFigures.section(runs: try inp.runs.map { try RunMetrics.load(directory: $0) }))
    }
    let date = ISO8601DateFormatter().string(from: Date())
    return ReportPage(title: inp.title, subtitle: "Inputs: \((inp.traces + inp.runs).joined(separator: ", ")) · made \(date) by rtrace report",
                      sections: sections)
}
