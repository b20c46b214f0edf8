import RTraceTestSupport
import Foundation
import Testing

@testable import RTrace

/// The layouts engines send today, built here from their documented shapes (the conformance
/// fixtures in Tests/fixtures/engines/ are what the engines' own code wrote; see EngineFixtureTests).
/// Geometry: 4 decoder layers, layer 0 dense, 16 experts, top-2.
private let model = ModelGeometry(name: "tiny", numLayers: 4, numExperts: 16, topK: 2, layerMap: [1, 2, 3])

/// Random routing `[rows, 3 MoE layers, 2]`, distinct ids per (row, layer).
private func routing(rows: Int, seed: UInt64) -> [UInt16] {
    var rng = TestRNG(seed)
    var out: [UInt16] = []
    for _ in 0..<(rows * 3) {
        let a = rng.int(16)
        var b = rng.int(15)
        if b >= a { b += 1 }
        out += [UInt16(a), UInt16(b)]
    }
    return out
}

/// The engine's view: all 4 decoder layers, the dense one 0.
private func allLayers(_ ids: [UInt16], rows: Int) -> [Int64] {
    var out: [Int64] = []
    for r in 0..<rows {
        out += [0, 0]
        for l in 0..<3 { out += [Int64(ids[(r * 3 + l) * 2]), Int64(ids[(r * 3 + l) * 2 + 1])] }
    }
    return out
}

private func line(_ o: Any) -> [UInt8] { Array(try! JSONSerialization.data(withJSONObject: o)) + [0x0A] }
private func b64(_ b: [UInt8]) -> String { Data(b).base64EncodedString() }
private func int32LE(_ v: [Int64]) -> [UInt8] { v.flatMap { x in (0..<4).map { UInt8(truncatingIfNeeded: UInt32(bitPattern: Int32(x)) >> (8 * $0)) } } }
private func npy(_ v: [Int64], _ dtype: String, _ shape: [Int]) -> String { b64(NpyArray.ints(v, dtype: dtype, shape: shape).npyBytes()) }
private func settings() -> EngineImportSettings { EngineImportSettings(model: model) }

@Suite("engine layouts of today: SGLang 0.5, vLLM ≥ 0.22, NeMo RL")
struct EngineLayoutTests {
    @Test("SGLang /generate: start from seq_len - 1 - rows, tokens from prompt_token_ids + output_ids, JSON-array lines")
    func sglangGenerate() throws {
        let P = 5, G = 4, T = P + G
        let prompt = (0..<P).map { 100 + $0 }, out = (0..<G).map { 200 + $0 }
        let ids = routing(rows: T - 1, seed: 1)
        // Request 0: the whole sequence; requests 1 and 2 (an n = 2 array): routed_experts_start_len 3, not echoed.
        var input = line([
            "text": "…", "prompt_token_ids": prompt, "output_ids": out,
            "meta_info": ["id": "a", "prompt_tokens": P, "completion_tokens": G,
                          "routed_experts": b64(int32LE(allLayers(ids, rows: T - 1))),
                          "output_token_logprobs": out.map { [-0.5, $0, NSNull()] as [Any] }] as [String: Any],
        ])
        let tail = Array(ids[(3 * 6)...])
        input += line((0..<2).map { i in
            ["text": "", "prompt_token_ids": prompt, "output_ids": out,
             "meta_info": ["id": "b\(i)", "prompt_tokens": P, "completion_tokens": G,
                           "routed_experts": b64(int32LE(allLayers(tail, rows: T - 4)))] as [String: Any]] as [String: Any]
        })
        let got = try EngineImport.sglang(JSONLines(bytes: input, file: "s.jsonl"), settings: settings())
        #expect(got.map(\.uid) == ["a", "b0", "b1"])
        #expect(got[0].start == 0 && got[0].rowCount == T - 1 && got[0].expertIDs == ids)
        #expect(got[0].tokens == (prompt + out).map(Int32.init) && got[0].promptLength == P)
        #expect(got[0].logprobs == [Float](repeating: -0.5, count: G))
        for g in got.dropFirst() {
            #expect(g.start == 3 && g.rowCount == T - 4 && g.expertIDs == tail && g.tokens.count == T)
        }
    }

