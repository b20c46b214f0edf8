extension EngineImport {
    /// Parses NeMo RL's wire string `nrlre1:<int8|int16|int32>:<S>x<L>x<K>:<base64>` into `[S, L, K]`.
    public static func parseNemoRL(_ wire: String, what: String) throws(TraceError) -> EngineIntArray {
        var w = wire
        return try w.withUTF8 { p in Result { () throws(TraceError) in try parseNemoRL(UnsafeRawBufferPointer(p), what: what) } }.get()
    }

    static func parseNemoRL(_ wire: UnsafeRawBufferPointer, what: String) throws(TraceError) -> EngineIntArray {
        // The three colons before the payload; the payload itself has none.
        var colons: [Int] = []
        for (i, c) in wire.enumerated() where c == 0x3A {
            colons.append(i)
            if colons.count == 3 { break }
        }
        func text(_ r: Range<Int>) -> String { String(decoding: UnsafeRawBufferPointer(rebasing: wire[r]), as: UTF8.self) }
        guard colons.count == 3, text(0..<colons[0]) == "nrlre1" else {
            throw TraceError(.invalidInput, "\(what): not an \"nrlre1:<dtype>:<S>x<L>x<K>:<base64>\" string (starts \"\(text(0..<min(24, wire.count)))\")")
        }
        let dtype = text(colons[0] + 1..<colons[1])
        guard ["int8", "int16", "int32"].contains(dtype), let e = EngineIntArray.Element(name: dtype) else {
            throw TraceError(.invalidInput, "\(what): dtype \(dtype), expected int8, int16 or int32")
        }
        let shapeText = text(colons[1] + 1..<colons[2])
        let dims = shapeText.split(separator: "x", omittingEmptySubsequences: false).map { Int($0) }
        guard dims.count == 3, let S = dims[0], let L = dims[1], let K = dims[2], S >= 0, L > 0, K > 0 else {
            throw TraceError(.invalidInput, "\(what): shape \"\(shapeText)\", expected <S>x<L>x<K>")
        }
        let bytes = try EngineArrays.base64(UnsafeRawBufferPointer(rebasing: wire[(colons[2] + 1)...]), what: what)
        let (need, overflow) = S.multipliedReportingOverflow(by: L * K * e.size)
        guard !overflow, bytes.count == need else {
            throw TraceError(.invalidInput, "\(what): payload holds \(bytes.count / e.size) \(dtype) values, \(S)x\(L)x\(K) needs \(S * L * K)")
        }
        return EngineIntArray(element: e, bytes: bytes, shape: [S, L, K])
    }

    /// NeMo RL routing, one per line (`rtrace import --from nemo`): a bare wire string (quoted or
    /// not), or an object with `routed_experts` (the wire string) and optional `uid`, `tokens`,
    /// `prompt_len`, `start`, `group`, `logprobs`, `reward`.
    ///
    /// NeMo RL's `pad_and_align_routed_expert_indices` (checked against NeMo RL 7ea279a, 2026-08)
    /// gives S = T rows for T = prompt + generated tokens: rows 0 … T-2 are vLLM's (`-1` where vLLM
    /// gave none: kept as missing) and row T-1 is a filler `arange(K)` in every layer, which is
    /// dropped: the record has S - 1 rows from `start`. A last row that is not the filler is kept
    /// (NeMo RL's gym environment replaces the filler with the next turn's prefill route, real
    /// routing). `tokens`, when given, must number `start + S`. Dtype: int8 up to 128 experts,
    /// int16 up to 32768, else int32; the layer axis is vLLM's (all decoder layers).
    public static func nemoRL(
        _ input: JSONLines, settings s: EngineImportSettings, emit: (TraceRecord) throws(TraceError) -> Void
    ) throws(TraceError) {
        var n = 0
        try eachLine(input, bareWireStrings: true) { (value, line) throws(TraceError) in
            let what = "line \(line)"
            let a: EngineIntArray
            var f: JSONValue? = nil
            switch value {
            case .wire(let w):
                a = try parseNemoRL(w, what: "\(what): routed_experts")
            case .json(let v):
                let wire: JSONValue
                if v.kind == .string {
                    wire = v
                } else if v.kind == .object, let w = v.field("routed_experts"), w.kind == .string {
                    f = v
                    wire = w
                } else {
                    throw TraceError(.invalidInput, "\(what) is \(v.summary)\(v.kind == .object ? " with \(v.keyList)" : ""); NeMo RL sends an nrlre1:<dtype>:<S>x<L>x<K>:<base64> string (bare, or an object's \"routed_experts\")")
                }
                if let raw = wire.rawStringBytes, !wire.node.flag {
                    a = try parseNemoRL(raw, what: "\(what): routed_experts")
                } else {
                    a = try parseNemoRL(wire.string ?? "", what: "\(what): routed_experts")
                }
            }
            let S = a.shape[0]
            let start = try f?.int("start", what) ?? 0
            let tokens = try f?.tokens("tokens", what) ?? []
            if !tokens.isEmpty && tokens.count != start + S {
                throw TraceError(.invalidInput, "\(what): routed_experts has \(S) rows for \(tokens.count) tokens from position \(start); NeMo RL sends one row per token (prompt + generated), the last a filler arange(K)")
            }
            let (ids, rows) = try EngineArrays.routingIDs(a, model: s.model, validate: s.validate, what: "\(what): routed_experts",
                                                         rows: 0..<(S > 0 && isFiller(a, row: S - 1) ? S - 1 : S))
            let uid = try f?.text("uid", what) ?? "\(s.uidPrefix)\(n)"
            n += 1
            let r = TraceRecord(uid: uid, group: try f?.text("group", what), tokens: tokens,
                                promptLength: try f?.int("prompt_len", what) ?? 0, start: start, rowCount: rows,
                                layers: s.model.moeLayers, topK: s.model.topK, expertIDs: ids,
                                logprobs: try f?.floats("logprobs", what) ?? [], reward: try f?.double("reward", what))
            try emit(try checked(r, s, "\(what) (uid \(uid))"))
        }
    }

    /// Whether `row` of `[S, L, K]` is NeMo RL's filler: `arange(K)` in every layer.
    static func isFiller(_ a: EngineIntArray, row: Int) -> Bool {
        let L = a.shape[1], K = a.shape[2]
        return (0..<(L * K)).allSatisfy { a.value(at: row * L * K + $0) == Int64($0 % K) }
    }

    /// NeMo RL's in-process generation batch in an `.npz` (`VllmGenerationWorker.generate`):
    /// `routed_experts` `[B, padded_len, L, K]`, `output_ids` `[B, padded_len]` right-padded,
    /// `unpadded_sequence_lengths` T and `input_lengths` (prompt lengths) `[B]`. Sequence b gets
    /// tokens `output_ids[b, :T]` and rows 0 … T-2; rows T-1 … are the filler `arange(K)` (checked),
    /// never imported. Uids are the prefix and b.
    public static func nemoRLBatch(_ arrays: [String: NpyArray], settings s: EngineImportSettings, file: String) throws(TraceError) -> [TraceRecord] {
        do { return try nemoRLBatchRecords(arrays, s) } catch { throw error.inFile(file) }
    }

    static func nemoRLBatchRecords(_ arrays: [String: NpyArray], _ s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        func need(_ n: String) throws(TraceError) -> NpyArray {
            guard let a = arrays[n], a.isInteger else {
                throw TraceError(.invalidInput, "NeMo RL batch: \"\(n)\" is \(arrays[n].map { "\($0.dtype)" } ?? "absent") (the archive has \(arrays.keys.sorted().joined(separator: ", "))); NeMo RL's generate() batch has integer routed_experts [B, padded_len, L, K], output_ids [B, padded_len], unpadded_sequence_lengths and input_lengths [B]")
            }
            return a
        }
        let re = try need("routed_experts"), ids = try need("output_ids")
        let lens = try need("unpadded_sequence_lengths"), plens = try need("input_lengths")
        guard re.shape.count == 4 else { throw TraceError(.invalidInput, "NeMo RL batch: routed_experts has shape \(re.shape), expected [batch, padded_len, layers, k]") }
        let (B, S, L, K) = (re.shape[0], re.shape[1], re.shape[2], re.shape[3])
        guard ids.shape == [B, S], lens.count == B, plens.count == B else {
            throw TraceError(.invalidInput, "NeMo RL batch: output_ids \(ids.shape), unpadded_sequence_lengths \(lens.shape) and input_lengths \(plens.shape) must be [\(B), \(S)], [\(B)] and [\(B)] like routed_experts")
        }
        guard let element = EngineIntArray.Element(name: re.dtype) else { throw TraceError(.invalidInput, "NeMo RL batch: routed_experts is \(re.dtype)") }
        var out: [TraceRecord] = []
        for b in 0..<B {
            let T = Int(lens.int(b)), P = Int(plens.int(b))
            guard (1...S).contains(T), (0...T).contains(P) else {
                throw TraceError(.invalidInput, "NeMo RL batch row \(b): length \(T) / prompt \(P) outside 1…\(S)")
            }
            let per = L * K * re.itemSize
            let seq = EngineIntArray(element: element, bytes: Array(re.data[(b * S * per)..<((b + 1) * S * per)]), shape: [S, L, K])
            if let p = ((T - 1)..<S).first(where: { !isFiller(seq, row: $0) }) {
                throw TraceError(.invalidInput, "NeMo RL batch row \(b): row \(p) (at or after the last token, \(T - 1)) is not the filler arange(K); NeMo RL pads with it")
            }
            let what = "NeMo RL batch row \(b): routed_experts"
            let (rid, rows) = try EngineArrays.routingIDs(seq, model: s.model, validate: s.validate, what: what, rows: 0..<(T - 1))
            var toks: [Int32] = []
            for p in 0..<T {
                guard let t = Int32(exactly: ids.int(b * S + p)) else { throw TraceError(.invalidInput, "NeMo RL batch: output_ids[\(b), \(p)] is not an int32 token") }
                toks.append(t)
            }
            let r = TraceRecord(uid: "\(s.uidPrefix)\(b)", tokens: toks, promptLength: P, start: 0, rowCount: rows,
                                layers: s.model.moeLayers, topK: s.model.topK, expertIDs: rid)
            out.append(try checked(r, s, "NeMo RL batch row \(b)"))
        }
        return out
    }

    /// All records of a NeMo RL input (small inputs and tests).
    public static func nemoRL(_ input: JSONLines, settings s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        try collect { (emit) throws(TraceError) in try nemoRL(input, settings: s, emit: emit) }
    }
}
