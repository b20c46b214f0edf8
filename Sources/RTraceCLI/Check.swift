import ArgumentParser
import RTrace

/// `rtrace check`: verify every checksum and invariant; salvage what is intact.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify checksums and invariants; exit 0 only when the trace is clean.",
        discussion: """
            Checks every CRC, the index and trailer (truncation), ids below num_experts, no expert twice in a
            (row, layer) (duplicates break all-to-all dispatch), shapes, and MoE layers whose ids are all
            zero (a capture that never happened), and the index against the chunks. Each problem names
            its byte offset and record. A damaged chunk is lost whole, with every record that has a piece
            in it; past damage that hides where the next frame starts, a regular file is searched for the
            next intact chunk or the index (spec/format.md §8).
            Warnings flag capture bugs that leave plausible-looking data (exit 0 unless --strict):
              - NaN or infinite topk_weights, router_logits or logprobs (the record, the count, the first's
                row, position and layer);
              - a run of rows that repeat the previous row in every MoE layer although their tokens differ,
                longer than chance allows: over the trace's comparable row pairs (both rows present in every
                layer, different input tokens where the record has tokens), q_l is the fraction equal in
                layer l and p = prod(q_l); a run of m repeats is reported when N * p^m < 0.01 (N pairs).
            --salvage OUT writes every intact record to a new, valid trace with a new index.
            Example: rtrace check --salvage fixed.rtrace crashed.rtrace
            """)

    @Argument(help: "The trace (- for standard input).")
    var file: String

    @Option(help: "Write every intact record to this new trace.")
    var salvage: String?

    @Flag(help: "Print only the summary line.")
    var quiet = false

    @Flag(help: "Exit 1 on warnings too (NaN or infinite floats, repeated rows, skipped columns).")
    var strict = false

    func run() throws {
        try runReportingErrors {
            let report = try TraceChecker.check(path: file, salvage: salvage)
            let out = try TextOutput()
            if !quiet { for i in report.issues { try out.line("\(file): \(i)") } }
            let warnings = report.issues.filter { $0.severity == .warning }.count
            let failed = !report.clean || (strict && warnings > 0)
            let state = failed ? "FAILED" : warnings > 0 ? "OK with \(warnings) warning\(warnings == 1 ? "" : "s")" : "OK"
            try out.line("\(file): \(state): \(report.chunks) chunks (\(report.badChunks) damaged), \(report.records) intact records, \(report.rows) rows, \(report.lostRecords) records lost, \(report.complete ? "complete" : "no valid index/trailer")")
            if let salvage { try out.line("salvaged \(report.records) records to \(salvage)") }
            try out.flush()
            if failed { throw ExitCode.failure }
        }
    }
}
