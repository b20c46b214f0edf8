import Foundation

extension EngineImport {
    /// Parses NeMo RL's wire string `nrlre1:<int8|int16|int32>:<S>x<L>x<K>:<base64>` into `[S, L, K]`.
    public static func parseNemoRL(_ wire: String, what: String) throws(TraceError) -> EngineIntArray {
        let parts = wire.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "nrlre1" else {
            throw TraceError(.invalidInput, "\(what): not an \"nrlre1:<dtype>:<S>x<L>x<K>:<base64>\" string (starts \"\(wire.prefix(24))\")")
        }
        let dtype = String(parts[1])
        guard ["int8", "int16", "int32"].contains(dtype) else { throw TraceError(.invalidInput, "\(what): dtype \(dtype), expected int8, int16 or int32") }
        let dims = parts[2].split(separator: "x").map { Int($0) }
        guard dims.count == 3, let S = dims[0], let L = dims[1], let K = dims[2], S >= 0, L > 0, K > 0 else {
            throw TraceError(.invalidInput, "\(what): shape \"\(parts[2])\", expected <S>x<L>x<K>")
        }
        let values = try EngineArrays.raw(try EngineArrays.base64(String(parts[3]), what: what), dtype: dtype, what: what)
        guard values.count == S * L * K else {
            throw TraceError(.invalidInput, "\(what): payload holds \(values.count) \(dtype) values, \(S)x\(L)x\(K) needs \(S * L * K)")
        }
        return EngineIntArray(values: values, shape: [S, L, K])
    }

    /// NeMo RL routing, one per line (`rtrace import --from nemo`): a bare wire string (quoted or
    /// not), or an object with `routed_experts` (the wire string) and optional `uid`, `tokens`,
    /// `prompt_len`, `start`, `group`, `logprobs`, `reward`.
    public static func nemoRL(_ input: JSONLines, settings s: EngineImportSettings) throws(TraceError) -> [TraceRecord] {
        var n = 0
        return try eachLine(input, bareWireStrings: true) { value, line throws(TraceError) in
            var f = JSONFields(object: [:], what: "line \(line)")
            let wire: String
            if let w = value as? String {
                wire = w
            } else if let o = value as? [String: Any], let w = o["routed_experts"] as? String {
                f = JSONFields(object: o, what: "line \(line)")
                wire = w
            } else {
                throw TraceError(.invalidInput, "expected an nrlre1 string or an object with \"routed_experts\"")
            }
            let a = try parseNemoRL(wire, what: "line \(line): routed_experts")
            let (ids, rows) = try EngineArrays.routingIDs(a, model: s.model, validate: s.validate, what: "line \(line): routed_experts")
            let uid = try f.string("uid") ?? "\(s.uidPrefix)\(n)"
            n += 1
            let r = TraceRecord(uid: uid, group: try f.string("group"), tokens: try f.ints("tokens") ?? [],
                                promptLength: try f.int("prompt_len") ?? 0, start: try f.int("start") ?? 0, rowCount: rows,
                                layers: s.model.moeLayers, topK: s.model.topK, expertIDs: ids,
                                logprobs: try f.floats("logprobs") ?? [], reward: try f.double("reward"))
            return [try checked(r, s, "line \(line) (uid \(uid))", file: input.file, offset: nil)]
        }
    }
}
