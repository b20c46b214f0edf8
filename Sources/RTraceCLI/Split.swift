import ArgumentParser
import Foundation
import RTrace
import RTraceAnalysis

/// `rtrace split`: a trace cut into uid parts, co-partitioned with any other trace cut the same way.
struct Split: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Split a trace into N traces by uid (CRC-32 of the uid modulo N), co-partitioned for rtrace diff --partial.",
        discussion: """
            Record r goes to part crc32(r.uid) % N (Python: zlib.crc32(uid.encode()) % N), the rule of \
            rtrace diff --uid-shard, so part i of a rollout file and part i of a training file hold the same \
            uids: compare them with rtrace diff --partial and merge the parts' results with rtrace merge. \
            Writes PREFIX.0.rtrace … PREFIX.(N-1).rtrace, every part even when empty, each complete or absent \
            (written under a temporary name and renamed), and prints what it wrote as JSON.
            Examples:
              for f in rollout/*.rtrace; do rtrace split $f --uid-shards 8 --prefix parts/a-$(basename $f .rtrace); done
              rtrace split big.rtrace --chunks 0:40 --uid-shards 8 --prefix parts/big-0
            """)

    @Argument(help: "The trace (- for standard input).")
    var file: String

    @Option(name: .customLong("uid-shards"), help: "N: how many parts.")
    var uidShards: Int

    @Option(help: "Write part i to PREFIX.i.rtrace.")
    var prefix: String

    @Option(help: ArgumentHelp("Split only the records that start in chunks FIRST to END-1 of a complete trace.", valueName: "FIRST:END"))
    var chunks: String?

    @Option(name: .customLong("header"), help: ArgumentHelp("A header (its JSON, as spec/format.md §3.2) for the parts: the trace's geometry, a subset of its optional columns (float columns converted to its types). Default: the trace's own.", valueName: "JSON-FILE"))
    var headerFile: String?

    @Flag(help: "Store the parts' columns uncompressed (parts read back at once, e.g. by a shuffle).")
    var raw = false

    @Option(help: "Threads decoding the input (default: one per core; a scheduler's task gives what it holds).")
    var threads: Int?

    func validate() throws {
        if uidShards < 1 { throw ValidationError("--uid-shards must be at least 1") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        try runReportingErrors {
            var header: TraceHeader? = nil
            if let h = headerFile {
                let data: Data
                do { data = try Data(contentsOf: URL(fileURLWithPath: h)) } catch {
                    throw TraceError(.io, "cannot read: \(error.localizedDescription)", file: h)
                }
                do throws(TraceError) { header = try TraceHeader.parse(json: [UInt8](data)) } catch { throw error.inFile(h) }
            }
            let summary = try splitTrace(file, count: uidShards, chunks: chunks, header: header, prefix: prefix, raw: raw,
                                     threads: threads ?? ProcessInfo.processInfo.activeProcessorCount)
            let out = try TextOutput()
            try out.line(encodeJSON(summary, pretty: false))
            try out.flush()
        }
    }
}
