import ArgumentParser
import RTrace

/// `rtrace info`: header, counts and per-column sizes.
struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a trace's header, counts, chunks and per-column compression.",
        discussion: """
            Counts come from the index of a complete file; an incomplete file or a pipe is scanned.
            Example: rtrace info rollout.rtrace --json | jq .columns
            """)

    @Argument(help: "The trace (- for standard input).")
    var file: String

    @Flag(help: "Print JSON instead of text.")
    var json = false

    func run() throws {
        try runReportingErrors {
            let r = try TraceReader(path: file)
            let sum = try r.summary()
            let heads = sum.chunks
            let (sequences, rows, tokens) = (sum.sequences, sum.rows, sum.tokens)
            var stored: [UInt16: Int] = [:], raw: [UInt16: Int] = [:]
            for (_, h) in heads {
                for c in h.columns { stored[c.id, default: 0] += c.storedLength; raw[c.id, default: 0] += c.rawLength }
            }
            let size = r.source.size
            let h = r.header
            let rawIDs = rows * h.model.moeLayers * h.model.topK * 4
            var cols: [[String: Any]] = []
            for id in stored.keys.sorted() {
                let name = ColumnID(rawValue: id)?.name ?? "#\(id)"
                cols.append(["column": name, "stored_bytes": stored[id]!, "raw_bytes": raw[id]!,
                             "ratio": stored[id]! == 0 ? 1.0 : Double(raw[id]!) / Double(stored[id]!)])
            }
            let out = try TextOutput()
            if json {
                var o: [String: Any] = [
                    "file": file, "header": h.jsonObject, "version": "\(h.version.major).\(h.version.minor)",
                    "complete": r.isComplete, "sequences": sequences, "rows": rows, "tokens": tokens,
                    "chunks": heads.count, "columns": cols,
                ]
                if let size { o["file_bytes"] = size }
                if let why = r.incompleteReason { o["incomplete_reason"] = why }
                try out.line(jsonText(o))
                return
            }
            try out.line("file         \(file)\(size.map { "  (\($0) bytes)" } ?? "")")
            try out.line("format       rtrace \(h.version.major).\(h.version.minor)\(r.isComplete ? "" : "  INCOMPLETE: \(r.incompleteReason ?? "no index")")")
            try out.line("engine       \(h.engine.name) \(h.engine.version) (\(h.engine.role.rawValue))")
            try out.line("model        \(h.model.name.isEmpty ? "-" : h.model.name): \(h.model.moeLayers) MoE of \(h.model.numLayers) layers, \(h.model.numExperts) experts, top-\(h.model.topK)")
            try out.line("layer_map    \(h.model.layerMap.map(String.init).joined(separator: ","))")
            var colNames = ["topk_ids(\(h.idWidth.rawValue))", "tokens"]
            if let w = h.columns.topkWeights { colNames.append("topk_weights(\(w.rawValue))") }
            if let g = h.columns.routerLogits { colNames.append("router_logits(\(g.rawValue))") }
            if h.columns.logprobs { colNames.append("logprobs(f32)") }
            try out.line("columns      \(colNames.joined(separator: " "))")
            try out.line("policy       \(h.policyVersion.map(String.init) ?? "-")    created \(h.created)")
            if !h.attributes.isEmpty {
                try out.line("attributes   " + h.attributes.keys.sorted().map { "\($0)=\(h.attributes[$0]!)" }.joined(separator: " "))
            }
            try out.line("sequences    \(sequences)    rows \(rows)    tokens \(tokens)    chunks \(heads.count)")
            if let size, rows > 0 {
                try out.line(String(format: "size         %.2f bytes/row (int32 ids alone: %d bytes/row, %.1fx)", Double(size) / Double(rows),
                                    rawIDs / rows, Double(rawIDs) / Double(size)))
            }
            try out.line("")
            try out.line("column               stored        raw   ratio")
            for c in cols {
                let name = (c["column"] as! String).padding(toLength: 16, withPad: " ", startingAt: 0)
                try out.line(name + String(format: " %11d %10d %7.2f", c["stored_bytes"] as! Int, c["raw_bytes"] as! Int, c["ratio"] as! Double))
            }
            for n in r.notices { note("rtrace: notice: \(n)") }
        }
    }
}
