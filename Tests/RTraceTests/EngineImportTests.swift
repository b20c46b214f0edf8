import RTraceTestSupport
import Foundation
import Testing

@testable import RTrace

/// The real Qwen3-MoE rollout routing, re-encoded the way each engine documents its output.
private let realRollout: [TraceRecord] = {
    (try? TraceReader(path: "\(repoRoot)/samples/qwen3moe-L6-E32-k4/rollout.rtrace").readAll()) ?? []
}()

private func jsonLine(_ o: Any) -> [UInt8] {
    Array(try! JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) + [0x0A]
}

private func int32Bytes(_ v: [Int64]) -> [UInt8] {
    v.flatMap { x -> [UInt8] in let u = UInt32(bitPattern: Int32(x)); return (0..<4).map { UInt8(truncatingIfNeeded: u >> (8 * $0)) } }
}

/// A record's ids as engine values `[rows, layers, k]` over `numLayers` decoder layers: dense
/// layers (those not in `layerMap`) hold `dense`, missing rows -1.
private func engineIDs(_ r: TraceRecord, numLayers: Int, layerMap: [Int], dense: Int64 = 0) -> [Int64] {
    var out: [Int64] = []
    for row in 0..<r.rowCount {
        for d in 0..<numLayers {
            guard let l = layerMap.firstIndex(of: d) else { out += [Int64](repeating: dense, count: r.topK); continue }
            for j in 0..<r.topK {
                let e = r.expertIDs[(row * r.layers + l) * r.topK + j]
                out.append(e == TraceRecord.missing ? -1 : Int64(e))
            }
        }
    }
    return out
}

private func nestedList(_ flat: [Int64], rows: Int, layers: Int, k: Int) -> [[[Int]]] {
    (0..<rows).map { r in (0..<layers).map { l in (0..<k).map { Int(flat[(r * layers + l) * k + $0]) } } }
}

@Suite("engine importers: SGLang, vLLM, NeMo RL, verl wire formats")
struct EngineImportTests {
    let geometry = ModelGeometry(name: "qwen3moe", numLayers: 6, numExperts: 32, topK: 4)

    @Test("SGLang responses (base64 int32 over all decoder layers, dense ones included) give back the real routing")
    func sglang() throws {
        #expect(realRollout.count >= 4)
        // Pretend two dense layers come first: SGLang reports num_hidden_layers rows per token.
        let model = ModelGeometry(name: "qwen3moe", numLayers: 8, numExperts: 32, topK: 4, layerMap: Array(2..<8))
        var input: [UInt8] = []
        for r in realRollout {
            let values = engineIDs(r, numLayers: 8, layerMap: model.layerMap)
            let prompt = Array(r.tokens[..<r.promptLength]), output = Array(r.tokens[r.promptLength...])
            input += jsonLine([
                "text": "…", "input_ids": prompt.map(Int.init), "output_ids": output.map(Int.init),
                "meta_info": [
                    "id": "req-\(r.uid)", "prompt_tokens": prompt.count, "completion_tokens": output.count,
                    "routed_experts": Data(int32Bytes(values)).base64EncodedString(),
                    "output_token_logprobs": output.map { [-0.25, Int($0), NSNull()] },
                ] as [String: Any],
            ])
        }
        let got = try EngineImport.sglang(JSONLines(bytes: input, file: "responses.jsonl"), settings: EngineImportSettings(model: model))
        #expect(got.count == realRollout.count)
        for (g, want) in zip(got, realRollout) {
            #expect(g.uid == "req-\(want.uid)")
            #expect(g.tokens == want.tokens)
            #expect(g.promptLength == want.promptLength)
            #expect(g.rowCount == want.tokens.count - 1)
            #expect(g.expertIDs == want.expertIDs)
            #expect(g.logprobs.count == want.tokens.count - want.promptLength)
        }
    }

