extension EngineImport {
    /// vLLM outputs, one JSON value per line (`rtrace import --from vllm`): request outputs (an
    /// object, or an array of them) or OpenAI-compatible responses.
    ///
    /// vLLM ≥ 0.22 (checked up to 0.33), a `RequestOutput` dumped as JSON: `request_id`,
    /// `prompt_token_ids`, and `outputs`, each with `token_ids` and `routed_experts`, one array
    /// `[T - 1 - start, layers, top_k]` per completion covering prompt and output rows (T = prompt
    /// + generated tokens; uint8 up to 256 experts, else uint16; `layers` = all decoder layers,
    /// dense ones 0) as nested lists or a base64 `.npy`. The start (the request's
    /// `routed_experts_prompt_start`, which vLLM does not echo) is `T - 1 - rows`; without the
    /// tokens it must be given as a `routed_experts_prompt_start` field of the line.
    ///
    /// vLLM 0.21: `prompt_routed_experts` `[prompt_len, layers, k]` (in the request output, or at
    /// the response level of its OpenAI-compatible server) shared by the completions, each
    /// `routed_experts` `[gen_len - 1, layers, k]`, int16 nested lists, rows from position 0. Rows
    /// of positions 0.21 never ran (prefix-cache hits) hold 0: the first `num_cached_tokens` rows
    /// (OpenAI: `usage.prompt_tokens_details.cached_tokens`) and any row that is 0 in every slot of
    /// every layer (never routing for top_k ≥ 2) become missing; `-1` rows stay missing.
    ///
    /// OpenAI-compatible server (≥ 0.22; `/v1/completions`, `/v1/chat/completions`, the
    /// token-in-token-out `generate`): `choices[i].routed_experts` = base64 `.npy` as above, tokens
    /// from `choices[i].prompt_token_ids` (or the response's `prompt_token_ids`) and
    /// `choices[i].token_ids` (sent with `return_token_ids`); logprobs from
    /// `choices[i].logprobs`.
    ///
    /// Each completion becomes a record `<request_id>/<index>` in group `<request_id>` (OpenAI:
    /// the response `id`); optional per-token `logprobs` and a line's `reward`/`rewards`.
    public static func vllm(
        _ input: JSONLines, settings s: EngineImportSettings, emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        try eachObject(input, expecting: "vLLM sends a request output object (or a list of them) or an OpenAI-compatible response") {
            (o, what, n) throws(TraceError) in
            if o.field("choices") != nil {
                try vllmOpenAI(o, s, what, ordinal: n, emit: emit)
            } else {
                try vllmRequestOutput(o, s, what, ordinal: n, emit: emit)
            }
        }
    }

    /// All records of a vLLM input (small inputs and tests).
    public static func vllm(_ input: JSONLines, settings s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        try collect { (emit) throws(TraceError) in try vllm(input, settings: s, emit: emit) }
    }

    /// What each vLLM release sends, for errors.
    static let vllmLayouts = "vLLM ≥ 0.22 sends outputs[i].routed_experts [T - 1 - start, layers, top_k] uint8/uint16 (OpenAI-compatible: choices[i].routed_experts, base64 .npy) with prompt_token_ids + token_ids; vLLM 0.21 sends prompt_routed_experts [prompt_len, layers, top_k] plus outputs[i].routed_experts [gen_len - 1, layers, top_k] int16"

    /// One completion of a vLLM request, as either layout names its fields.
    struct Completion {
        var index: Int
        var routed: JSONValue?
        var tokens: [Int32]?
        var prompt: [Int32]?
        var logprobs: [Float]
        var reward: Double?
        var what: String
    }

    /// A `RequestOutput` dumped as JSON.
    static func vllmRequestOutput(
        _ o: JSONValue, _ s: EngineImportSettings, _ what: String, ordinal: Int, emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        if o.field("meta_info") != nil {
            throw TraceError(.invalidInput, "\(what) has \"meta_info\", the layout of an SGLang response (use --from sglang); \(vllmLayouts)")
        }
        let rid = try o.text("request_id", what) ?? "\(s.uidPrefix)\(ordinal)"
        guard let outs = try o.array("outputs", what), outs.count > 0 else {
            throw TraceError(.invalidInput, "\(what): no \"outputs\" (it has \(o.keyList)); \(vllmLayouts)")
        }
        let prompt = try o.tokens("prompt_token_ids", what)
        var rewards: [Double]? = nil
        if let rw = try o.array("rewards", what) { rewards = rw.elements.compactMap(\.double) }
        var comps: [Completion] = []
        for (i, c) in outs.elements.enumerated() {
            let cw = "\(what): outputs[\(i)]"
            guard c.kind == .object else { throw TraceError(.invalidInput, "\(cw) is \(c.summary), expected a completion object") }
            let toks = try c.tokens("token_ids", cw)
            var logprobs: [Float] = []
            if let x = c.field("logprobs"), let t = toks { logprobs = try Logprobs.vllm(x, tokens: t, "\(cw).logprobs") ?? [] }
            var reward = try c.double("reward", cw)
            if reward == nil, let rewards, i < rewards.count { reward = rewards[i] }
            comps.append(Completion(index: try c.int("index", cw) ?? i, routed: c.field("routed_experts"), tokens: toks,
                                    prompt: prompt, logprobs: logprobs, reward: reward, what: cw))
        }
        try vllmCompletions(rid, comps, pre: o.field("prompt_routed_experts"), cached: try o.int("num_cached_tokens", what),
                            givenStart: try o.int("routed_experts_prompt_start", what), s, what, emit: emit)
    }

