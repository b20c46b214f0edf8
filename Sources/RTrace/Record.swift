/// One sequence's routing: its tokens, its routed rows and what the engine recorded with them.
///
/// Arrays are flat and row-major: `expertIDs[(row * layers + layer) * topK + slot]`, where `row`
/// counts from `start` and `layer` is the MoE-layer index (the header's `layerMap` gives its
/// decoder index). A (row, layer) the engine did not capture holds ``missing`` in every slot.
public struct TraceRecord: Sendable, Equatable {
    /// The marker of a missing (row, layer) in ``expertIDs``.
    public static let missing: UInt16 = 0xFFFF

    /// The sequence's uid (UTF-8, 1…65535 bytes).
    public var uid: String
    /// The uid of its group (the n completions of one prompt), if any.
    public var group: String?
    /// Token ids, prompt then response.
    public var tokens: [Int32]
    /// Prompt tokens at the start of `tokens`.
    public var promptLength: Int
    /// The position of the first routed row (0 for a complete rollout).
    public var start: Int
    /// Routed rows: row `p` is the pass over token `start + p`.
    public var rowCount: Int
    /// MoE layers per row (the geometry's `moeLayers`).
    public var layers: Int
    /// Experts per (row, layer).
    public var topK: Int
    /// `rowCount * layers * topK` expert ids in slot order, ``missing`` for uncaptured (row, layer)s.
    public var expertIDs: [UInt16]
    /// Gate weights in slot order, `rowCount * layers * topK`, if recorded.
    public var weights: FloatArray?
    /// Router logits over all experts, `rowCount * layers * numExperts`, if recorded.
    public var logits: FloatArray?
    /// Sampled-token logprobs of the last `logprobs.count` tokens (empty when not recorded).
    public var logprobs: [Float]
    /// The sequence's reward, if any.
    public var reward: Double?
    /// Free attributes as a JSON object text, if any.
    public var attributes: String?

    public init(
        uid: String, group: String? = nil, tokens: [Int32] = [], promptLength: Int = 0, start: Int = 0,
        rowCount: Int, layers: Int, topK: Int, expertIDs: [UInt16], weights: FloatArray? = nil,
        logits: FloatArray? = nil, logprobs: [Float] = [], reward: Double? = nil, attributes: String? = nil
    ) {
        self.uid = uid
        self.group = group
        self.tokens = tokens
        self.promptLength = promptLength
        self.start = start
        self.rowCount = rowCount
        self.layers = layers
        self.topK = topK
        self.expertIDs = expertIDs
        self.weights = weights
        self.logits = logits
        self.logprobs = logprobs
        self.reward = reward
        self.attributes = attributes
    }

    /// Whether (row, layer) was captured.
    @inline(__always) public func isPresent(row: Int, layer: Int) -> Bool {
        expertIDs[(row * layers + layer) * topK] != TraceRecord.missing
    }

    /// The expert ids of (row, layer) in slot order.
    public func experts(row: Int, layer: Int) -> ArraySlice<UInt16> {
        let b = (row * layers + layer) * topK
        return expertIDs[b..<b + topK]
    }

    /// Whether position `start + row` is a prompt position, i.e. the pass over a prompt token.
    ///
    /// Row `p` produced token `p + 1`; it is a response row when that token is a response token,
    /// that is when `start + row + 1 >= promptLength`... the row over the last prompt token produces
    /// the first response token. Prompt rows are those with `start + row < promptLength - 1`.
    public func isPromptRow(_ row: Int) -> Bool { start + row < promptLength - 1 }

    /// Checks shapes against a geometry and columns, as a writer must before storing.
    public func validateShape(_ h: TraceHeader) throws(TraceError) {
        try validateShape(h, checkIDs: true)
    }