    @Test("SGLang: a continuation (routed_experts_start_len), uint8 ids, and errors that name the line")
    func sglangContinuationAndErrors() throws {
        let r = realRollout[0]
        let start = r.promptLength
        let tail = engineIDs(r, numLayers: 6, layerMap: geometry.layerMap).dropFirst(start * 6 * 4)
        let line = jsonLine([
            "tokens": r.tokens.map(Int.init), "uid": "turn-2", "group": "g", "reward": 0.5,
            "meta_info": ["routed_experts": Data(tail.map { UInt8($0) }).base64EncodedString(),
                          "routed_experts_dtype": "uint8", "routed_experts_start_len": start] as [String: Any],
        ])
        let got = try EngineImport.sglang(JSONLines(bytes: line, file: "x.jsonl"), settings: EngineImportSettings(model: geometry))
        #expect(got.count == 1)
        #expect(got[0].start == start)
        #expect(got[0].rowCount == r.rowCount - start)
        #expect(got[0].expertIDs == Array(r.expertIDs[(start * 6 * 4)...]))
        #expect(got[0].group == "g" && got[0].reward == 0.5 && got[0].uid == "turn-2")

        // Without an echoed start, the start comes from seq_len - 1 - rows: one row fewer starts one later.
        let later = jsonLine(["tokens": r.tokens.map(Int.init),
                              "meta_info": ["routed_experts": Data(int32Bytes(Array(tail.dropFirst(24)))).base64EncodedString()]])
        let got2 = try EngineImport.sglang(JSONLines(bytes: later, file: "x.jsonl"), settings: EngineImportSettings(model: geometry))
        #expect(got2.count == 1 && got2[0].start == start + 1 && got2[0].rowCount == r.rowCount - start - 1)
        #expect(got2[0].expertIDs == Array(r.expertIDs[((start + 1) * 6 * 4)...]))

        // More rows than seq_len - 1: the error names the file, the line and what SGLang sends.
        let all = engineIDs(r, numLayers: 6, layerMap: geometry.layerMap)
        let long = jsonLine(["tokens": r.tokens.map(Int.init),
                             "meta_info": ["routed_experts": Data(int32Bytes(all + Array(all.prefix(24)))).base64EncodedString()]])
        let e = #expect(throws: TraceError.self) {
            try EngineImport.sglang(JSONLines(bytes: line + long, file: "x.jsonl"), settings: EngineImportSettings(model: geometry))
        }
        #expect(e?.file == "x.jsonl")
        #expect(e?.message.hasPrefix("line 2:") == true, "\(e?.message ?? "")")
        #expect(e?.message.contains("SGLang 0.5.x sends (\(r.tokens.count) - 1 - start) rows") == true, "\(e?.message ?? "")")
    }

    @Test("vLLM: nested int16 lists with -1 prefix-cached rows, n completions sharing the prompt, base64 .npy")
    func vllm() throws {
        let r = realRollout[1]
        let P = r.promptLength, T = r.tokens.count
        var all = engineIDs(r, numLayers: 6, layerMap: geometry.layerMap)
        for i in 0..<(3 * 6 * 4) { all[i] = -1 }  // the first 3 prompt rows were prefix-cached
        // vLLM's rows: one per prompt token, then one per generated token but the last.
        let promptRows = Array(all[..<(P * 24)]), genRows = Array(all[(P * 24)...])
        let genTokens = r.tokens[P...].map(Int.init)
        let npy = NpyArray.ints(genRows, dtype: "i2", shape: [T - 1 - P, 6, 4]).npyBytes()
        let line = jsonLine([
            "request_id": "cmpl-7", "prompt_token_ids": r.tokens[..<P].map(Int.init),
            "prompt_routed_experts": nestedList(promptRows, rows: P, layers: 6, k: 4),
            "outputs": [
                ["index": 0, "token_ids": genTokens, "routed_experts": nestedList(genRows, rows: T - 1 - P, layers: 6, k: 4),
                 "logprobs": genTokens.map { [String($0): ["logprob": -1.5, "rank": 1]] }],
                ["index": 1, "token_ids": genTokens, "routed_experts": Data(npy).base64EncodedString()],
            ],
        ])
        let got = try EngineImport.vllm(JSONLines(bytes: line, file: "v.jsonl"), settings: EngineImportSettings(model: geometry))
        #expect(got.map(\.uid) == ["cmpl-7/0", "cmpl-7/1"])
        for g in got {
            #expect(g.group == "cmpl-7")
            #expect(g.tokens == r.tokens)
            #expect(g.promptLength == P)
            #expect(g.rowCount == T - 1)
            #expect(Array(g.expertIDs[..<(3 * 24)]).allSatisfy { $0 == TraceRecord.missing })
            #expect(Array(g.expertIDs[(3 * 24)...]) == Array(r.expertIDs[(3 * 24)...]))
        }
        #expect(got[0].logprobs == [Float](repeating: -1.5, count: genTokens.count))
        #expect(got[1].logprobs.isEmpty)

        // A row mixing -1 and ids is refused, naming where.
        var bad = promptRows
        bad[3 * 24] = -1
        let badLine = jsonLine(["request_id": "x", "prompt_routed_experts": nestedList(bad, rows: P, layers: 6, k: 4),
                                "outputs": [["routed_experts": [] as [Any]]]])
        let e = #expect(throws: TraceError.self) {
            try EngineImport.vllm(JSONLines(bytes: badLine, file: "v.jsonl"), settings: EngineImportSettings(model: geometry))
        }
        #expect(e?.message.contains("prompt_routed_experts[3, 0] mixes -1") == true, "\(e?.message ?? "")")
    }

    @Test("NeMo RL: nrlre1 wire strings, bare or in an object; damaged ones are refused")
    func nemo() throws {
        var input: [UInt8] = []
        for (i, r) in realRollout.prefix(3).enumerated() {
            // NeMo RL's S = T rows: vLLM's T - 1, then a filler arange(K).
            let v = engineIDs(r, numLayers: 6, layerMap: geometry.layerMap) + (0..<6).flatMap { _ in [0, 1, 2, 3] as [Int64] }
            let b = v.flatMap { x -> [UInt8] in let u = UInt16(bitPattern: Int16(x)); return [UInt8(u & 0xFF), UInt8(u >> 8)] }
            let wire = "nrlre1:int16:\(r.rowCount + 1)x6x4:\(Data(b).base64EncodedString())"
            if i == 0 {
                input += Array((wire + "\n").utf8)
            } else {
                input += jsonLine(["routed_experts": wire, "uid": r.uid, "tokens": r.tokens.map(Int.init), "prompt_len": r.promptLength])
            }
        }
        let got = try EngineImport.nemoRL(JSONLines(bytes: input, file: "n.jsonl"), settings: EngineImportSettings(model: geometry))
        #expect(got.count == 3)
        for (g, want) in zip(got, realRollout) { #expect(g.expertIDs == want.expertIDs) }
        #expect(got[0].uid == "0" && got[0].tokens.isEmpty)
        #expect(got[2].uid == realRollout[2].uid && got[2].tokens == realRollout[2].tokens)
        #expect(zip(got, realRollout).allSatisfy { $0.rowCount == $1.rowCount }, "the filler row is dropped")

        // Tokens that do not number S are refused, saying what NeMo RL sends.
        let bad = jsonLine(["routed_experts": "nrlre1:int8:2x6x4:" + Data([UInt8](repeating: 1, count: 48)).base64EncodedString(),
                            "tokens": [1, 2, 3]])
        let e = #expect(throws: TraceError.self) {
            try EngineImport.nemoRL(JSONLines(bytes: bad, file: "n.jsonl"), settings: EngineImportSettings(model: geometry))
        }
        #expect(e?.message.contains("2 rows for 3 tokens") == true && e?.message.contains("one row per token") == true, "\(e?.message ?? "")")

        #expect(throws: TraceError.self) { try EngineImport.parseNemoRL("nrlre1:int16:2x6x4:AAAA", what: "w") }
        #expect(throws: TraceError.self) { try EngineImport.parseNemoRL("nrlre1:float32:1x1x1:AAAA", what: "w") }
        #expect(throws: TraceError.self) { try EngineImport.parseNemoRL("nrlre1:int8:1x1x1:!!", what: "w") }
    }

    @Test("verl: left-padded prompts and right-padded responses, rows taken where attention_mask is 1")
    func verl() throws {
        let recs = Array(realRollout.prefix(3))
        let P = recs.map(\.promptLength).max()!, Rw = recs.map { $0.tokens.count - $0.promptLength }.max()!
        let B = recs.count, S = P + Rw
        var re = [Int64](repeating: 0, count: B * S * 6 * 4), mask = [Int64](repeating: 0, count: B * S)
        var ids = [Int64](repeating: 0, count: B * S)
        for (b, r) in recs.enumerated() {
            let all = engineIDs(r, numLayers: 6, layerMap: geometry.layerMap)
            let left = P - r.promptLength
            for (p, t) in r.tokens.enumerated() {
                let col = left + p
                mask[b * S + col] = 1
                ids[b * S + col] = Int64(t)
                if p < r.rowCount { for i in 0..<24 { re[(b * S + col) * 24 + i] = all[p * 24 + i] } }
            }
        }
        let arrays = [
            "routed_experts": NpyArray.ints(re, dtype: "i4", shape: [B, S, 6, 4]),
            "attention_mask": NpyArray.ints(mask, dtype: "i8", shape: [B, S]),
            "input_ids": NpyArray.ints(ids, dtype: "i8", shape: [B, S]),
            "prompts": NpyArray.ints([Int64](repeating: 0, count: B * P), dtype: "i8", shape: [B, P]),
        ]
        let got = try EngineImport.verl(arrays, settings: EngineImportSettings(model: geometry), promptWidth: nil, file: "b.npz")
        for (g, want) in zip(got, recs) {
            #expect(g.tokens == want.tokens)
            #expect(g.promptLength == want.promptLength)
            #expect(g.expertIDs == want.expertIDs)
        }
        var holed = arrays
        var m2 = mask
        m2[P + 1] = 0
        holed["attention_mask"] = NpyArray.ints(m2, dtype: "i8", shape: [B, S])
        let e = #expect(throws: TraceError.self) {
            try EngineImport.verl(holed, settings: EngineImportSettings(model: geometry), promptWidth: nil, file: "b.npz")
        }
        #expect(e?.message.contains("batch row 0") == true && e?.file == "b.npz")
    }

    @Test("ids are validated against the geometry: out of range, duplicates, wrong top-k")
    func validation() throws {
        let a = EngineIntArray(values: [1, 2, 3, 40, 0, 1, 2, 3], shape: [2, 1, 4])
        let m = ModelGeometry(numLayers: 1, numExperts: 32, topK: 4)
        let e1 = #expect(throws: TraceError.self) { try EngineArrays.routingIDs(a, model: m, validate: true, what: "x") }
        #expect(e1?.message.contains("x[0, 0, 3] = 40 is not below num_experts 32") == true, "\(e1?.message ?? "")")
        #expect(try EngineArrays.routingIDs(a, model: m, validate: false, what: "x").ids[3] == 40)
        let dup = EngineIntArray(values: [1, 2, 1, 4], shape: [1, 1, 4])
        let e2 = #expect(throws: TraceError.self) { try EngineArrays.routingIDs(dup, model: m, validate: true, what: "x") }
        #expect(e2?.message.contains("chooses expert 1 twice") == true)
        let k3 = EngineIntArray(values: [1, 2, 3], shape: [1, 1, 3])
        #expect(throws: TraceError.self) { try EngineArrays.routingIDs(k3, model: m, validate: true, what: "x") }
    }
}