    /// An OpenAI-compatible response of vLLM's server: one record per choice.
    static func vllmOpenAI(
        _ o: JSONValue, _ s: EngineImportSettings, _ what: String, ordinal: Int, emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        guard let choices = try o.array("choices", what) else { return }
        if o.field("sglext") != nil {
            throw TraceError(.invalidInput, "\(what) has \"sglext\", the layout of SGLang's OpenAI-compatible server (use --from sglang); \(vllmLayouts)")
        }
        guard choices.count > 0 else { throw TraceError(.invalidInput, "\(what): an OpenAI-compatible response without choices; \(vllmLayouts)") }
        var given = try o.text("id", what)
        if given == nil { given = try o.text("request_id", what) }
        let id = given ?? "\(s.uidPrefix)\(ordinal)"
        let responsePrompt = try o.tokens("prompt_token_ids", what)
        var comps: [Completion] = []
        for (i, c) in choices.elements.enumerated() {
            let cw = "\(what): choices[\(i)]"
            guard c.kind == .object else { throw TraceError(.invalidInput, "\(cw) is \(c.summary), expected a choice object") }
            let prompt = try c.tokens("prompt_token_ids", cw)
            comps.append(Completion(index: try c.int("index", cw) ?? i, routed: c.field("routed_experts"),
                                    tokens: try c.tokens("token_ids", cw), prompt: prompt ?? responsePrompt,
                                    logprobs: try Logprobs.openAI(c.field("logprobs"), "\(cw).logprobs") ?? [],
                                    reward: nil, what: cw))
        }
        let cached = try o.object("usage", what)?.object("prompt_tokens_details", "\(what): usage")?.int("cached_tokens", "\(what): usage.prompt_tokens_details")
        try vllmCompletions(id, comps, pre: o.field("prompt_routed_experts"), cached: cached, givenStart: nil, s, what, emit: emit)
    }

