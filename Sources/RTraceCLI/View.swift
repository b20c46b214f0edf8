import ArgumentParser
import Foundation
import RTrace

/// `rtrace view`: records as JSON lines or TSV for jq, grep and awk.
struct View: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print records as JSON lines (one per sequence) or TSV (one line per row and layer).",
        discussion: """
            JSONL keys: uid, group, tokens, prompt_len, start, topk_ids ([rows][layers][k], -1 = missing),
            topk_weights (same shape, when present), logprobs, reward, attrs; router_logits with --logits.
            With --layer, arrays keep only that decoder layer ([rows][k]).
            TSV columns: uid, position, layer, experts (comma-separated), weights.
            Example: rtrace view rollout.rtrace --uid 7 --layer 3 | jq -c '.topk_ids[:4]'
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case jsonl, tsv }

    @Argument(help: "The trace (- for standard input).")
    var file: String

    @Option(help: "Only records with this uid (repeatable).")
    var uid: [String] = []

    @Option(help: "Only this decoder layer (an index from the header's layer_map).")
    var layer: Int?

    @Option(help: "Output format: jsonl or tsv.")
    var format: Format = .jsonl

    @Flag(help: "Include the full router logits in JSON lines.")
    var logits = false

    func run() throws {
        try runReportingErrors {
            let r = try TraceReader(path: file)
            let h = r.header
            var layers = Array(0..<h.model.moeLayers)
            if let layer {
                guard let i = h.model.layerMap.firstIndex(of: layer) else {
                    throw ValidationError("layer \(layer) is not an MoE layer of this trace; layer_map is \(h.model.layerMap)")
                }
                layers = [i]
            }
            let out = try TextOutput()
            let emit: (TraceRecord) throws -> Void = { rec in
                switch format {
                case .jsonl: try writeJSONLine(rec, h, layers, out)
                case .tsv: try writeTSV(rec, h, layers, out)
                }
            }
            if format == .tsv { try out.line("uid\tposition\tlayer\texperts\tweights") }
            if !uid.isEmpty && r.isComplete {
                for u in uid {
                    guard let rec = try r.record(uid: u) else { throw TraceError(.invalidInput, "no record with uid \(u)", file: file) }
                    try emit(rec)
                }
            } else {
                let want = Set(uid)
                try r.forEachRecord { rec in if want.isEmpty || want.contains(rec.uid) { try emit(rec) } }
            }
            try out.flush()
            for n in r.notices { note("rtrace: notice: \(n)") }
        }
    }

    /// One JSON object per record, keys in sorted order, formatted into bytes (``ByteText``): a
    /// JSONSerialization tree of a 500-row record is ~100 k objects.
    func writeJSONLine(_ rec: TraceRecord, _ h: TraceHeader, _ layers: [Int], _ out: TextOutput) throws {
        let k = rec.topK, L = rec.layers, E = h.model.numExperts
        let single = layer != nil
        let comma = UInt8(ascii: ",")
        var t = ByteText(capacity: 64 + rec.rowCount * layers.count * k * 4)
        /// `[rows][layers][n]` (or `[rows][n]` with --layer) of `value(offset)` at `(r * L + l) * n + j`.
        func perRow(_ n: Int, _ value: (inout ByteText, Int) -> Void) {
            t.appendJSONArray(rec.rowCount) { t, r in
                if single {
                    t.appendJSONArray(n) { t, j in value(&t, (r * L + layers[0]) * n + j) }
                } else {
                    t.appendJSONArray(layers.count) { t, li in
                        t.appendJSONArray(n) { t, j in value(&t, (r * L + layers[li]) * n + j) }
                    }
                }
            }
        }
        t.append(byte: UInt8(ascii: "{"))
        t.append(key: "attrs")
        if let a = rec.attributes, let v = try? JSONSerialization.jsonObject(with: Data(a.utf8)) { t.append(jsonText(v)) } else { t.append("null") }
        t.append(byte: comma); t.append(key: "group")
        if let g = rec.group { t.append(jsonString: g) } else { t.append("null") }
        if single { t.append(byte: comma); t.append(key: "layer"); t.append(decimal: h.model.layerMap[layers[0]]) }
        t.append(byte: comma); t.append(key: "logprobs")
        t.appendJSONArray(rec.logprobs.count) { t, i in t.append(jsonNumber: Double(rec.logprobs[i])) }
        t.append(byte: comma); t.append(key: "prompt_len"); t.append(decimal: rec.promptLength)
        t.append(byte: comma); t.append(key: "reward")
        if let w = rec.reward { t.append(jsonNumber: w) } else { t.append("null") }
        if logits, let g = rec.logits {
            t.append(byte: comma); t.append(key: "router_logits")
            perRow(E) { t, i in t.append(jsonNumber: Double(g[i])) }
        }
        t.append(byte: comma); t.append(key: "start"); t.append(decimal: rec.start)
        t.append(byte: comma); t.append(key: "tokens")
        t.appendJSONArray(rec.tokens.count) { t, i in t.append(decimal: Int(rec.tokens[i])) }
        t.append(byte: comma); t.append(key: "topk_ids")
        perRow(k) { t, i in let e = rec.expertIDs[i]; t.append(decimal: e == TraceRecord.missing ? -1 : Int(e)) }
        if let w = rec.weights {
            t.append(byte: comma); t.append(key: "topk_weights")
            perRow(k) { t, i in t.append(jsonNumber: Double(w[i])) }
        }
        t.append(byte: comma); t.append(key: "uid"); t.append(jsonString: rec.uid)
        t.append("}\n")
        try out.write(bytes: t.bytes)
    }

    /// One line per (row, layer), formatted into bytes (``ByteText``).
    func writeTSV(_ rec: TraceRecord, _ h: TraceHeader, _ layers: [Int], _ out: TextOutput) throws {
        let k = rec.topK, L = rec.layers
        let tab = UInt8(ascii: "\t"), comma = UInt8(ascii: ",")
        var t = ByteText()
        for r in 0..<rec.rowCount {
            for l in layers {
                let b = (r * L + l) * k
                t.append(rec.uid); t.append(byte: tab)
                t.append(decimal: rec.start + r); t.append(byte: tab)
                t.append(decimal: h.model.layerMap[l]); t.append(byte: tab)
                for j in 0..<k {
                    if j > 0 { t.append(byte: comma) }
                    let e = rec.expertIDs[b + j]
                    t.append(decimal: e == TraceRecord.missing ? -1 : Int(e))
                }
                t.append(byte: tab)
                if let w = rec.weights {
                    for j in 0..<k {
                        if j > 0 { t.append(byte: comma) }
                        t.append(w[b + j].description)
                    }
                }
                t.append(byte: UInt8(ascii: "\n"))
                if t.bytes.count >= 1 << 16 { try out.write(bytes: t.bytes); t.bytes.removeAll(keepingCapacity: true) }
            }
        }
        try out.write(bytes: t.bytes)
    }
}
