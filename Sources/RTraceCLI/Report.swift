import ArgumentParser
import Foundation
import RTrace
import RTraceAnalysis
import RTraceReport

/// `rtrace report`: diff, stats and replay-train curves as one self-contained HTML page, or as SVG files.
struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Plot routing drift, expert load and training curves as a self-contained HTML page (or SVG files).",
        discussion: """
            With two traces A (rollout) and B (training): flip rate per layer, a layer × position heatmap of flip \
            rates, router KL per layer, the policy-KL summary (k3, F(τ)) and the most divergent sequences; when both carry \
            logprobs, verl's policy-mismatch metrics, k3 and |log ρ| against the number of flipped layers and the \
            shares of tokens an IS band [1/C, C] would clip (--is-threshold). With one \
            or more traces: expert load (layer × expert, relative to uniform), imbalance and entropy per layer, and \
            per-rank load with --ep N. With --run DIR (repeatable): k3, flip rates and reward against step of \
            replay-train output directories, one line per mode. The page has no scripts and loads nothing.
            Examples:
              rtrace report rollout.rtrace train.rtrace -o report.html
              rtrace report rollout.rtrace --ep 8 -o load.html
              rtrace report --run runs/none --run runs/r3 -o curves.html
              rtrace report rollout.rtrace train.rtrace --format svg -o plots/
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case html, svg }

    @Argument(help: "One trace (expert load) or two, A and B (drift and the load of each); files or directories of *.rtrace.")
    var traces: [String] = []

    @Option(name: [.short, .customLong("output")], help: "The HTML file to write (--format html) or the directory for the SVG files (--format svg).")
    var output: String

    @Option(help: "html: one page; svg: one .svg file per plot in the -o directory.")
    var format: Format = .html

    @Option(name: .customLong("run"), help: "A replay-train output directory holding metrics.jsonl (repeatable).")
    var runs: [String] = []

    @Option(help: "Expert-parallel ranks: add per-rank load plots.")
    var ep: Int?

    @Option(help: "Position buckets of the layer × position heatmap.")
    var buckets = 10

    @Option(help: "How many most divergent sequences to show.")
    var top = 10

    @Option(help: "Page title.")
    var title = "rtrace report"

    @Option(name: .customLong("is-threshold"), help: ArgumentHelp("Threshold C of the policy section's IS/RS shares (repeatable; default 2).", valueName: "C"))
    var isThresholds: [Double] = []

    func validate() throws {
        if traces.isEmpty && runs.isEmpty { throw ValidationError("give one or two traces, or --run DIR") }
        if traces.count > 2 { throw ValidationError("give at most two traces (A and B)") }
        if let e = ep, e < 1 { throw ValidationError("--ep must be at least 1") }
        if buckets < 1 || buckets > 100 { throw ValidationError("--buckets must be 1…100") }
        if top < 0 { throw ValidationError("--top must be ≥ 0") }
        for c in isThresholds where !(c > 0 && c.isFinite) { throw ValidationError("--is-threshold must be a finite number > 0, got \(c)") }
    }

    func run() throws {
        try runReportingErrors {
            let page = try makePage()
            if format == .html {
                try writeText(page.html, to: output)
                note("rtrace report: wrote \(output) (\(page.plots.count) plots)")
            } else {
                do {
                    try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
                } catch {
                    throw TraceError(.io, "cannot create directory: \(error.localizedDescription)", file: output)
                }
                for p in page.plots { try writeText(p.svg, to: (output as NSString).appendingPathComponent(p.id + ".svg")) }
                note("rtrace report: wrote \(page.plots.count) SVG files to \(output)")
            }
        }
    }

    func makePage() throws -> ReportPage {
        try buildReport(ReportInputs(traces: traces, runs: runs, ep: ep, buckets: buckets, top: top, title: title,
                                     isThresholds: isThresholds.isEmpty ? PolicyAcc.defaultThresholds : isThresholds))
    }

    func writeText(_ s: String, to path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: Data(s.utf8)) else {
            throw TraceError(.io, "cannot write the file (does its directory exist?)", file: path)
        }
    }
}