    /// The records of one request's completions: `pre` (vLLM 0.21's `prompt_routed_experts`) picks
    /// the 0.21 layout, else each completion's array is vLLM ≥ 0.22's.
    static func vllmCompletions(
        _ rid: String, _ comps: [Completion], pre preValue: JSONValue?, cached: Int?, givenStart: Int?, _ s: EngineImportSettings,
        _ what: String, emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        let k = s.model.topK
        // vLLM 0.21: the prompt's rows once, shared by the completions. Rows of positions it never
        // ran (prefix-cache hits) hold 0: missing, not expert 0.
        var pre: (ids: [UInt16], rows: Int, shape: [Int])? = nil
        if let preValue {
            var a = try EngineArrays.decode(preValue, raw: .int16, what: "\(what): prompt_routed_experts")
            guard a.shape.count == 3 else {
                throw TraceError(.invalidInput, "\(what): prompt_routed_experts has shape \(a.shape), expected [prompt_len, layers, top_k]; \(vllmLayouts)")
            }
            let per = a.shape[1] * a.shape[2]
            var values = a.values
            var never = neverRun(values, rows: a.shape[0], per: per, k: k)
            if let cached, cached > 0 {
                let n = min(cached, a.shape[0])
                if k > 1, let row = (0..<n).first(where: { !never[$0] }) {
                    throw TraceError(.invalidInput, "\(what): prompt_routed_experts row \(row) is routed though num_cached_tokens = \(cached) says vLLM 0.21 never ran it (its rows are 0); \(vllmLayouts)")
                }
                for row in 0..<n { never[row] = true }
            } else if k == 1 && a.shape[0] > 0 && values[0..<per].allSatisfy({ $0 == 0 }) {
                throw TraceError(.invalidInput, "\(what): prompt_routed_experts row 0 is expert 0 in every layer: vLLM 0.21 leaves the rows of prefix-cached positions 0, which top-1 cannot tell from expert 0; add num_cached_tokens to the line")
            }
            for row in 0..<a.shape[0] where never[row] { for i in 0..<per { values[row * per + i] = -1 } }
            a = EngineIntArray(values: values, shape: a.shape)
            let (ids, rows) = try EngineArrays.routingIDs(a, model: s.model, validate: s.validate, what: "\(what): prompt_routed_experts")
            pre = (ids, rows, a.shape)
        }
        for c in comps {
            let cw = c.what
            let uid = "\(rid)/\(c.index)"
            var gen: EngineIntArray
            if let r = c.routed {
                gen = try EngineArrays.decode(r, raw: .int16, what: "\(cw).routed_experts")
            } else if let p = pre, let t = c.tokens, t.count <= 1 {
                gen = EngineIntArray(values: [], shape: [0, p.shape[1], p.shape[2]])  // 0.21 sends none for no generated row
            } else {
                throw TraceError(.invalidInput, "\(cw) has no routed_experts (null or absent); vLLM sends none for a request preempted or aborted before its routing was captured; \(vllmLayouts)")
            }
            guard gen.shape.count == 3 else {
                throw TraceError(.invalidInput, "\(cw).routed_experts has shape \(gen.shape), expected [rows, layers, top_k]; \(vllmLayouts)")
            }
            var seq: [Int32]? = nil
            if let p = c.prompt, let t = c.tokens { seq = p + t }
            let r: TraceRecord
            if let pre {
                // vLLM 0.21: the prompt's rows, then the generated ones, from position 0.
                if let t = c.tokens, ![t.count, t.count - 1, 0].contains(gen.shape[0]) {
                    throw TraceError(.invalidInput, "\(cw).routed_experts has \(gen.shape[0]) rows for \(t.count) generated tokens; \(vllmLayouts)")
                }
                let per = gen.shape[1] * gen.shape[2]
                var values = gen.values
                for (row, never) in neverRun(values, rows: gen.shape[0], per: per, k: k).enumerated() where never {
                    for i in 0..<per { values[row * per + i] = -1 }
                }
                let (ids, n) = try EngineArrays.routingIDs(EngineIntArray(values: values, shape: gen.shape), model: s.model,
                                                          validate: s.validate, what: "\(cw).routed_experts")
                if let seq, pre.rows + n > seq.count {
                    throw TraceError(.invalidInput, "\(cw): \(pre.rows + n) rows for \(seq.count) tokens; \(vllmLayouts)")
                }
                r = TraceRecord(uid: uid, group: rid, tokens: seq ?? [], promptLength: c.prompt?.count ?? 0, start: 0, rowCount: pre.rows + n,
                                layers: s.model.moeLayers, topK: k, expertIDs: pre.ids + ids, logprobs: c.logprobs, reward: c.reward)
            } else {
                let (ids, rows) = try EngineArrays.routingIDs(gen, model: s.model, validate: s.validate, what: "\(cw).routed_experts")
                let start: Int
                if let seq {
                    let T = seq.count, P = c.prompt?.count ?? 0
                    start = T - 1 - rows
                    guard start >= 0 && (givenStart == nil || givenStart == start) else {
                        throw TraceError(.invalidInput, "\(cw).routed_experts has \(rows) rows for \(P) prompt + \(T - P) generated tokens; vLLM ≥ 0.22 sends T - 1 - start = \(T - 1) - start rows (start ≥ 0\(givenStart.map { ", start \($0) given" } ?? "")), vLLM 0.21 sends \(T - P - 1) after a separate prompt_routed_experts")
                    }
                } else if let givenStart {
                    start = givenStart
                } else {
                    throw TraceError(.invalidInput, "\(cw): no prompt_token_ids and token_ids, so the rows' start cannot be told (vLLM ≥ 0.22 sends T - 1 - routed_experts_prompt_start rows and does not echo the start): request return_token_ids, or add routed_experts_prompt_start to the line")
                }
                r = TraceRecord(uid: uid, group: rid, tokens: seq ?? [], promptLength: c.prompt?.count ?? 0, start: start, rowCount: rows,
                                layers: s.model.moeLayers, topK: k, expertIDs: ids, logprobs: c.logprobs, reward: c.reward)
            }
            try emit(try checked(r, s, "\(cw) (uid \(uid))"))
        }
    }

    /// Rows that are 0 in every slot of every layer: positions vLLM 0.21 never ran (never routing when top_k ≥ 2).
    static func neverRun(_ values: [Int64], rows: Int, per: Int, k: Int) -> [Bool] {
        (0..<rows).map { row in k > 1 && per > 0 && values[(row * per)..<((row + 1) * per)].allSatisfy { $0 == 0 } }
    }
}