    /// ``validateShape(_:)``; without `checkIDs`, the per-id pass (wholly present or missing
    /// (row, layer)s, ids within the id width) is left to the writer.
    func validateShape(_ h: TraceHeader, checkIDs: Bool) throws(TraceError) {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, "record \(uid): \(m)") }
        let L = h.model.moeLayers, k = h.model.topK, E = h.model.numExperts
        if uid.utf8.isEmpty || uid.utf8.count > 65_535 { throw bad("uid must be 1…65535 bytes of UTF-8") }
        if let g = group, g.utf8.count > 65_535 { throw bad("group uid longer than 65535 bytes") }
        if layers != L || topK != k { throw bad("has \(layers) layers × top-\(topK), the trace has \(L) × top-\(k)") }
        if rowCount < 0 || start < 0 { throw bad("rowCount and start must be ≥ 0") }
        if expertIDs.count != rowCount * L * k {
            throw bad("expertIDs has \(expertIDs.count) values, expected rows \(rowCount) × layers \(L) × top_k \(k)")
        }
        if !tokens.isEmpty {
            if start + rowCount > tokens.count {
                throw bad("rows cover positions \(start)…\(start + rowCount - 1) but there are only \(tokens.count) tokens")
            }
            if promptLength > tokens.count { throw bad("prompt length \(promptLength) exceeds \(tokens.count) tokens") }
            if logprobs.count > tokens.count { throw bad("\(logprobs.count) logprobs for \(tokens.count) tokens") }
        }
        if promptLength < 0 { throw bad("prompt length must be ≥ 0") }
        switch (weights, h.columns.topkWeights) {
        case (nil, nil): break
        case (let w?, let d?):
            if w.dtype != d { throw bad("weights are \(w.dtype.rawValue), the trace stores \(d.rawValue)") }
            if w.count != rowCount * L * k { throw bad("weights have \(w.count) values, expected \(rowCount * L * k)") }
        case (nil, _?): throw bad("the trace has a topk_weights column but the record has no weights")
        case (_?, nil): throw bad("the record has weights but the trace has no topk_weights column")
        }
        switch (logits, h.columns.routerLogits) {
        case (nil, nil): break
        case (let w?, let d?):
            if w.dtype != d { throw bad("logits are \(w.dtype.rawValue), the trace stores \(d.rawValue)") }
            if w.count != rowCount * L * E { throw bad("logits have \(w.count) values, expected \(rowCount * L * E)") }
        case (nil, _?): throw bad("the trace has a router_logits column but the record has no logits")
        case (_?, nil): throw bad("the record has logits but the trace has no router_logits column")
        }
        if !h.columns.logprobs && !logprobs.isEmpty { throw bad("the record has logprobs but the trace has no logprobs column") }
        if let a = attributes, a.utf8.count > 16 << 20 { throw bad("attributes exceed 16 MiB") }
        guard checkIDs else { return }
        // A (row, layer) is wholly present or wholly missing; stored ids must fit the id width.
        let maxID = h.idWidth == .u8 ? 255 : 65_534
        for s in 0..<(rowCount * L) {
            let b = s * k
            let m0 = expertIDs[b] == TraceRecord.missing
            for j in 0..<k {
                let e = expertIDs[b + j]
                if (e == TraceRecord.missing) != m0 {
                    throw bad("row \(s / L) layer \(h.model.layerMap[s % L]) mixes missing (-1) and present slots")
                }
                if !m0 && Int(e) > maxID {
                    throw bad("row \(s / L) layer \(h.model.layerMap[s % L]) expert id \(e) does not fit \(h.idWidth.rawValue)")
                }
            }
        }
    }
}

extension TraceRecord {
    /// CRC-32 (zlib's `crc32`) of the UTF-8 bytes of a uid: a hash every language has, so that
    /// tools that split traces by uid (`rtrace diff --uid-shard i/N`: `uidHash(uid) % N == i`) and
    /// Python (`zlib.crc32(uid.encode()) % N`) put each uid in the same part.
    public static func uidHash(_ uid: String) -> UInt32 {
        var u = uid
        return u.withUTF8 { Zlib.crc32(UnsafeRawBufferPointer($0)) }
    }
}
