import ArgumentParser
import Foundation
import RTrace
import RTraceAnalysis

/// `rtrace stats`: expert load per layer, capacity drops and expert-parallel placement.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Expert load statistics per MoE layer of one or more traces (their union).",
        discussion: """
            Per layer: tokens, per-expert counts and load, max/mean load, coefficient of variation, dead experts,
            normalised entropy and effective experts, experts taking half the load, mean top-1 gate weight
            (max over the k slots); with router logits the mean router entropy and the Switch aux loss
            E·Σ f_i·P_i. --json output holds integer counts and exact sums: merge shard results with --merge.
            Examples:
              rtrace stats rollout.rtrace --capacity-factor 1.25 --batch-tokens 8192 --ep 8
              rtrace stats shard0.rtrace --json > p0.json; rtrace stats shard1.rtrace --json > p1.json
              rtrace stats --merge p0.json p1.json
              rtrace stats big.rtrace --chunks 0:40 --json > c0.json; rtrace stats big.rtrace --chunks 40:97 --json > c1.json
              rtrace merge c0.json c1.json --json      # = rtrace stats big.rtrace --json (chunks: rtrace info)
            """)

    @Argument(help: "Traces or directories of *.rtrace (or, with --merge, JSON outputs of rtrace stats --json).")
    var files: [String]

    @Flag(help: "Merge the JSON outputs of rtrace stats --json given as FILE arguments.")
    var merge = false

    @Option(name: .customLong("capacity-factor"), help: "Expert capacity factor C: report the fraction of assignments dropped (capacity = floor(C·tokens·k/E) per batch).")
    var capacityFactor: Double?

    @Option(name: .customLong("batch-tokens"), help: "Rows per capacity batch, in stream order.")
    var batchTokens = 4096

    @Option(help: "Expert-parallel ranks: token load per rank, contiguous vs balanced (greedy LPT) placement.")
    var ep: Int?

    @Option(help: ArgumentHelp("Count only the records that start in chunks FIRST to END-1 of one complete trace: a part of it, to merge with the other parts' results (rtrace merge).", valueName: "FIRST:END"))
    var chunks: String?

    @Option(help: "Worker threads (default: one per core; a scheduler's task gives what it holds).")
    var threads: Int?

    @Flag(help: "Print JSON (spec/cli-json.md).")
    var json = false

    @Option(name: .customLong("fail-above"), help: "KEY=VALUE: exit 1 when a numeric top-level key exceeds VALUE (repeatable).")
    var failAbove: [String] = []

    func validate() throws {
        if files.isEmpty { throw ValidationError("give at least one trace") }
        if let c = capacityFactor, !(c > 0) { throw ValidationError("--capacity-factor must be positive") }
        if batchTokens < 1 { throw ValidationError("--batch-tokens must be at least 1") }
        if let e = ep, e < 1 { throw ValidationError("--ep must be at least 1") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
        if chunks != nil && merge { throw ValidationError("--chunks selects a part of a trace; --merge merges results") }
        if chunks != nil && capacityFactor != nil {
            throw ValidationError("--chunks cannot go with --capacity-factor: capacity batches run on in stream order across the parts")
        }
        if merge && capacityFactor != nil { throw ValidationError("--capacity-factor cannot be applied when merging (it was fixed when the partials were made)") }
    }

    func run() throws {
        var violations: [String] = []
        try runReportingErrors {
            let limits = try parseThresholds(failAbove)
            let p: StatsPartial
            if merge {
                p = try mergeStats(files, ep: ep)
            } else {
                var options = StatsOptions(capacityFactor: capacityFactor, batchTokens: batchTokens, ep: ep)
                if let t = threads { options.threads = t }
                p = try statsTraces(files, options: options, chunks: chunks)
            }
            violations = try printStats(p, json: json, limits: limits)
        }
        if !violations.isEmpty {
            for v in violations { note("rtrace stats: \(v)") }
            throw ExitCode.failure
        }
    }
}

/// Prints statistics as JSON or a table; returns the --fail-above violations.
func printStats(_ p: StatsPartial, json: Bool, limits: [(key: String, limit: Double)]) throws -> [String] {
    let report = p.report
    let violations = try checkThresholds(report, limits)
    let out = try TextOutput()
    try out.write(json ? encodeJSON(report) + "\n" : p.text)
    try out.flush()
    return violations
}
