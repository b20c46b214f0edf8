import Foundation

extension EngineImport {
    /// SGLang `/generate` responses, one JSON object per line (`rtrace import --from sglang`).
    ///
    /// Per line: `meta_info.routed_experts` (base64 of a flat `[seq_len - 1 - start, layers, top_k]`
    /// array of `meta_info.routed_experts_dtype`, default int32; `layers` is the MoE layers or all
    /// decoder layers), `meta_info.routed_experts_start_len` (start, default 0), `meta_info.id`.
    /// Tokens come from `input_ids` + `output_ids`, or `tokens`; the prompt length from
    /// `prompt_len`, `input_ids` or `meta_info.prompt_tokens`; logprobs from
    /// `meta_info.output_token_logprobs` (`[logprob, token_id, …]` per generated token). Keys
    /// `uid`, `group` and `reward` at the top level, which training frameworks add, are kept.
    public static func sglang(_ input: JSONLines, settings s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        var n = 0
        return try eachLine(input) { v, line throws(TraceError) in
            guard let o = v as? [String: Any] else { throw TraceError(.invalidInput, "expected a JSON object (an SGLang response)") }
            let top = JSONFields(object: o, what: "line \(line)")
            let meta = try top.object("meta_info") ?? top
            guard meta.has("routed_experts") else {
                throw TraceError(.invalidInput, "line \(line): meta_info has no \"routed_experts\" (launch SGLang with --enable-return-routed-experts and send return_routed_experts: true)")
            }
            let dtype = try meta.string("routed_experts_dtype")
            var flat = try EngineArrays.decode(meta.object["routed_experts"]!, rawDType: dtype ?? "int32", what: "line \(line): routed_experts")
            let start = try meta.int("routed_experts_start_len") ?? 0
            var tokens: [Int32] = []
            var promptLength = try top.int("prompt_len")
            if let i = try top.ints("input_ids"), let g = try top.ints("output_ids") {
                tokens = i + g
                promptLength = promptLength ?? i.count
            } else if let t = try top.ints("tokens") {
                tokens = t
            }
            if promptLength == nil { promptLength = try meta.int("prompt_tokens") }
            var nTokens: Int? = tokens.isEmpty ? nil : tokens.count
            if nTokens == nil, let p = try meta.int("prompt_tokens"), let c = try meta.int("completion_tokens") { nTokens = p + c }
            let k = s.model.topK, L = s.model.moeLayers, NL = s.model.numLayers
            let count = flat.values.count
            var rows: Int, layers: Int
            if let nTokens {
                rows = nTokens - 1 - start
                guard rows >= 0 else { throw TraceError(.invalidInput, "line \(line): routed_experts_start_len \(start) is past the \(nTokens) tokens") }
                let candidates = [L, NL].filter { rows * $0 * k == count }
                guard let c = candidates.first else {
                    throw TraceError(.invalidInput, "line \(line): routed_experts holds \(count) values; seq_len - 1 - start = \(rows) rows need \(rows * L * k) (\(L) MoE layers × top-\(k)) or \(rows * NL * k) (all \(NL) layers)")
                }
                layers = c
            } else {
                guard let c = [L, NL].first(where: { count % ($0 * k) == 0 }) else {
                    throw TraceError(.invalidInput, "line \(line): routed_experts holds \(count) values, not a multiple of layers × top_k = \(L * k) (or \(NL * k))")
                }
                layers = c
                rows = count / (c * k)
            }
            flat.shape = [rows, layers, k]
            let (ids, _) = try EngineArrays.routingIDs(flat, model: s.model, validate: s.validate, what: "line \(line): routed_experts")
            var logprobs: [Float] = []
            if let lp = meta.object["output_token_logprobs"] as? [Any] {
                for (i, e) in lp.enumerated() {
                    let x = (e as? [Any])?.first ?? e
                    guard let f = x as? NSNumber else { throw TraceError(.invalidInput, "line \(line): output_token_logprobs[\(i)] has no logprob") }
                    logprobs.append(f.floatValue)
                }
            }
            let uidGiven = try top.string("uid"), id = try meta.string("id")
            let uid = uidGiven ?? id ?? "\(s.uidPrefix)\(n)"
            n += 1
            let r = TraceRecord(uid: uid, group: try top.string("group"), tokens: tokens, promptLength: promptLength ?? 0,
                                start: start, rowCount: rows, layers: L, topK: k, expertIDs: ids, logprobs: logprobs,
                                reward: try top.double("reward"))
            return [try checked(r, s, "line \(line) (uid \(uid))", file: input.file, offset: nil)]
        }
    }
}
