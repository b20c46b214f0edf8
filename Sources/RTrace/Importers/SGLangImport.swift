extension EngineImport {
    /// SGLang responses, one JSON value per line (`rtrace import --from sglang`); SGLang 0.5.x.
    ///
    /// A line is a `/generate` response object, a JSON array of them (n > 1 or a batch request),
    /// or an OpenAI-compatible response (`/v1/completions`, `/v1/chat/completions`).
    ///
    /// `/generate`: `meta_info.routed_experts` is base64 of a flat little-endian int32 array
    /// `[seq_len - 1 - start, layers, top_k]` (`meta_info.routed_experts_dtype`, where a build sends
    /// one, names another integer type); `layers` is all decoder layers (dense ones 0) or the MoE
    /// layers. Tokens are `prompt_token_ids` (sent with `return_prompt_token_ids`) or
    /// `input_ids`, then `output_ids`; or `tokens`. SGLang does not echo the request's
    /// `routed_experts_start_len`, so the start is `seq_len - 1 - rows`, with seq_len the token
    /// count (or `meta_info.prompt_tokens + completion_tokens`); an echoed
    /// `meta_info.routed_experts_start_len` is checked against it. Without any token count the
    /// start is 0. Logprobs: `meta_info.output_token_logprobs`. Uid: `uid`, else `meta_info.id`,
    /// else the prefix and the record's ordinal. `group` and `reward` at the top level are kept.
    ///
    /// OpenAI-compatible: the routing is `choices[i].meta_info.routed_experts` (chat with
    /// `return_meta_info`; uid `<id>/<index>`) or the response-level `sglext.routed_experts`, which
    /// holds the first choice's only (uid `<id>`; the other choices carry none and are skipped,
    /// with a notice). Tokens: `choices[i].prompt_token_ids` (or the response's, or
    /// `sglext.input_ids`), then `choices[i].token_ids`, `response_token_ids` or
    /// `sglext.output_ids[i]`; without them the counts of `meta_info` or `usage` give seq_len.
    public static func sglang(
        _ input: JSONLines, settings s: EngineImportSettings, notice: (String) -> Void = { _ in },
        emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        try eachObject(input, expecting: "SGLang sends a /generate response object (or an array of them for n > 1 and batches) or an OpenAI-compatible response") {
            (o, what, n) throws(TraceError) in
            if o.field("choices") != nil {
                try sglangOpenAI(o, s, what, ordinal: n, notice: notice, emit: emit)
            } else {
                try emit(try sglangGenerate(o, s, what, ordinal: n))
            }
        }
    }

    /// All records of an SGLang input (small inputs and tests).
    public static func sglang(_ input: JSONLines, settings s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        try collect { (emit) throws(TraceError) in try sglang(input, settings: s, emit: emit) }
    }

    /// One `/generate` response object.
    static func sglangGenerate(_ o: JSONValue, _ s: EngineImportSettings, _ what: String, ordinal: Int) throws(TraceError) -> TraceRecord {
        let meta = try o.object("meta_info", what) ?? o
        guard let routed = meta.field("routed_experts") else {
            if o.field("outputs") != nil || o.field("prompt_routed_experts") != nil {
                throw TraceError(.invalidInput, "\(what) has \"outputs\", the layout of a vLLM request output; SGLang 0.5.x /generate responses carry meta_info.routed_experts (use --from vllm for vLLM)")
            }
            throw TraceError(.invalidInput, "\(what): meta_info has no \"routed_experts\" (it has \(meta.keyList)); SGLang 0.5.x /generate responses carry it as base64 int32 [seq_len - 1, layers, top_k] in meta_info.routed_experts, and OpenAI-compatible responses in sglext.routed_experts")
        }
        var prompt = try o.tokens("prompt_token_ids", what)
        if prompt == nil { prompt = try o.tokens("input_ids", what) }
        let output = try o.tokens("output_ids", what)
        var tokens: [Int32] = []
        if let prompt, let output { tokens = prompt + output } else if let t = try o.tokens("tokens", what) { tokens = t }
        var promptLength = try o.int("prompt_len", what) ?? prompt?.count
        if promptLength == nil { promptLength = try meta.int("prompt_tokens", what) }
        var seqLen: Int? = tokens.isEmpty ? nil : tokens.count
        if seqLen == nil, let p = try meta.int("prompt_tokens", what), let c = try meta.int("completion_tokens", what) { seqLen = p + c }
        var logprobs: [Float] = []
        if let x = meta.field("output_token_logprobs") { logprobs = try Logprobs.sglang(x, "\(what): meta_info.output_token_logprobs") }
        var uid = try o.text("uid", what)
        if uid == nil { uid = try meta.text("id", what) }
        return try sglangRecord(
            routed, dtype: try meta.text("routed_experts_dtype", what), echoedStart: try meta.int("routed_experts_start_len", what),
            seqLen: seqLen, s, "\(what): meta_info.routed_experts",
            uid: uid ?? "\(s.uidPrefix)\(ordinal)", group: try o.text("group", what), tokens: tokens, promptLength: promptLength ?? 0,
            logprobs: logprobs, reward: try o.double("reward", what))
    }

    /// An OpenAI-compatible response: one record per choice that carries routing.
    static func sglangOpenAI(
        _ o: JSONValue, _ s: EngineImportSettings, _ what: String, ordinal: Int, notice: (String) -> Void,
        emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        guard let choices = try o.array("choices", what) else { return }
        let ext = try o.object("sglext", what)
        let id = try o.text("id", what) ?? "\(s.uidPrefix)\(ordinal)"
        let outputIDs = try ext?.array("output_ids", "\(what): sglext")
        let responsePrompt = try o.tokens("prompt_token_ids", what)
        let usage = try o.object("usage", what)
        var made = 0, skipped: [Int] = []
        for (i, c) in choices.elements.enumerated() {
            let cw = "\(what): choices[\(i)]"
            let index = try c.int("index", cw) ?? i
            let routed: JSONValue, where_: String, uid: String
            let meta = try c.object("meta_info", cw)
            if let r = meta?.field("routed_experts") {
                (routed, where_, uid) = (r, "\(cw).meta_info.routed_experts", "\(id)/\(index)")
            } else if i == 0, let r = ext?.field("routed_experts") {
                // The first choice's routing, at the response level: the record is the response's.
                (routed, where_, uid) = (r, "\(what): sglext.routed_experts", id)
            } else {
                skipped.append(index)
                continue
            }
            var prompt = try c.tokens("prompt_token_ids", cw)
            if prompt == nil { prompt = responsePrompt }
            if prompt == nil { prompt = try ext?.tokens("input_ids", "\(what): sglext") }
            var output = try c.tokens("token_ids", cw)
            if output == nil { output = try c.tokens("response_token_ids", cw) }
            if output == nil, let outputIDs, i < outputIDs.count {
                output = try outputIDs.elements[i].tokenList("\(what): sglext.output_ids[\(i)]")
            }
            var tokens: [Int32] = []
            if let prompt, let output { tokens = prompt + output }
            var seqLen: Int? = tokens.isEmpty ? nil : tokens.count
            var promptLength = prompt?.count
            // Without tokens, the counts: the choice's meta_info, or the usage of a one-choice response.
            let counts = meta ?? (choices.count == 1 ? usage : nil)
            if let m = counts {
                if seqLen == nil, let p = try m.int("prompt_tokens", cw), let q = try m.int("completion_tokens", cw) { seqLen = p + q }
                if promptLength == nil { promptLength = try m.int("prompt_tokens", cw) }
            }
            let logprobs = try Logprobs.openAI(c.field("logprobs"), "\(cw).logprobs") ?? []
            try emit(try sglangRecord(
                routed, dtype: nil, echoedStart: nil, seqLen: seqLen, s, where_,
                uid: uid, group: nil, tokens: tokens, promptLength: promptLength ?? 0,
                logprobs: logprobs, reward: nil))
            made += 1
        }
        if made == 0 {
            throw TraceError(.invalidInput, "\(what): an OpenAI-compatible response with no routing (it has \(o.keyList)\(ext.map { "; sglext has \($0.keyList)" } ?? "")); SGLang 0.5.x sends it in sglext.routed_experts (the first choice's), or in choices[i].meta_info.routed_experts with return_meta_info")
        }
        if !skipped.isEmpty {
            notice("\(what): choices \(skipped.map(String.init).joined(separator: ", ")) of response \(id) carry no routing (SGLang's sglext.routed_experts holds the first choice's only); skipped")
        }
    }

    /// A record from SGLang's flat routing array: rows and layers from the payload size and the
    /// token count, the start from `seq_len - 1 - rows`.
    static func sglangRecord(
        _ routed: JSONValue, dtype: String?, echoedStart: Int?, seqLen: Int?, _ s: EngineImportSettings, _ what: String,
        uid: String, group: String?, tokens: [Int32], promptLength: Int, logprobs: [Float], reward: Double?
    ) throws(TraceError) -> TraceRecord {
        var raw = EngineIntArray.Element.int32
        if let dtype {
            guard let e = EngineIntArray.Element(name: dtype) else { throw TraceError(.invalidInput, "\(what): routed_experts_dtype \"\(dtype)\" is not an integer type") }
            raw = e
        }
        var flat = try EngineArrays.decode(routed, raw: raw, what: what)
        let k = s.model.topK, L = s.model.moeLayers, NL = s.model.numLayers
        let count = flat.count
        // SGLang sends every decoder layer: try that reading first, then the MoE layers only.
        var fits: [(layers: Int, rows: Int, start: Int)] = []
        for c in (NL == L ? [L] : [NL, L]) where count % (c * k) == 0 {
            let rows = count / (c * k)
            if let seqLen {
                let start = seqLen - 1 - rows
                if start >= 0 && (echoedStart == nil || echoedStart == start) { fits.append((c, rows, start)) }
            } else {
                fits.append((c, rows, echoedStart ?? 0))
            }
        }
        if flat.shape.count == 3 {
            // An .npy payload (not what SGLang sends, but unambiguous).
            fits = fits.filter { $0.layers == flat.shape[1] && $0.rows == flat.shape[0] }
        }
        guard let fit = fits.first else {
            let per = NL == L ? "\(L) layers × top-\(k) = \(L * k)" : "\(NL) layers × top-\(k) = \(NL * k) (or \(L * k) for the MoE layers only)"
            if let seqLen {
                let startText = echoedStart.map { "start \($0)" } ?? "start ≥ 0"
                throw TraceError(.invalidInput, "\(what) holds \(count) \(raw.rawValue) values; for \(seqLen) tokens SGLang 0.5.x sends (\(seqLen) - 1 - start) rows × \(per) values (\(startText)), i.e. at most \((seqLen - 1) * (NL * k)) values, in whole rows")
            }
            throw TraceError(.invalidInput, "\(what) holds \(count) \(raw.rawValue) values, not whole rows of \(per) values")
        }
        flat.shape = [fit.rows, fit.layers, k]
        let (ids, rows) = try EngineArrays.routingIDs(flat, model: s.model, validate: s.validate, what: what)
        let r = TraceRecord(uid: uid, group: group, tokens: tokens, promptLength: promptLength, start: fit.start,
                            rowCount: rows, layers: L, topK: k, expertIDs: ids, logprobs: logprobs, reward: reward)
        return try checked(r, s, "\(what) (uid \(uid))")
    }
}
