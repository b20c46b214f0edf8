import ArgumentParser
import RTrace

/// `rtrace check`: verify every checksum and invariant; salvage what is intact.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify checksums and invariants; exit 0 only when the trace is clean.",
        discussion: """
            Checks every CRC, the index and trailer (truncation), ids below num_experts, no expert twice in a
            (row, layer) (duplicates break all-to-all dispatch), shapes, and MoE layers whose ids are all
            zero (a capture that never happened). Each problem names its byte offset and record.
            --salvage OUT writes every intact record to a new, valid trace.
            Example: rtrace check --salvage fixed.rtrace crashed.rtrace
            """)

    @Argument(help: "The trace (- for standard input).")
    var file: String

    @Option(help: "Write every intact record to this new trace.")
    var salvage: String?

    @Flag(help: "Print only the summary line.")
    var quiet = false

    func run() throws {
        try runReportingErrors {
            let report = try TraceChecker.check(path: file, salvage: salvage)
            let out = try TextOutput()
            if !quiet { for i in report.issues { try out.line("\(file): \(i)") } }
            let state = report.clean ? "OK" : "FAILED"
            try out.line("\(file): \(state): \(report.chunks) chunks (\(report.badChunks) damaged), \(report.records) intact records, \(report.rows) rows, \(report.lostRecords) records lost, \(report.complete ? "complete" : "no valid index/trailer")")
            if let salvage { try out.line("salvaged \(report.records) records to \(salvage)") }
            try out.flush()
            if !report.clean { throw ExitCode.failure }
        }
    }
}
