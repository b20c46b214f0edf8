import Foundation

extension EngineImport {
    /// vLLM request outputs, one JSON object per line (`rtrace import --from vllm`).
    ///
    /// Per line: `request_id`, `prompt_token_ids`, `prompt_routed_experts` `[prompt_len, layers, k]`
    /// and `outputs`, each with `token_ids` and `routed_experts` `[gen_len, layers, k]` (nested
    /// int16 lists, or base64 `.npy` buffers as vLLM ≥ 0.22 sends them; `-1` = prefix-cached,
    /// kept as missing). Each completion becomes a record `<request_id>/<index>` in group
    /// `<request_id>`, its rows the prompt's then its own from position 0; optional per-token
    /// `logprobs` (`[{token_id: {logprob}}]` or numbers) and top-level `reward`/`rewards`.
    public static func vllm(_ input: JSONLines, settings s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        var n = 0
        return try eachLine(input) { v, line throws(TraceError) in
            guard let o = v as? [String: Any] else { throw TraceError(.invalidInput, "expected a JSON object (a vLLM RequestOutput)") }
            let top = JSONFields(object: o, what: "line \(line)")
            let rid = try top.string("request_id") ?? "\(s.uidPrefix)\(n)"
            n += 1
            let prompt = try top.ints("prompt_token_ids") ?? []
            guard top.has("prompt_routed_experts") else { throw TraceError(.invalidInput, "line \(line): no \"prompt_routed_experts\" (start vLLM with --enable-return-routed-experts)") }
            let pre = try EngineArrays.decode(o["prompt_routed_experts"]!, rawDType: "int16", what: "line \(line): prompt_routed_experts")
            let (preIDs, preRows) = try EngineArrays.routingIDs(pre, model: s.model, validate: s.validate, what: "line \(line): prompt_routed_experts")
            if !prompt.isEmpty && preRows != prompt.count {
                throw TraceError(.invalidInput, "line \(line): prompt_routed_experts has \(preRows) rows for \(prompt.count) prompt tokens")
            }
            guard let outs = o["outputs"] as? [Any], !outs.isEmpty else { throw TraceError(.invalidInput, "line \(line): no \"outputs\" (completions)") }
            var rewards: [Double]? = nil
            if let rw = o["rewards"] as? [Any] { rewards = rw.compactMap { ($0 as? NSNumber)?.doubleValue } }
            var records: [TraceRecord] = []
            for (i, x) in outs.enumerated() {
                let what = "line \(line): outputs[\(i)]"
                guard let oo = x as? [String: Any] else { throw TraceError(.invalidInput, "\(what) is not an object") }
                let c = JSONFields(object: oo, what: what)
                guard c.has("routed_experts") else {
                    throw TraceError(.invalidInput, "\(what) has no \"routed_experts\" (vLLM drops the routing of preempted requests)")
                }
                let gen = try EngineArrays.decode(oo["routed_experts"]!, rawDType: "int16", what: "\(what).routed_experts")
                let (genIDs, genRows) = try EngineArrays.routingIDs(gen, model: s.model, validate: s.validate, what: "\(what).routed_experts")
                let toks = try c.ints("token_ids") ?? []
                if !toks.isEmpty && genRows != toks.count && genRows != toks.count - 1 {
                    throw TraceError(.invalidInput, "\(what).routed_experts has \(genRows) rows for \(toks.count) generated tokens")
                }
                var logprobs: [Float] = []
                if let lps = oo["logprobs"] as? [Any], !toks.isEmpty, lps.count == toks.count {
                    for (p, e) in lps.enumerated() {
                        if let f = e as? NSNumber { logprobs.append(f.floatValue); continue }
                        guard let d = e as? [String: Any], let entry = d[String(toks[p])] else {
                            throw TraceError(.invalidInput, "\(what).logprobs[\(p)] has no entry for the sampled token \(toks[p])")
                        }
                        guard let lp = (entry as? NSNumber) ?? ((entry as? [String: Any])?["logprob"] as? NSNumber) else {
                            throw TraceError(.invalidInput, "\(what).logprobs[\(p)] has no logprob for token \(toks[p])")
                        }
                        logprobs.append(lp.floatValue)
                    }
                }
                let index = try c.int("index") ?? i
                let uid = "\(rid)/\(index)"
                let reward = try c.double("reward") ?? rewards.flatMap { i < $0.count ? $0[i] : nil }
                let r = TraceRecord(uid: uid, group: rid, tokens: toks.isEmpty || prompt.isEmpty ? [] : prompt + toks,
                                    promptLength: prompt.count, start: 0, rowCount: preRows + genRows,
                                    layers: s.model.moeLayers, topK: s.model.topK, expertIDs: preIDs + genIDs,
                                    logprobs: logprobs, reward: reward)
                records.append(try checked(r, s, "\(what) (uid \(uid))", file: input.file, offset: nil))
            }
            return records
        }
    }
}
