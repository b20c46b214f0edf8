extension EngineImport {
    /// verl-style batched tensors from an `.npz` (`rtrace import --from verl`).
    ///
    /// `routed_experts` `[batch, seq, layers, k]` is aligned with `input_ids` `[batch, seq]`: a
    /// left-padded prompt of `promptWidth` columns, then the right-padded response;
    /// `attention_mask` `[batch, seq]` (1 = real token) tells real rows from padding. Position p
    /// of a sequence's real tokens gives row p; the pass over the last real token is dropped (the
    /// row convention: T tokens, T - 1 rows). The prompt width is `promptWidth`, else the width of
    /// a `prompts` array. Optional `rewards` `[batch]`. Uids are `prefix + b`.
    public static func verl(
        _ arrays: [String: NpyArray], settings s: EngineImportSettings, promptWidth: Int?, file: String
    ) throws(TraceError) -> [TraceRecord] {
        func need(_ n: String) throws(TraceError) -> NpyArray {
            guard let a = arrays[n] else { throw TraceError(.invalidInput, "verl: the archive has no \"\(n)\" array (it has \(arrays.keys.sorted().joined(separator: ", ")))", file: file) }
            guard a.isInteger else { throw TraceError(.invalidInput, "verl: \"\(n)\" is \(a.dtype), expected integers", file: file) }
            return a
        }
        let re = try need("routed_experts"), mask = try need("attention_mask"), ids = try need("input_ids")
        guard re.shape.count == 4 else { throw TraceError(.invalidInput, "verl: routed_experts has shape \(re.shape), expected [batch, seq, layers, k]", file: file) }
        let (B, S, Lin, K) = (re.shape[0], re.shape[1], re.shape[2], re.shape[3])
        guard mask.shape == [B, S], ids.shape == [B, S] else {
            throw TraceError(.invalidInput, "verl: attention_mask \(mask.shape) and input_ids \(ids.shape) must be [batch, seq] = [\(B), \(S)] like routed_experts", file: file)
        }
        guard let P = promptWidth ?? arrays["prompts"].map({ $0.shape.count == 2 ? $0.shape[1] : -1 }), (0...S).contains(P) else {
            throw TraceError(.invalidInput, "verl: the prompt width is unknown or outside 0…\(S): pass --prompt-width or include a \"prompts\" [batch, prompt_width] array", file: file)
        }
        let rewards = arrays["rewards"]
        if let rewards, rewards.count != B { throw TraceError(.invalidInput, "verl: rewards has \(rewards.count) values for a batch of \(B)", file: file) }
        var out: [TraceRecord] = []
        for b in 0..<B {
            let real = (0..<S).filter { mask.int(b * S + $0) != 0 }
            if let f = real.first, real.last! - f + 1 != real.count {
                throw TraceError(.invalidInput, "verl: batch row \(b): real tokens are not contiguous (a hole in attention_mask)", file: file)
            }
            let plen = real.filter { $0 < P }.count
            if plen > 0 && real.first! != P - plen {
                throw TraceError(.invalidInput, "verl: batch row \(b): the prompt is not left-padded to column \(P)", file: file)
            }
            let rowsPos = real.dropLast()
            var flat: [Int64] = []
            flat.reserveCapacity(rowsPos.count * Lin * K)
            for p in rowsPos { for i in 0..<(Lin * K) { flat.append(re.int((b * S + p) * Lin * K + i)) } }
            let (rid, rows) = try EngineArrays.routingIDs(EngineIntArray(values: flat, shape: [rowsPos.count, Lin, K]),
                                                         model: s.model, validate: s.validate, what: "verl batch row \(b): routed_experts")
            var toks: [Int32] = []
            for p in real {
                let v = ids.int(b * S + p)
                guard let t = Int32(exactly: v) else { throw TraceError(.invalidInput, "verl: input_ids[\(b), \(p)] = \(v) is not an int32 token", file: file) }
                toks.append(t)
            }
            let uid = "\(s.uidPrefix)\(b)"
            let r = TraceRecord(uid: uid, tokens: toks, promptLength: plen, start: 0, rowCount: rows,
                                layers: s.model.moeLayers, topK: s.model.topK, expertIDs: rid,
                                reward: rewards.map { $0.double(b) })
            out.append(try checked(r, s, "verl batch row \(b)", file: file, offset: nil))
        }
        return out
    }
}
