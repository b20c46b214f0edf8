extension EngineImport {
    /// verl (0.9, checked against 0.9.1) arrays from an `.npz` (`rtrace import --from verl`): the
    /// padded batch, or the per-sample `AgentLoopOutput.as_dict()` outputs of its TransferQueue path.
    ///
    /// Batch: `routed_experts` `[batch, seq, layers, k]` aligned with `input_ids` `[batch, seq]`: a
    /// left-padded prompt of `promptWidth` columns (else the width of a `prompts` array), then the
    /// right-padded response; `attention_mask` `[batch, seq]` (1 = real token) tells real rows from
    /// padding. Position p of a sequence's real tokens gives row p. verl copies the engine's rows
    /// and leaves zeros where the engine routed nothing, so the rows end at the last token but one,
    /// or, with `response_mask` `[batch, seq - promptWidth]` (1 = generated; a multi-turn agent's tool
    /// responses are 0), at the last generated token. A zero row within those is an error (top_k ≥ 2:
    /// never routing). Optional `rewards` `[batch]`. Uids are the prefix and the batch row.
    ///
    /// Per sample (keys `<i>/prompts`, `<i>/responses`, `<i>/response_mask`, `<i>/routed_experts`
    /// `[prompt + response, layers, k]` zero-filled after the engine's rows): tokens = prompt +
    /// response, rows end at the last generated token, the zero tail after is checked and never
    /// imported. Uids are the prefix and `i`.
    public static func verl(
        _ arrays: [String: NpyArray], settings s: EngineImportSettings, promptWidth: Int?, file: String
    ) throws(TraceError) -> [TraceRecord] {
        do {
            if arrays["routed_experts"] == nil && arrays.keys.contains(where: { $0.hasSuffix("/routed_experts") }) {
                return try verlAgentLoop(arrays, s)
            }
            return try verlBatch(arrays, s, promptWidth: promptWidth)
        } catch {
            throw error.inFile(file)
        }
    }

    static let verlLayout = "verl 0.9's batch has routed_experts [batch, prompt_length + response_length, layers, top_k] aligned with input_ids and attention_mask (prompt left-padded, response right-padded), and response_mask; its AgentLoopOutput.as_dict() samples have prompts, responses, response_mask and routed_experts"

    private static func integerArray(_ arrays: [String: NpyArray], _ n: String, _ what: String) throws(TraceError) -> NpyArray {
        guard let a = arrays[n] else {
            throw TraceError(.invalidInput, "\(what): the archive has no \"\(n)\" array (it has \(arrays.keys.sorted().prefix(12).joined(separator: ", "))); \(verlLayout)")
        }
        guard a.isInteger else { throw TraceError(.invalidInput, "\(what): \"\(n)\" is \(a.dtype), expected integers") }
        return a
    }

    /// Rows `rows` of sequence `b` of a `[batch, seq, layers, k]` array (or of a `[seq, layers, k]` one).
    private static func rows(_ re: NpyArray, sequence b: Int, seq S: Int, _ positions: [Int]) throws(TraceError) -> EngineIntArray {
        let (Lin, K) = (re.shape[re.shape.count - 2], re.shape[re.shape.count - 1])
        let per = Lin * K * re.itemSize
        guard let e = EngineIntArray.Element(name: re.dtype) else { throw TraceError(.invalidInput, "verl: routed_experts is \(re.dtype)") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(positions.count * per)
        for p in positions { bytes += re.data[((b * S + p) * per)..<((b * S + p + 1) * per)] }
        return EngineIntArray(element: e, bytes: bytes, shape: [positions.count, Lin, K])
    }

    /// The first row of `a` that is 0 in every slot of every layer (verl's fill, never routing when k ≥ 2).
    private static func firstZeroRow(_ a: EngineIntArray, k: Int) -> Int? {
        guard k > 1 else { return nil }
        let per = a.shape[1] * a.shape[2]
        return (0..<a.shape[0]).first { r in (0..<per).allSatisfy { a.value(at: r * per + $0) == 0 } }
    }

    static func verlBatch(_ arrays: [String: NpyArray], _ s: EngineImportSettings, promptWidth: Int?) throws(TraceError) -> [TraceRecord] {
        let re = try integerArray(arrays, "routed_experts", "verl"), mask = try integerArray(arrays, "attention_mask", "verl")
        let ids = try integerArray(arrays, "input_ids", "verl")
        guard re.shape.count == 4 else { throw TraceError(.invalidInput, "verl: routed_experts has shape \(re.shape), expected [batch, seq, layers, k]") }
        let (B, S) = (re.shape[0], re.shape[1])
        guard mask.shape == [B, S], ids.shape == [B, S] else {
            throw TraceError(.invalidInput, "verl: attention_mask \(mask.shape) and input_ids \(ids.shape) must be [batch, seq] = [\(B), \(S)] like routed_experts")
        }
        guard let P = promptWidth ?? arrays["prompts"].map({ $0.shape.count == 2 ? $0.shape[1] : -1 }), (0...S).contains(P) else {
            throw TraceError(.invalidInput, "verl: the prompt width is unknown or outside 0…\(S): pass --prompt-width or include a \"prompts\" [batch, prompt_width] array")
        }
        let responseMask = arrays["response_mask"]
        if let rm = responseMask, rm.shape != [B, S - P] {
            throw TraceError(.invalidInput, "verl: response_mask has shape \(rm.shape), expected [batch, seq - prompt_width] = [\(B), \(S - P)]")
        }
        let rewards = arrays["rewards"]
        if let rewards, rewards.count != B { throw TraceError(.invalidInput, "verl: rewards has \(rewards.count) values for a batch of \(B)") }
        var out: [TraceRecord] = []
        for b in 0..<B {
            let real = (0..<S).filter { mask.int(b * S + $0) != 0 }
            if let f = real.first, real.last! - f + 1 != real.count {
                throw TraceError(.invalidInput, "verl: batch row \(b): real tokens are not contiguous (a hole in attention_mask)")
            }
            let plen = real.filter { $0 < P }.count
            if plen > 0 && real.first! != P - plen {
                throw TraceError(.invalidInput, "verl: batch row \(b): the prompt is not left-padded to column \(P)")
            }
            // The engine's rows end at the last token but one, or at the last generated token.
            var n = max(real.count - 1, 0)
            if let rm = responseMask {
                let generated = real.filter { $0 >= P && rm.int(b * (S - P) + $0 - P) != 0 }
                n = generated.last.map { plen + $0 - P } ?? 0
            }
            let a = try rows(re, sequence: b, seq: S, Array(real.prefix(n)))
            if let z = firstZeroRow(a, k: s.model.topK) {
                throw TraceError(.invalidInput, "verl: batch row \(b): position \(z) is all zero, verl's fill where the engine routed nothing (a multi-turn agent's tool response after its last generation): include response_mask so the rows end at the last generated token")
            }
            let (rid, nrows) = try EngineArrays.routingIDs(a, model: s.model, validate: s.validate, what: "verl batch row \(b): routed_experts")
            var toks: [Int32] = []
            for p in real {
                let v = ids.int(b * S + p)
                guard let t = Int32(exactly: v) else { throw TraceError(.invalidInput, "verl: input_ids[\(b), \(p)] = \(v) is not an int32 token") }
                toks.append(t)
            }
            let r = TraceRecord(uid: "\(s.uidPrefix)\(b)", tokens: toks, promptLength: plen, start: 0, rowCount: nrows,
                                layers: s.model.moeLayers, topK: s.model.topK, expertIDs: rid,
                                reward: rewards.map { $0.double(b) })
            out.append(try checked(r, s, "verl batch row \(b)"))
        }
        return out
    }

    static func verlAgentLoop(_ arrays: [String: NpyArray], _ s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        let samples = Set(arrays.keys.compactMap { k -> Int? in
            guard k.hasSuffix("/routed_experts") else { return nil }
            return Int(k.dropLast("/routed_experts".count))
        }).sorted()
        var out: [TraceRecord] = []
        for i in samples {
            let what = "verl agent loop sample \(i)"
            let p = try integerArray(arrays, "\(i)/prompts", what), r = try integerArray(arrays, "\(i)/responses", what)
            let rm = try integerArray(arrays, "\(i)/response_mask", what), re = try integerArray(arrays, "\(i)/routed_experts", what)
            var toks: [Int32] = []
            for (a, n) in [(p, p.count), (r, r.count)] {
                for j in 0..<n {
                    guard let t = Int32(exactly: a.int(j)) else { throw TraceError(.invalidInput, "\(what): token \(a.int(j)) is not an int32") }
                    toks.append(t)
                }
            }
            guard rm.count == r.count else { throw TraceError(.invalidInput, "\(what): response_mask has \(rm.count) entries for \(r.count) response tokens") }
            guard re.shape.count == 3, re.shape[0] == toks.count else {
                throw TraceError(.invalidInput, "\(what): routed_experts has shape \(re.shape), expected [\(toks.count) (prompt + response), layers, top_k] as AgentLoopOutput.as_dict() aligns it")
            }
            guard let lastGen = (0..<rm.count).last(where: { rm.int($0) != 0 }) else {
                throw TraceError(.invalidInput, "\(what): response_mask has no generated token, so no engine call routed anything")
            }
            let n = p.count + lastGen
            let all = try rows(re, sequence: 0, seq: toks.count, Array(0..<toks.count))
            let per = re.shape[1] * re.shape[2]
            if let q = (n..<toks.count).first(where: { row in (0..<per).contains { all.value(at: row * per + $0) != 0 } }) {
                throw TraceError(.invalidInput, "\(what): row \(q), after the last generated token (\(n)), is not zero: verl zero-fills the rows the engine never routed; not an AgentLoopOutput layout")
            }
            let (rid, nrows) = try EngineArrays.routingIDs(all, model: s.model, validate: s.validate, what: "\(what): routed_experts", rows: 0..<n)
            let rec = TraceRecord(uid: "\(s.uidPrefix)\(i)", tokens: toks, promptLength: p.count, start: 0, rowCount: nrows,
                                  layers: s.model.moeLayers, topK: s.model.topK, expertIDs: rid)
            out.append(try checked(rec, s, what))
        }
        return out
    }
}