    @Test("SGLang OpenAI-compatible: sglext.routed_experts is the first choice's; choices[i].meta_info carries each one's")
    func sglangOpenAI() throws {
        let P = 3, G = 3, T = P + G
        let prompt = [7, 8, 9], outs = [[1, 2, 3], [4, 5, 6]]
        let ids0 = routing(rows: T - 1, seed: 2), ids1 = routing(rows: T - 1, seed: 3)
        let completion = line([
            "id": "cmpl-1", "object": "text_completion",
            "choices": (0..<2).map { i in
                ["index": i, "text": "", "prompt_token_ids": prompt, "token_ids": outs[i],
                 "logprobs": ["token_logprobs": [-1.0, -2.0, -3.0], "tokens": ["a", "b", "c"]]] as [String: Any]
            },
            "sglext": ["routed_experts": b64(int32LE(allLayers(ids0, rows: T - 1)))],
        ])
        let chat = line([
            "id": "chat-2", "object": "chat.completion",
            "choices": (0..<2).map { i in
                ["index": i, "message": ["role": "assistant", "content": ""], "prompt_token_ids": prompt,
                 "response_token_ids": outs[i],
                 "meta_info": ["routed_experts": b64(int32LE(allLayers(i == 0 ? ids0 : ids1, rows: T - 1)))],
                 "logprobs": ["content": outs[i].map { _ in ["token": "x", "logprob": -0.25] }]] as [String: Any]
            },
        ])
        var notices: [String] = []
        var got: [TraceRecord] = []
        try EngineImport.sglang(JSONLines(bytes: completion + chat, file: "o.jsonl"), settings: settings(),
                                notice: { notices.append($0) }, emit: { got.append($0) })
        // sglext's routing is the response's (uid = id); per-choice meta_info gives <id>/<index>.
        #expect(got.map(\.uid) == ["cmpl-1", "chat-2/0", "chat-2/1"])
        #expect(got[0].expertIDs == ids0 && got[0].tokens == (prompt + outs[0]).map(Int32.init) && got[0].logprobs == [-1, -2, -3])
        #expect(got[1].expertIDs == ids0 && got[2].expertIDs == ids1 && got[2].tokens == (prompt + outs[1]).map(Int32.init))
        #expect(got[2].logprobs == [-0.25, -0.25, -0.25] && got[2].group == nil)
        #expect(notices.count == 1 && notices[0].contains("choices 1") && notices[0].contains("cmpl-1"), "\(notices)")
    }

    @Test("vLLM ≥ 0.22 request outputs: one array per completion over prompt and output rows, uint8, start inferred")
    func vllmRequestOutput() throws {
        let P = 6, G = 3, T = P + G, start = 2
        let prompt = (0..<P).map { 10 + $0 }
        let ids = [routing(rows: T - 1 - start, seed: 4), routing(rows: T - 1 - start, seed: 5)]
        let outs = [[50, 51, 52], [60, 61, 62]]
        let o = line([
            "request_id": "r9", "prompt_token_ids": prompt,
            "outputs": (0..<2).map { i in
                ["index": i, "token_ids": outs[i], "finish_reason": "length",
                 // Completion 0 as the OpenAI server sends it (base64 .npy), completion 1 as nested lists.
                 "routed_experts": i == 0
                    ? npy(allLayers(ids[0], rows: T - 1 - start), "u1", [T - 1 - start, 4, 2]) as Any
                    : (0..<(T - 1 - start)).map { r in (0..<4).map { d in d == 0 ? [0, 0] : [Int(ids[1][(r * 3 + d - 1) * 2]), Int(ids[1][(r * 3 + d - 1) * 2 + 1])] } } as Any,
                 "logprobs": outs[i].map { [String($0): ["logprob": -0.125, "rank": 1]] }] as [String: Any]
            },
        ])
        let got = try EngineImport.vllm(JSONLines(bytes: o, file: "v.jsonl"), settings: settings())
        #expect(got.map(\.uid) == ["r9/0", "r9/1"])
        for (i, g) in got.enumerated() {
            #expect(g.group == "r9" && g.start == start && g.rowCount == T - 1 - start && g.expertIDs == ids[i])
            #expect(g.tokens == (prompt + outs[i]).map(Int32.init) && g.promptLength == P)
            #expect(g.logprobs == [-0.125, -0.125, -0.125])
        }
    }

