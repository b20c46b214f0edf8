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
                case .jsonl: try out.line(jsonText(jsonObject(rec, h, layers)))
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

    func jsonObject(_ rec: TraceRecord, _ h: TraceHeader, _ layers: [Int]) -> [String: Any] {
        let k = rec.topK, L = rec.layers, E = h.model.numExperts
        let single = layer != nil
        func perRow<T>(_ make: (Int, Int) -> T) -> [Any] {
            (0..<rec.rowCount).map { r -> Any in single ? make(r, layers[0]) : layers.map { make(r, $0) } }
        }
        var o: [String: Any] = [
            "uid": rec.uid, "tokens": rec.tokens.map(Int.init), "prompt_len": rec.promptLength, "start": rec.start,
            "topk_ids": perRow { r, l in (0..<k).map { j -> Int in let e = rec.expertIDs[(r * L + l) * k + j]; return e == TraceRecord.missing ? -1 : Int(e) } },
            "logprobs": rec.logprobs.map(jsonFloat),
        ]
        o["group"] = rec.group ?? NSNull()
        o["reward"] = rec.reward.map { $0 as Any } ?? NSNull()
        if let a = rec.attributes, let v = try? JSONSerialization.jsonObject(with: Data(a.utf8)) { o["attrs"] = v } else { o["attrs"] = NSNull() }
        if let w = rec.weights { o["topk_weights"] = perRow { r, l in (0..<k).map { jsonFloat(w[(r * L + l) * k + $0]) } } }
        if logits, let g = rec.logits { o["router_logits"] = perRow { r, l in (0..<E).map { jsonFloat(g[(r * L + l) * E + $0]) } } }
        if single { o["layer"] = h.model.layerMap[layers[0]] }
        return o
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
