import ArgumentParser
import Foundation
import RTrace
import RTraceAnalysis

/// `rtrace diff`: routing and policy drift between a behaviour trace and a training trace.
struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare the routing of two traces of the same sequences (A = rollout, B = training).",
        discussion: """
            Sequences are joined on uid and row position (start + row). Reports, per MoE layer (named by its
            decoder index) and overall: flip rate (top-k set differs), ordered flip rate, Jaccard similarity,
            experts changed; per row: rows with any layer flipped; router KL(softmax A ‖ softmax B) and weight
            differences when both sides carry them. When both carry logprobs, the policy mismatch over response
            tokens (ρ = r = πB/πA): k1, k3, F(τ); verl's rollout_corr metrics (kl, k3_kl, chi2_token, chi2_seq,
            training/rollout perplexity, ppl_ratio, log_ppl_diff) with verl's definitions; at each --is-threshold C
            the shares verl's rollout_is (truncated/IcePop IS) and rollout_rs (token/seq_sum/seq_mean/seq_max of
            k1/k2/k3) rules would clip or mask; and those figures split by how many layers of the token's row
            flipped. JSON keys: spec/cli-json.md.

            Records may be in any order on either side, in any number of shards: memory stays bounded \
            (a few chunks per core, --join-memory, and the largest record). Complete files are read through \
            their indexes in an order planned from them; records that must wait for their partner beyond \
            --join-memory wait in a temporary file (--spill-dir, else TMPDIR, else /tmp), deleted when rtrace \
            ends. Pipes and unfinished files are read as streams, with the same budget and file.

            Split the work: --partial prints the exact, mergeable state of the comparison (integer counts \
            and exact sums) instead of the report, and --uid-shard i/N restricts it to the uids whose \
            CRC-32 is i modulo N (Python: zlib.crc32(uid.encode()) % N). `rtrace merge` turns the partials \
            of parts 0 … N−1 into exactly the report of one run over everything: the same JSON, CSV, table \
            and --fail-above. Parts may also be files co-partitioned by uid (each part's A and B files hold \
            the same uids); then each part is one `rtrace diff --partial` over its own files.
            Examples:
              rtrace diff rollout.rtrace train.rtrace
              rtrace diff --a rollout/ --b train-0.rtrace train-1.rtrace --json --fail-above flip_rate=0.05
              rtrace diff rollout.rtrace train.rtrace --is-threshold 2 --is-threshold 1.05 --csv --csv-table policy
              seq 0 7 | xargs -P 8 -I{} sh -c 'rtrace diff --a rollout/ --b train/ --partial --uid-shard {}/8 > part-{}.json'
              rtrace merge part-*.json --json
            """)

    @Argument(help: "A and B (when --a/--b are not given).")
    var files: [String] = []

    @Option(name: .customLong("a"), parsing: .upToNextOption, help: "Side A shards (files or directories of *.rtrace).")
    var sideA: [String] = []

    @Option(name: .customLong("b"), parsing: .upToNextOption, help: "Side B shards (files or directories of *.rtrace).")
    var sideB: [String] = []

    @Option(help: "Position buckets (relative position in the sequence).")
    var buckets = 4

    @Option(help: "List the N sequences with the most flipped rows.")
    var top = 10

    @Flag(help: "Print JSON (spec/cli-json.md).")
    var json = false

    @Flag(help: "Print CSV rows (--csv-table chooses which).")
    var csv = false

    enum CSVTable: String, ExpressibleByArgument, CaseIterable { case layers, policy }

    @Option(name: .customLong("csv-table"), help: "With --csv: layers (one row per MoE layer) or policy (one row per routing group of response tokens).")
    var csvTable: CSVTable = .layers

    @Option(name: .customLong("is-threshold"), help: ArgumentHelp("Threshold C of the IS/RS rules (verl's rollout_is_threshold and rollout_rs_threshold): report the shares they would clip or mask (repeatable; default 2).", valueName: "C"))
    var isThresholds: [Double] = []

    @Option(name: .customLong("fail-above"), help: "KEY=VALUE: exit 1 when a numeric report key exceeds VALUE (repeatable; dotted keys such as policy.k3 work).")
    var failAbove: [String] = []

    @Flag(help: "Print the exact, mergeable partial state as JSON instead of the report (merge with `rtrace merge`; spec/cli-json.md).")
    var partial = false

    @Option(name: .customLong("uid-shard"), help: "i/N: compare only the uids whose CRC-32 is i modulo N (a part of the work; with --partial).")
    var uidShard: String?

    @Option(name: .customLong("join-memory"), help: "MiB of records kept in memory while they wait for their partner; beyond it they wait in a temporary file.")
    var joinMemory = 12

    @Option(name: .customLong("spill-dir"), help: "Directory for that temporary file (default: TMPDIR, else /tmp).")
    var spillDir: String?

    @Option(help: "Worker threads, and chunks decoded at once (default: one per core; a scheduler's task gives what it holds).")
    var threads: Int?

    @Flag(name: .customLong("join-stats"), help: "Print how the join ran to standard error: planned or streamed, runs read, chunks decoded, records spilled.")
    var joinStats = false

    func validate() throws {
        if sideA.isEmpty != sideB.isEmpty { throw ValidationError("give both --a and --b") }
        if sideA.isEmpty && files.count != 2 { throw ValidationError("give two traces A B, or --a … --b …") }
        if !sideA.isEmpty && !files.isEmpty { throw ValidationError("give either positional A B or --a/--b, not both") }
        if json && csv { throw ValidationError("--json and --csv exclude each other") }
        if csvTable != .layers && !csv { throw ValidationError("--csv-table goes with --csv") }
        if buckets < 1 { throw ValidationError("--buckets must be at least 1") }
        for c in isThresholds where !(c > 0 && c.isFinite) { throw ValidationError("--is-threshold must be a finite number > 0, got \(c)") }
        if top < 0 { throw ValidationError("--top must be ≥ 0") }
        if joinMemory < 0 { throw ValidationError("--join-memory must be ≥ 0") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1") }
        if partial && (json || csv || !failAbove.isEmpty) {
            throw ValidationError("--partial prints the partial state; --json, --csv and --fail-above apply to the report (use them with rtrace merge)")
        }
        if uidShard != nil && !partial {
            throw ValidationError("--uid-shard compares a part of the uids: give --partial, and merge the parts with rtrace merge")
        }
    }

    func run() throws {
        var violations: [String] = []
        try runReportingErrors {
            let limits = try parseThresholds(failAbove)
            let a = sideA.isEmpty ? [files[0]] : sideA, b = sideB.isEmpty ? [files[1]] : sideB
            let thresholds = isThresholds.isEmpty ? PolicyAcc.defaultThresholds : isThresholds
            var options = DiffOptions(buckets: buckets, top: top, isThresholds: thresholds)
            if let s = uidShard { options.uidShard = try UIDShard(parsing: s) }
            options.memoryBudget = joinMemory << 20
            options.spillDirectory = spillDir
            if let t = threads { options.threads = t }
            if partial {
                let (p, j) = try diffPartialAndJoin(a: a, b: b, options: options)
                if joinStats { note(j.text) }
                let out = try TextOutput()
                try out.line(encodeJSON(p))
                try out.flush()
                return
            }
            let rep = try diffTraces(a: a, b: b, options: options)
            if joinStats, let j = rep.join { note(j.text) }
            violations = try printReport(rep, json: json, csv: csv, csvTable: csvTable, limits: limits)
        }
        if !violations.isEmpty {
            for v in violations { note("rtrace diff: \(v)") }
            throw ExitCode.failure
        }
    }
}

/// Prints a diff report as JSON, CSV (`csvTable`) or a table; returns the --fail-above violations.
func printReport(_ rep: DiffReport, json: Bool, csv: Bool, csvTable: Diff.CSVTable, limits: [(key: String, limit: Double)]) throws -> [String] {
    let violations = try checkThresholds(rep.result, limits)
    let out = try TextOutput()
    if json {
        try out.line(encodeJSON(rep.result))
    } else if csv {
        if csvTable == .policy {
            guard let p = rep.policy else { throw TraceError(.invalidInput, "--csv-table policy: the traces carry no logprobs on both sides") }
            try out.write(p.csv)
        } else {
            try out.write(rep.csv)
        }
    } else {
        try out.write(rep.text)
    }
    try out.flush()
    return violations
}
