import ArgumentParser
import Foundation
import RTrace
import RTraceAnalysis

/// `rtrace merge`: partial results of parts of the work into the result of the whole.
struct Merge: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge partial results (rtrace diff --partial, rtrace stats --json) into the result of the whole.",
        discussion: """
            Diff partials (rtrace diff --partial) merge to exactly the report one `rtrace diff` over all the \\
            parts would print: counts equal, sums exact (integers and 128-bit fixed point), the top list the \\
            same (each partial keeps its --top sequences). Print it as a table, --json or --csv, check it with \\
            --fail-above, or write the merged partial again with --partial (to merge in a tree). Refused: \\
            partials of other geometries or --buckets, the same uid shard twice, a file on one side of two \\
            different parts (its sequences would count twice), and, unless --partial, uid shards missing \\
            from a set (i/N for some but not all i).
            Stats results (rtrace stats --json) merge as `rtrace stats --merge` does.
            Examples:
              seq 0 7 | xargs -P 8 -I{} sh -c 'rtrace diff --a rollout/ --b train/ --partial --uid-shard {}/8 > part-{}.json'
              rtrace merge part-*.json --json
              rtrace merge part-0.json part-1.json --partial > part-01.json
              rtrace stats shard0.rtrace --json > s0.json; rtrace stats shard1.rtrace --json > s1.json; rtrace merge s0.json s1.json
            JSON: spec/cli-json.md.
            """)

    @Argument(help: "Partial results: JSON files of rtrace diff --partial, or of rtrace stats --json (not both kinds).")
    var partials: [String]

    @Flag(help: "Print JSON (the report of rtrace diff --json, or of rtrace stats --json).")
    var json = false

    @Flag(help: "Diff partials: print CSV rows (--csv-table chooses which).")
    var csv = false

    @Option(name: .customLong("csv-table"), help: "With --csv: layers (one row per MoE layer) or policy (one row per routing group of response tokens).")
    var csvTable: Diff.CSVTable = .layers

    @Flag(help: "Diff partials: print the merged partial (to merge again later) instead of the report.")
    var partial = false

    @Option(help: "Diff partials: list the N sequences with most flipped rows (at most what the partials kept).")
    var top: Int?

    @Option(help: "Stats results: expert-parallel ranks for the placement report.")
    var ep: Int?

    @Option(name: .customLong("fail-above"), help: "KEY=VALUE: exit 1 when a numeric key of the report exceeds VALUE (repeatable).")
    var failAbove: [String] = []

    func validate() throws {
        if partials.isEmpty { throw ValidationError("give at least one partial result") }
        if json && csv { throw ValidationError("--json and --csv exclude each other") }
        if csvTable != .layers && !csv { throw ValidationError("--csv-table goes with --csv") }
        if partial && (json || csv || !failAbove.isEmpty) { throw ValidationError("--partial prints the merged partial; --json, --csv and --fail-above apply to the report") }
        if let t = top, t < 0 { throw ValidationError("--top must be ≥ 0") }
        if let e = ep, e < 1 { throw ValidationError("--ep must be at least 1") }
    }

    func run() throws {
        var violations: [String] = []
        try runReportingErrors {
            let limits = try parseThresholds(failAbove)
            switch try PartialKind(paths: partials) {
            case .diff:
                if ep != nil { throw TraceError(.invalidInput, "--ep applies to stats results, these are diff partials") }
                var p = try mergeDiffPartials(partials)
                if let t = top {
                    guard t <= p.top else { throw TraceError(.invalidInput, "--top \(t): the partials kept only their first \(p.top) sequences (make them with a larger --top)") }
                    p.top = t
                }
                if partial {
                    let out = try TextOutput()
                    try out.line(encodeJSON(p))
                    try out.flush()
                    return
                }
                try p.checkComplete()
                try p.checkMatched()
                violations = try printReport(DiffReport(partial: p), json: json, csv: csv, csvTable: csvTable, limits: limits)
            case .stats:
                if csv || partial || top != nil { throw TraceError(.invalidInput, "--csv, --partial and --top apply to diff partials, these are stats results") }
                violations = try printStats(try mergeStats(partials, ep: ep), json: json, limits: limits)
            }
        }
        if !violations.isEmpty {
            for v in violations { note("rtrace merge: \(v)") }
            throw ExitCode.failure
        }
    }
}

/// Which kind of partial result the files hold (by their `format` key); all must hold the same.
enum PartialKind: Equatable {
    case diff, stats

    init(paths: [String]) throws(TraceError) {
        var kind: PartialKind? = nil
        for p in paths {
            let k = try PartialKind(path: p)
            if let kind, kind != k {
                throw TraceError(.invalidInput, "mixes diff partials and stats results: merge each kind on its own", file: p)
            }
            kind = k
        }
        self = kind!
    }

    init(path: String) throws(TraceError) {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw TraceError(.io, "cannot read: \(error.localizedDescription)", file: path)
        }
        let format = ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])?["format"] as? String
        switch format {
        case DiffPartial.formatName: self = .diff
        case StatsReport.formatName: self = .stats
        default:
            throw TraceError(.invalidInput, "not a partial result: its format is \(format.map { "\"\($0)\"" } ?? "missing"), expected \"\(DiffPartial.formatName)\" (rtrace diff --partial) or \"rtrace-stats\" (rtrace stats --json)", file: path)
        }
    }
}
