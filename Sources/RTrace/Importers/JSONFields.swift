/// Typed reads of an engine response's fields, with errors that name the field and what was found.
extension JSONValue {
    /// An integer field (nil when absent or null).
    func int(_ key: String, _ what: String) throws(TraceError) -> Int? {
        guard let v = field(key) else { return nil }
        guard let i = v.int, let x = Int(exactly: i) else {
            throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(v.summary), expected an integer")
        }
        return x
    }

    /// A number field.
    func double(_ key: String, _ what: String) throws(TraceError) -> Double? {
        guard let v = field(key) else { return nil }
        guard let d = v.double else { throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(v.summary), expected a number") }
        return d
    }

    /// A string field, or a number written as text (request ids are sometimes numbers).
    func text(_ key: String, _ what: String) throws(TraceError) -> String? {
        guard let v = field(key) else { return nil }
        if let s = v.string { return s }
        if v.kind == .number { return String(decoding: UnsafeRawBufferPointer(rebasing: tape.bytes[v.node.start..<v.node.end]), as: UTF8.self) }
        throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(v.summary), expected a string")
    }

    /// An object field.
    func object(_ key: String, _ what: String) throws(TraceError) -> JSONValue? {
        guard let v = field(key) else { return nil }
        guard v.kind == .object else { throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(v.summary), expected an object") }
        return v
    }

    /// An array field.
    func array(_ key: String, _ what: String) throws(TraceError) -> JSONValue? {
        guard let v = field(key) else { return nil }
        guard v.kind == .array else { throw TraceError(.invalidInput, "\(what): \"\(key)\" is \(v.summary), expected a list") }
        return v
    }

    /// A list of token ids: JSON integers (or base64 int32, as some dumps store them).
    func tokens(_ key: String, _ what: String) throws(TraceError) -> [Int32]? {
        guard let v = field(key) else { return nil }
        return try v.tokenList("\(what): \"\(key)\"")
    }

    /// This value as a list of token ids.
    func tokenList(_ what: String) throws(TraceError) -> [Int32] {
        if kind == .array {
            var out: [Int32] = []
            out.reserveCapacity(count)
            try forEachElement { (i, e) throws(TraceError) in
                guard let t = e.int, let x = Int32(exactly: t) else {
                    throw TraceError(.invalidInput, "\(what)[\(i)] is \(e.summary), not an int32 token id")
                }
                out.append(x)
            }
            return out
        }
        let a = try EngineArrays.decode(self, raw: .int32, what: what)
        var out: [Int32] = []
        out.reserveCapacity(a.count)
        for v in a.values {
            guard let x = Int32(exactly: v) else { throw TraceError(.invalidInput, "\(what) holds \(v), not an int32 token id") }
            out.append(x)
        }
        return out
    }

    /// A list of numbers.
    func floats(_ key: String, _ what: String) throws(TraceError) -> [Float]? {
        guard let v = try array(key, what) else { return nil }
        var out: [Float] = []
        out.reserveCapacity(v.count)
        try v.forEachElement { (i, e) throws(TraceError) in
            guard let d = e.double else { throw TraceError(.invalidInput, "\(what): \"\(key)\"[\(i)] is \(e.summary), not a number") }
            out.append(Float(d))
        }
        return out
    }

    /// The member names, for errors that say what an object holds.
    var keyList: String {
        let k = keys
        if k.isEmpty { return "no keys" }
        return "keys " + (k.count > 12 ? k.prefix(12).joined(separator: ", ") + ", …" : k.joined(separator: ", "))
    }
}

/// Sampled-token logprobs in the shapes engines and their OpenAI-compatible servers send them.
enum Logprobs {
    /// SGLang's `output_token_logprobs`: `[logprob, token_id, text]` per generated token (or bare numbers).
    static func sglang(_ v: JSONValue, _ what: String) throws(TraceError) -> [Float] {
        guard v.kind == .array else { throw TraceError(.invalidInput, "\(what) is \(v.summary), expected a list") }
        var out: [Float] = []
        out.reserveCapacity(v.count)
        try v.forEachElement { (i, e) throws(TraceError) in
            let x = e.kind == .array && e.count > 0 ? JSONValue(tape: e.tape, index: e.index + 1) : e
            guard let d = x.double else { throw TraceError(.invalidInput, "\(what)[\(i)] has no logprob (\(e.summary))") }
            out.append(Float(d))
        }
        return out
    }

    /// An OpenAI-compatible choice's `logprobs`: `token_logprobs` (completions) or
    /// `content[].logprob` (chat). Nil when absent or when a token has none.
    static func openAI(_ v: JSONValue?, _ what: String) throws(TraceError) -> [Float]? {
        guard let v, v.kind == .object else { return nil }
        var out: [Float] = []
        if let t = v.field("token_logprobs"), t.kind == .array {
            var complete = true
            t.forEachElement { (_, e) in if let d = e.double { out.append(Float(d)) } else { complete = false } }
            return complete ? out : nil
        }
        if let c = v.field("content"), c.kind == .array {
            var complete = true
            c.forEachElement { (_, e) in if let d = e.field("logprob")?.double { out.append(Float(d)) } else { complete = false } }
            return complete ? out : nil
        }
        return nil
    }

    /// vLLM's `CompletionOutput.logprobs` dumped: per token `{token_id: {logprob, …}}` or a number.
    static func vllm(_ v: JSONValue, tokens: [Int32], _ what: String) throws(TraceError) -> [Float]? {
        guard v.kind == .array, !tokens.isEmpty, v.count == tokens.count else { return nil }
        var out: [Float] = []
        out.reserveCapacity(tokens.count)
        try v.forEachElement { (p, e) throws(TraceError) in
            if let d = e.double { out.append(Float(d)); return }
            guard e.kind == .object, let entry = e.field(String(tokens[p])) else {
                throw TraceError(.invalidInput, "\(what)[\(p)] has no entry for the sampled token \(tokens[p])")
            }
            guard let d = entry.double ?? entry.field("logprob")?.double else {
                throw TraceError(.invalidInput, "\(what)[\(p)] has no logprob for token \(tokens[p])")
            }
            out.append(Float(d))
        }
        return out
    }
}