    @Test("vLLM OpenAI-compatible: choices[i].routed_experts base64 .npy, prompt_token_ids per choice or per response")
    func vllmOpenAI() throws {
        let P = 4, G = 2, T = P + G
        let prompt = [1, 2, 3, 4], out = [5, 6]
        let ids = routing(rows: T - 1, seed: 6)
        let completion = line(["id": "cmpl-x", "object": "text_completion", "choices": [
            ["index": 0, "text": "", "prompt_token_ids": prompt, "token_ids": out,
             "routed_experts": npy(allLayers(ids, rows: T - 1), "u1", [T - 1, 4, 2]),
             "logprobs": ["token_logprobs": [-1.5, -0.5], "tokens": ["a", "b"]]] as [String: Any]]])
        let chat = line(["id": "chatcmpl-y", "object": "chat.completion", "prompt_token_ids": prompt, "choices": [
            ["index": 0, "message": ["role": "assistant", "content": "hi"], "token_ids": out,
             "routed_experts": npy(allLayers(ids, rows: T - 1), "u2", [T - 1, 4, 2])] as [String: Any]]])
        let got = try EngineImport.vllm(JSONLines(bytes: completion + chat, file: "v.jsonl"), settings: settings())
        #expect(got.map(\.uid) == ["cmpl-x/0", "chatcmpl-y/0"])
        for g in got { #expect(g.expertIDs == ids && g.tokens == (prompt + out).map(Int32.init) && g.start == 0 && g.promptLength == P) }
        #expect(got[0].logprobs == [-1.5, -0.5] && got[1].logprobs.isEmpty)
    }

    @Test("errors say what was found and what each release sends")
    func layoutErrors() throws {
        let sgl = line(["text": "", "meta_info": ["id": "x", "finish_reason": NSNull()]])
        let e1 = #expect(throws: TraceError.self) { try EngineImport.sglang(JSONLines(bytes: sgl, file: "s"), settings: settings()) }
        #expect(e1?.message.contains("meta_info has no \"routed_experts\" (it has keys ") == true, "\(e1?.message ?? "")")
        #expect(e1?.message.contains("finish_reason") == true && e1?.message.contains("SGLang 0.5.x /generate responses carry it") == true)
        #expect(e1?.message.contains("--enable") == false)
        // An SGLang response given to the vLLM importer, and a vLLM output given to the SGLang importer.
        let e2 = #expect(throws: TraceError.self) { try EngineImport.vllm(JSONLines(bytes: sgl, file: "v"), settings: settings()) }
        #expect(e2?.message.contains("use --from sglang") == true, "\(e2?.message ?? "")")
        let v = line(["request_id": "r", "outputs": [["index": 0, "token_ids": [1], "routed_experts": NSNull()]]])
        let e3 = #expect(throws: TraceError.self) { try EngineImport.vllm(JSONLines(bytes: v, file: "v"), settings: settings()) }
        #expect(e3?.message.contains("outputs[0] has no routed_experts") == true && e3?.message.contains("vLLM ≥ 0.22 sends") == true, "\(e3?.message ?? "")")
        let e4 = #expect(throws: TraceError.self) { try EngineImport.sglang(JSONLines(bytes: v, file: "s"), settings: settings()) }
        #expect(e4?.message.contains("use --from vllm") == true, "\(e4?.message ?? "")")
        // vLLM ≥ 0.22: more rows than T - 1.
        let ids = routing(rows: 4, seed: 7)
        let long = line(["request_id": "r", "prompt_token_ids": [1, 2], "outputs": [
            ["index": 0, "token_ids": [3, 4], "routed_experts": npy(allLayers(ids, rows: 4), "u1", [4, 4, 2])]]])
        let e5 = #expect(throws: TraceError.self) { try EngineImport.vllm(JSONLines(bytes: long, file: "v"), settings: settings()) }
        #expect(e5?.message.contains("has 4 rows for 2 prompt + 2 generated tokens; vLLM ≥ 0.22 sends T - 1 - start = 3 - start rows") == true, "\(e5?.message ?? "")")
        // Not JSON: the line and the byte offset in the file.
        let good = line(["request_id": "r", "prompt_token_ids": [1, 2], "outputs": [
            ["index": 0, "token_ids": [3, 4], "routed_experts": npy(allLayers(ids, rows: 3), "u1", [3, 4, 2])]]])
        let e6 = #expect(throws: TraceError.self) {
            try EngineImport.vllm(JSONLines(bytes: good + Array("{\"a\": [1, 2,, 3]}\n".utf8), file: "v"), settings: settings())
        }
        #expect(e6?.message.hasPrefix("line 2: not valid JSON") == true && e6?.offset == good.count + 12, "\(String(describing: e6))")
    }

    @Test("NeMo RL: the filler last row is dropped; int8, -1 rows stay missing")
    func nemoFiller() throws {
        let T = 5
        var v = allLayers(routing(rows: T - 1, seed: 8), rows: T - 1)
        for i in 8..<16 { v[i] = -1 }  // row 1: vLLM gave none
        v += [0, 1, 0, 1, 0, 1, 0, 1]  // the filler arange(K)
        let wire = "nrlre1:int8:\(T)x4x2:" + b64(v.map { UInt8(bitPattern: Int8($0)) })
        let got = try EngineImport.nemoRL(JSONLines(bytes: line(["routed_experts": wire, "uid": "s", "tokens": [1, 2, 3, 4, 5]]), file: "n"),
                                          settings: settings())
        #expect(got.count == 1 && got[0].rowCount == T - 1 && got[0].tokens.count == T)
        #expect(!got[0].isPresent(row: 1, layer: 0) && got[0].isPresent(row: 2, layer: 0))
    }

    @Test("streaming: lines longer than the read chunk, CRLF, no final newline; the buffer stays one line plus one chunk")
    func streaming() throws {
        let rows = 400
        var input: [UInt8] = []
        var want: [[UInt16]] = []
        for i in 0..<5 {
            let ids = routing(rows: rows, seed: 100 + UInt64(i))
            want.append(ids)
            var l = line(["meta_info": ["id": "q\(i)", "routed_experts": b64(int32LE(allLayers(ids, rows: rows)))]])
            if i == 2 { l.insert(0x0D, at: l.count - 1) }
            if i == 4 { l.removeLast() }
            input += l + (i == 1 ? [0x0A, 0x20, 0x0A] : [])
        }
        let lines = JSONLines(bytes: input, file: "big")
        lines.chunkBytes = 1000
        var got: [TraceRecord] = []
        try EngineImport.sglang(lines, settings: settings(), emit: { got.append($0) })
        #expect(got.map(\.expertIDs) == want)
        let longest = input.split(separator: 0x0A).map(\.count).max()!
        #expect(lines.peakBufferBytes <= longest * 3 / 2 + 2 * lines.chunkBytes, "\(lines.peakBufferBytes) for lines of \(longest)")
    }

    @Test("rtrace import: the first record decides the logprobs column (--logprobs overrides); a failed import leaves no file",
          .enabled(if: binaryTestsEnabled))
    func cliLogprobsAndStaging() throws {
        let ids = routing(rows: 3, seed: 9)
        func resp(_ id: String, logprobs: Bool) -> [UInt8] {
            var meta: [String: Any] = ["id": id, "routed_experts": b64(int32LE(allLayers(ids, rows: 3)))]
            if logprobs { meta["output_token_logprobs"] = [[-0.5, 7, NSNull()], [-0.25, 8, NSNull()]] }
            return line(["prompt_token_ids": [1, 2], "output_ids": [7, 8], "meta_info": meta])
        }
        let src = tempPath("lp.jsonl"), out = tempPath("lp.rtrace")
        let geo = ["--num-layers", "4", "--layer-map", "1-3", "--num-experts", "16", "--top-k", "2"]
        try Data(resp("a", logprobs: false) + resp("b", logprobs: true)).write(to: URL(fileURLWithPath: src))
        try? FileManager.default.removeItem(atPath: out)
        let r1 = try runRTrace(["import", "--from", "sglang", src, "-o", out] + geo)
        #expect(r1.status == 1 && r1.stderr.contains("record b has logprobs, but the first record had none") && r1.stderr.contains("--logprobs keep"), "\(r1.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out), "a failed import leaves no output")
        let left = try FileManager.default.contentsOfDirectory(atPath: (out as NSString).deletingLastPathComponent)
        #expect(left.allSatisfy { !$0.hasPrefix("lp.rtrace.partial") }, "\(left)")
        let r2 = try runRTrace(["import", "--from", "sglang", src, "-o", out, "--logprobs", "keep"] + geo)
        #expect(r2.status == 0, "\(r2.stderr)")
        let recs = try TraceReader(path: out).readAll()
        #expect(recs.map(\.logprobs) == [[], [-0.5, -0.25]] && recs.allSatisfy { $0.start == 0 && $0.expertIDs == ids })
        let r3 = try runRTrace(["import", "--from", "sglang", src, "-o", out, "--logprobs", "drop"] + geo)
        #expect(r3.status == 0, "\(r3.stderr)")
        #expect(try TraceReader(path: out).header.columns.logprobs == false)
    }
}
